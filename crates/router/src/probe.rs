//! Active readiness probes: a new pod is probed every `probe_interval` (10 ms) until it answers,
//! so held requests go to it the moment it can serve, without waiting for the kubelet's probe
//! period or the Deployment's status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Router;
use crate::dial::DialGuard;
use crate::revision::{Pod, Revision};
use crate::table::Probe;

/// One probe may take this long (Knative's activator: 300 ms).
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// After this long without success, probe less often.
const FAST_PROBING: Duration = Duration::from_secs(30);
const SLOW_INTERVAL: Duration = Duration::from_millis(250);

/// Starts probing `pod` unless a prober already runs for it.
pub fn spawn(router: Router, rev: Arc<Revision>, pod: Arc<Pod>) {
    if pod.probing.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let started = Instant::now();
        let interval = router.inner.settings.probe_interval;
        while pod.present.load(Ordering::SeqCst) {
            let probe = rev.config().probe.clone();
            if probe_once(&router.inner.guard, pod.endpoint.addr, &probe).await {
                became_ready(&router, &rev, &pod);
                break;
            }
            let wait = if started.elapsed() < FAST_PROBING {
                interval
            } else {
                SLOW_INTERVAL
            };
            tokio::time::sleep(wait).await;
        }
        pod.probing.store(false, Ordering::SeqCst);
    });
}

fn became_ready(router: &Router, rev: &Revision, pod: &Pod) {
    if !pod.present.load(Ordering::SeqCst) {
        return;
    }
    pod.ready.store(true, Ordering::SeqCst);
    rev.waking.store(false, Ordering::SeqCst);
    {
        let mut w = rev
            .wake_times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(requested), None) = (w.requested, w.ready) {
            let now = Instant::now();
            w.ready = Some(now);
            rev.first_byte_pending.store(true, Ordering::SeqCst);
            let m = &router.inner.metrics.cold_start;
            let scheduled = w.scheduled.unwrap_or(now);
            m.get_or_create(&phase("pod_scheduled"))
                .observe((scheduled - requested).as_secs_f64());
            m.get_or_create(&phase("pod_ready"))
                .observe((now - requested).as_secs_f64());
        }
    }
    tracing::debug!(revision = %rev.key, pod = %pod.endpoint.addr, "pod ready");
    rev.capacity.notify_waiters();
}

pub(crate) fn phase(name: &str) -> crate::metrics::PhaseLabels {
    crate::metrics::PhaseLabels {
        phase: name.to_string(),
    }
}

/// One probe: a TCP connect, or `GET path` answered with 2xx.
pub async fn probe_once(guard: &DialGuard, addr: SocketAddr, probe: &Probe) -> bool {
    let attempt = async {
        let mut stream = guard.connect(addr).await.ok()?;
        let Probe::Http { path } = probe else {
            return Some(true);
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: gantry-probe\r\nK-Network-Probe: queue\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let read = stream.read(&mut buf[n..]).await.ok()?;
            if read == 0 {
                break;
            }
            n += read;
        }
        // "HTTP/1.1 200"
        let status = std::str::from_utf8(buf.get(9..12)?)
            .ok()?
            .parse::<u16>()
            .ok()?;
        Some((200..300).contains(&status))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

//! Two `gantry run` replicas with leader election on the real control plane, sharing a real
//! Postgres (`--database-url`, a private server on loopback): a Monitor against a loopback
//! stand-in alerts a loopback receiver (generic Provider) exactly once per transition.
//!
//! The stand-in stops: one DOWN alert. The leader is SIGKILLed right after delivering it
//! (mid-outage, once its outbox row is deleted: a kill in the milliseconds between the delivery
//! and that deletion repeats the alert, at-least-once delivery, and a kill before the delivery
//! is `uptime_durability_cli`'s case); the standby takes the Lease, recovers the
//! Monitor's state from the database and keeps checking without a second DOWN alert. The
//! stand-in comes back: one recovery alert, whose outage runs from the same start as the DOWN
//! alert's `downSince`. Counts are asserted at the receiver after a settle period.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gantry_api::notification::v1beta3::Provider;
use gantry_api::uptime::v1alpha1::Monitor;
use gantry_testkit::git::free_port;
use gantry_testkit::http::{Seen, json_sink};
use gantry_testkit::postgres::Postgres;
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);
const LEASE: &str = "gantry-leader-election";

/// A `gantry run` replica, killed when dropped.
struct Replica {
    name: &'static str,
    child: Child,
    _storage: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica named `name` (its Lease identity), every listener on loopback.
fn start_replica(name: &'static str, namespace: &str, database_url: &str) -> Replica {
    let storage = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["run", "--leader-elect=true", "--watch-namespace", namespace])
        .arg(format!("--leader-election-namespace={namespace}"))
        .arg(format!("--database-url={database_url}"))
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
        .arg("--serving-addr=127.0.0.1:0")
        .arg("--serving-loopback-only=true")
        .arg("--uptime-addr=127.0.0.1:0")
        .arg("--storage-addr=127.0.0.1:0")
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env("POD_NAME", name)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting gantry run");
    Replica {
        name,
        child,
        _storage: storage,
    }
}

/// The stand-in application on loopback; stopped when the token is cancelled.
async fn stand_in(addr: &str) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    (bound, stop)
}

fn reasons(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn wait_alert(seen: &Seen, reason: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = seen.lock().unwrap().iter().find(|e| e["reason"] == reason) {
            return e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} alert: {:?}",
            reasons(seen)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

fn state(m: Option<&Monitor>) -> Option<String> {
    m.and_then(|m| m.status.as_ref())
        .and_then(|s| s.state.clone())
}

fn last_check(m: Option<&Monitor>) -> Option<jiff::Timestamp> {
    m.and_then(|m| m.status.as_ref())
        .and_then(|s| s.last_result.as_ref())
        .and_then(|r| r.time.parse().ok())
}

fn timestamp(event: &serde_json::Value, path: &[&str]) -> jiff::Timestamp {
    let mut v = event;
    for p in path {
        v = &v[*p];
    }
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp at {path:?}: {event}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_alert_once_across_a_leader_kill_mid_outage() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    with_namespace("uptime-ha", |client, ns| async move {
        install_crds(&client).await;
        let (addr, stop) = stand_in("127.0.0.1:0").await;
        let (seen, hook) = json_sink("alerts").await;
        let providers: Api<Provider> = Api::namespaced(client.clone(), &ns);
        let provider: Provider = serde_json::from_value(serde_json::json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1beta3",
            "kind": "Provider",
            "metadata": {"name": "hook"},
            "spec": {"type": "generic", "address": hook},
        }))
        .unwrap();
        providers
            .create(&PostParams::default(), &provider)
            .await
            .unwrap();
        let monitors: Api<Monitor> = Api::namespaced(client.clone(), &ns);
        // Three failures 2 s apart confirm DOWN: the outage starts 4 s before the DOWN state,
        // so a recovery timed from the DOWN state instead of the first failure shows.
        let monitor: Monitor = serde_json::from_value(serde_json::json!({
            "apiVersion": "uptime.gantry.dev/v1alpha1",
            "kind": "Monitor",
            "metadata": {"name": "web"},
            "spec": {
                "type": "http",
                "interval": "2s",
                "retryInterval": "2s",
                "timeout": "1s",
                "failureThreshold": 3,
                "http": {"url": format!("http://{addr}/healthz")},
                "conditions": ["[STATUS] == 200"],
                "alerts": {"providerRefs": [{"name": "hook"}]},
            },
        }))
        .unwrap();
        monitors
            .create(&PostParams::default(), &monitor)
            .await
            .unwrap();

        let mut replicas = vec![
            start_replica("replica-a", &ns, &url),
            start_replica("replica-b", &ns, &url),
        ];
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        wait_for(&monitors, "web", WAIT, |m| {
            state(m).as_deref() == Some("UP")
        })
        .await
        .expect("the leader checks the Monitor");
        let leader = holder(&leases).await.expect("a replica holds the Lease");
        let at = replicas
            .iter()
            .position(|r| r.name == leader)
            .unwrap_or_else(|| panic!("the Lease holder {leader} is one of the replicas"));
        assert!(seen.lock().unwrap().is_empty(), "no alert while UP");

        // The outage begins; the leader announces it once and is killed at that moment.
        stop.cancel();
        let down = wait_alert(&seen, "MonitorDown").await;
        // Time to take the delivered alert out of the outbox (a write of milliseconds).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut killed = replicas.remove(at);
        killed.child.kill().unwrap();
        killed.child.wait().unwrap();
        let killed_at = jiff::Timestamp::now();
        assert_eq!(down["involvedObject"]["name"], "web");

        // The standby takes the Lease and goes on checking (still down) from the database.
        let standby = replicas[0].name;
        let deadline = tokio::time::Instant::now() + WAIT;
        while holder(&leases).await.as_deref() != Some(standby) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{standby} never took the Lease from {leader}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let checked = wait_for(&monitors, "web", WAIT, |m| {
            last_check(m).is_some_and(|t| t > killed_at)
        })
        .await
        .expect("the new leader checks");
        assert_eq!(
            state(Some(&checked)).as_deref(),
            Some("DOWN"),
            "{:?}",
            checked.status
        );
        // Several more failed checks by the new leader: none of them is a second DOWN alert.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            reasons(&seen),
            ["MonitorDown"],
            "one DOWN alert across the leader change"
        );

        // The stand-in comes back: one recovery alert, timed from the outage's first failure.
        let (_addr, _stop) = stand_in(&addr.to_string()).await;
        wait_for(&monitors, "web", WAIT, |m| {
            state(m).as_deref() == Some("UP")
        })
        .await
        .expect("UP again");
        let recovered = wait_alert(&seen, "MonitorUp").await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            reasons(&seen),
            ["MonitorDown", "MonitorUp"],
            "exactly one alert per transition: {:?}",
            seen.lock().unwrap()
        );
        let outage: i64 = recovered["metadata"]["outageSeconds"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("outageSeconds in {recovered}"));
        let down_since = timestamp(&down, &["metadata", "downSince"]);
        let up_at = timestamp(&recovered, &["timestamp"]);
        let expected = up_at.duration_since(down_since).as_secs();
        assert!(
            (outage - expected).abs() <= 1,
            "the outage ({outage}s) runs from the DOWN alert's downSince {down_since} to the \
             recovery at {up_at} ({expected}s): {recovered}"
        );
        drop(killed);
        drop(replicas);
    })
    .await;
    drop(pg);
}

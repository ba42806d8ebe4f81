//! One Revision's live state: its pods, exact in-flight accounting and the cold-start state.
//!
//! Accounting is lock-free on the request path: counters are atomics. The time-weighted
//! concurrency the autoscaler needs is exact without sampling: with `S` the sum of all request
//! start times, `E` the sum of all end times and `n` the requests in flight, the area under the
//! in-flight curve up to `t` is `E − S + n·t`. Two readings' difference is the request-seconds
//! between them; wrapping arithmetic keeps the difference right even when the sums overflow.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use gantry_core::serving::autoscale::{Activity, Buckets, Decider};
use tokio::sync::Notify;

use crate::pool::{Idle, Sender};
use crate::table::{Endpoint, RevisionConfig, RevisionKey};

/// A pod the router knows: ready once its probe succeeded.
#[derive(Debug)]
pub struct Pod {
    pub endpoint: Endpoint,
    pub in_flight: AtomicU32,
    pub ready: AtomicBool,
    /// Cleared when the pod leaves the Revision, which stops its prober.
    pub present: AtomicBool,
    /// A prober runs for this pod.
    pub probing: AtomicBool,
    /// Kept-alive HTTP/1.1 connections to the pod, closed when it leaves.
    pub conns: Idle,
}

impl Pod {
    /// Keeps an HTTP/1.1 connection whose response was read to the end, for the next request;
    /// closes it if the pod has left the table (checked again after, see `set_endpoints`).
    pub(crate) fn give_back(&self, sender: Sender, max_idle: usize) {
        if !self.present.load(Ordering::SeqCst) {
            return;
        }
        self.conns.put(sender, max_idle);
        if !self.present.load(Ordering::SeqCst) {
            self.conns.clear();
        }
    }

    fn new(endpoint: Endpoint) -> Self {
        Pod {
            endpoint,
            in_flight: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            present: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            conns: Idle::default(),
        }
    }
}

/// Timestamps of one wake, for the cold-start phase histogram.
#[derive(Debug, Default, Clone, Copy)]
pub struct WakeTimes {
    pub requested: Option<Instant>,
    pub scale_done: Option<Instant>,
    pub scheduled: Option<Instant>,
    pub ready: Option<Instant>,
}

/// The autoscaler's per-Revision state (touched only by its tick).
#[derive(Debug)]
pub struct ScaleState {
    pub buckets: Buckets,
    pub decider: Decider,
    /// Area reading (request-microseconds) at the previous tick.
    pub last_area: Option<u64>,
    pub last_started: u64,
    /// Set when a scale to zero was decided; the next tick scales down only if nothing happened
    /// in between (the `last_active` reading it holds is unchanged).
    pub draining: Option<u64>,
}

/// Live state of one Revision.
#[derive(Debug)]
pub struct Revision {
    pub key: RevisionKey,
    base: Instant,
    config: RwLock<Arc<RevisionConfig>>,
    pods: RwLock<Arc<Vec<Arc<Pod>>>>,
    /// Woken when a pod becomes ready or a slot frees up.
    pub capacity: Notify,
    pub in_flight: AtomicU64,
    /// Requests waiting for a pod right now.
    pub waiting: AtomicU64,
    pub started: AtomicU64,
    sum_start_us: AtomicU64,
    sum_end_us: AtomicU64,
    /// Microseconds since `base` of the latest start or finish, plus one (0: never).
    last_active: AtomicU64,
    since: Duration,
    /// Replicas the Deployment asks for (from the cluster); −1 while unknown.
    pub replicas: AtomicI64,
    /// A wake was requested and no pod has been ready since (deduplicates wakes).
    pub waking: AtomicBool,
    pub wake_times: Mutex<WakeTimes>,
    /// A wake's pod became ready and its first byte is not recorded yet: lets every other
    /// request skip the `wake_times` lock.
    pub first_byte_pending: AtomicBool,
    pub scale: Mutex<ScaleState>,
}

impl Revision {
    pub fn new(key: RevisionKey, config: RevisionConfig, base: Instant) -> Self {
        let retain = config.autoscale.stable_window + Duration::from_secs(2);
        Revision {
            key,
            base,
            config: RwLock::new(Arc::new(config)),
            pods: RwLock::new(Arc::new(Vec::new())),
            capacity: Notify::new(),
            in_flight: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            started: AtomicU64::new(0),
            sum_start_us: AtomicU64::new(0),
            sum_end_us: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            since: base.elapsed(),
            replicas: AtomicI64::new(-1),
            waking: AtomicBool::new(false),
            wake_times: Mutex::new(WakeTimes::default()),
            first_byte_pending: AtomicBool::new(false),
            scale: Mutex::new(ScaleState {
                buckets: Buckets::new(Duration::from_secs(1), retain),
                decider: Decider::default(),
                last_area: None,
                last_started: 0,
                draining: None,
            }),
        }
    }

    pub fn config(&self) -> Arc<RevisionConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_config(&self, config: RevisionConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }

    pub fn pods(&self) -> Arc<Vec<Arc<Pod>>> {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the pod list; returns the pods that are new (to be probed).
    pub fn set_endpoints(&self, endpoints: &[Endpoint]) -> Vec<Arc<Pod>> {
        let mut guard = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::with_capacity(endpoints.len());
        let mut added = Vec::new();
        for e in endpoints {
            match guard.iter().find(|p| p.endpoint == *e) {
                Some(p) => next.push(p.clone()),
                None => {
                    let p = Arc::new(Pod::new(*e));
                    added.push(p.clone());
                    next.push(p);
                }
            }
        }
        for gone in guard.iter().filter(|p| !endpoints.contains(&p.endpoint)) {
            gone.present.store(false, Ordering::SeqCst);
            gone.ready.store(false, Ordering::SeqCst);
            // After `present` is cleared: a connection given back later sees it and closes.
            gone.conns.clear();
        }
        if !added.is_empty() {
            let mut w = self
                .wake_times
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if w.requested.is_some() && w.scheduled.is_none() {
                w.scheduled = Some(Instant::now());
            }
        }
        *guard = Arc::new(next);
        added
    }

    pub fn ready_pods(&self) -> u32 {
        self.pods()
            .iter()
            .filter(|p| p.ready.load(Ordering::Relaxed))
            .count() as u32
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// A request for this Revision arrived: counted in flight until its lease (or this
    /// [`Accounted`]) is dropped.
    pub fn start(self: &Arc<Self>) -> Accounted {
        let t = self.now_us();
        self.sum_start_us.fetch_add(t, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.last_active.fetch_max(t + 1, Ordering::SeqCst);
        Accounted {
            revision: self.clone(),
        }
    }

    fn finish(&self) {
        let t = self.now_us();
        self.sum_end_us.fetch_add(t, Ordering::Relaxed);
        self.last_active.fetch_max(t + 1, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// The area under the in-flight curve so far, in request-microseconds (wrapping).
    pub fn area_us(&self) -> u64 {
        let t = self.now_us();
        let n = self.in_flight.load(Ordering::SeqCst);
        let s = self.sum_start_us.load(Ordering::Relaxed);
        let e = self.sum_end_us.load(Ordering::Relaxed);
        e.wrapping_sub(s).wrapping_add(n.wrapping_mul(t))
    }

    /// The raw `last_active` reading (changes whenever a request starts or finishes).
    pub fn last_active_raw(&self) -> u64 {
        self.last_active.load(Ordering::SeqCst)
    }

    pub fn activity(&self) -> Activity {
        let raw = self.last_active_raw();
        Activity {
            in_flight: self.in_flight.load(Ordering::SeqCst),
            last_active: (raw > 0).then(|| Duration::from_micros(raw - 1)),
            since: self.since,
        }
    }

    /// Time on the same clock as [`Revision::activity`].
    pub fn now(&self) -> Duration {
        self.base.elapsed()
    }

    /// Takes a slot on the ready pod with the fewest requests in flight, within
    /// `containerConcurrency`.
    pub fn try_acquire(&self, limit: u32) -> Option<Arc<Pod>> {
        loop {
            let pods = self.pods();
            let best = pods
                .iter()
                .filter(|p| p.ready.load(Ordering::Relaxed))
                .map(|p| (p.in_flight.load(Ordering::Relaxed), p))
                .filter(|(n, _)| limit == 0 || *n < limit)
                .min_by_key(|(n, _)| *n)?;
            let (n, pod) = best;
            if pod
                .in_flight
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return Some(pod.clone());
            }
        }
    }

    /// Gives a pod slot back and wakes waiters, if any: waking takes the `Notify`'s lock, which
    /// every request of the Revision would otherwise contend for. A waiter counts itself in
    /// `waiting` and then (after a fence, see `proxy`) looks for a free slot; with the fence
    /// here, either it sees this slot free or this sees it waiting.
    pub fn release(&self, pod: &Pod) {
        pod.in_flight.fetch_sub(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.capacity.notify_waiters();
        }
    }
}

/// A request counted in the Revision's in-flight total; dropping it records the finish.
#[derive(Debug)]
pub struct Accounted {
    revision: Arc<Revision>,
}

/// A request holding a slot on a pod (and counted in flight). Dropped when the response body
/// (or the upgraded connection) ends.
#[derive(Debug)]
pub struct Lease {
    pub pod: Arc<Pod>,
    accounted: Accounted,
}

impl Lease {
    pub fn new(pod: Arc<Pod>, accounted: Accounted) -> Self {
        Lease { pod, accounted }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.accounted.revision.release(&self.pod);
    }
}

impl Drop for Accounted {
    fn drop(&mut self) {
        self.revision.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_counts_request_time_exactly() {
        let r = Arc::new(Revision::new(
            RevisionKey::new("ns", "r"),
            RevisionConfig::default(),
            Instant::now(),
        ));
        let a0 = r.area_us();
        let one = r.start();
        let two = r.start();
        std::thread::sleep(Duration::from_millis(50));
        drop(one);
        drop(two);
        let a1 = r.area_us();
        let area = a1.wrapping_sub(a0);
        // Two requests of ≥ 50 ms each: at least 100 000 request-microseconds.
        assert!(area >= 100_000, "{area}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.area_us(), a1, "nothing in flight adds nothing");
        assert_eq!(r.activity().in_flight, 0);
        assert!(r.activity().last_active.is_some());
    }

    #[test]
    fn least_in_flight_within_the_limit() {
        let r = Revision::new(
            RevisionKey::new("ns", "r"),
            RevisionConfig::default(),
            Instant::now(),
        );
        let a = Endpoint {
            addr: "127.0.0.2:80".parse().unwrap(),
        };
        let b = Endpoint {
            addr: "127.0.0.3:80".parse().unwrap(),
        };
        r.set_endpoints(&[a, b]);
        assert!(r.try_acquire(1).is_none(), "no pod ready yet");
        for p in r.pods().iter() {
            p.ready.store(true, Ordering::SeqCst);
        }
        let p1 = r.try_acquire(1).unwrap();
        let p2 = r.try_acquire(1).unwrap();
        assert_ne!(p1.endpoint, p2.endpoint);
        assert!(
            r.try_acquire(1).is_none(),
            "both pods at containerConcurrency 1"
        );
        r.release(&p1);
        assert_eq!(r.try_acquire(1).unwrap().endpoint, p1.endpoint);
    }
}

//! Knative's Pod Autoscaler (KPA) as pure functions: how many pods a Revision wants.
//!
//! The router sees every request, so its inputs are exact: the time-weighted in-flight count
//! (concurrency) or the number of requests started (rps), recorded into per-second [`Buckets`]
//! and averaged over the stable window (60 s) and the panic window (10 % of it). A [`Decider`]
//! turns the averages into a pod count with Knative's rules (`pkg/autoscaler/scaling` and
//! `config/core/configmaps/autoscaler.yaml`):
//!
//! - per-pod target = `max(0.01, total × utilization)`, where total is the `target` annotation,
//!   else `containerConcurrency` when set, else 100 (rps: 200), and utilization 70 %;
//! - stable want = `ceil(stable average / target)`, panic want = `ceil(panic average / target)`,
//!   both kept within `[floor(ready / max-scale-down-rate), ceil(ready × max-scale-up-rate)]`;
//! - panic starts when panic want / ready ≥ 200 %, never scales down while it lasts, and ends
//!   one stable window after the panic want was last over the threshold;
//! - `activation-scale` raises a non-zero want to at least that many pods.
//!
//! Scaling to zero is decided differently from Knative, from timestamps rather than from
//! averaged samples: a Revision is idle when nothing is in flight and nothing started or
//! finished for the stable window plus the grace period ([`is_idle`]). A request that lasts
//! longer than the window therefore keeps its Revision awake, and a sparse but steady trickle
//! never lets it sleep. [`bounded`] then applies `min-scale`, `max-scale` and the zero rule.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

/// Knative's `TargetMin`: a per-pod target never goes below this.
pub const TARGET_MIN: f64 = 0.01;
/// `container-concurrency-target-default`.
pub const DEFAULT_CONCURRENCY_TARGET: f64 = 100.0;
/// `requests-per-second-target-default`.
pub const DEFAULT_RPS_TARGET: f64 = 200.0;
/// `container-concurrency-target-percentage` (also used for rps).
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.70;
/// `stable-window`.
pub const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
/// `scale-to-zero-grace-period`.
pub const DEFAULT_SCALE_TO_ZERO_GRACE: Duration = Duration::from_secs(30);
/// `panic-window-percentage`.
pub const DEFAULT_PANIC_WINDOW_PERCENTAGE: f64 = 10.0;
/// `panic-threshold-percentage`.
pub const DEFAULT_PANIC_THRESHOLD_PERCENTAGE: f64 = 200.0;
/// `max-scale-up-rate`.
pub const DEFAULT_MAX_SCALE_UP_RATE: f64 = 1000.0;
/// `max-scale-down-rate`.
pub const DEFAULT_MAX_SCALE_DOWN_RATE: f64 = 2.0;
/// Knative's lower bound for the stable window (and the grace period).
pub const MIN_STABLE_WINDOW: Duration = Duration::from_secs(6);

/// What the autoscaler measures (`autoscaling.knative.dev/metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Metric {
    /// Requests in flight, time-weighted.
    #[default]
    Concurrency,
    /// Requests started per second.
    Rps,
}

impl Metric {
    /// Parses the annotation value; `None` for anything Knative's KPA does not support.
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "concurrency" => Some(Metric::Concurrency),
            "rps" => Some(Metric::Rps),
            _ => None,
        }
    }
}

/// Everything one Revision's decisions depend on: global settings merged with its annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Concurrency or rps.
    pub metric: Metric,
    /// Per-pod target already multiplied by the utilization ([`resolve_target`]).
    pub target: f64,
    /// Stable window (`autoscaling.knative.dev/window` or the global `stable-window`).
    pub stable_window: Duration,
    /// Panic window as a percentage of the stable window.
    pub panic_window_percentage: f64,
    /// Panic starts when the panic want reaches this percentage of the ready pods.
    pub panic_threshold_percentage: f64,
    /// At most `ready × rate` pods per decision.
    pub max_scale_up_rate: f64,
    /// At least `ready / rate` pods per decision.
    pub max_scale_down_rate: f64,
    /// `min-scale`: never fewer pods (0 allows zero).
    pub min_scale: u32,
    /// `max-scale`: never more pods; 0 means unbounded.
    pub max_scale: u32,
    /// `activation-scale`: a Revision with traffic gets at least this many pods.
    pub activation_scale: u32,
    /// Global `enable-scale-to-zero`.
    pub enable_scale_to_zero: bool,
    /// Global `scale-to-zero-grace-period`.
    pub scale_to_zero_grace: Duration,
    /// `scale-to-zero-pod-retention-period`: the last pod stays at least this long after the
    /// last activity (it only matters when longer than window + grace).
    pub scale_to_zero_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            metric: Metric::Concurrency,
            target: DEFAULT_CONCURRENCY_TARGET * DEFAULT_TARGET_UTILIZATION,
            stable_window: DEFAULT_STABLE_WINDOW,
            panic_window_percentage: DEFAULT_PANIC_WINDOW_PERCENTAGE,
            panic_threshold_percentage: DEFAULT_PANIC_THRESHOLD_PERCENTAGE,
            max_scale_up_rate: DEFAULT_MAX_SCALE_UP_RATE,
            max_scale_down_rate: DEFAULT_MAX_SCALE_DOWN_RATE,
            min_scale: 0,
            max_scale: 0,
            activation_scale: 1,
            enable_scale_to_zero: true,
            scale_to_zero_grace: DEFAULT_SCALE_TO_ZERO_GRACE,
            scale_to_zero_retention: Duration::ZERO,
        }
    }
}

impl Settings {
    /// The panic window: `stable × panic-window-percentage / 100`, at least one second.
    pub fn panic_window(&self) -> Duration {
        let w = self
            .stable_window
            .mul_f64(self.panic_window_percentage / 100.0);
        w.max(Duration::from_secs(1))
    }

    /// How long a Revision must see no activity before it may scale to zero.
    pub fn idle_after(&self) -> Duration {
        self.stable_window + self.scale_to_zero_grace.max(self.scale_to_zero_retention)
    }
}

/// Knative's `ResolveMetricTarget`: the per-pod target (after utilization) and the total.
///
/// `annotation_target` and `annotation_utilization` (a fraction, 0.7 for 70 %) override the
/// defaults; for concurrency a set `containerConcurrency` replaces the default target.
pub fn resolve_target(
    metric: Metric,
    container_concurrency: u32,
    annotation_target: Option<f64>,
    annotation_utilization: Option<f64>,
) -> (f64, f64) {
    let mut total = match metric {
        Metric::Rps => DEFAULT_RPS_TARGET,
        Metric::Concurrency if container_concurrency > 0 => f64::from(container_concurrency),
        Metric::Concurrency => DEFAULT_CONCURRENCY_TARGET,
    };
    if let Some(t) = annotation_target {
        total = t;
    }
    let utilization = annotation_utilization.unwrap_or(DEFAULT_TARGET_UTILIZATION);
    ((total * utilization).max(TARGET_MIN), total)
}

/// Values summed into buckets of one granularity (a second), averaged over a trailing window.
///
/// For concurrency the router adds the exact area under its in-flight curve (request-seconds)
/// for each tick; for rps the number of requests started. The average over a window is the
/// sum divided by the window, or by the time since the first record when that is shorter (so a
/// Revision that has just woken is not diluted by the seconds before it existed).
#[derive(Clone, Debug)]
pub struct Buckets {
    granularity: Duration,
    retain: Duration,
    /// (bucket index, sum), oldest first.
    buckets: VecDeque<(u64, f64)>,
    first: Option<Duration>,
}

impl Buckets {
    /// Buckets of `granularity` keeping at least `retain` of history.
    pub fn new(granularity: Duration, retain: Duration) -> Self {
        let granularity = granularity.max(Duration::from_millis(1));
        Buckets {
            granularity,
            retain,
            buckets: VecDeque::new(),
            first: None,
        }
    }

    fn index(&self, t: Duration) -> u64 {
        (t.as_nanos() / self.granularity.as_nanos()) as u64
    }

    /// Adds `value` to the bucket holding `now` and forgets buckets older than the retention.
    pub fn record(&mut self, now: Duration, value: f64) {
        self.first.get_or_insert(now);
        let i = self.index(now);
        match self.buckets.back_mut() {
            Some((last, sum)) if *last == i => *sum += value,
            _ => self.buckets.push_back((i, value)),
        }
        let keep = self.index(now.saturating_sub(self.retain));
        while self.buckets.front().is_some_and(|(j, _)| *j < keep) {
            self.buckets.pop_front();
        }
    }

    /// Sum of the buckets within `window` up to `now`, divided by the window's seconds (or
    /// the seconds since the first record, if fewer); a record at `t` covers the tick ending at `t`. Zero before anything was recorded.
    pub fn average(&self, now: Duration, window: Duration) -> f64 {
        let Some(first) = self.first else { return 0.0 };
        let since = self.index(now.saturating_sub(window)).saturating_add(1);
        let sum: f64 = self
            .buckets
            .iter()
            .filter(|(j, _)| *j >= since)
            .map(|(_, v)| v)
            .sum();
        // A record at `t` covers the tick that ends at `t`.
        let span = window.min(now.saturating_sub(first) + self.granularity);
        sum / span.as_secs_f64()
    }
}

/// One Revision's KPA state between decisions (panic mode).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decider {
    panic_since: Option<Duration>,
    max_panic_pods: u32,
}

impl Decider {
    /// Whether the last decision was made in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// Knative's KPA `Scale`: pods wanted for the averages over the stable and panic windows,
    /// with `ready` pods serving now. Bounds and the zero rule come after ([`bounded`]).
    pub fn desired(
        &mut self,
        s: &Settings,
        now: Duration,
        stable_average: f64,
        panic_average: f64,
        ready: u32,
    ) -> u32 {
        let ready_f = f64::from(ready.max(1));
        let max_up = (s.max_scale_up_rate * ready_f).ceil();
        let max_down = (ready_f / s.max_scale_down_rate.max(1.0)).floor();
        let dspc = (stable_average / s.target).ceil();
        let dppc = (panic_average / s.target).ceil();
        let clamp = |v: f64| v.max(max_down).min(max_up) as u32;
        let mut stable = clamp(dspc);
        let mut panic = clamp(dppc);
        if s.activation_scale > 1 {
            if dspc > 0.0 {
                stable = stable.max(s.activation_scale);
            }
            if dppc > 0.0 {
                panic = panic.max(s.activation_scale);
            }
        }
        let over = dppc / ready_f >= s.panic_threshold_percentage / 100.0;
        if over {
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|t| t + s.stable_window < now) {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        if self.panic_since.is_none() {
            return stable;
        }
        // In panic, provision for whichever window wants more, and never go down.
        self.max_panic_pods = self.max_panic_pods.max(stable.max(panic));
        self.max_panic_pods
    }
}

/// A Revision's activity as the router records it, from timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Requests (and open streams) in flight right now, held ones included.
    pub in_flight: u64,
    /// The latest request start or finish; `None` if nothing happened since `since`.
    pub last_active: Option<Duration>,
    /// When the router started accounting for this Revision (its start, or the Revision's
    /// creation): with no activity at all, idleness counts from here.
    pub since: Duration,
}

/// Nothing in flight and nothing started or finished for the stable window plus grace.
pub fn is_idle(s: &Settings, activity: &Activity, now: Duration) -> bool {
    let last = activity
        .last_active
        .unwrap_or(activity.since)
        .max(activity.since);
    activity.in_flight == 0 && now.saturating_sub(last) >= s.idle_after()
}

/// The replica count to set: the KPA's want within `min-scale`/`max-scale`, never zero unless
/// idle, scale to zero is enabled and `min-scale` is 0; a Revision that is awake keeps at
/// least one pod (and `activation-scale` pods).
pub fn bounded(s: &Settings, kpa_desired: u32, idle: bool) -> u32 {
    let asleep = idle && s.enable_scale_to_zero && s.min_scale == 0;
    let floor = if asleep {
        0
    } else {
        s.min_scale.max(s.activation_scale).max(1)
    };
    let want = kpa_desired.max(floor);
    let want = if asleep { 0 } else { want };
    if s.max_scale > 0 {
        want.min(s.max_scale)
    } else {
        want
    }
}

/// One replica's exact counters for one Revision, as it reports them to the leader.
///
/// Every `gantry run` replica serves the data path, so each sees only its own share of the
/// requests; the leader adds the others' shares to its own before deciding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests in flight there right now, held ones included.
    pub in_flight: u64,
    /// The area under that replica's in-flight curve since it started, in
    /// request-microseconds (wrapping: only differences between reports mean anything).
    pub area_us: u64,
    /// Requests started there since it started (wrapping).
    pub started: u64,
    /// How long before the report the latest request started or finished there; `None` if
    /// none ever did. A duration, not a time, so that the replicas' clocks need not agree.
    pub idle_for: Option<Duration>,
    /// Changes whenever a request starts or finishes there (opaque).
    pub mark: u64,
}

/// The other replicas' share of one Revision's load, as of one autoscaler tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerLoad {
    /// Requests in flight on the other replicas.
    pub in_flight: u64,
    /// Request-microseconds the other replicas served since the previous tick.
    pub area_us: u64,
    /// Requests they started since the previous tick.
    pub started: u64,
    /// Their latest start or finish, on the leader's clock (never earlier than it happened).
    pub last_active: Option<Duration>,
    /// Sum of their marks: any start or finish anywhere changes it.
    pub mark: u64,
}

/// What the leader knows of one other replica.
#[derive(Clone, Debug)]
struct Peer<K> {
    /// Identifies the process (its address and secret): a new one starts from nothing.
    instance: String,
    /// When the leader first tried to hear from it.
    first_seen: Duration,
    /// When its latest report arrived.
    reported_at: Option<Duration>,
    /// Its latest counters per Revision, with their last activity on the leader's clock.
    latest: HashMap<K, (Counters, Option<Duration>)>,
    /// The `(area_us, started)` readings already added to the windows.
    consumed: HashMap<K, (u64, u64)>,
}

/// The leader's view of the other replicas' counters: per-replica reports in, per-Revision
/// sums out, each tick.
///
/// - A replica is a member while its Lease is live ([`ReplicaView::set_members`]); one that
///   leaves is forgotten at once.
/// - A member whose latest report is older than `staleness` is dropped from the sums (it
///   stopped reporting: crashed, partitioned or hung); its counters count again from its next
///   report, with a fresh baseline.
/// - A member not heard from yet, for less than `staleness` since it was first seen, makes the
///   tick [`PeerTick::unsure`]: its load is unknown, so nothing may scale down until it reports
///   or is dropped.
/// - Cumulative counters make a lost or late report harmless: the next one carries the
///   difference.
#[derive(Clone, Debug)]
pub struct ReplicaView<K> {
    staleness: Duration,
    peers: BTreeMap<String, Peer<K>>,
}

/// The result of [`ReplicaView::tick`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeerTick<K: Eq + Hash> {
    pub loads: HashMap<K, PeerLoad>,
    /// Some live replica has not reported yet: scale nothing down this tick.
    pub unsure: bool,
}

impl<K: Eq + Hash> Default for PeerTick<K> {
    fn default() -> Self {
        PeerTick {
            loads: HashMap::new(),
            unsure: false,
        }
    }
}

/// How a member stands, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Not heard from yet, within the staleness bound.
    Waiting,
    /// Reported this long ago.
    Reported(Duration),
    /// Silent for longer than the staleness bound: not counted.
    Stale,
}

impl<K: Eq + Hash + Clone> ReplicaView<K> {
    pub fn new(staleness: Duration) -> Self {
        ReplicaView {
            staleness,
            peers: BTreeMap::new(),
        }
    }

    pub fn staleness(&self) -> Duration {
        self.staleness
    }

    /// The other replicas with a live Lease, as `(identity, instance)`. New ones are first seen
    /// `now`; ones missing are forgotten; a changed instance (a restarted process) starts over.
    pub fn set_members<'a>(
        &mut self,
        now: Duration,
        members: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut next = BTreeMap::new();
        for (id, instance) in members {
            let peer = match self.peers.remove(id) {
                Some(p) if p.instance == instance => p,
                _ => Peer {
                    instance: instance.to_owned(),
                    first_seen: now,
                    reported_at: None,
                    latest: HashMap::new(),
                    consumed: HashMap::new(),
                },
            };
            next.insert(id.to_owned(), peer);
        }
        self.peers = next;
    }

    /// A report from `id` that arrived at `now`; ignored unless `id` is a member.
    pub fn record(
        &mut self,
        id: &str,
        now: Duration,
        counters: impl IntoIterator<Item = (K, Counters)>,
    ) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        peer.reported_at = Some(now);
        peer.latest = counters
            .into_iter()
            .map(|(k, c)| {
                // `now` is when the answer arrived, after the replica measured: the activity it
                // reports happened no later than this.
                let last = c.idle_for.map(|d| now.saturating_sub(d));
                (k, (c, last))
            })
            .collect();
    }

    pub fn states(&self, now: Duration) -> Vec<(String, PeerState)> {
        self.peers
            .iter()
            .map(|(id, p)| (id.clone(), self.state(p, now)))
            .collect()
    }

    fn state(&self, p: &Peer<K>, now: Duration) -> PeerState {
        match p.reported_at {
            Some(t) if now.saturating_sub(t) <= self.staleness => {
                PeerState::Reported(now.saturating_sub(t))
            }
            None if now.saturating_sub(p.first_seen) < self.staleness => PeerState::Waiting,
            _ => PeerState::Stale,
        }
    }

    /// The other replicas' load per Revision since the previous tick.
    pub fn tick(&mut self, now: Duration) -> PeerTick<K> {
        let mut out = PeerTick::default();
        let states: Vec<PeerState> = self.peers.values().map(|p| self.state(p, now)).collect();
        for (peer, state) in self.peers.values_mut().zip(states) {
            match state {
                PeerState::Waiting => out.unsure = true,
                PeerState::Stale => {
                    // Counted again from a fresh baseline when it reports again.
                    peer.latest.clear();
                    peer.consumed.clear();
                }
                PeerState::Reported(_) => {
                    peer.consumed.retain(|k, _| peer.latest.contains_key(k));
                    for (k, (c, last)) in &peer.latest {
                        let (area0, started0) =
                            *peer.consumed.get(k).unwrap_or(&(c.area_us, c.started));
                        peer.consumed.insert(k.clone(), (c.area_us, c.started));
                        let load = out.loads.entry(k.clone()).or_default();
                        load.in_flight += c.in_flight;
                        load.area_us = load.area_us.saturating_add(c.area_us.wrapping_sub(area0));
                        load.started = load
                            .started
                            .saturating_add(c.started.wrapping_sub(started0));
                        load.last_active = load.last_active.max(*last);
                        load.mark = load.mark.wrapping_add(c.mark);
                    }
                }
            }
        }
        out
    }
}

/// Merges the other replicas' load into this replica's own [`Activity`].
pub fn merge_activity(own: &Activity, peers: &PeerLoad) -> Activity {
    Activity {
        in_flight: own.in_flight + peers.in_flight,
        last_active: own.last_active.max(peers.last_active),
        since: own.since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn target_follows_knative_resolution() {
        assert_eq!(
            resolve_target(Metric::Concurrency, 0, None, None),
            (70.0, 100.0)
        );
        assert_eq!(
            resolve_target(Metric::Concurrency, 10, None, None),
            (7.0, 10.0)
        );
        assert_eq!(
            resolve_target(Metric::Concurrency, 10, Some(4.0), Some(0.5)),
            (2.0, 4.0)
        );
        assert_eq!(
            resolve_target(Metric::Rps, 10, None, Some(1.0)),
            (200.0, 200.0)
        );
        assert_eq!(
            resolve_target(Metric::Concurrency, 0, Some(0.0), None).0,
            TARGET_MIN
        );
        assert_eq!(Metric::parse("rps"), Some(Metric::Rps));
        assert_eq!(Metric::parse("cpu"), None);
    }

    #[test]
    fn panic_window_is_ten_percent_of_stable() {
        let s = Settings::default();
        assert_eq!(s.panic_window(), secs(6));
        assert_eq!(s.idle_after(), secs(90));
        let s = Settings {
            scale_to_zero_retention: secs(120),
            ..Settings::default()
        };
        assert_eq!(s.idle_after(), secs(180));
    }

    #[test]
    fn buckets_average_over_the_window_and_since_the_first_record() {
        let mut b = Buckets::new(secs(1), secs(60));
        assert_eq!(b.average(secs(5), secs(60)), 0.0);
        // 10 request-seconds per second for 10 seconds: concurrency 10.
        for t in 100..110 {
            b.record(secs(t), 10.0);
        }
        assert!((b.average(secs(109), secs(60)) - 10.0).abs() < 1e-9);
        // The 6 s panic window sees only its part.
        assert!((b.average(secs(109), secs(6)) - 10.0).abs() < 1e-9);
        assert!((b.average(secs(111), secs(6)) - 40.0 / 6.0).abs() < 1e-9);
        // Much later, nothing left in the window.
        assert_eq!(b.average(secs(300), secs(60)), 0.0);
        // Half-way out of a 60 s window: 10 × 10 / 60.
        assert!((b.average(secs(160), secs(60)) - 100.0 / 60.0).abs() < 0.2);
    }

    #[test]
    fn buckets_forget_beyond_retention() {
        let mut b = Buckets::new(secs(1), secs(10));
        for t in 0..100 {
            b.record(secs(t), 1.0);
        }
        assert!(b.buckets.len() <= 11);
    }

    #[test]
    fn stable_mode_divides_by_the_target() {
        let s = Settings::default(); // target 70
        let mut d = Decider::default();
        assert_eq!(d.desired(&s, secs(0), 0.0, 0.0, 0), 0);
        assert_eq!(d.desired(&s, secs(1), 70.0, 70.0, 1), 1);
        assert_eq!(d.desired(&s, secs(2), 71.0, 70.0, 1), 2);
        assert!(!d.panicking());
    }

    #[test]
    fn scale_down_is_limited_by_the_rate() {
        let s = Settings::default();
        let mut d = Decider::default();
        // 10 ready pods, no load: at most halve per decision.
        assert_eq!(d.desired(&s, secs(0), 0.0, 0.0, 10), 5);
        let s = Settings {
            max_scale_up_rate: 2.0,
            ..Settings::default()
        };
        // 1000 concurrency on 1 pod, rate 2: at most 2.
        assert_eq!(Decider::default().desired(&s, secs(0), 1000.0, 10.0, 1), 2);
    }

    #[test]
    fn panic_never_scales_down_until_a_stable_window_passes() {
        let s = Settings {
            target: 10.0,
            ..Settings::default()
        };
        let mut d = Decider::default();
        // Burst: panic window sees 100 on 1 pod (want 10, ≥ 200 %): panic.
        assert_eq!(d.desired(&s, secs(0), 5.0, 100.0, 1), 10);
        assert!(d.panicking());
        // Load falls but panic holds the maximum.
        assert_eq!(d.desired(&s, secs(30), 5.0, 5.0, 10), 10);
        // One stable window after the last time over the threshold: back to stable mode.
        assert_eq!(d.desired(&s, secs(61), 5.0, 5.0, 10), 5);
        assert!(!d.panicking());
    }

    #[test]
    fn activation_scale_raises_a_nonzero_want() {
        let s = Settings {
            activation_scale: 3,
            ..Settings::default()
        };
        let mut d = Decider::default();
        assert_eq!(d.desired(&s, secs(0), 1.0, 1.0, 1), 3);
        assert_eq!(Decider::default().desired(&s, secs(0), 0.0, 0.0, 1), 0);
    }

    #[test]
    fn idle_from_timestamps_not_samples() {
        let s = Settings {
            stable_window: secs(10),
            scale_to_zero_grace: secs(5),
            ..Default::default()
        };
        let quiet = Activity {
            in_flight: 0,
            last_active: Some(secs(100)),
            since: secs(0),
        };
        assert!(!is_idle(&s, &quiet, secs(114)));
        assert!(is_idle(&s, &quiet, secs(115)));
        // A request in flight for hours keeps it awake.
        let long = Activity {
            in_flight: 1,
            last_active: Some(secs(100)),
            since: secs(0),
        };
        assert!(!is_idle(&s, &long, secs(10_000)));
        // Never any traffic: idle counts from when accounting began.
        let fresh = Activity {
            in_flight: 0,
            last_active: None,
            since: secs(50),
        };
        assert!(!is_idle(&s, &fresh, secs(60)));
        assert!(is_idle(&s, &fresh, secs(65)));
    }

    #[test]
    fn bounds_and_the_zero_rule() {
        let s = Settings::default();
        assert_eq!(bounded(&s, 0, true), 0);
        // Awake with no measured load keeps one pod.
        assert_eq!(bounded(&s, 0, false), 1);
        let s = Settings {
            min_scale: 2,
            max_scale: 4,
            ..Settings::default()
        };
        assert_eq!(bounded(&s, 0, true), 2);
        assert_eq!(bounded(&s, 9, false), 4);
        let s = Settings {
            enable_scale_to_zero: false,
            ..Settings::default()
        };
        assert_eq!(bounded(&s, 0, true), 1);
        let s = Settings {
            activation_scale: 3,
            ..Settings::default()
        };
        assert_eq!(bounded(&s, 1, false), 3);
        assert_eq!(bounded(&s, 1, true), 0);
    }

    fn counters(in_flight: u64, area_us: u64, started: u64, idle_for: Option<u64>) -> Counters {
        Counters {
            in_flight,
            area_us,
            started,
            idle_for: idle_for.map(secs),
            mark: area_us.wrapping_add(started).wrapping_add(1),
        }
    }

    #[test]
    fn peer_loads_sum_exact_differences_between_reports() {
        let mut v: ReplicaView<&str> = ReplicaView::new(secs(5));
        v.set_members(secs(100), [("a", "a1"), ("b", "b1")]);
        v.record(
            "a",
            secs(100),
            [("rev", counters(1, 5_000_000, 3, Some(0)))],
        );
        v.record(
            "b",
            secs(100),
            [("rev", counters(2, 1_000_000, 1, Some(2)))],
        );
        // The first report is a baseline: nothing is attributed to the window yet.
        let t = v.tick(secs(100));
        assert!(!t.unsure);
        let l = t.loads["rev"];
        assert_eq!((l.in_flight, l.area_us, l.started), (3, 0, 0));
        assert_eq!(l.last_active, Some(secs(100)), "the latest of the two, a's");
        // One second later: a served 1 request-second more and started 2; b finished.
        v.record(
            "a",
            secs(101),
            [("rev", counters(1, 6_000_000, 5, Some(0)))],
        );
        v.record(
            "b",
            secs(101),
            [("rev", counters(0, 1_500_000, 1, Some(0)))],
        );
        let l = v.tick(secs(101)).loads["rev"];
        assert_eq!((l.in_flight, l.area_us, l.started), (1, 1_500_000, 2));
        // A missed report changes nothing; the next one carries the difference.
        let l = v.tick(secs(102)).loads["rev"];
        assert_eq!((l.in_flight, l.area_us, l.started), (1, 0, 0));
        v.record(
            "a",
            secs(103),
            [("rev", counters(1, 8_000_000, 5, Some(0)))],
        );
        v.record(
            "b",
            secs(103),
            [("rev", counters(0, 1_500_000, 1, Some(2)))],
        );
        assert_eq!(v.tick(secs(103)).loads["rev"].area_us, 2_000_000);
    }

    #[test]
    fn counters_wrap_without_harm() {
        let mut v: ReplicaView<&str> = ReplicaView::new(secs(5));
        v.set_members(secs(0), [("a", "a1")]);
        v.record(
            "a",
            secs(0),
            [("rev", counters(1, u64::MAX - 10, u64::MAX, None))],
        );
        v.tick(secs(0));
        v.record("a", secs(1), [("rev", counters(1, 20, 1, None))]);
        let l = v.tick(secs(1)).loads["rev"];
        assert_eq!((l.area_us, l.started), (31, 2));
    }

    #[test]
    fn a_busy_peer_keeps_the_revision_awake_and_a_silent_one_is_dropped_in_time() {
        let s = Settings {
            stable_window: secs(10),
            scale_to_zero_grace: secs(5),
            ..Default::default()
        };
        // The leader itself saw nothing for ages.
        let own = Activity {
            in_flight: 0,
            last_active: None,
            since: secs(0),
        };
        assert!(is_idle(&s, &own, secs(1_000)));
        let mut v: ReplicaView<&str> = ReplicaView::new(secs(5));
        v.set_members(secs(990), [("standby", "s1")]);
        v.record(
            "standby",
            secs(1_000),
            [("rev", counters(1, 0, 1, Some(600)))],
        );
        let t = v.tick(secs(1_000));
        let merged = merge_activity(&own, &t.loads["rev"]);
        assert_eq!(merged.in_flight, 1);
        assert!(
            !is_idle(&s, &merged, secs(1_000)),
            "a long request on the standby"
        );
        // The standby stops answering: its last report counts until the staleness bound...
        let t = v.tick(secs(1_005));
        assert!(!is_idle(
            &s,
            &merge_activity(&own, &t.loads["rev"]),
            secs(1_005)
        ));
        assert_eq!(v.states(secs(1_005))[0].1, PeerState::Reported(secs(5)));
        // ...and no longer.
        let t = v.tick(secs(1_006));
        assert!(!t.loads.contains_key("rev"));
        assert!(is_idle(
            &s,
            &merge_activity(&own, &PeerLoad::default()),
            secs(1_006)
        ));
        assert_eq!(v.states(secs(1_006))[0].1, PeerState::Stale);
        // When it reports again it counts again, from a fresh baseline.
        v.record(
            "standby",
            secs(1_010),
            [("rev", counters(0, 9_000_000, 2, Some(1)))],
        );
        let l = v.tick(secs(1_010)).loads["rev"];
        assert_eq!((l.area_us, l.last_active), (0, Some(secs(1_009))));
    }

    #[test]
    fn activity_on_a_peer_counts_from_when_its_answer_arrived() {
        let s = Settings {
            stable_window: secs(10),
            scale_to_zero_grace: secs(5),
            ..Default::default()
        };
        let own = Activity {
            in_flight: 0,
            last_active: Some(secs(0)),
            since: secs(0),
        };
        let mut v: ReplicaView<&str> = ReplicaView::new(secs(5));
        v.set_members(secs(0), [("b", "b1")]);
        // b's last request finished 3 s before its answer arrived at 100: idle from 97.
        v.record("b", secs(100), [("rev", counters(0, 0, 1, Some(3)))]);
        let merged = merge_activity(&own, &v.tick(secs(100)).loads["rev"]);
        assert_eq!(merged.last_active, Some(secs(97)));
        assert!(!is_idle(&s, &merged, secs(111)));
        assert!(is_idle(&s, &merged, secs(112)));
    }

    #[test]
    fn an_unheard_member_holds_scale_downs_for_the_staleness_bound() {
        let mut v: ReplicaView<&str> = ReplicaView::new(secs(5));
        v.set_members(secs(10), [("new", "n1")]);
        assert!(v.tick(secs(10)).unsure);
        assert!(v.tick(secs(14)).unsure);
        assert_eq!(v.states(secs(14))[0].1, PeerState::Waiting);
        assert!(!v.tick(secs(15)).unsure, "dropped after the bound");
        // A restarted process (new instance) is a new member: unsure again until it reports.
        v.set_members(secs(20), [("new", "n2")]);
        assert!(v.tick(secs(20)).unsure);
        v.record("new", secs(21), [("rev", counters(0, 0, 0, None))]);
        assert!(!v.tick(secs(21)).unsure);
        // A member whose Lease is gone is forgotten at once; reports from it are ignored.
        v.set_members(secs(22), []);
        v.record("new", secs(22), [("rev", counters(5, 0, 0, Some(0)))]);
        let t = v.tick(secs(22));
        assert!(t.loads.is_empty() && !t.unsure);
    }

    #[test]
    fn the_mark_changes_with_any_start_or_finish_anywhere() {
        let mut v: ReplicaView<&str> = ReplicaView::new(secs(5));
        v.set_members(secs(0), [("a", "a1"), ("b", "b1")]);
        let mk = |mark| Counters {
            mark,
            ..Counters::default()
        };
        v.record("a", secs(0), [("rev", mk(10))]);
        v.record("b", secs(0), [("rev", mk(20))]);
        let m0 = v.tick(secs(0)).loads["rev"].mark;
        assert_eq!(v.tick(secs(1)).loads["rev"].mark, m0, "nothing happened");
        v.record("b", secs(2), [("rev", mk(21))]);
        assert_ne!(v.tick(secs(2)).loads["rev"].mark, m0);
    }
}

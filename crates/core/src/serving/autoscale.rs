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

use std::collections::VecDeque;
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
}

//! The store's own record types: plain data, no Kubernetes types, so the checker (in or out of a
//! cluster) maps its `Monitor` objects onto them.

use serde::Serialize;

/// Milliseconds since the Unix epoch (UTC): every time in the store.
pub type Millis = i64;

pub(crate) const HOUR_MS: Millis = 3_600_000;
pub(crate) const DAY_MS: Millis = 24 * HOUR_MS;

/// The current time in [`Millis`].
pub fn now_ms() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// A monitor's identity: its namespace (or config directory name) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct MonitorKey {
    pub namespace: String,
    pub name: String,
}

impl MonitorKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for MonitorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the status page shows about a monitor besides its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitorInfo {
    pub key: MonitorKey,
    /// Shown instead of the name; empty means the name.
    pub display_name: String,
    /// The status page groups monitors by this; empty means ungrouped.
    pub group: String,
    /// `http`, `tcp`, `dns`, `tls`, `heartbeat`, ...
    pub kind: String,
    /// The URL, host:port or name checked.
    pub target: String,
}

impl MonitorInfo {
    /// A monitor known only by its key (a sample arrived before its info).
    pub fn bare(key: MonitorKey) -> Self {
        Self {
            key,
            display_name: String::new(),
            group: String::new(),
            kind: String::new(),
            target: String::new(),
        }
    }

    /// The name to show.
    pub fn title(&self) -> &str {
        if self.display_name.is_empty() {
            &self.key.name
        } else {
            &self.display_name
        }
    }
}

/// Uptime Kuma's states. The checker decides them; the store keeps them and derives incidents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Up,
    Down,
    Pending,
    Maintenance,
}

impl State {
    pub(crate) fn code(self) -> i16 {
        match self {
            State::Down => 0,
            State::Up => 1,
            State::Pending => 2,
            State::Maintenance => 3,
        }
    }

    pub(crate) fn from_code(code: i16) -> Option<State> {
        Some(match code {
            0 => State::Down,
            1 => State::Up,
            2 => State::Pending,
            3 => State::Maintenance,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "UP",
            State::Down => "DOWN",
            State::Pending => "PENDING",
            State::Maintenance => "MAINTENANCE",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub key: MonitorKey,
    /// When the check started. One sample per monitor and millisecond: a second write of the
    /// same (key, at) is ignored, which is what makes retried batches safe.
    pub at: Millis,
    /// The monitor's state after this result.
    pub state: State,
    /// Whether this check itself passed (a PENDING monitor has failing checks).
    pub success: bool,
    /// Response time in microseconds, if the check got that far.
    pub response_us: Option<i32>,
    pub http_status: Option<i16>,
    /// Why it failed (kept for failures; the status page shows it as an incident's cause).
    pub message: Option<String>,
}

/// An alert waiting in the outbox: the monitor and the time of the result that raised it (one
/// alert per result at most). Queued with that result, so the transition and its alert are
/// stored in one transaction; removed once the alert was sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertId {
    pub key: MonitorKey,
    pub at: Millis,
}

/// The latest known state of a monitor, kept in memory and in the database, so a restarted
/// checker resumes where it stopped (mid-outage included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastState {
    pub key: MonitorKey,
    pub state: State,
    /// When the monitor entered `state`.
    pub since: Millis,
    /// The latest sample's time.
    pub last_at: Millis,
    pub success: bool,
    pub response_us: Option<i32>,
    pub http_status: Option<i16>,
    pub message: Option<String>,
}

/// An outage: opened when a monitor goes DOWN, closed when it is UP again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incident {
    pub key: MonitorKey,
    pub started_at: Millis,
    /// `None` while it lasts.
    pub ended_at: Option<Millis>,
    /// The message of the sample that opened it.
    pub cause: String,
}

impl Incident {
    /// How long it lasted (or lasts, at `now`).
    pub fn duration_ms(&self, now: Millis) -> Millis {
        self.ended_at.unwrap_or(now) - self.started_at
    }
}

/// Upper bounds (milliseconds) of the response-time histogram buckets kept per hour and per
/// day; the last bucket is open. Percentiles over any window merge these buckets, so they are
/// exact to a bucket (interpolated inside it) without reading raw samples.
pub const BUCKET_BOUNDS_MS: [i64; 15] = [
    10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2500, 5000, 10000,
];
/// Number of histogram buckets (the bounds plus the open one).
pub const BUCKETS: usize = BUCKET_BOUNDS_MS.len() + 1;

/// Counts over a period (an hour, a day, or a window merged from them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Aggregate {
    pub up: i64,
    pub down: i64,
    pub pending: i64,
    pub maintenance: i64,
    /// Checks that passed.
    pub ok: i64,
    /// Samples with a response time.
    pub rt_count: i64,
    pub rt_sum_us: i64,
    pub rt_max_us: i64,
    pub histogram: [i64; BUCKETS],
}

impl Aggregate {
    pub(crate) fn add_sample(&mut self, state: State, success: bool, response_us: Option<i32>) {
        match state {
            State::Up => self.up += 1,
            State::Down => self.down += 1,
            State::Pending => self.pending += 1,
            State::Maintenance => self.maintenance += 1,
        }
        if success {
            self.ok += 1;
        }
        if let Some(us) = response_us {
            let us = i64::from(us.max(0));
            self.rt_count += 1;
            self.rt_sum_us += us;
            self.rt_max_us = self.rt_max_us.max(us);
            self.histogram[bucket_of(us)] += 1;
        }
    }

    pub fn merge(&mut self, other: &Aggregate) {
        self.up += other.up;
        self.down += other.down;
        self.pending += other.pending;
        self.maintenance += other.maintenance;
        self.ok += other.ok;
        self.rt_count += other.rt_count;
        self.rt_sum_us += other.rt_sum_us;
        self.rt_max_us = self.rt_max_us.max(other.rt_max_us);
        for (a, b) in self.histogram.iter_mut().zip(other.histogram.iter()) {
            *a += b;
        }
    }

    /// Samples counted, maintenance included.
    pub fn total(&self) -> i64 {
        self.up + self.down + self.pending + self.maintenance
    }

    /// Uptime ratio in [0, 1]: UP and PENDING (not yet confirmed down) over everything but
    /// MAINTENANCE; `None` with no such sample.
    pub fn uptime(&self) -> Option<f64> {
        let counted = self.up + self.pending + self.down;
        (counted > 0).then(|| (self.up + self.pending) as f64 / counted as f64)
    }

    /// Mean response time in milliseconds.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.rt_count > 0).then(|| self.rt_sum_us as f64 / self.rt_count as f64 / 1000.0)
    }

    /// The `q` quantile (0..=1) of response times in milliseconds, interpolated inside its
    /// bucket; the open bucket ends at the largest value seen.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        if self.rt_count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.rt_count as f64).max(1.0);
        let mut seen = 0.0;
        for (i, &count) in self.histogram.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let before = seen;
            seen += count as f64;
            if seen >= rank {
                let lower = if i == 0 {
                    0.0
                } else {
                    BUCKET_BOUNDS_MS[i - 1] as f64
                };
                let max_ms = self.rt_max_us as f64 / 1000.0;
                let upper = BUCKET_BOUNDS_MS
                    .get(i)
                    .map_or(max_ms, |&b| (b as f64).min(max_ms.max(lower)));
                let fraction = (rank - before) / count as f64;
                return Some(lower + (upper - lower) * fraction);
            }
        }
        Some(self.rt_max_us as f64 / 1000.0)
    }
}

pub(crate) fn bucket_of(us: i64) -> usize {
    BUCKET_BOUNDS_MS
        .iter()
        .position(|&bound| us <= bound * 1000)
        .unwrap_or(BUCKET_BOUNDS_MS.len())
}

/// Uptime and response times of one monitor over the usual windows (ending now, in UTC buckets):
/// 24 h is the current hour and the 23 before it, 7 d and 30 d the current day and the 6 or 29
/// before it; percentiles are over the 24 h window, from the aggregates' histograms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub uptime_30d: Option<f64>,
    /// Over the last 24 hours.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One day of the 90-day bar.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayBar {
    /// Start of the UTC day.
    pub day: Millis,
    pub uptime: Option<f64>,
    pub down: i64,
    pub total: i64,
}

/// One point of a response-time series (an hour of aggregates or one raw sample).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponsePoint {
    pub at: Millis,
    pub ms: f64,
    /// For an hour: its p95; for a raw sample: the same as `ms`.
    pub p95_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let mut agg = Aggregate::default();
        for ms in 1..=100 {
            agg.add_sample(State::Up, true, Some(ms * 1000));
        }
        let p50 = agg.percentile_ms(0.5).unwrap();
        let p95 = agg.percentile_ms(0.95).unwrap();
        assert!((40.0..=60.0).contains(&p50), "p50 {p50}");
        assert!((90.0..=100.0).contains(&p95), "p95 {p95}");
        assert_eq!(agg.uptime(), Some(1.0));
        assert_eq!(Aggregate::default().percentile_ms(0.5), None);
    }

    #[test]
    fn the_open_bucket_ends_at_the_maximum() {
        let mut agg = Aggregate::default();
        agg.add_sample(State::Up, true, Some(30_000_000));
        assert_eq!(agg.percentile_ms(0.99), Some(30_000.0));
    }

    #[test]
    fn maintenance_does_not_count_against_uptime() {
        let mut agg = Aggregate::default();
        agg.add_sample(State::Up, true, None);
        agg.add_sample(State::Down, false, None);
        agg.add_sample(State::Maintenance, false, None);
        agg.add_sample(State::Pending, false, None);
        assert_eq!(agg.uptime(), Some(2.0 / 3.0));
        assert_eq!(agg.total(), 4);
    }
}

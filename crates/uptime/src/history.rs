//! A bounded in-memory history per Monitor: hourly buckets for 30 days (uptime over 24 h, 7 d,
//! 30 d) and the last [`RECENT`] response times (percentiles). Used only by an engine without a
//! history store (tests, embedding); with one, status figures come from the store's windows
//! ([`crate::engine::Recorder::figures`]). Memory per Monitor stays under ~20 KiB.

use std::collections::VecDeque;
use std::time::Duration;

use jiff::Timestamp;

/// Successful response times kept for percentiles.
pub const RECENT: usize = 256;
const HOURS: usize = 30 * 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    hour: i64,
    total: u32,
    up: u32,
}

/// One Monitor's recent history.
#[derive(Debug, Clone, Default)]
pub struct History {
    hours: VecDeque<Bucket>,
    recent: VecDeque<u32>,
}

/// Uptime ratios (0..=1) over 24 h, 7 d and 30 d; `None` without any check in the period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Uptime {
    pub day: Option<f64>,
    pub week: Option<f64>,
    pub month: Option<f64>,
}

impl History {
    /// Records one check.
    pub fn record(&mut self, at: Timestamp, success: bool, response_time: Duration) {
        let hour = at.as_second().div_euclid(3600);
        match self.hours.back_mut() {
            Some(b) if b.hour == hour => {
                b.total += 1;
                b.up += u32::from(success);
            }
            _ => self.hours.push_back(Bucket {
                hour,
                total: 1,
                up: u32::from(success),
            }),
        }
        while self.hours.len() > HOURS {
            self.hours.pop_front();
        }
        if success {
            self.recent
                .push_back(u32::try_from(response_time.as_millis()).unwrap_or(u32::MAX));
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
    }

    /// Uptime ratios at `now`.
    pub fn uptime(&self, now: Timestamp) -> Uptime {
        let hour = now.as_second().div_euclid(3600);
        let ratio = |hours: i64| {
            let (total, up) = self
                .hours
                .iter()
                .filter(|b| b.hour > hour - hours)
                .fold((0u64, 0u64), |(t, u), b| {
                    (t + u64::from(b.total), u + u64::from(b.up))
                });
            (total > 0).then(|| up as f64 / total as f64)
        };
        Uptime {
            day: ratio(24),
            week: ratio(24 * 7),
            month: ratio(24 * 30),
        }
    }

    /// p50, p95, p99 of recent successful response times, in milliseconds.
    pub fn percentiles(&self) -> Option<(u64, u64, u64)> {
        if self.recent.is_empty() {
            return None;
        }
        let mut sorted: Vec<u32> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            u64::from(sorted[i])
        };
        Some((at(0.50), at(0.95), at(0.99)))
    }
}

/// `99.95%`.
pub fn percent(ratio: f64) -> String {
    format!("{:.2}%", (ratio * 100.0).clamp(0.0, 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_per_period_and_percentiles() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut h = History::default();
        // 2 days ago: all down; last hour: 3 up of 4.
        for i in 0..4 {
            h.record(
                now - jiff::SignedDuration::from_hours(48) + jiff::SignedDuration::from_secs(i),
                false,
                Duration::ZERO,
            );
        }
        for (i, ok) in [true, true, false, true].into_iter().enumerate() {
            h.record(
                now + jiff::SignedDuration::from_secs(i as i64),
                ok,
                Duration::from_millis(10 * (i as u64 + 1)),
            );
        }
        let u = h.uptime(now);
        assert_eq!(u.day, Some(0.75));
        assert_eq!(u.week, Some(3.0 / 8.0));
        assert_eq!(percent(0.99951), "99.95%");
        assert_eq!(h.percentiles(), Some((20, 40, 40)));
        assert_eq!(History::default().uptime(now), Uptime::default());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut h = History::default();
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        for i in 0..(40 * 24) {
            h.record(
                start + jiff::SignedDuration::from_hours(i),
                true,
                Duration::from_millis(1),
            );
        }
        assert_eq!(h.hours.len(), HOURS);
        assert_eq!(h.recent.len(), RECENT);
    }
}

//! The recent history of one monitor, kept in memory and updated as each result arrives: the
//! last 24 hourly aggregates (uptime, response-time histogram) and the last 90 daily counts.
//! Everything the Monitor status and the status page show comes from here, so neither reads
//! the database on a request; the store loads these windows from its aggregates when it opens
//! (and when a replica takes over), so the figures survive a restart.
//!
//! Windows, all ending now (UTC buckets):
//! - 24 h: the current hour and the 23 before it (uptime, p50/p95/p99, the response chart);
//! - 7 d and 30 d: the current day and the 6 or 29 before it;
//! - the 90-day bar: the current day and the 89 before it.
//!
//! About 3.5 KiB per monitor with 90 days of history (10 000 monitors: ~35 MiB).

use std::collections::VecDeque;

use crate::model::{
    Aggregate, BUCKETS, DAY_MS, DayBar, HOUR_MS, Millis, ResponsePoint, State, Summary,
};

/// Hourly aggregates kept.
pub const HOURS: i64 = 24;
/// Daily counts kept (the uptime bar).
pub const DAYS: i64 = 90;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    up: u32,
    down: u32,
    pending: u32,
    maintenance: u32,
}

impl Counts {
    fn add(&mut self, state: State) {
        let c = match state {
            State::Up => &mut self.up,
            State::Down => &mut self.down,
            State::Pending => &mut self.pending,
            State::Maintenance => &mut self.maintenance,
        };
        *c = c.saturating_add(1);
    }

    fn from_aggregate(a: &Aggregate) -> Self {
        let c = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Counts {
            up: c(a.up),
            down: c(a.down),
            pending: c(a.pending),
            maintenance: c(a.maintenance),
        }
    }

    fn into_aggregate(self, a: &mut Aggregate) {
        a.up += i64::from(self.up);
        a.down += i64::from(self.down);
        a.pending += i64::from(self.pending);
        a.maintenance += i64::from(self.maintenance);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hour {
    bucket: Millis,
    counts: Counts,
    rt_count: u32,
    rt_max_us: u32,
    rt_sum_us: u64,
    /// Saturating: an hour holds at most a few thousand checks.
    histogram: [u16; BUCKETS],
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Day {
    /// Days since the epoch.
    day: i32,
    counts: Counts,
}

/// One monitor's windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Windows {
    /// Oldest first, within [`HOURS`] of the newest.
    hours: VecDeque<Hour>,
    /// Oldest first, within [`DAYS`] of the newest.
    days: VecDeque<Day>,
}

fn day_of(at: Millis) -> i32 {
    i32::try_from(at.div_euclid(DAY_MS)).unwrap_or(i32::MAX)
}

/// The slot for `key` in an ascending deque, inserted if missing (what it pushes out of the
/// window, `too_old` behind the newest, is dropped first, so the deque never holds more than
/// `keep` and is allocated once, exactly); `None` if it is older than what is kept.
fn slot<T, K: Ord + Copy>(
    deque: &mut VecDeque<T>,
    key: K,
    key_of: impl Fn(&T) -> K,
    new: impl FnOnce() -> T,
    too_old: impl Fn(K, K) -> bool,
    keep: usize,
) -> Option<&mut T> {
    let newest = deque.back().map(&key_of);
    if newest.is_some_and(|n| too_old(key, n)) {
        return None;
    }
    match deque.binary_search_by(|t| key_of(t).cmp(&key)) {
        Ok(i) => deque.get_mut(i),
        Err(_) => {
            let newest = newest.map_or(key, |n| n.max(key));
            while deque.front().is_some_and(|t| too_old(key_of(t), newest)) {
                deque.pop_front();
            }
            if deque.capacity() == 0 {
                // 10 000 monitors: doubling growth would leave ~1.3 KiB a monitor unused.
                deque.reserve_exact(keep);
            }
            let i = deque.partition_point(|t| key_of(t) < key);
            deque.insert(i, new());
            deque.get_mut(i)
        }
    }
}

impl Windows {
    /// Counts one result.
    pub fn add(&mut self, at: Millis, state: State, response_us: Option<i32>) {
        let hour = at - at.rem_euclid(HOUR_MS);
        if let Some(h) = slot(
            &mut self.hours,
            hour,
            |h| h.bucket,
            || Hour {
                bucket: hour,
                counts: Counts::default(),
                rt_count: 0,
                rt_max_us: 0,
                rt_sum_us: 0,
                histogram: [0; BUCKETS],
            },
            |k, newest| k <= newest - HOURS * HOUR_MS,
            HOURS as usize,
        ) {
            h.counts.add(state);
            if let Some(us) = response_us {
                let us = us.max(0);
                h.rt_count = h.rt_count.saturating_add(1);
                h.rt_sum_us = h.rt_sum_us.saturating_add(us.unsigned_abs().into());
                h.rt_max_us = h.rt_max_us.max(us.unsigned_abs());
                let b = &mut h.histogram[crate::model::bucket_of(i64::from(us))];
                *b = b.saturating_add(1);
            }
        }
        let day = day_of(at);
        if let Some(d) = slot(
            &mut self.days,
            day,
            |d| d.day,
            || Day {
                day,
                counts: Counts::default(),
            },
            |k, newest| i64::from(k) <= i64::from(newest) - DAYS,
            DAYS as usize,
        ) {
            d.counts.add(state);
        }
    }

    /// Sets an hour from the database's aggregate (loading).
    pub fn set_hour(&mut self, bucket: Millis, a: &Aggregate) {
        let hour = Hour {
            bucket,
            counts: Counts::from_aggregate(a),
            rt_count: u32::try_from(a.rt_count.max(0)).unwrap_or(u32::MAX),
            rt_max_us: u32::try_from(a.rt_max_us.max(0)).unwrap_or(u32::MAX),
            rt_sum_us: u64::try_from(a.rt_sum_us.max(0)).unwrap_or_default(),
            histogram: a
                .histogram
                .map(|h| u16::try_from(h.max(0)).unwrap_or(u16::MAX)),
        };
        if let Some(h) = slot(
            &mut self.hours,
            bucket,
            |h| h.bucket,
            || hour.clone(),
            |k, newest| k <= newest - HOURS * HOUR_MS,
            HOURS as usize,
        ) {
            *h = hour;
        }
    }

    /// Sets a day from the database's aggregate (loading).
    pub fn set_day(&mut self, bucket: Millis, a: &Aggregate) {
        let day = Day {
            day: day_of(bucket),
            counts: Counts::from_aggregate(a),
        };
        if let Some(d) = slot(
            &mut self.days,
            day.day,
            |d| d.day,
            || day.clone(),
            |k, newest| i64::from(k) <= i64::from(newest) - DAYS,
            DAYS as usize,
        ) {
            *d = day;
        }
    }

    fn hours_since(&self, since: Millis) -> Aggregate {
        let mut a = Aggregate::default();
        for h in self.hours.iter().filter(|h| h.bucket >= since) {
            h.counts.into_aggregate(&mut a);
            a.rt_count += i64::from(h.rt_count);
            a.rt_sum_us += i64::try_from(h.rt_sum_us).unwrap_or(i64::MAX);
            a.rt_max_us = a.rt_max_us.max(i64::from(h.rt_max_us));
            for (sum, v) in a.histogram.iter_mut().zip(h.histogram) {
                *sum += i64::from(v);
            }
        }
        a
    }

    fn days_since(&self, first: i32) -> Aggregate {
        let mut a = Aggregate::default();
        for d in self.days.iter().filter(|d| d.day >= first) {
            d.counts.into_aggregate(&mut a);
        }
        a
    }

    /// Uptime over 24 h, 7 d, 30 d and response-time percentiles over 24 h, at `now`.
    pub fn summary(&self, now: Millis) -> Summary {
        let day24 = self.hours_since(now - now.rem_euclid(HOUR_MS) - (HOURS - 1) * HOUR_MS);
        let today = day_of(now);
        Summary {
            uptime_24h: day24.uptime(),
            uptime_7d: self.days_since(today - 6).uptime(),
            uptime_30d: self.days_since(today - 29).uptime(),
            p50_ms: day24.percentile_ms(0.5),
            p95_ms: day24.percentile_ms(0.95),
            p99_ms: day24.percentile_ms(0.99),
        }
    }

    /// One bar per UTC day for the last `days` days, oldest first.
    pub fn bars(&self, now: Millis, days: i64) -> Vec<DayBar> {
        let days = days.clamp(1, DAYS);
        let first = now - now.rem_euclid(DAY_MS) - (days - 1) * DAY_MS;
        let mut out: Vec<DayBar> = (0..days)
            .map(|i| DayBar {
                day: first + i * DAY_MS,
                uptime: None,
                down: 0,
                total: 0,
            })
            .collect();
        let first_day = day_of(first);
        for d in &self.days {
            let Some(bar) = usize::try_from(d.day - first_day)
                .ok()
                .and_then(|i| out.get_mut(i))
            else {
                continue;
            };
            let mut a = Aggregate::default();
            d.counts.into_aggregate(&mut a);
            bar.uptime = a.uptime();
            bar.down = a.down;
            bar.total = a.total();
        }
        out
    }

    /// Each hour of the last 24 with response times: its mean and p95.
    pub fn response(&self, now: Millis) -> Vec<ResponsePoint> {
        let since = now - now.rem_euclid(HOUR_MS) - (HOURS - 1) * HOUR_MS;
        self.hours
            .iter()
            .filter(|h| h.bucket >= since && h.rt_count > 0)
            .map(|h| {
                let mut a = Aggregate {
                    rt_count: i64::from(h.rt_count),
                    rt_sum_us: i64::try_from(h.rt_sum_us).unwrap_or(i64::MAX),
                    rt_max_us: i64::from(h.rt_max_us),
                    ..Aggregate::default()
                };
                for (sum, v) in a.histogram.iter_mut().zip(h.histogram) {
                    *sum = i64::from(v);
                }
                ResponsePoint {
                    at: h.bucket,
                    ms: a.mean_ms().unwrap_or_default(),
                    p95_ms: a.percentile_ms(0.95).unwrap_or_default(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Mid-hour, mid-day.
    const NOW: Millis = 1_800_000_000_000 + 1_234_567;

    #[test]
    fn windows_follow_the_results_and_forget_the_oldest() {
        let mut w = Windows::default();
        // 10 days ago: down; 2 days ago: pending; the last hour: 3 up, 1 down.
        w.add(NOW - 10 * DAY_MS, State::Down, None);
        w.add(NOW - 2 * DAY_MS, State::Pending, None);
        for (i, state) in [State::Up, State::Up, State::Down, State::Up]
            .into_iter()
            .enumerate()
        {
            w.add(NOW - i as i64, state, Some(10_000 * (i as i32 + 1)));
        }
        let s = w.summary(NOW);
        assert_eq!(s.uptime_24h, Some(0.75));
        // Pending counts as up (not confirmed down), as in the aggregates.
        assert_eq!(s.uptime_7d, Some(0.8));
        assert_eq!(s.uptime_30d, Some(4.0 / 6.0));
        assert!(
            s.p50_ms.is_some_and(|p| (10.0..=25.0).contains(&p)),
            "{s:?}"
        );
        let bars = w.bars(NOW, 90);
        assert_eq!(bars.len(), 90);
        assert_eq!(bars[89].total, 4);
        assert_eq!(bars[89].down, 1);
        assert_eq!(bars[79].down, 1);
        assert_eq!(w.response(NOW).len(), 1);

        // Results far in the future push the old ones out; bounded memory.
        for h in 0..(200 * 24) {
            w.add(NOW + h * HOUR_MS, State::Up, Some(1000));
        }
        assert_eq!(w.hours.len() as i64, HOURS);
        assert_eq!(w.days.len() as i64, DAYS);
        // Allocated once, to the window (no doubling growth left unused).
        assert!(
            w.hours.capacity() <= HOURS as usize + 4,
            "{}",
            w.hours.capacity()
        );
        assert!(
            w.days.capacity() <= DAYS as usize + 4,
            "{}",
            w.days.capacity()
        );
        // A result older than the windows is ignored.
        let before = w.clone();
        w.add(NOW, State::Down, None);
        assert_eq!(w, before);
    }

    #[test]
    fn loaded_aggregates_read_as_added_results() {
        let mut added = Windows::default();
        let mut hour = Aggregate::default();
        let mut day = Aggregate::default();
        for i in 0..20 {
            let state = if i % 5 == 0 { State::Down } else { State::Up };
            let rt = Some(1000 * (i + 1));
            added.add(NOW + i64::from(i), state, rt);
            hour.add_sample(state, state == State::Up, rt);
            day.add_sample(state, state == State::Up, rt);
        }
        let mut loaded = Windows::default();
        loaded.set_hour(NOW - NOW.rem_euclid(HOUR_MS), &hour);
        loaded.set_day(NOW - NOW.rem_euclid(DAY_MS), &day);
        assert_eq!(loaded.summary(NOW), added.summary(NOW));
        assert_eq!(loaded.bars(NOW, 90), added.bars(NOW, 90));
        assert_eq!(loaded.response(NOW), added.response(NOW));
    }
}

//! Maintenance windows: once, daily, weekly or monthly, at a local time in an IANA time zone
//! (jiff, with the time zone database bundled so a container without `/usr/share/zoneinfo`
//! behaves the same). A start time that does not exist on a day (a DST gap) moves forward as
//! jiff's `compatible` disambiguation does.

use std::time::Duration;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How a window repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recurrence {
    Once(DateTime),
    Daily(Time),
    Weekly(Time, Vec<Weekday>),
    Monthly(Time, Vec<i8>),
}

/// A parsed window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub recurrence: Recurrence,
    pub duration: Duration,
    pub time_zone: TimeZone,
}

/// What is wrong with a window (the message names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maintenance window: {0}")]
pub struct WindowError(pub String);

/// The fields of a window as written.
#[derive(Debug, Clone, Default)]
pub struct Spec<'a> {
    /// `once`, `daily`, `weekly`, `monthly`.
    pub recurrence: &'a str,
    pub start: &'a str,
    pub duration: Duration,
    pub time_zone: Option<&'a str>,
    pub weekdays: &'a [String],
    pub days_of_month: &'a [u8],
}

/// Parses and checks a window.
pub fn parse(spec: &Spec<'_>) -> Result<Window, WindowError> {
    let err = |m: String| WindowError(m);
    let time_zone = match spec.time_zone {
        None | Some("") | Some("UTC") => TimeZone::UTC,
        Some(name) => {
            TimeZone::get(name).map_err(|e| err(format!("unknown timeZone '{name}': {e}")))?
        }
    };
    if spec.duration.is_zero() {
        return Err(err("duration must be more than 0".into()));
    }
    let time = || -> Result<Time, WindowError> {
        spec.start.parse::<Time>().map_err(|_| {
            err(format!(
                "start '{}' is not a time of day such as 22:00",
                spec.start
            ))
        })
    };
    let recurrence = match spec.recurrence {
        "once" | "" => Recurrence::Once(spec.start.parse::<DateTime>().map_err(|_| {
            err(format!(
                "start '{}' is not a date and time such as 2026-12-24T22:00",
                spec.start
            ))
        })?),
        "daily" => Recurrence::Daily(time()?),
        "weekly" => {
            if spec.weekdays.is_empty() {
                return Err(err("a weekly window needs weekdays".into()));
            }
            let days = spec
                .weekdays
                .iter()
                .map(|d| weekday(d).ok_or_else(|| err(format!("unknown weekday '{d}'"))))
                .collect::<Result<_, _>>()?;
            Recurrence::Weekly(time()?, days)
        }
        "monthly" => {
            if spec.days_of_month.is_empty() {
                return Err(err("a monthly window needs daysOfMonth".into()));
            }
            if let Some(bad) = spec.days_of_month.iter().find(|d| !(1..=31).contains(*d)) {
                return Err(err(format!("day of month {bad} is not between 1 and 31")));
            }
            Recurrence::Monthly(
                time()?,
                spec.days_of_month.iter().map(|d| *d as i8).collect(),
            )
        }
        other => return Err(err(format!("unknown recurrence '{other}'"))),
    };
    Ok(Window {
        recurrence,
        duration: spec.duration,
        time_zone,
    })
}

fn weekday(name: &str) -> Option<Weekday> {
    let lower = name.to_ascii_lowercase();
    let days = [
        ("mon", Weekday::Monday),
        ("tue", Weekday::Tuesday),
        ("wed", Weekday::Wednesday),
        ("thu", Weekday::Thursday),
        ("fri", Weekday::Friday),
        ("sat", Weekday::Saturday),
        ("sun", Weekday::Sunday),
    ];
    days.iter()
        .find(|(short, _)| lower.starts_with(short))
        .map(|(_, d)| *d)
}

impl Window {
    /// Whether `now` is inside the window.
    pub fn active(&self, now: Timestamp) -> bool {
        let within = |start: DateTime| -> bool {
            let Ok(start) = start.to_zoned(self.time_zone.clone()) else {
                return false;
            };
            let start = start.timestamp();
            let Ok(span) = jiff::SignedDuration::try_from(self.duration) else {
                return false;
            };
            let Ok(end) = start.checked_add(span) else {
                return false;
            };
            start <= now && now < end
        };
        let today = now.to_zoned(self.time_zone.clone()).date();
        // A window that started on an earlier day may still be open.
        let days_back = (self.duration.as_secs() / 86_400) as i64 + 1;
        let candidates = (0..=days_back).filter_map(|back| today.checked_sub(back.days()).ok());
        match &self.recurrence {
            Recurrence::Once(start) => within(*start),
            Recurrence::Daily(time) => candidates.into_iter().any(|d| within(d.to_datetime(*time))),
            Recurrence::Weekly(time, days) => candidates
                .into_iter()
                .filter(|d: &Date| days.contains(&d.weekday()))
                .any(|d| within(d.to_datetime(*time))),
            Recurrence::Monthly(time, days) => candidates
                .into_iter()
                .filter(|d: &Date| days.contains(&d.day()))
                .any(|d| within(d.to_datetime(*time))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn window(recurrence: &str, start: &str, hours: u64, tz: Option<&str>) -> Window {
        parse(&Spec {
            recurrence,
            start,
            duration: Duration::from_secs(hours * 3600),
            time_zone: tz,
            weekdays: &["Sat".to_string(), "sunday".to_string()],
            days_of_month: &[1, 15],
        })
        .unwrap()
    }

    #[test]
    fn once_in_a_time_zone() {
        let w = window("once", "2026-12-24T22:00", 2, Some("Europe/Paris"));
        // 22:00 in Paris in winter is 21:00 UTC.
        assert!(!w.active(ts("2026-12-24T20:59:59Z")));
        assert!(w.active(ts("2026-12-24T21:00:00Z")));
        assert!(w.active(ts("2026-12-24T22:59:59Z")));
        assert!(!w.active(ts("2026-12-24T23:00:00Z")));
    }

    #[test]
    fn daily_across_midnight() {
        let w = window("daily", "23:00", 3, None);
        assert!(w.active(ts("2026-03-10T01:30:00Z")));
        assert!(w.active(ts("2026-03-10T23:30:00Z")));
        assert!(!w.active(ts("2026-03-10T02:00:00Z")));
        assert!(!w.active(ts("2026-03-10T12:00:00Z")));
    }

    #[test]
    fn weekly_and_monthly() {
        let w = window("weekly", "10:00", 1, Some("America/New_York"));
        // 2026-12-05 is a Saturday; 10:00 EST is 15:00 UTC.
        assert!(w.active(ts("2026-12-05T15:30:00Z")));
        assert!(!w.active(ts("2026-12-04T15:30:00Z")));
        let m = window("monthly", "00:00", 24, None);
        assert!(m.active(ts("2026-12-15T08:00:00Z")));
        assert!(!m.active(ts("2026-12-16T08:00:00Z")));
    }

    #[test]
    fn daylight_saving_shifts_the_utc_time() {
        let w = window("daily", "09:00", 1, Some("Europe/Paris"));
        // Winter: UTC+1; summer: UTC+2.
        assert!(w.active(ts("2026-01-10T08:30:00Z")));
        assert!(w.active(ts("2026-07-10T07:30:00Z")));
        assert!(!w.active(ts("2026-07-10T08:30:00Z")));
    }

    #[test]
    fn bad_windows_are_refused_with_the_field() {
        let bad = |recurrence, start, tz| {
            parse(&Spec {
                recurrence,
                start,
                duration: Duration::from_secs(60),
                time_zone: tz,
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad("once", "tomorrow", None).contains("start 'tomorrow'"));
        assert!(bad("daily", "25:00", None).contains("time of day"));
        assert!(bad("daily", "10:00", Some("Mars/Olympus")).contains("Mars/Olympus"));
        assert!(bad("weekly", "10:00", None).contains("weekdays"));
        assert!(bad("yearly", "10:00", None).contains("yearly"));
    }
}

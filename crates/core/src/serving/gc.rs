//! Revision garbage collection with Knative's `config-gc` semantics: Revisions that are not
//! routed (`routingState: reserve`), not the latest ready one and not marked `no-gc` are
//! deleted once stale (older than `retain-since-create-time` and inactive longer than
//! `retain-since-last-active-time`), always keeping `min-non-active-revisions`, and beyond
//! `max-non-active-revisions` whatever their age. Oldest last-active first.

use std::time::Duration;

use jiff::Timestamp;

/// Knative's `config-gc`; `None` is Knative's `disabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub retain_since_create_time: Option<Duration>,
    pub retain_since_last_active_time: Option<Duration>,
    pub min_non_active_revisions: usize,
    pub max_non_active_revisions: Option<usize>,
}

impl Default for Config {
    /// Knative's defaults: 48h, 15h, 20, 1000.
    fn default() -> Self {
        Self {
            retain_since_create_time: Some(Duration::from_secs(48 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(15 * 3600)),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

/// A Revision of one Service, as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub created: Timestamp,
    /// `serving.knative.dev/routingStateModified`, when set.
    pub routing_state_modified: Option<Timestamp>,
    /// `routingState: reserve` (not routed).
    pub reserve: bool,
    /// `serving.knative.dev/no-gc: "true"`.
    pub preserved: bool,
}

impl Candidate {
    fn last_active(&self) -> Timestamp {
        self.routing_state_modified.unwrap_or(self.created)
    }
}

/// The names of the Revisions to delete, oldest first.
pub fn collect(
    revisions: &[Candidate],
    latest_ready: Option<&str>,
    config: &Config,
    now: Timestamp,
) -> Vec<String> {
    if config.max_non_active_revisions.is_none()
        && config.retain_since_create_time.is_none()
        && config.retain_since_last_active_time.is_none()
    {
        return Vec::new();
    }
    let min = config.min_non_active_revisions;
    if revisions.len() <= min {
        return Vec::new();
    }
    let mut non_active: Vec<&Candidate> = revisions
        .iter()
        .filter(|r| Some(r.name.as_str()) != latest_ready && !r.preserved && r.reserve)
        .collect();
    if non_active.len() <= min {
        return Vec::new();
    }
    non_active.sort_by_key(|r| r.last_active());
    let count = non_active.len();
    let max_deletable = count - min;
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    for rev in non_active {
        if deleted.len() < max_deletable && stale(rev, config, now) {
            deleted.push(rev.name.clone());
        } else {
            kept.push(rev);
        }
    }
    if deleted.len() >= max_deletable {
        return deleted;
    }
    if let Some(max) = config.max_non_active_revisions
        && kept.len() > max
    {
        let extra = kept.len() - max;
        deleted.extend(kept.iter().take(extra).map(|r| r.name.clone()));
    }
    deleted
}

fn stale(rev: &Candidate, config: &Config, now: Timestamp) -> bool {
    let (create, active) = (
        config.retain_since_create_time,
        config.retain_since_last_active_time,
    );
    if create.is_none() && active.is_none() {
        return false;
    }
    let age = |t: Timestamp| Duration::try_from(now.duration_since(t)).unwrap_or_default();
    if create.is_some_and(|d| age(rev.created) < d) {
        return false;
    }
    if active.is_some_and(|d| age(rev.last_active()) < d) {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, hours_ago: i64, reserve: bool) -> Candidate {
        let now: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        Candidate {
            name: name.into(),
            created: now - jiff::SignedDuration::from_hours(hours_ago),
            routing_state_modified: None,
            reserve,
            preserved: false,
        }
    }

    fn now() -> Timestamp {
        "2026-01-10T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn keeps_the_minimum_and_never_routed_latest_or_preserved() {
        let config = Config {
            retain_since_create_time: None,
            retain_since_last_active_time: None,
            min_non_active_revisions: 1,
            max_non_active_revisions: Some(1),
        };
        let mut revs = vec![
            rev("a-00001", 50, true),
            rev("a-00002", 40, true),
            rev("a-00003", 30, true),
            rev("a-00004", 20, false),
            rev("a-00005", 10, true),
        ];
        revs[2].preserved = true;
        // Non-active: 1, 2, 5 (3 is preserved, 4 routed, 5 is latest ready → not eligible).
        let gone = collect(&revs, Some("a-00005"), &config, now());
        assert_eq!(gone, ["a-00001"]);
    }

    #[test]
    fn stale_revisions_go_down_to_the_minimum() {
        let config = Config {
            min_non_active_revisions: 1,
            ..Config::default()
        };
        let revs = [
            rev("a-00001", 100, true),
            rev("a-00002", 90, true),
            rev("a-00003", 10, true),
            rev("a-00004", 1, false),
        ];
        let gone = collect(&revs, Some("a-00004"), &config, now());
        assert_eq!(gone, ["a-00001", "a-00002"], "00003 is younger than 48h");
    }

    #[test]
    fn defaults_keep_twenty() {
        let revs: Vec<_> = (0..15).map(|i| rev(&format!("r{i}"), 100, true)).collect();
        assert!(collect(&revs, None, &Config::default(), now()).is_empty());
    }

    #[test]
    fn everything_disabled_deletes_nothing() {
        let config = Config {
            retain_since_create_time: None,
            retain_since_last_active_time: None,
            min_non_active_revisions: 0,
            max_non_active_revisions: None,
        };
        let revs = [rev("a", 100, true)];
        assert!(collect(&revs, None, &config, now()).is_empty());
    }
}

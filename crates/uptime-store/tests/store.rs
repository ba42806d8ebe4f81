//! The store against real databases: every behaviour runs on SQLite (a file in a temp dir) and
//! on a private Postgres server (`gantry_testkit::postgres`), plus the faults only a server has:
//! stopped mid-run and started again, restarted as a failover would.

use std::time::{Duration, Instant};

use gantry_testkit::postgres::Postgres;
use gantry_uptime_store::{
    Location, MonitorInfo, MonitorKey, Sample, State, Store, StoreConfig, now_ms,
};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

struct Fixture {
    dir: tempfile::TempDir,
    pg: Option<Postgres>,
}

impl Fixture {
    fn sqlite() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    fn postgres() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(Postgres::start()),
        }
    }

    fn config(&self) -> StoreConfig {
        let location = match &self.pg {
            Some(pg) => Location::Postgres(pg.url()),
            None => Location::from_flags(self.dir.path(), None).unwrap(),
        };
        let mut config = StoreConfig::new(location);
        config.flush_interval = Duration::from_millis(100);
        config
    }

    async fn open(&self) -> Store {
        Store::open(self.config()).await.unwrap()
    }
}

/// Runs a scenario on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Fixture::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Fixture::postgres()).await;
            }
        }
    )*};
}

on_both_backends!(
    samples_feed_aggregates_once,
    incidents_and_last_states_survive_a_restart,
    daily_bars_cover_ninety_days,
    retention_keeps_storage_bounded,
    many_monitors_are_written_in_batches,
    monitor_info_is_kept_and_removed,
    a_new_leader_takes_over_the_state,
    figures_from_memory_match_the_tables_and_survive_a_restart,
    alerts_stay_in_the_outbox_until_sent,
);

fn key(name: &str) -> MonitorKey {
    MonitorKey::new("prod", name)
}

fn sample(name: &str, at: i64, state: State, response_ms: i32) -> Sample {
    let up = matches!(state, State::Up);
    Sample {
        key: key(name),
        at,
        state,
        success: up,
        response_us: Some(response_ms * 1000),
        http_status: Some(if up { 200 } else { 503 }),
        message: (!up).then(|| format!("{name} answered 503")),
    }
}

fn hour_start(at: i64) -> i64 {
    at - at.rem_euclid(HOUR)
}

async fn samples_feed_aggregates_once(fx: Fixture) {
    let store = fx.open().await;
    // 40 samples in the current hour: 30 UP (10..=300 ms), 10 DOWN.
    let hour = hour_start(now_ms());
    let samples: Vec<Sample> = (0..40)
        .map(|i| {
            let state = if i < 30 { State::Up } else { State::Down };
            sample("web", hour + i * 1000, state, (i as i32 + 1) * 10)
        })
        .collect();
    store.record_many(samples.clone());
    store.flush().await.unwrap();
    assert_eq!(store.sample_count(&key("web")).await.unwrap(), 40);

    // The same batch again (a retry after a lost commit answer) adds nothing.
    store.record_many(samples);
    store.flush().await.unwrap();
    assert_eq!(store.sample_count(&key("web")).await.unwrap(), 40);
    let agg = store.hourly(&key("web"), hour).await.unwrap();
    assert_eq!((agg.up, agg.down, agg.ok, agg.rt_count), (30, 10, 30, 40));

    let summary = store.summary(&key("web")).await.unwrap();
    assert_eq!(summary.uptime_24h, Some(0.75));
    assert_eq!(summary.uptime_7d, Some(0.75));
    assert_eq!(summary.uptime_30d, Some(0.75));
    let p50 = summary.p50_ms.unwrap();
    let p95 = summary.p95_ms.unwrap();
    assert!((150.0..=250.0).contains(&p50), "p50 {p50}");
    assert!((300.0..=400.0).contains(&p95), "p95 {p95}");

    let points = store
        .response_times(&key("web"), now_ms() - DAY)
        .await
        .unwrap();
    assert_eq!(points.len(), 40);
    assert!(points.windows(2).all(|w| w[0].at < w[1].at));
    assert_eq!(points[0].ms, 10.0);
    let hourly = store.hourly_response_times(now_ms() - DAY).await.unwrap();
    assert_eq!(hourly[&key("web")].len(), 1);
    assert_eq!(hourly[&key("web")][0].at, hour);
    let health = store.health();
    assert!(health.available && health.buffered == 0 && health.dropped == 0);
}

async fn incidents_and_last_states_survive_a_restart(fx: Fixture) {
    let t0 = now_ms() - 10 * 60_000;
    let store = fx.open().await;
    store.record(sample("api", t0, State::Up, 50));
    store.record(sample("api", t0 + 30_000, State::Pending, 50));
    store.record(sample("api", t0 + 60_000, State::Down, 50));
    store.record(sample("api", t0 + 90_000, State::Down, 50));
    let open = store.open_incidents();
    assert_eq!(open.len(), 1);
    // A DOWN confirmed after a PENDING failure began with that failure (the DOWN alert's
    // `downSince`), so a process resuming it times the outage as the first one would.
    assert_eq!(open[0].started_at, t0 + 30_000);
    assert_eq!(open[0].cause, "api answered 503");
    store.close().await.unwrap();

    // A new process: it resumes mid-outage.
    let store = fx.open().await;
    let last = store.last_state(&key("api")).unwrap();
    assert_eq!(last.state, State::Down);
    assert_eq!(last.since, t0 + 30_000);
    assert_eq!(last.last_at, t0 + 90_000);
    assert_eq!(last.http_status, Some(503));
    let open = store.open_incidents();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].started_at, t0 + 30_000);

    // The recovery closes it, once.
    store.record(sample("api", t0 + 120_000, State::Up, 40));
    assert!(store.open_incidents().is_empty());
    store.flush().await.unwrap();
    let incidents = store.incidents(&key("api"), 10).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].ended_at, Some(t0 + 120_000));
    assert_eq!(incidents[0].duration_ms(now_ms()), 90_000);
    assert_eq!(store.recent_incidents(10).await.unwrap(), incidents);
    store.close().await.unwrap();

    let store = fx.open().await;
    assert!(store.open_incidents().is_empty());
    let last = store.last_state(&key("api")).unwrap();
    assert_eq!((last.state, last.since), (State::Up, t0 + 120_000));
}

async fn daily_bars_cover_ninety_days(fx: Fixture) {
    let store = fx.open().await;
    let now = now_ms();
    let today = now - now.rem_euclid(DAY);
    for days_ago in 0..95 {
        let at = today - days_ago * DAY + HOUR;
        let at = at.min(now - 1000);
        store.record(sample("db", at, State::Up, 20));
        if days_ago == 5 {
            store.record(sample("db", at + 60_000, State::Down, 20));
            store.record(sample("db", at + 120_000, State::Up, 20));
        }
    }
    store.flush().await.unwrap();
    let bars = store.daily_bars_of(&key("db"), 90).await.unwrap();
    assert_eq!(bars.len(), 90);
    assert_eq!(bars[89].day, today);
    assert_eq!(bars[0].day, today - 89 * DAY);
    assert!(bars.iter().all(|b| b.total >= 1), "{bars:?}");
    let outage = &bars[89 - 5];
    assert_eq!((outage.down, outage.total), (1, 3));
    assert!((outage.uptime.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(bars[89].uptime, Some(1.0));
    let all = store.daily_bars(90).await.unwrap();
    assert_eq!(all[&key("db")], bars);
    // A monitor without history has empty bars.
    let none = store.daily_bars_of(&key("nothing"), 90).await.unwrap();
    assert!(none.len() == 90 && none.iter().all(|b| b.total == 0));
}

async fn retention_keeps_storage_bounded(fx: Fixture) {
    let store = fx.open().await;
    let now = now_ms();
    for i in 0..20 {
        store.record(sample("old", now - 10 * DAY + i * 1000, State::Up, 10));
        store.record(sample("old", now - HOUR + i * 1000, State::Up, 10));
    }
    store.flush().await.unwrap();
    assert_eq!(store.sample_count(&key("old")).await.unwrap(), 40);

    let report = store.run_retention_at(now).await.unwrap();
    assert_eq!(report.samples, 20, "{report:?}");
    assert_eq!((report.hourly, report.daily), (0, 0));
    assert_eq!(store.sample_count(&key("old")).await.unwrap(), 20);
    // Aggregates outlive the raw samples: the 30-day uptime still counts all 40.
    let summary = store.summary(&key("old")).await.unwrap();
    assert_eq!(summary.uptime_30d, Some(1.0));
    let bars = store.daily_bars_of(&key("old"), 30).await.unwrap();
    assert_eq!(bars.iter().map(|b| b.total).sum::<i64>(), 40);

    // A year and more later, the aggregates go too.
    let report = store.run_retention_at(now + 400 * DAY).await.unwrap();
    assert_eq!(report.samples, 20);
    assert!(report.hourly >= 2 && report.daily >= 2, "{report:?}");
    assert_eq!(store.sample_count(&key("old")).await.unwrap(), 0);
}

async fn many_monitors_are_written_in_batches(fx: Fixture) {
    let store = fx.open().await;
    let now = now_ms();
    let monitors = 3000;
    for round in 0..2i64 {
        let batch = (0..monitors).map(|m| Sample {
            key: MonitorKey::new("load", format!("m{m}")),
            at: now - 60_000 + round * 30_000,
            state: State::Up,
            success: true,
            response_us: Some(1000 + m),
            http_status: Some(200),
            message: None,
        });
        store.record_many(batch);
    }
    assert_eq!(store.health().buffered, 6000);
    store.flush().await.unwrap();
    assert_eq!(store.health().buffered, 0);
    let summaries = store.summaries().await.unwrap();
    assert_eq!(summaries.len(), monitors as usize);
    assert!(summaries.values().all(|s| s.uptime_24h == Some(1.0)));
    assert_eq!(store.last_states().len(), monitors as usize);
    assert_eq!(
        store
            .sample_count(&MonitorKey::new("load", "m2999"))
            .await
            .unwrap(),
        2
    );
}

async fn monitor_info_is_kept_and_removed(fx: Fixture) {
    let store = fx.open().await;
    let info = MonitorInfo {
        key: key("shop"),
        display_name: "Shop <script>".into(),
        group: "Public".into(),
        kind: "http".into(),
        target: "https://shop.example/healthz".into(),
    };
    store.upsert_monitor(info.clone());
    store.record(sample("shop", now_ms() - 1000, State::Up, 10));
    // A monitor seen only through its samples gets a bare row.
    store.record(sample("bare", now_ms() - 1000, State::Up, 10));
    store.close().await.unwrap();

    let store = fx.open().await;
    let monitors = store.monitors();
    assert_eq!(monitors.len(), 2);
    assert_eq!(monitors[1], info);
    assert_eq!(monitors[0], MonitorInfo::bare(key("bare")));
    store.remove_monitor(&key("shop")).await.unwrap();
    assert_eq!(store.sample_count(&key("shop")).await.unwrap(), 0);
    store.close().await.unwrap();
    let store = fx.open().await;
    assert_eq!(store.monitors().len(), 1);
    assert!(store.last_state(&key("shop")).is_none());
}

async fn a_new_leader_takes_over_the_state(fx: Fixture) {
    let leader = fx.open().await;
    let follower = fx.open().await;
    let t0 = now_ms() - 5 * 60_000;
    leader.record(sample("lb", t0, State::Up, 10));
    leader.record(sample("lb", t0 + 30_000, State::Down, 10));
    leader.flush().await.unwrap();
    assert!(follower.last_state(&key("lb")).is_none());

    // The leader is gone; the follower takes over from the database.
    drop(leader);
    follower.reload().await.unwrap();
    assert_eq!(follower.last_state(&key("lb")).unwrap().state, State::Down);
    assert_eq!(follower.open_incidents().len(), 1);
    follower.record(sample("lb", t0 + 60_000, State::Up, 10));
    follower.flush().await.unwrap();
    let incidents = follower.incidents(&key("lb"), 10).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].ended_at, Some(t0 + 60_000));
}

/// An alert recorded with its transition is in the database with it, and comes back to the next
/// process (or leader) until it is marked sent; one sent before it was even written leaves
/// nothing behind.
async fn alerts_stay_in_the_outbox_until_sent(fx: Fixture) {
    let store = fx.open().await;
    let t0 = now_ms() - 60_000;
    store.record(sample("api", t0, State::Up, 10));
    let down = store.record_alerting(sample("api", t0 + 1000, State::Down, 10), "down".into());
    store.flush().await.unwrap();
    // Killed before sending: the next process finds the state and the alert.
    drop(store);
    let next = fx.open().await;
    assert_eq!(next.last_state(&key("api")).unwrap().state, State::Down);
    assert_eq!(
        next.take_pending_alerts(),
        [(down.clone(), "down".to_string())]
    );
    assert!(next.take_pending_alerts().is_empty(), "handed out once");
    next.alert_sent(&down);
    // Sent before its row was written: nothing is written at all.
    let up = next.record_alerting(sample("api", t0 + 2000, State::Up, 10), "up".into());
    next.alert_sent(&up);
    next.close().await.unwrap();
    let again = fx.open().await;
    assert!(
        again.take_pending_alerts().is_empty(),
        "sent alerts are gone"
    );
    assert_eq!(again.last_state(&key("api")).unwrap().state, State::Up);

    // A leader taking over reads what the previous one left.
    let follower = fx.open().await;
    let slow = again.record_alerting(sample("api", t0 + 3000, State::Up, 900), "slow".into());
    again.flush().await.unwrap();
    drop(again);
    follower.reload().await.unwrap();
    assert_eq!(follower.take_pending_alerts(), [(slow, "slow".to_string())]);
}

/// What status and the status page show ([`Store::figures`], [`Store::page`]) is kept in memory
/// as results arrive: it equals what the aggregate tables say, and a new process (or a new
/// leader) reads the same from them.
async fn figures_from_memory_match_the_tables_and_survive_a_restart(fx: Fixture) {
    let store = fx.open().await;
    let now = now_ms();
    // 40 days of history for two monitors: every 10 minutes, with an outage now and then and
    // response times from 5 ms to 2 s.
    let mut samples = Vec::new();
    for (m, name) in ["web", "api"].iter().enumerate() {
        let mut at = now - 40 * DAY;
        let mut i = 0i64;
        while at < now {
            let x = (i * 7919 + m as i64 * 104_729) % 1000;
            let state = match x {
                0..20 => State::Down,
                20..30 => State::Pending,
                30..35 => State::Maintenance,
                _ => State::Up,
            };
            samples.push(sample(name, at, state, 5 + (x as i32 * 2)));
            at += 10 * 60_000;
            i += 1;
        }
    }
    store.record_many(samples);
    let in_memory = |store: &Store| {
        ["web", "api"]
            .map(|n| store.figures(&key(n)).expect("figures"))
            .to_vec()
    };
    let before = in_memory(&store);
    store.flush().await.unwrap();
    let tables = store.summaries().await.unwrap();
    for (name, figures) in ["web", "api"].iter().zip(&before) {
        assert_eq!(&tables[&key(name)], figures, "{name}: memory and tables");
        assert!(figures.uptime_30d.is_some_and(|u| u < 1.0 && u > 0.9));
        assert!(figures.p99_ms.is_some());
    }
    let page = store.page(90);
    let bars = store.daily_bars_of(&key("web"), 90).await.unwrap();
    let web = page
        .monitors
        .iter()
        .find(|m| m.info.key == key("web"))
        .unwrap();
    assert_eq!(web.bars, bars, "the 90-day bar");
    assert_eq!(web.summary, before[0]);
    assert!(web.response.len() >= 23, "{:?}", web.response);
    store.close().await.unwrap();

    // A restart: the figures come back from the aggregates.
    let store = fx.open().await;
    assert_eq!(in_memory(&store), before, "after a restart");
    assert_eq!(store.page(90).monitors.len(), 2);
    // And a replica that opened before the writes catches up when it takes over.
    let follower = fx.open().await;
    store.record(sample("web", now, State::Down, 10));
    store.flush().await.unwrap();
    follower.reload().await.unwrap();
    assert_eq!(follower.figures(&key("web")), store.figures(&key("web")));
    assert_ne!(store.figures(&key("web")).unwrap(), before[0]);
}

/// Waits until `done` holds, panicking with `what` after a minute.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_buffers_then_writes_everything_once() {
    let mut fx = Fixture::postgres();
    let store = fx.open().await;
    let t0 = now_ms() - 30 * 60_000;
    for i in 0..50 {
        store.record(sample("pay", t0 + i * 1000, State::Up, 20));
    }
    store.flush().await.unwrap();

    fx.pg.as_mut().unwrap().stop();
    // Checks go on: 100 more results, an outage among them.
    for i in 50..150 {
        let state = if (100..120).contains(&i) {
            State::Down
        } else {
            State::Up
        };
        store.record(sample("pay", t0 + i * 1000, state, 20));
    }
    assert_eq!(store.open_incidents().len(), 0, "recovered already");
    eventually("the store notices the database is gone", || {
        !store.health().available
    })
    .await;
    let health = store.health();
    assert_eq!(health.buffered, 100, "{health:?}");
    assert!(
        health
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("postgres")
    );
    assert!(store.flush().await.is_err());
    assert!(store.summaries().await.is_err(), "reads fail with an error");
    // The in-memory state is still right.
    assert_eq!(store.last_state(&key("pay")).unwrap().state, State::Up);

    fx.pg.as_mut().unwrap().start_again();
    eventually("the buffered samples are written", || {
        let h = store.health();
        h.available && h.buffered == 0
    })
    .await;
    assert_eq!(store.sample_count(&key("pay")).await.unwrap(), 150);
    let mut total = 0;
    for h in [hour_start(t0), hour_start(t0) + HOUR] {
        total += store.hourly(&key("pay"), h).await.unwrap().total();
    }
    assert_eq!(total, 150, "aggregates count every sample once");
    let incidents = store.incidents(&key("pay"), 10).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].started_at, t0 + 100_000);
    assert_eq!(incidents[0].ended_at, Some(t0 + 120_000));
    assert_eq!(store.health().dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_drops_the_oldest_beyond_its_bound_and_counts_them() {
    let mut fx = Fixture::postgres();
    let mut config = fx.config();
    config.buffer_capacity = 10;
    let store = Store::open(config).await.unwrap();
    let t0 = now_ms() - 60_000;
    store.record(sample("cap", t0, State::Up, 10));
    store.flush().await.unwrap();
    fx.pg.as_mut().unwrap().stop();
    for i in 1..=25 {
        store.record(sample("cap", t0 + i * 1000, State::Up, 10));
    }
    assert!(store.flush().await.is_err());
    let health = store.health();
    assert_eq!((health.buffered, health.dropped), (10, 15), "{health:?}");
    fx.pg.as_mut().unwrap().start_again();
    eventually("the buffer is written", || {
        let h = store.health();
        h.available && h.buffered == 0
    })
    .await;
    let points = store.response_times(&key("cap"), t0).await.unwrap();
    let kept: Vec<i64> = points.iter().map(|p| (p.at - t0) / 1000).collect();
    assert_eq!(kept, [0].into_iter().chain(16..=25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_and_duplicates_nothing() {
    let mut fx = Fixture::postgres();
    let store = fx.open().await;
    let t0 = now_ms() - 20 * 60_000;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                store.record(sample("ha", t0 + i * 1000, State::Up, 15));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // A failover: the server goes away under load and comes back at the same address.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _fx = tokio::task::spawn_blocking(move || {
        fx.pg.as_mut().unwrap().restart();
        fx
    })
    .await
    .unwrap();
    writer.await.unwrap();
    eventually("everything is written", || {
        let h = store.health();
        h.available && h.buffered == 0
    })
    .await;
    store.flush().await.unwrap();
    assert_eq!(store.sample_count(&key("ha")).await.unwrap(), 300);
    let mut total = 0;
    for h in [hour_start(t0), hour_start(t0) + HOUR] {
        total += store.hourly(&key("ha"), h).await.unwrap().total();
    }
    assert_eq!(total, 300);
    assert_eq!(store.health().dropped, 0);
}

//! The embedded SQLite database going away and coming back, for real: another connection to the
//! same file holds `BEGIN EXCLUSIVE` (as an operator's `sqlite3` shell or a backup tool would), so
//! every write of the store meets SQLite's `database is locked` after its busy timeout. Checks go
//! on (recording never waits), results wait in memory within their bound, the status page shows
//! the error while it lasts, and once the lock is gone everything is written exactly once and the
//! file is intact.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{get, info, key, sample, serve};
use gantry_uptime_store::{Location, State, Store, StoreConfig, now_ms};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

const HOUR: i64 = 3_600_000;

fn config(dir: &tempfile::TempDir) -> StoreConfig {
    let mut config = StoreConfig::new(Location::from_flags(dir.path(), None).unwrap());
    config.flush_interval = Duration::from_millis(100);
    config
}

/// Another connection to the store's file, holding SQLite's write lock until dropped or
/// rolled back.
async fn lock_exclusively(dir: &tempfile::TempDir) -> SqliteConnection {
    let path = dir.path().join(gantry_uptime_store::store::SQLITE_FILE);
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display())).unwrap();
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Waits until `done` holds, panicking with `what` after two minutes (each failed write takes
/// the store's 10 s busy timeout).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_buffers_then_writes_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(&dir)).await.unwrap();
    store.upsert_monitor(info("web", "Web", "Public"));
    let t0 = now_ms() - 30 * 60_000;
    for i in 0..20 {
        store.record(sample("web", t0 + i * 1000, State::Up));
    }
    store.flush().await.unwrap();
    let (addr, _stop) = serve(store.clone()).await;
    let (_, _, html) = get(addr, "/").await;
    assert!(!html.contains("database-error"), "no banner while healthy");

    let mut lock = lock_exclusively(&dir).await;
    // Checks go on while the file is locked: 100 more results, an outage among them, the last
    // ones DOWN again. Recording never waits for the database.
    for i in 20..120 {
        let state = if (60..80).contains(&i) || i >= 110 {
            State::Down
        } else {
            State::Up
        };
        store.record(sample("web", t0 + i * 1000, state));
    }
    eventually("the store notices the file is locked", || {
        !store.health().available
    })
    .await;
    let health = store.health();
    assert_eq!(health.backend, "sqlite");
    assert_eq!(health.buffered, 100, "{health:?}");
    let error = health.error.clone().unwrap_or_default();
    assert!(error.contains("locked"), "the error says why: {error}");
    // The current state and the open incident are live from memory.
    assert_eq!(store.last_state(&key("web")).unwrap().state, State::Down);
    assert_eq!(store.open_incidents().len(), 1);

    let (status, _, html) = get(addr, "/").await;
    assert_eq!(
        status, 200,
        "the page is served while the database is locked"
    );
    assert!(html.contains("id=\"database-error\""), "{html}");
    assert!(
        html.contains("History database (sqlite) unreachable"),
        "{html}"
    );
    assert!(html.contains("100 results wait in memory"), "{html}");
    assert!(html.contains("locked"), "{html}");
    assert!(html.contains("data-monitor=\"prod/web\" data-state=\"DOWN\""));
    let (_, _, json) = get(addr, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["health"]["available"], false);

    // The other connection lets go: the buffer is written once, the banner goes away.
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    eventually("the buffered results are written", || {
        let h = store.health();
        h.available && h.buffered == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, html) = get(addr, "/").await;
        if !html.contains("database-error") {
            break;
        }
        assert!(Instant::now() < deadline, "the banner never went away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.sample_count(&key("web")).await.unwrap(), 120);
    let mut total = 0;
    for h in [t0 - t0.rem_euclid(HOUR), t0 - t0.rem_euclid(HOUR) + HOUR] {
        total += store.hourly(&key("web"), h).await.unwrap().total();
    }
    assert_eq!(total, 120, "aggregates count every result once");
    let incidents = store.incidents(&key("web"), 10).await.unwrap();
    let spans: Vec<(i64, Option<i64>)> = incidents
        .iter()
        .map(|i| {
            (
                (i.started_at - t0) / 1000,
                i.ended_at.map(|e| (e - t0) / 1000),
            )
        })
        .collect();
    assert_eq!(spans, [(110, None), (60, Some(80))], "newest first");
    assert_eq!(store.health().dropped, 0);

    // Nothing corrupted: SQLite's own check, from the other connection.
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut lock)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    lock.close().await.unwrap();

    // And a restart reads the same state back.
    store.close().await.unwrap();
    let again = Store::open(config(&dir)).await.unwrap();
    assert_eq!(again.last_state(&key("web")).unwrap().state, State::Down);
    assert_eq!(again.open_incidents().len(), 1);
    assert_eq!(again.sample_count(&key("web")).await.unwrap(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lock_keeps_only_the_newest_results_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.buffer_capacity = 10;
    let store = Store::open(config).await.unwrap();
    let t0 = now_ms() - 60_000;
    store.record(sample("cap", t0, State::Up));
    store.flush().await.unwrap();

    let mut lock = lock_exclusively(&dir).await;
    for i in 1..=25 {
        store.record(sample("cap", t0 + i * 1000, State::Up));
    }
    eventually("the store notices the file is locked", || {
        !store.health().available
    })
    .await;
    let health = store.health();
    assert_eq!((health.buffered, health.dropped), (10, 15), "{health:?}");

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    eventually("the buffer is written", || {
        let h = store.health();
        h.available && h.buffered == 0
    })
    .await;
    let points = store.response_times(&key("cap"), t0).await.unwrap();
    let kept: Vec<i64> = points.iter().map(|p| (p.at - t0) / 1000).collect();
    assert_eq!(kept, [0].into_iter().chain(16..=25).collect::<Vec<_>>());
}

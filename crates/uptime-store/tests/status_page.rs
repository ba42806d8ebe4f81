//! The status page over HTTP: HTML, JSON API and badges from a real store, and the banner when
//! the database (a real Postgres server, stopped) is away.

mod common;

use std::time::{Duration, Instant};

use common::{get, info, key, sample, serve};
use gantry_testkit::postgres::Postgres;
use gantry_uptime_store::{Location, State, Store, StoreConfig, now_ms};

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    Store::open(StoreConfig::new(
        Location::from_flags(dir.path(), None).unwrap(),
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_the_api_and_the_badges_show_the_states() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    store.upsert_monitor(info("web", "Web <shop>", "Public"));
    store.upsert_monitor(info("api", "", "Public"));
    store.upsert_monitor(info("db", "Database", "Internal"));
    let t0 = now_ms() - 5 * 60_000;
    for (i, name) in ["web", "api", "db"].iter().enumerate() {
        store.record(sample(name, t0 + i as i64, State::Up));
    }
    store.record(sample("db", t0 + 60_000, State::Down));
    store.flush().await.unwrap();
    let (addr, _stop) = serve(store.clone()).await;

    let (status, content_type, html) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(html.contains("<h1>Example &lt;Status&gt;</h1>"), "{html}");
    assert!(html.contains("<h3>Web &lt;shop&gt;</h3>"));
    assert!(!html.contains("<shop>") && !html.contains("<bad gateway>"));
    assert!(html.contains("data-monitor=\"prod/db\" data-state=\"DOWN\""));
    assert!(html.contains("data-monitor=\"prod/web\" data-state=\"UP\""));
    assert!(html.contains("1 monitor is down"));
    assert!(html.contains("db: HTTP 502 &lt;bad gateway&gt;"));
    assert!(!html.contains("database-error"), "no banner while healthy");
    assert!(!html.contains("<script"), "no JavaScript");
    // Groups in order, the ungrouped last; the 90-day bar and the chart are inline SVG.
    let internal = html.find("<h2>Internal</h2>").unwrap();
    let public = html.find("<h2>Public</h2>").unwrap();
    assert!(internal < public);
    assert!(html.contains("aria-label=\"uptime per day, last 90 days\""));
    assert!(html.contains("<path class=\"mean\" d=\"M"));

    let (status, content_type, json) = get(addr, "/api/status").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/json"));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let monitors: Vec<&serde_json::Value> = json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["monitors"].as_array().unwrap())
        .collect();
    assert_eq!(monitors.len(), 3);
    let db = monitors.iter().find(|m| m["name"] == "db").unwrap();
    assert_eq!(db["state"], "DOWN");
    assert_eq!(db["bars"].as_array().unwrap().len(), 90);
    assert_eq!(json["recent_incidents"][0]["name"], "db");
    assert!(json["recent_incidents"][0]["ended_at"].is_null());

    let (status, _, detail) = get(addr, "/api/monitors/prod/web").await;
    assert_eq!(status, 200);
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["response_times"][0]["ms"], 42.0);
    assert_eq!(get(addr, "/api/monitors/prod/nope").await.0, 404);

    let (status, content_type, badge) = get(addr, "/badge/prod/db.svg").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "image/svg+xml");
    assert!(badge.contains("Database: DOWN"), "{badge}");
    let (status, _, badge) = get(addr, "/badge/web.svg").await;
    assert_eq!(status, 200);
    assert!(badge.contains("Web &lt;shop&gt;: UP 100.00%"), "{badge}");
    assert_eq!(get(addr, "/badge/prod/nope.svg").await.0, 404);
    assert_eq!(get(addr, "/badge/prod/db.png").await.0, 404);

    // Recovery: the page follows the next write.
    store.record(sample("db", t0 + 120_000, State::Up));
    store.flush().await.unwrap();
    let (_, _, html) = get(addr, "/").await;
    assert!(html.contains("data-monitor=\"prod/db\" data-state=\"UP\""));
    assert!(html.contains("All systems operational"));
    assert!(html.contains("resolved, 1m 0s"), "{html}");
    let _ = key("web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_database_is_unreachable() {
    let mut pg = Postgres::start();
    let mut config = StoreConfig::new(Location::Postgres(pg.url()));
    config.flush_interval = Duration::from_millis(100);
    let store = Store::open(config).await.unwrap();
    store.upsert_monitor(info("web", "Web", "Public"));
    store.record(sample("web", now_ms() - 60_000, State::Up));
    store.flush().await.unwrap();
    let (addr, _stop) = serve(store.clone()).await;
    let (_, _, html) = get(addr, "/").await;
    assert!(!html.contains("database-error"));

    pg.stop();
    store.record(sample("web", now_ms() - 30_000, State::Down));
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.health().available {
        assert!(Instant::now() < deadline, "the store never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, html) = get(addr, "/").await;
    assert_eq!(status, 200, "the page is served without its database");
    assert!(html.contains("id=\"database-error\""), "{html}");
    assert!(html.contains("History database (postgres) unreachable"));
    assert!(html.contains("1 results wait in memory"), "{html}");
    // The current state is live even so.
    assert!(html.contains("data-monitor=\"prod/web\" data-state=\"DOWN\""));
    let (_, _, json) = get(addr, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["health"]["available"], false);

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, html) = get(addr, "/").await;
        if !html.contains("database-error") {
            break;
        }
        assert!(Instant::now() < deadline, "the banner never went away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.sample_count(&key("web")).await.unwrap(), 2);
}

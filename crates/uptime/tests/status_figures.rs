//! A Monitor's uptime and response-time figures come from the history store (SQLite, and a real
//! Postgres server): the engine's status, the status page's JSON API and the store agree, and a
//! restarted process shows the same figures before it has checked anything.

mod support;

use std::time::Duration;

use gantry_testkit::postgres::Postgres;
use gantry_uptime::engine::Engine;
use gantry_uptime::plan::Key;
use gantry_uptime::standalone::{self, Settings};
use gantry_uptime_store::Location;
use support::*;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn key(name: &str) -> Key {
    Key {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn config(interval: &str, up: std::net::SocketAddr, down: std::net::SocketAddr) -> String {
    format!(
        r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {{name: web}}
spec:
  type: http
  interval: {interval}
  timeout: 1s
  http: {{url: "http://{up}/ok"}}
---
apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {{name: gone}}
spec:
  type: http
  interval: {interval}
  timeout: 1s
  failureThreshold: 1
  http: {{url: "http://{down}/ok"}}
"#
    )
}

/// Uptime 24h, 7d, 30d, and whether it has response times.
type Figures = (Option<f64>, Option<f64>, Option<f64>, bool);

/// The figures of a Monitor in the engine's status.
fn figures(engine: &Engine, name: &str) -> Option<Figures> {
    let s = engine.snapshot(&key(name))?;
    Some((
        s.uptime_24h,
        s.uptime_7d,
        s.uptime_30d,
        s.response_times.is_some(),
    ))
}

/// The status page's JSON for one monitor.
async fn page_monitor(addr: std::net::SocketAddr, name: &str) -> serde_json::Value {
    let client = gantry_runtime::http::client(&Default::default()).expect("client");
    let text = client
        .get(url(addr, "/api/status"))
        .send()
        .await
        .expect("GET /api/status")
        .text()
        .await
        .expect("body");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    json["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["monitors"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not on the page: {json}"))
}

async fn figures_survive_a_restart(location: Location) {
    let up_addr = loopback_addr();
    let _web = http_server(up_addr).await;
    let down_addr: std::net::SocketAddr = format!("127.0.0.1:{}", closed_port())
        .parse()
        .expect("addr");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("m.yaml");
    std::fs::write(&file, config("1s", up_addr, down_addr)).expect("write");
    let settings = || {
        let mut s = Settings::new(dir.path().to_path_buf(), loopback());
        s.storage = Some(location.clone());
        s
    };

    let first = CancellationToken::new();
    let (engine, addr, running) = standalone::start(settings(), first.clone())
        .await
        .expect("start");
    let handle = tokio::spawn(running);
    eventually(WAIT, "a few checks of both", || {
        let web = figures(&engine, "web")?;
        let gone = figures(&engine, "gone")?;
        (engine.checks() >= 6
            && web == (Some(1.0), Some(1.0), Some(1.0), true)
            && gone.0.is_some_and(|u| u < 1.0))
        .then_some(())
    })
    .await;
    // The status page shows what the status shows.
    let web = page_monitor(addr, "web").await;
    assert_eq!(web["summary"]["uptime_24h"], 1.0, "{web}");
    assert!(web["summary"]["p95_ms"].is_number(), "{web}");
    let gone = page_monitor(addr, "gone").await;
    assert!(gone["summary"]["uptime_24h"].as_f64() < Some(1.0), "{gone}");
    first.cancel();
    handle.await.expect("stopped");
    drop(engine);

    // A new process, with an interval long enough that it checks nothing while we look: the
    // figures are the stored ones, not an empty in-memory history.
    std::fs::write(&file, config("1h", up_addr, down_addr)).expect("rewrite");
    let second = CancellationToken::new();
    let (engine, addr, running) = standalone::start(settings(), second.clone())
        .await
        .expect("restart");
    let handle = tokio::spawn(running);
    assert_eq!(
        figures(&engine, "web"),
        Some((Some(1.0), Some(1.0), Some(1.0), true)),
        "web after the restart"
    );
    let gone = figures(&engine, "gone").expect("gone");
    assert!(gone.0.is_some_and(|u| u < 1.0), "{gone:?}");
    assert_eq!((gone.1, gone.2), (gone.0, gone.0), "one day of history");
    // The page and the status agree.
    let page = page_monitor(addr, "gone").await;
    assert_eq!(page["summary"]["uptime_24h"].as_f64(), gone.0, "{page}");
    assert_eq!(page["summary"]["uptime_30d"].as_f64(), gone.2, "{page}");
    assert_eq!(
        engine.checks(),
        0,
        "the figures above must come from the store, not from new checks"
    );
    second.cancel();
    handle.await.expect("stopped");
}

fn loopback_addr() -> std::net::SocketAddr {
    format!("127.0.0.1:{}", closed_port())
        .parse()
        .expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_come_from_the_store_and_survive_a_restart_sqlite() {
    let storage = tempfile::tempdir().expect("storage");
    figures_survive_a_restart(Location::Sqlite(storage.path().join("uptime.sqlite"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_come_from_the_store_and_survive_a_restart_postgres() {
    let pg = Postgres::start();
    figures_survive_a_restart(Location::Postgres(pg.url())).await;
}

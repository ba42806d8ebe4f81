//! `gantry uptime serve` reloads its configuration directory (a file changes) without losing
//! state: a Monitor DOWN before the reload stays DOWN without a second alert, a new file's
//! Monitor is scheduled, an invalid directory changes nothing, a removed file's Monitor stops,
//! and the outage announced before a reload gets its recovery after it.

mod support;

use std::time::Duration;

use gantry_core::uptime::state::State;
use gantry_uptime::engine::Engine;
use gantry_uptime::plan::Key;
use gantry_uptime::standalone::{self, Settings};
use support::*;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn key(name: &str) -> Key {
    Key {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn state(engine: &Engine, name: &str) -> Option<State> {
    engine.snapshot(&key(name)).map(|s| s.state)
}

fn web(url: &str, display: &str, receiver: std::net::SocketAddr) -> String {
    format!(
        r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {{name: web}}
spec:
  type: http
  interval: 1s
  timeout: 1s
  failureThreshold: 1
  displayName: {display}
  http: {{url: "{url}"}}
  alerts: {{providerRefs: [{{name: hook}}]}}
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {{name: hook}}
spec: {{type: generic, address: "http://{receiver}/alerts"}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_directory_is_reloaded_and_states_carry_over() {
    let up = http_server(loopback()).await;
    let (receiver, received) = alert_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let down_url = format!("http://127.0.0.1:{}/ok", closed_port());
    std::fs::write(
        dir.path().join("web.yaml"),
        web(&down_url, "Web", receiver.addr),
    )
    .unwrap();
    let mut settings = Settings::new(dir.path().to_path_buf(), loopback());
    settings.storage = Some(gantry_uptime_store::Location::Sqlite(
        storage.path().join("uptime.sqlite"),
    ));
    settings.reload_interval = Duration::from_millis(200);
    let shutdown = CancellationToken::new();
    let (engine, _, running) = standalone::start(settings, shutdown.clone()).await.unwrap();
    let handle = tokio::spawn(running);
    eventually(WAIT, "web DOWN and announced", || {
        (state(&engine, "web") == Some(State::Down) && received.reasons() == ["MonitorDown"])
            .then_some(())
    })
    .await;

    // A new file, and web's spec changed (its display name): both taken, web's outage kept.
    std::fs::write(
        dir.path().join("api.yaml"),
        format!(
            "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: api}}\n\
             spec: {{type: http, interval: 1s, timeout: 1s, http: {{url: \"{}\"}}}}\n",
            url(up.addr, "/ok")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        web(&down_url, "Web shop", receiver.addr),
    )
    .unwrap();
    eventually(WAIT, "api scheduled and UP", || {
        (state(&engine, "api") == Some(State::Up)).then_some(())
    })
    .await;
    eventually(WAIT, "web's new spec", || {
        engine
            .snapshot(&key("web"))
            .filter(|s| s.display_name == "Web shop")
            .map(|_| ())
    })
    .await;
    let checks = engine.checks();
    eventually(WAIT, "web checked again after the reload", || {
        (engine.checks() >= checks + 4).then_some(())
    })
    .await;
    assert_eq!(state(&engine, "web"), Some(State::Down));
    assert_eq!(
        received.reasons(),
        ["MonitorDown"],
        "the outage is not announced again after a reload"
    );

    // An invalid Monitor: nothing changes, the running configuration goes on.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {name: bad}\n\
         spec: {type: http, http: {url: \"http://127.0.0.1:9/\"}, conditions: [\"[STATUS]==200\"]}\n",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("api.yaml")).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(engine.len(), 2, "an invalid directory changes nothing");
    assert!(engine.snapshot(&key("bad")).is_none());
    assert_eq!(state(&engine, "api"), Some(State::Up));

    // Fixed: api's file is gone, so api stops; web now points at a live endpoint and recovers
    // with the outage that began before the reloads.
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        web(&url(up.addr, "/ok"), "Web shop", receiver.addr),
    )
    .unwrap();
    let recovered = eventually(WAIT, "the recovery alert", || {
        received
            .all()
            .into_iter()
            .find(|e| e["reason"] == "MonitorUp")
    })
    .await;
    assert!(engine.snapshot(&key("api")).is_none(), "api was removed");
    assert_eq!(engine.len(), 1);
    let outage: u64 = recovered["metadata"]["outageSeconds"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(outage >= 4, "the whole outage, across reloads: {recovered}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.reasons(), ["MonitorDown", "MonitorUp"]);
    shutdown.cancel();
    handle.await.unwrap();
}

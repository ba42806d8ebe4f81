//! The standalone engine end to end (`gantry uptime serve`'s code): a Monitor goes UP, DOWN when
//! its stand-in stops (one alert at the loopback receiver), UP again with a recovery alert that
//! carries the outage; a heartbeat Monitor follows its calls; a Provider that is down never
//! holds up checks.

mod support;

use std::sync::Arc;
use std::time::Duration;

use gantry_core::uptime::state::State;
use gantry_uptime::alert::Notifier;
use gantry_uptime::engine::{Engine, LogSink};
use gantry_uptime::plan::{Key, heartbeat_path};
use gantry_uptime::standalone::{self, ConfigDirectory, Settings};
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

#[tokio::test]
async fn down_alerts_once_and_recovery_carries_the_outage() {
    let web = http_server(loopback()).await;
    let web_addr = web.addr;
    let (_receiver, received) = alert_receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("monitors.yaml"),
        format!(
            r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata:
  name: web
spec:
  type: http
  interval: 1s
  timeout: 1s
  failureThreshold: 2
  retryInterval: 500ms
  http:
    url: "http://{web_addr}/ok"
  alerts:
    providerRefs: [{{name: hook}}]
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata:
  name: hook
spec:
  type: generic
  address: "http://{receiver}/alerts"
---
apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata:
  name: cluster
spec:
  type: heartbeat
  interval: 1s
  timeout: 1s
  failureThreshold: 1
  heartbeat:
    tokenSecretRef: {{name: beat}}
---
apiVersion: v1
kind: Secret
metadata:
  name: beat
stringData:
  token: s3cret
"#,
            receiver = _receiver.addr
        ),
    )
    .expect("write config");
    let shutdown = CancellationToken::new();
    let (engine, addr, running) = standalone::start(
        Settings::new(dir.path().to_path_buf(), loopback()),
        shutdown.clone(),
    )
    .await
    .expect("start");
    tokio::spawn(running);

    eventually(WAIT, "web UP", || {
        (state(&engine, "web") == Some(State::Up)).then_some(())
    })
    .await;
    drop(web);
    eventually(WAIT, "web DOWN", || {
        (state(&engine, "web") == Some(State::Down)).then_some(())
    })
    .await;
    received.arrives(WAIT, "MonitorDown").await;
    // Still down for a few more checks: no second alert (no repeat interval set).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(received.reasons(), ["MonitorDown"], "{:#?}", received.all());
    let down = &received.all()[0];
    assert_eq!(down["involvedObject"]["kind"], "Monitor");
    assert_eq!(down["severity"], "error");
    assert!(
        down["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is DOWN"),
        "{down}"
    );

    let _web = http_server(web_addr).await;
    eventually(WAIT, "web UP again", || {
        (state(&engine, "web") == Some(State::Up)).then_some(())
    })
    .await;
    let up = eventually(WAIT, "the recovery alert", || {
        received
            .all()
            .into_iter()
            .find(|e| e["reason"] == "MonitorUp")
    })
    .await;
    let outage: u64 = up["metadata"]["outageSeconds"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("outageSeconds");
    assert!((1..60).contains(&outage), "{up}");
    assert!(
        up["message"]
            .as_str()
            .unwrap_or_default()
            .contains("after an outage of"),
        "{up}"
    );
    assert_eq!(received.reasons(), ["MonitorDown", "MonitorUp"]);

    // Heartbeats: unknown paths are 404; calls keep the Monitor UP, silence makes it DOWN.
    let http = gantry_runtime::http::client(&Default::default()).expect("client");
    let bad = http
        .post(format!("http://{addr}/heartbeat/nope"))
        .send()
        .await
        .expect("call");
    assert_eq!(bad.status(), 404);
    let path = heartbeat_path("s3cret", "cluster", "default");
    let ok = http
        .post(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("call");
    assert_eq!(ok.status(), 200);
    eventually(WAIT, "heartbeat UP", || {
        (state(&engine, "cluster") == Some(State::Up)).then_some(())
    })
    .await;
    eventually(WAIT, "heartbeat DOWN after silence", || {
        (state(&engine, "cluster") == Some(State::Down)).then_some(())
    })
    .await;

    // The JSON API and the metrics.
    let all: serde_json::Value = http
        .get(format!("http://{addr}/api/v1/monitors"))
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["key"]["name"].as_str())
        .collect();
    assert_eq!(names, ["cluster", "web"]);
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"gantry_uptime_up{namespace="default",name="web",type="http"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("gantry_uptime_checks_total{"), "{metrics}");
    assert!(
        metrics.contains("gantry_uptime_check_duration_seconds_bucket{"),
        "{metrics}"
    );
    shutdown.cancel();
}

/// A Monitor `gone` checking a closed port every second, DOWN at its first failure, alerting
/// through the Provider `provider`.
fn gone_monitor(provider: &str) -> String {
    format!(
        r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {{name: gone}}
spec:
  type: tcp
  interval: 1s
  timeout: 1s
  failureThreshold: 1
  tcp: {{host: 127.0.0.1, port: {}}}
  alerts:
    providerRefs: [{{name: {provider}}}]
"#,
        closed_port()
    )
}

/// Runs `engine` until the returned token is cancelled; returns once `gone` is DOWN.
async fn run_until_gone_is_down(engine: &Engine) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        async move { engine.run(shutdown).await }
    });
    eventually(WAIT, "DOWN", || {
        (state(engine, "gone") == Some(State::Down)).then_some(())
    })
    .await;
    shutdown
}

#[tokio::test]
async fn a_provider_that_is_down_is_retried_and_never_blocks_checks() {
    let dead = closed_port();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("m.yaml"),
        format!(
            r#"{}
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {{name: down}}
spec:
  type: slack
  address: "http://127.0.0.1:{dead}/hook"
"#,
            gone_monitor("down")
        ),
    )
    .expect("write");
    let config = Arc::new(standalone::load(dir.path()).expect("load"));
    let mut notifier = Notifier::new(Arc::new(ConfigDirectory(config.clone())));
    notifier.retry_base = Duration::from_millis(300);
    let stats = notifier.stats.clone();
    let engine = Engine::new(notifier, Arc::new(LogSink), None, 16);
    standalone::schedule(&config, &engine).expect("schedule");
    let shutdown = run_until_gone_is_down(&engine).await;
    let at_down = engine.checks();
    // While the alert is being retried, checks go on at their interval.
    eventually(WAIT, "a retried delivery", || {
        (stats.retried.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    eventually(WAIT, "checks during the retries", || {
        (engine.checks() >= at_down + 2).then_some(())
    })
    .await;
    eventually(WAIT, "the delivery given up", || {
        (stats.failed.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert_eq!(
        stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_invalid_configuration_names_every_bad_monitor() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {name: a}
spec:
  type: http
  http: {url: "http://127.0.0.1:1/"}
  conditions: ["[STATUS] =! 200"]
---
apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {name: b}
spec:
  type: dns
"#,
    )
    .expect("write");
    let err = match standalone::start(
        Settings::new(dir.path().to_path_buf(), loopback()),
        CancellationToken::new(),
    )
    .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an invalid configuration was served"),
    };
    assert!(
        err.contains("Monitor default/a") && err.contains("'[STATUS] =! 200'"),
        "{err}"
    );
    assert!(
        err.contains("Monitor default/b") && err.contains("needs spec.dns"),
        "{err}"
    );
}

/// A restart during an outage: the new process recovers DOWN from the history store and
/// announces the recovery (no zombie alert), without announcing the DOWN again.
#[tokio::test]
async fn a_restart_during_an_outage_still_announces_the_recovery() {
    let port = closed_port();
    let web_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (receiver, received) = alert_receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let storage = tempfile::tempdir().expect("storage");
    std::fs::write(
        dir.path().join("m.yaml"),
        format!(
            r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {{name: web}}
spec:
  type: http
  interval: 1s
  timeout: 1s
  failureThreshold: 1
  http: {{url: "http://{web_addr}/ok"}}
  alerts: {{providerRefs: [{{name: hook}}]}}
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {{name: hook}}
spec: {{type: generic, address: "http://{}/alerts"}}
"#,
            receiver.addr
        ),
    )
    .expect("write");
    let settings = || {
        let mut s = Settings::new(dir.path().to_path_buf(), loopback());
        s.storage = Some(gantry_uptime_store::Location::Sqlite(
            storage.path().join("uptime.sqlite"),
        ));
        s
    };
    let first = CancellationToken::new();
    let (engine, _, running) = standalone::start(settings(), first.clone())
        .await
        .expect("start");
    let handle = tokio::spawn(running);
    eventually(WAIT, "DOWN", || {
        (state(&engine, "web") == Some(State::Down)).then_some(())
    })
    .await;
    received.arrives(WAIT, "MonitorDown").await;
    // Let a few more results reach the store, then stop the process (its queue is written).
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.cancel();
    handle.await.expect("stopped");
    drop(engine);

    let _web = http_server(web_addr).await;
    let second = CancellationToken::new();
    let (engine, _, running) = standalone::start(settings(), second.clone())
        .await
        .expect("restart");
    tokio::spawn(running);
    eventually(WAIT, "UP after the restart", || {
        (state(&engine, "web") == Some(State::Up)).then_some(())
    })
    .await;
    let up = eventually(WAIT, "the recovery alert", || {
        received
            .all()
            .into_iter()
            .find(|e| e["reason"] == "MonitorUp")
    })
    .await;
    assert!(
        up["metadata"]["outageSeconds"]
            .as_str()
            .unwrap_or_default()
            .parse::<u64>()
            .expect("outage")
            >= 2,
        "{up}"
    );
    assert_eq!(
        received.reasons(),
        ["MonitorDown", "MonitorUp"],
        "DOWN announced once, recovery once"
    );
    second.cancel();
}

/// A Provider that cannot be found when the alert goes out (its file, or in a cluster its
/// object or Secret, comes a moment later; the API server away for a moment) is looked up again
/// with the deliveries' retries: the alert is sent once it is there, not dropped with its
/// outbox row at the first failed lookup.
#[tokio::test]
async fn an_alert_waits_for_a_provider_that_appears_within_its_retries() {
    let (receiver, received) = alert_receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("m.yaml"), gone_monitor("late")).expect("write");
    let live = standalone::LiveConfig::new(Arc::new(standalone::load(dir.path()).expect("load")));
    let mut notifier = Notifier::new(Arc::new(live.clone()));
    notifier.retry_base = Duration::from_secs(1);
    let stats = notifier.stats.clone();
    let engine = Engine::new(notifier, Arc::new(LogSink), None, 16);
    standalone::reload(dir.path(), &live, &engine).expect("schedule");
    let shutdown = run_until_gone_is_down(&engine).await;
    eventually(WAIT, "a failed lookup of the Provider, retried", || {
        (stats.retried.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert!(received.reasons().is_empty());

    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            r#"apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {{name: late}}
spec:
  type: generic
  address: "http://{}/alerts"
"#,
            receiver.addr
        ),
    )
    .expect("write");
    standalone::reload(dir.path(), &live, &engine).expect("reload");
    received.arrives(WAIT, "MonitorDown").await;
    assert_eq!(received.reasons(), vec!["MonitorDown".to_string()]);
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    shutdown.cancel();
}

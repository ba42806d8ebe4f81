//! `gantry run` with Monitors on the real control plane: a Monitor goes UP, DOWN when its
//! loopback stand-in stops (one alert at the loopback receiver, a Warning Event), then UP with
//! a recovery alert carrying the outage's duration; an invalid condition is `Ready=False`,
//! reason `InvalidSpec`, naming the condition and the position.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gantry_api::notification::v1beta3::Provider;
use gantry_api::uptime::v1alpha1::Monitor;
use gantry_testkit::git::free_port;
use gantry_testkit::http::{Seen, json_sink};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

// The storage directory lives as long as the process.
struct Gantry(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_gantry(namespace: &str) -> Gantry {
    let storage = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run",
            "--leader-elect=false",
            "--watch-namespace",
            namespace,
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
        .arg("--uptime-addr=127.0.0.1:0")
        .arg("--serving-addr=127.0.0.1:0")
        .arg("--serving-loopback-only=true")
        .arg("--storage-addr=127.0.0.1:0")
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting gantry run");
    Gantry(child, storage)
}

/// The stand-in application on loopback; stopped when the token is cancelled.
async fn stand_in(addr: &str) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    (bound, stop)
}

fn reasons(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn state(m: Option<&Monitor>) -> Option<String> {
    m.and_then(|m| m.status.as_ref())
        .and_then(|s| s.state.clone())
}

async fn wait_alert(seen: &Seen, reason: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = seen.lock().unwrap().iter().find(|e| e["reason"] == reason) {
            return e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} alert: {:?}",
            reasons(seen)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_monitor_goes_down_and_up_with_one_alert_each_and_events() {
    with_namespace("uptime", |client, ns| async move {
        install_crds(&client).await;
        let (addr, stop) = stand_in("127.0.0.1:0").await;
        let (seen, hook) = json_sink("alerts").await;
        let providers: Api<Provider> = Api::namespaced(client.clone(), &ns);
        let provider: Provider = serde_json::from_value(serde_json::json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1beta3",
            "kind": "Provider",
            "metadata": {"name": "hook"},
            "spec": {"type": "generic", "address": hook},
        }))
        .unwrap();
        providers.create(&PostParams::default(), &provider).await.unwrap();
        let monitors: Api<Monitor> = Api::namespaced(client.clone(), &ns);
        let monitor: Monitor = serde_json::from_value(serde_json::json!({
            "apiVersion": "uptime.gantry.dev/v1alpha1",
            "kind": "Monitor",
            "metadata": {"name": "web"},
            "spec": {
                "type": "http",
                "interval": "1s",
                "timeout": "1s",
                "failureThreshold": 2,
                "http": {"url": format!("http://{addr}/healthz")},
                "conditions": ["[STATUS] == 200"],
                "alerts": {"providerRefs": [{"name": "hook"}]},
            },
        }))
        .unwrap();
        monitors.create(&PostParams::default(), &monitor).await.unwrap();
        let bad: Monitor = serde_json::from_value(serde_json::json!({
            "apiVersion": "uptime.gantry.dev/v1alpha1",
            "kind": "Monitor",
            "metadata": {"name": "bad"},
            "spec": {"type": "http", "http": {"url": "http://127.0.0.1:1/"}, "conditions": ["[STATUS]==200"]},
        }))
        .unwrap();
        monitors.create(&PostParams::default(), &bad).await.unwrap();
        let _gantry = start_gantry(&ns);

        let up = wait_for(&monitors, "web", WAIT, |m| state(m).as_deref() == Some("UP")).await.unwrap();
        let status = up.status.unwrap();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Monitoring"));
        assert!(status.conditions.iter().any(|c| c.type_ == "Up" && c.status == "True"));

        let bad = wait_for(&monitors, "bad", WAIT, |m| {
            m.and_then(|m| m.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
        })
        .await
        .unwrap();
        let ready = bad.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(ready.message.contains("'[STATUS]==200' at position 8"), "{}", ready.message);

        stop.cancel();
        wait_for(&monitors, "web", WAIT, |m| state(m).as_deref() == Some("DOWN")).await;
        let down = wait_alert(&seen, "MonitorDown").await;
        assert_eq!(down["involvedObject"]["name"], "web");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(reasons(&seen), ["MonitorDown"], "exactly one alert while down");

        let (_addr, _stop) = stand_in(&addr.to_string()).await;
        wait_for(&monitors, "web", WAIT, |m| state(m).as_deref() == Some("UP")).await;
        let recovered = wait_alert(&seen, "MonitorUp").await;
        let outage: u64 = recovered["metadata"]["outageSeconds"].as_str().unwrap().parse().unwrap();
        assert!((1..90).contains(&outage), "{recovered}");
        assert_eq!(reasons(&seen), ["MonitorDown", "MonitorUp"]);

        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=web"))
            .await
            .unwrap();
        let seen_reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        assert!(seen_reasons.iter().any(|r| r == "MonitorDown"), "{seen_reasons:?}");
        assert!(seen_reasons.iter().any(|r| r == "MonitorUp"), "{seen_reasons:?}");
    })
    .await;
}

/// The outside watcher: `gantry uptime serve` (no Kubernetes) with a heartbeat Monitor, and
/// `gantry run --uptime-heartbeat-url` calling it: UP while the cluster's Gantry runs, DOWN once
/// it stops.
#[tokio::test]
async fn the_outside_watcher_notices_a_silent_cluster() {
    with_namespace("uptime-hb", |_client, ns| async move {
        let config = tempfile::tempdir().unwrap();
        let storage = tempfile::tempdir().unwrap();
        std::fs::write(
            config.path().join("watch.yaml"),
            r#"apiVersion: uptime.gantry.dev/v1alpha1
kind: Monitor
metadata: {name: cluster, namespace: watch}
spec:
  type: heartbeat
  interval: 2s
  timeout: 1s
  failureThreshold: 2
  heartbeat: {tokenSecretRef: {name: beat}}
---
apiVersion: v1
kind: Secret
metadata: {name: beat, namespace: watch}
stringData: {token: outside}
"#,
        )
        .unwrap();
        let port = free_port();
        let watcher = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["uptime", "serve", "--config"])
            .arg(config.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--storage-path")
            .arg(storage.path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry uptime serve");
        let _watcher = Gantry(watcher, tempfile::tempdir().unwrap());
        let path = gantry_uptime::plan::heartbeat_path("outside", "cluster", "watch");
        let storage2 = tempfile::tempdir().unwrap();
        let cluster = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "--leader-elect=false", "--watch-namespace", &ns])
            .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
            .arg("--uptime-addr=127.0.0.1:0")
            .arg("--serving-addr=127.0.0.1:0")
            .arg("--serving-loopback-only=true")
            .arg("--storage-addr=127.0.0.1:0")
            .arg(format!(
                "--uptime-heartbeat-url=http://127.0.0.1:{port}{path}"
            ))
            .arg("--uptime-heartbeat-interval=1s")
            .arg("--storage-path")
            .arg(storage2.path())
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry run");
        let mut cluster = Gantry(cluster, storage2);
        let http = gantry_runtime::http::client(&Default::default()).unwrap();
        let state = || {
            let http = http.clone();
            async move {
                let all: serde_json::Value = http
                    .get(format!("http://127.0.0.1:{port}/api/v1/monitors"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                all[0]["state"].as_str().map(str::to_string)
            }
        };
        let until = |want: &'static str| async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let now = state().await;
                if now.as_deref() == Some(want) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "watcher never saw {want}: {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        until("UP").await;
        let _ = cluster.0.kill();
        let _ = cluster.0.wait();
        until("DOWN").await;
    })
    .await;
}

//! `gantry uptime serve` loses neither history nor alerts when it stops (no Kubernetes needed):
//!
//! - SIGTERM while the history database (a real Postgres on loopback) is away: the results
//!   waiting in memory are written once it is back, before the process exits (bounded wait).
//! - SIGKILL between storing a DOWN transition and delivering its alert (the Provider refuses
//!   the first attempt; the process is killed at that moment): the restarted process sends the
//!   alert from the outbox, once, and then the recovery, once.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_testkit::git::free_port;
use gantry_testkit::postgres::Postgres;
use gantry_uptime_store::{Location, MonitorKey, Store, StoreConfig, now_ms};

const WAIT: Duration = Duration::from_secs(60);

/// A `gantry uptime serve` process, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(config: &std::path::Path, storage: &std::path::Path, extra: &[String]) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["uptime", "serve", "--config"])
        .arg(config)
        .arg(format!("--listen=127.0.0.1:{}", free_port()))
        .arg("--storage-path")
        .arg(storage)
        .args(extra)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting gantry uptime serve");
    Serve(child)
}

fn key(name: &str) -> MonitorKey {
    MonitorKey::new("default", name)
}

/// Waits for `child` to exit by itself, up to `within`.
fn exits_within(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for gantry") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "gantry did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_results_that_waited_for_the_database() {
    let mut pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    // Something to connect to: the Monitor stays UP, one result a second.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("m.yaml"),
        format!(
            "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: web}}\n\
             spec: {{type: tcp, interval: 1s, timeout: 1s, tcp: {{host: 127.0.0.1, port: {port}}}}}\n"
        ),
    )
    .unwrap();
    let mut gantry = serve(
        config.path(),
        storage.path(),
        &[format!("--database-url={url}")],
    );
    let location = Location::Postgres(url.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let store = Store::open(StoreConfig::new(location.clone()))
            .await
            .unwrap();
        let written = store.sample_count(&key("web")).await.unwrap();
        store.close().await.unwrap();
        if written >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no result written while Postgres was up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The database goes away; checks go on, their results wait in memory.
    tokio::task::block_in_place(|| pg.stop());
    let away = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = Command::new("sh") // the shell's builtin `kill` (procps' need not be installed)
        .args(["-c", &format!("kill -TERM {}", gantry.0.id())])
        .status()
        .unwrap();
    assert!(status.success());
    // It comes back after the signal: the process must still be waiting to write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| pg.start_again());
    let exit = tokio::task::block_in_place(|| exits_within(&mut gantry.0, WAIT));
    assert!(exit.success(), "gantry uptime serve exited with {exit}");

    let store = Store::open(StoreConfig::new(location)).await.unwrap();
    let last = store.last_state(&key("web")).expect("a state was written");
    assert!(
        last.last_at >= away + 2_000,
        "the results taken while Postgres was away were written before the exit: the last one \
         stored is from {} ms after it went away",
        last.last_at - away
    );
    let since_away = store.response_times(&key("web"), away).await.unwrap().len();
    assert!(
        since_away >= 3,
        "{since_away} results of the 4 s without Postgres were written"
    );
    store.close().await.unwrap();
    drop(pg);
}

/// The alert receiver: refuses (503) while `refuse` is set, counting the attempts; keeps the
/// alerts it accepted.
#[derive(Clone, Default)]
struct Receiver {
    refuse: Arc<AtomicBool>,
    refused: Arc<Mutex<Vec<String>>>,
    accepted: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    async fn start(self) -> String {
        let state = self.clone();
        let app =
            axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if state.refuse.load(Ordering::SeqCst) {
                        let reason = json["reason"].as_str().unwrap_or_default().to_string();
                        state.refused.lock().unwrap().push(reason);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    state.accepted.lock().unwrap().push(json);
                    axum::http::StatusCode::OK
                }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/alerts")
    }

    fn reasons(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_unsent_when_the_process_is_killed_is_sent_after_the_restart() {
    let receiver = Receiver::default();
    receiver.refuse.store(true, Ordering::SeqCst);
    let hook = receiver.clone().start().await;
    // Nothing listens there yet: DOWN at the first check.
    let web_port = free_port();
    let config = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("m.yaml"),
        format!(
            "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: web}}\n\
             spec: {{type: tcp, interval: 1s, timeout: 1s, failureThreshold: 1, \
             tcp: {{host: 127.0.0.1, port: {web_port}}}, \
             alerts: {{providerRefs: [{{name: hook}}]}}}}\n---\n\
             apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Provider\n\
             metadata: {{name: hook}}\nspec: {{type: generic, address: \"{hook}\"}}\n"
        ),
    )
    .unwrap();
    let first = serve(config.path(), storage.path(), &[]);
    // The first delivery attempt of the DOWN alert is refused, and the process is killed at
    // that moment: the transition is stored (alerts wait for it), the alert is not delivered.
    eventually("the first attempt of the DOWN alert", || {
        !receiver.refused.lock().unwrap().is_empty()
    })
    .await;
    drop(first);
    assert_eq!(
        *receiver.refused.lock().unwrap(),
        ["MonitorDown"],
        "one refused attempt before the kill"
    );
    assert!(receiver.reasons().is_empty());

    // The Provider is back; a new process on the same history sends the alert it finds.
    receiver.refuse.store(false, Ordering::SeqCst);
    let _second = serve(config.path(), storage.path(), &[]);
    eventually("the DOWN alert from the outbox", || {
        receiver.reasons().contains(&"MonitorDown".to_string())
    })
    .await;
    let down = receiver.accepted.lock().unwrap()[0].clone();
    assert_eq!(down["involvedObject"]["name"], "web", "{down}");

    // The endpoint comes up: the recovery is announced once, and the DOWN alert was not
    // repeated.
    let _web = tokio::net::TcpListener::bind(("127.0.0.1", web_port))
        .await
        .unwrap();
    eventually("the recovery alert", || {
        receiver.reasons().contains(&"MonitorUp".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.reasons(),
        ["MonitorDown", "MonitorUp"],
        "each alert delivered once: {:?}",
        receiver.accepted.lock().unwrap()
    );
}

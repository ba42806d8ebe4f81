//! `gantry uptime serve` reloads its configuration directory on SIGHUP: with a reload interval
//! of an hour, only the signal explains a new Monitor being scheduled, and the Monitor already
//! there keeps its state and history (no Kubernetes needed).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_testkit::git::free_port;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn monitor(name: &str, port: u16) -> String {
    format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: {name}}}\n\
         spec: {{type: tcp, interval: 1s, timeout: 1s, failureThreshold: 1, \
         tcp: {{host: 127.0.0.1, port: {port}}}}}\n"
    )
}

async fn monitors(http: &reqwest::Client, port: u16) -> Vec<serde_json::Value> {
    let Ok(response) = http
        .get(format!("http://127.0.0.1:{port}/api/v1/monitors"))
        .send()
        .await
    else {
        return Vec::new();
    };
    response.json().await.unwrap_or_default()
}

#[tokio::test]
async fn sighup_reloads_the_directory_and_keeps_states() {
    // Something to connect to for UP, and a port nothing listens on for DOWN.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = free_port();
    let config = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("a.yaml"), monitor("down", closed)).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["uptime", "serve", "--reload-interval=1h", "--config"])
        .arg(config.path())
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--storage-path")
        .arg(storage.path())
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting gantry uptime serve");
    let serve = Serve(child);
    let http = gantry_runtime::http::client(&Default::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let down_since = loop {
        let all = monitors(&http, port).await;
        if let Some(m) = all.iter().find(|m| m["state"] == "DOWN") {
            break m["lastChange"].clone();
        }
        assert!(Instant::now() < deadline, "never DOWN: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    std::fs::write(config.path().join("b.yaml"), monitor("up", open)).unwrap();
    let status = Command::new("sh") // the shell's builtin `kill` (procps' need not be installed)
        .args(["-c", &format!("kill -HUP {}", serve.0.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = monitors(&http, port).await;
        let state = |name: &str| {
            all.iter()
                .find(|m| m["key"]["name"] == name)
                .map(|m| m["state"].clone())
        };
        if state("up") == Some("UP".into()) {
            let down = all.iter().find(|m| m["key"]["name"] == "down").unwrap();
            assert_eq!(down["state"], "DOWN", "{all:?}");
            assert_eq!(down["lastChange"], down_since, "the state carried over");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not add the new Monitor: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(listener);
}

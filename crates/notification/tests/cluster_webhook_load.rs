//! The webhook server under many concurrent forged calls, against the test cluster: the API
//! server sees no request for them (the token comes from memory and the signature is checked
//! first), and each log line carries one `webhook` span (spans are not entered across `.await`).
//!
//! Alone in its test binary: it installs a global log subscriber, and it counts Secret GETs
//! cluster-wide (`apiserver_request_total` has no namespace label), so no other test of this
//! binary may read Secrets beside it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_api::meta::LocalObjectReference;
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_core::notification::webhook::{sign_sha256, webhook_path};
use gantry_notification::server::Limits;
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "load-token";
const CALLS: usize = 300;

/// Log lines written by the subscriber, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            lines.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Requests the API server has answered for Secrets, by verb, from its own `/metrics`.
async fn secret_requests(client: &Client) -> Vec<(String, f64)> {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut by_verb: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        if !labels.contains(r#"resource="secrets""#) {
            continue;
        }
        let verb = labels
            .split(r#"verb=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match by_verb.iter_mut().find(|(v, _)| *v == verb) {
            Some((_, n)) => *n += value,
            None => by_verb.push((verb, value)),
        }
    }
    by_verb
}

/// One POST over a raw connection: the head at once, the body only after `go` is released, so
/// that every call is parked in the server's body read at the same time.
async fn post_late_body(
    addr: std::net::SocketAddr,
    path: String,
    body: Vec<u8>,
    signature: String,
    heads_sent: Arc<tokio::sync::Barrier>,
    go: CancellationToken,
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\n\
         X-Hub-Signature-256: {signature}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    heads_sent.wait().await;
    go.cancelled().await;
    stream.write_all(&body).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn webhook_spans(line: &serde_json::Value) -> usize {
    line["spans"]
        .as_array()
        .map(|spans| spans.iter().filter(|s| s["name"] == "webhook").count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_calls_cost_no_api_request_and_log_one_span_each() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_span_list(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();

    with_namespace("webhook-load", |client, ns| async move {
        install_crds(&client).await;
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "token"}, "stringData": {"token": TOKEN}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let spec = ReceiverSpec {
            type_: "github".into(),
            secret_ref: Some(LocalObjectReference {
                name: "token".into(),
            }),
            resources: vec![ReceiverResource {
                kind: "GitRepository".into(),
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        receivers
            .create(&PostParams::default(), &Receiver::new("github", spec))
            .await
            .unwrap();

        // The Receiver controller makes it Ready and is stopped: it reads the Secret itself.
        let controller = CancellationToken::new();
        tokio::spawn(gantry_notification::receiver::run_controller(
            gantry_runtime::controller::Shared::new(client.clone()),
            Some(ns.clone()),
            controller.clone(),
        ));
        wait_for(&receivers, "github", Duration::from_secs(30), |r| {
            r.and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.webhook_path.is_some())
        })
        .await
        .unwrap();
        controller.cancel();

        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(gantry_notification::server::serve(
            listener,
            client.clone(),
            Some(ns.clone()),
            Limits::default(),
            stop.clone(),
        ));
        let path = webhook_path(TOKEN, "github", &ns);
        let http = reqwest::Client::new();
        let ping = br#"{"zen":"z","hook_id":1}"#.to_vec();
        let mut answered = 0;
        for _ in 0..100 {
            let response = http
                .post(format!("http://{addr}{path}"))
                .header("X-GitHub-Event", "ping")
                .header("X-Hub-Signature-256", sign_sha256(TOKEN.as_bytes(), &ping))
                .body(ping.clone())
                .send()
                .await;
            answered = response.map(|r| r.status().as_u16()).unwrap_or(0);
            if answered == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answered, 200, "the server serves the Receiver");
        // Let the controller's last reads settle before counting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = secret_requests(&client).await;

        let body = serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main", "before": "0".repeat(40), "after": "1".repeat(40),
            "repository": {"full_name": "org/app"}
        }))
        .unwrap();
        let forged = sign_sha256(b"not the token", &body);
        let heads_sent = Arc::new(tokio::sync::Barrier::new(CALLS + 1));
        let go = CancellationToken::new();
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                tokio::spawn(post_late_body(
                    addr,
                    path.clone(),
                    body.clone(),
                    forged.clone(),
                    heads_sent.clone(),
                    go.clone(),
                ))
            })
            .collect();
        heads_sent.wait().await;
        // Every handler is now waiting for its body, with its span.
        tokio::time::sleep(Duration::from_millis(500)).await;
        go.cancel();
        for call in calls {
            let response = call.await.unwrap();
            assert!(
                response.starts_with("HTTP/1.1 400"),
                "a forged call is refused: {response}"
            );
        }
        let after = secret_requests(&client).await;
        // GETs only: the namespace controller may still be emptying earlier tests' namespaces
        // (LIST, DELETECOLLECTION), and a watch is counted when it ends.
        let gets = |counts: &[(String, f64)]| {
            counts
                .iter()
                .find(|(verb, _)| verb == "GET")
                .map(|(_, n)| *n)
                .unwrap_or(0.0)
        };
        assert_eq!(
            gets(&after) - gets(&before),
            0.0,
            "{CALLS} forged calls must not read Secrets (before {before:?}, after {after:?})"
        );

        // One more line after the storm, from a fresh call.
        let response = http
            .post(format!("http://{addr}{path}"))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", forged.clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);

        let refused: Vec<serde_json::Value> = logs
            .lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == "webhook refused")
            .collect();
        assert_eq!(refused.len(), CALLS + 1, "one line per forged call");
        let nested: Vec<usize> = refused
            .iter()
            .map(webhook_spans)
            .filter(|&n| n != 1)
            .collect();
        assert!(
            nested.is_empty(),
            "every line carries exactly one webhook span; {} lines carry {:?}",
            nested.len(),
            nested.iter().take(10).collect::<Vec<_>>()
        );
        let last = refused.last().unwrap();
        assert_eq!(webhook_spans(last), 1, "{last}");
        let span = &last["spans"][0];
        assert_eq!(
            (span["name"].as_str(), span["name_"].as_str()),
            (Some("webhook"), None)
        );
        assert_eq!(span["namespace"], ns.as_str());
    })
    .await;
}

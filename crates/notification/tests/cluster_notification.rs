//! Receivers, the webhook server and the alert dispatcher against the test cluster, with real
//! loopback HTTP servers standing in for GitHub (as a webhook sender) and for Slack/Discord/
//! generic endpoints (recording what they receive, answering 200, 429 or 500, or too slowly).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use gantry_api::meta::LocalObjectReference;
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_api::notification::v1beta3::{
    Alert, AlertSpec, CrossNamespaceObjectReference, Provider, ProviderSpec,
};
use gantry_api::source::v1::{GitRepository, GitRepositorySpec};
use gantry_core::notification::webhook::{sign_sha256, webhook_path};
use gantry_notification::dispatch::{Dispatcher, MAX_ATTEMPTS};
use gantry_notification::server::Limits;
use gantry_runtime::events::{FluxEvent, Severity};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cr3t-token";
const WAIT: Duration = Duration::from_secs(30);

/// Cancels the background tasks of a test when dropped.
struct Running(CancellationToken);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

fn ready(r: Option<&Receiver>) -> Option<(String, String)> {
    let c = r?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// A GitHub push payload in GitHub's documented shape.
fn github_push() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "76ae82c7b1a177c8d03f9e96e0adf2466113728f",
        "created": false, "deleted": false, "forced": false,
        "repository": {"id": 1, "name": "app", "full_name": "org/app",
                       "clone_url": "https://github.com/org/app.git"},
        "pusher": {"name": "dev", "email": "dev@example.com"},
        "commits": [], "head_commit": null
    }))
    .unwrap()
}

async fn post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, String) {
    let http = reqwest::Client::new();
    let mut request = http.post(url).body(body);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn github_headers(event: &str, body: &[u8], token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", event.to_string()),
        (
            "X-GitHub-Delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        ),
        ("X-Hub-Signature-256", sign_sha256(token.as_bytes(), body)),
        ("Content-Type", "application/json".into()),
    ]
}

#[tokio::test]
async fn receiver_status_and_webhook_answers() {
    with_namespace("receiver", |client, ns| async move {
        install_crds(&client).await;
        let stop = CancellationToken::new();
        let _running = Running(stop.clone());
        tokio::spawn(gantry_notification::receiver::run_controller(
            gantry_runtime::controller::Shared::new(client.clone()),
            Some(ns.clone()),
            stop.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_body: 64 * 1024,
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        tokio::spawn(gantry_notification::server::serve(
            listener,
            client.clone(),
            Some(ns.clone()),
            limits,
            stop.clone(),
        ));

        // Two GitRepositories; the Receiver names one by name and the other by label.
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        for (name, team) in [("app", "a"), ("other", "b")] {
            let mut repo = GitRepository::new(
                name,
                GitRepositorySpec {
                    url: "https://git.example.invalid/app.git".into(),
                    interval: "10m".into(),
                    ..Default::default()
                },
            );
            repo.metadata.labels = Some(BTreeMap::from([("team".to_string(), team.to_string())]));
            repos.create(&PostParams::default(), &repo).await.unwrap();
        }
        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        let spec = ReceiverSpec {
            type_: "github".into(),
            events: vec!["push".into()],
            secret_ref: Some(LocalObjectReference {
                name: "webhook-token".into(),
            }),
            resources: vec![
                ReceiverResource {
                    kind: "GitRepository".into(),
                    name: "app".into(),
                    ..Default::default()
                },
                ReceiverResource {
                    kind: "GitRepository".into(),
                    name: "*".into(),
                    match_labels: BTreeMap::from([("team".to_string(), "b".to_string())]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        receivers
            .create(&PostParams::default(), &Receiver::new("github", spec))
            .await
            .unwrap();

        // Secret missing: not Ready, with the reason, and no path.
        let r = wait_for(&receivers, "github", WAIT, |r| {
            ready(r).is_some_and(|(s, reason)| s == "False" && reason == "TokenNotFound")
        })
        .await
        .unwrap();
        assert!(r.status.unwrap().webhook_path.is_none());

        secret(&client, &ns, "webhook-token", &[("token", TOKEN)]).await;
        let expected = webhook_path(TOKEN, "github", &ns);
        let r = wait_for(&receivers, "github", WAIT, |r| {
            ready(r).is_some_and(|(s, _)| s == "True")
        })
        .await
        .unwrap();
        assert_eq!(
            r.status.as_ref().unwrap().webhook_path.as_deref(),
            Some(expected.as_str())
        );
        let url = format!("http://{addr}{expected}");
        // The server's cache follows the status.
        let body = github_push();
        let mut tries = 0;
        loop {
            let (status, _) = post(
                &url,
                &github_headers("ping", br#"{"zen":"z","hook_id":1}"#, TOKEN),
                br#"{"zen":"z","hook_id":1}"#.to_vec(),
            )
            .await;
            if status == 200 || tries > 50 {
                assert_eq!(status, 200, "ping answered");
                break;
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Faults, each refused without touching the objects.
        let unknown = format!("http://{addr}/hook/{}", "0".repeat(64));
        assert_eq!(
            post(
                &unknown,
                &github_headers("push", &body, TOKEN),
                body.clone()
            )
            .await
            .0,
            404
        );
        let (status, message) =
            post(&url, &github_headers("push", &body, "wrong"), body.clone()).await;
        assert_eq!(
            (status, message.as_str()),
            (400, "the signature does not match the payload")
        );
        let no_signature = vec![("X-GitHub-Event", "push".to_string())];
        assert_eq!(post(&url, &no_signature, body.clone()).await.0, 400);
        let other_body = github_headers("push", b"{\"ref\":\"x\"}", TOKEN);
        assert_eq!(post(&url, &other_body, body.clone()).await.0, 400);
        let (status, message) =
            post(&url, &github_headers("release", &body, TOKEN), body.clone()).await;
        assert_eq!(status, 400, "replayed as a release: {message}");
        // The issue's replay: a captured signed ping sent as `Push` (any spelling).
        let ping = br#"{"zen":"x","hook_id":1,"hook":{}}"#.to_vec();
        for spelling in ["Push", "PUSH", "push"] {
            let (status, message) =
                post(&url, &github_headers(spelling, &ping, TOKEN), ping.clone()).await;
            assert_eq!(status, 400, "ping replayed as {spelling}: {message}");
        }
        let garbage = b"{not json".to_vec();
        assert_eq!(
            post(&url, &github_headers("push", &garbage, TOKEN), garbage)
                .await
                .0,
            400
        );
        let huge = vec![b' '; 65 * 1024];
        assert_eq!(
            post(&url, &github_headers("push", &huge, TOKEN), huge)
                .await
                .0,
            413
        );
        let annotated = |r: &GitRepository| {
            r.annotations()
                .contains_key("reconcile.fluxcd.io/requestedAt")
        };
        assert!(
            !annotated(&repos.get("app").await.unwrap()),
            "faults annotate nothing"
        );

        // A slow client that never finishes its headers is disconnected.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
            slow.write_all(b"POST /hook/x HTTP/1.1\r\nHost: a\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
            assert!(closed.is_ok(), "the server closed the slow connection");
        }

        // A valid push annotates the named repository and the labelled one.
        let started = std::time::Instant::now();
        let (status, message) =
            post(&url, &github_headers("push", &body, TOKEN), body.clone()).await;
        assert_eq!(status, 200, "{message}");
        println!("webhook answered after {:?}", started.elapsed());
        assert!(annotated(&repos.get("app").await.unwrap()));
        assert!(annotated(&repos.get("other").await.unwrap()));

        // A resource that does not exist: the call fails as a whole with 500 (partial failure).
        let patch = serde_json::json!({"spec": {"resources": [
            {"kind": "GitRepository", "name": "app"},
            {"kind": "GitRepository", "name": "missing"}
        ]}});
        receivers
            .patch("github", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let mut status = 0;
        for _ in 0..50 {
            status = post(&url, &github_headers("push", &body, TOKEN), body.clone())
                .await
                .0;
            if status == 500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 500, "partial failure");

        // Suspended: 503.
        let patch = serde_json::json!({"spec": {"suspend": true}});
        receivers
            .patch("github", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let mut status = 0;
        for _ in 0..50 {
            status = post(&url, &github_headers("push", &body, TOKEN), body.clone())
                .await
                .0;
            if status == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 503, "suspended");
    })
    .await;
}

/// Status, `Retry-After`, delay before answering.
type Reply = (u16, Option<&'static str>, Duration);

/// A loopback endpoint that records requests and answers from a script (then 200).
#[derive(Clone, Default)]
struct Endpoint {
    requests: Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Endpoint {
    async fn start(script: Vec<Reply>) -> (Self, String, CancellationToken) {
        let endpoint = Endpoint::default();
        endpoint.script.lock().unwrap().extend(script);
        let app = axum::Router::new()
            .fallback(axum::routing::post(record))
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        (endpoint, format!("http://{addr}"), stop)
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn record(
    State(endpoint): State<Endpoint>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap, String) {
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    endpoint.requests.lock().unwrap().push((headers, json));
    let next = endpoint.script.lock().unwrap().pop_front();
    let (code, retry_after, delay) = next.unwrap_or((200, None, Duration::ZERO));
    tokio::time::sleep(delay).await;
    let mut out = HeaderMap::new();
    if let Some(r) = retry_after {
        out.insert("retry-after", r.parse().unwrap());
    }
    let body = match code {
        200 => "ok".to_string(),
        429 => "rate_limited".to_string(),
        _ => "internal error".to_string(),
    };
    (StatusCode::from_u16(code).unwrap(), out, body)
}

fn flux_event(ns: &str, name: &str, severity: Severity, message: &str) -> FluxEvent {
    FluxEvent {
        involved_object: ObjectReference {
            kind: Some("Kustomization".into()),
            namespace: Some(ns.into()),
            name: Some(name.into()),
            api_version: Some("kustomize.toolkit.fluxcd.io/v1".into()),
            ..Default::default()
        },
        severity,
        timestamp: jiff::Timestamp::now(),
        message: message.into(),
        reason: match severity {
            Severity::Info => "ReconciliationSucceeded".into(),
            Severity::Error => "HealthCheckFailed".into(),
        },
        metadata: BTreeMap::from([(
            "kustomize.toolkit.fluxcd.io/revision".to_string(),
            format!("main@sha1:{}", "ab".repeat(20)),
        )]),
        reporting_controller: "kustomize-controller".into(),
    }
}

async fn provider(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    address: &str,
    timeout: &str,
) {
    let spec = ProviderSpec {
        type_: type_.into(),
        address: Some(address.into()),
        channel: Some("#deploys".into()),
        timeout: Some(timeout.into()),
        ..Default::default()
    };
    Api::<Provider>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &Provider::new(name, spec))
        .await
        .unwrap();
}

async fn alert(client: &Client, ns: &str, name: &str, provider: &str, kustomization: &str) {
    let spec = AlertSpec {
        provider_ref: LocalObjectReference {
            name: provider.into(),
        },
        event_sources: vec![CrossNamespaceObjectReference {
            kind: "Kustomization".into(),
            name: kustomization.into(),
            ..Default::default()
        }],
        event_metadata: BTreeMap::from([("cluster".to_string(), "test".to_string())]),
        ..Default::default()
    };
    Api::<Alert>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &Alert::new(name, spec))
        .await
        .unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn warnings(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn alerts_reach_providers_with_retries_and_report_failures() {
    with_namespace("alerts", |client, ns| async move {
        install_crds(&client).await;
        let ms = Duration::from_millis;
        let (slack, slack_url, s1) = Endpoint::start(vec![(429, Some("1"), ms(0))]).await;
        let (discord, discord_url, s2) = Endpoint::start(vec![]).await;
        let (broken, broken_url, s3) = Endpoint::start(vec![(500, None, ms(0)); 10]).await;
        let (slow, slow_url, s4) =
            Endpoint::start(vec![(200, None, Duration::from_secs(5)); 10]).await;
        let _stops = [Running(s1), Running(s2), Running(s3), Running(s4)];
        provider(
            &client,
            &ns,
            "slack",
            "slack",
            &format!("{slack_url}/services/T0/B0/x"),
            "5s",
        )
        .await;
        provider(
            &client,
            &ns,
            "discord",
            "discord",
            &format!("{discord_url}/api/webhooks/1/t"),
            "5s",
        )
        .await;
        provider(&client, &ns, "broken", "generic", &broken_url, "5s").await;
        provider(&client, &ns, "slow", "generic", &slow_url, "500ms").await;
        alert(&client, &ns, "to-slack", "slack", "web").await;
        alert(&client, &ns, "to-discord", "discord", "web").await;
        alert(&client, &ns, "to-broken", "broken", "db").await;
        alert(&client, &ns, "to-slow", "slow", "cache").await;
        alert(&client, &ns, "to-nowhere", "missing", "web").await;

        let stop = CancellationToken::new();
        let _running = Running(stop.clone());
        let mut dispatcher =
            Dispatcher::start(client.clone(), Some(ns.clone()), stop.clone()).await;
        Arc::get_mut(&mut dispatcher).unwrap().retry_base = ms(100);
        let stats = dispatcher.stats.clone();

        dispatcher
            .clone()
            .dispatch(flux_event(
                &ns,
                "web",
                Severity::Error,
                "health check failed",
            ))
            .await;
        // Slack answered 429 with Retry-After: 1 first; the retry came after it and succeeded.
        wait_until("slack got the retry", || slack.count() == 2).await;
        let (_, body) = slack.requests.lock().unwrap()[1].clone();
        assert_eq!(body["channel"], "#deploys");
        assert_eq!(body["attachments"][0]["color"], "danger");
        assert_eq!(body["attachments"][0]["text"], "health check failed");
        wait_until("discord got it", || discord.count() == 1).await;
        assert_eq!(
            discord.requests.lock().unwrap()[0].1["attachments"][0]["author_name"],
            format!("kustomization/web.{ns}")
        );

        // The same event again within the window is suppressed.
        dispatcher
            .clone()
            .dispatch(flux_event(
                &ns,
                "web",
                Severity::Error,
                "health check failed",
            ))
            .await;
        tokio::time::sleep(ms(500)).await;
        assert_eq!(discord.count(), 1, "duplicate suppressed");

        // 500 forever: retried, bounded, reported as a Warning event on the Alert.
        dispatcher
            .clone()
            .dispatch(flux_event(&ns, "db", Severity::Error, "db failed"))
            .await;
        wait_until("broken retried", || broken.count() == MAX_ATTEMPTS as usize).await;
        tokio::time::sleep(ms(1500)).await;
        assert_eq!(
            broken.count(),
            MAX_ATTEMPTS as usize,
            "no more than MAX_ATTEMPTS"
        );
        // Slow: every attempt times out after 500ms.
        dispatcher
            .clone()
            .dispatch(flux_event(&ns, "cache", Severity::Info, "applied"))
            .await;

        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let failed = warnings(&client, &ns, "NotificationFailed").await;
            let missing = warnings(&client, &ns, "ProviderNotFound").await;
            let broken_reported = failed.iter().any(|m| m.contains("500"));
            let slow_reported = failed.iter().any(|m| m.contains("slow"));
            if broken_reported && slow_reported && !missing.is_empty() {
                assert!(
                    missing[0].contains("provider 'missing' not found"),
                    "{missing:?}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "failures reported: {failed:?} {missing:?}"
            );
            tokio::time::sleep(ms(200)).await;
        }
        assert!(slow.count() >= 2, "the slow endpoint was retried");
        // A down endpoint (nothing listens) fails the same way, without blocking anything.
        drop(_stops);
        assert!(stats.failed.load(std::sync::atomic::Ordering::Relaxed) >= 3);
        assert!(stats.retried.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    })
    .await;
}

/// Starts the Receiver controller and a webhook server with `limits` for a `github` Receiver
/// of the GitRepository `app`; returns the webhook URL once the server serves it.
async fn serve_github_receiver(
    client: &Client,
    ns: &str,
    limits: Limits,
    stop: &CancellationToken,
) -> String {
    tokio::spawn(gantry_notification::receiver::run_controller(
        gantry_runtime::controller::Shared::new(client.clone()),
        Some(ns.to_string()),
        stop.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gantry_notification::server::serve(
        listener,
        client.clone(),
        Some(ns.to_string()),
        limits,
        stop.clone(),
    ));
    let repo = GitRepository::new(
        "app",
        GitRepositorySpec {
            url: "https://git.example.invalid/app.git".into(),
            interval: "10m".into(),
            ..Default::default()
        },
    );
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    if repos.get_opt("app").await.unwrap().is_none() {
        repos.create(&PostParams::default(), &repo).await.unwrap();
        secret(client, ns, "webhook-token", &[("token", TOKEN)]).await;
    }
    let spec = ReceiverSpec {
        type_: "github".into(),
        secret_ref: Some(LocalObjectReference {
            name: "webhook-token".into(),
        }),
        resources: vec![ReceiverResource {
            kind: "GitRepository".into(),
            name: "app".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let receivers: Api<Receiver> = Api::namespaced(client.clone(), ns);
    if receivers.get_opt("github").await.unwrap().is_none() {
        receivers
            .create(&PostParams::default(), &Receiver::new("github", spec))
            .await
            .unwrap();
    }
    let url = format!("http://{addr}{}", webhook_path(TOKEN, "github", ns));
    let ping = br#"{"zen":"z","hook_id":1}"#.to_vec();
    for _ in 0..100 {
        if post(&url, &github_headers("ping", &ping, TOKEN), ping.clone())
            .await
            .0
            == 200
        {
            return url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the webhook server never served the Receiver at {url}");
}

#[tokio::test]
async fn concurrent_calls_share_patches_each_written_after_its_arrival() {
    with_namespace("coalesce", |client, ns| async move {
        install_crds(&client).await;
        let stop = CancellationToken::new();
        let _running = Running(stop.clone());
        let url = serve_github_receiver(&client, &ns, Limits::default(), &stop).await;

        // Every value of requestedAt the API server stores, from a watch.
        let seen = Arc::new(Mutex::new(Vec::<jiff::Timestamp>::new()));
        let record = seen.clone();
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let watch = kube::runtime::watcher(repos.clone(), Default::default());
        let stop_watch = stop.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::WatchStreamExt;
            let mut objects = std::pin::pin!(watch.applied_objects());
            loop {
                let next = tokio::select! {
                    next = objects.next() => next,
                    _ = stop_watch.cancelled() => return,
                };
                let Some(Ok(repo)) = next else { continue };
                if let Some(at) = repo.annotations().get("reconcile.fluxcd.io/requestedAt") {
                    let at: jiff::Timestamp = at.parse().unwrap();
                    let mut seen = record.lock().unwrap();
                    if !seen.contains(&at) {
                        seen.push(at);
                    }
                }
            }
        });

        const CALLS: usize = 50;
        let body = github_push();
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                tokio::spawn(async move {
                    let sent = jiff::Timestamp::now();
                    let (status, message) =
                        post(&url, &github_headers("push", &body, TOKEN), body).await;
                    (sent, status, message, jiff::Timestamp::now())
                })
            })
            .collect();
        let mut answered = Vec::new();
        for call in calls {
            let (sent, status, message, done) = call.await.unwrap();
            assert_eq!(status, 200, "{message}");
            answered.push((sent, done));
        }
        let last_sent = answered.iter().map(|(s, _)| *s).max().unwrap();
        wait_until("the watch sees the last patch", || {
            seen.lock().unwrap().iter().any(|at| *at > last_sent)
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        // Each call was answered by a patch stamped after it was sent, and before its answer.
        for (sent, done) in &answered {
            assert!(
                seen.iter().any(|at| at > sent && at <= done),
                "no requestedAt in ({sent}, {done}]: {seen:?}"
            );
        }
        println!("{CALLS} concurrent calls, {} patches", seen.len());
        assert!(
            seen.len() <= CALLS / 2,
            "{CALLS} concurrent calls for one object share patches, {} were made",
            seen.len()
        );
    })
    .await;
}

#[tokio::test]
async fn a_patch_past_its_deadline_is_answered_503_with_retry_after() {
    with_namespace("deadline", |client, ns| async move {
        install_crds(&client).await;
        let stop = CancellationToken::new();
        let _running = Running(stop.clone());
        // No patch finishes in no time: every verified call passes its deadline.
        let limits = Limits {
            reconcile_deadline: Duration::ZERO,
            ..Limits::default()
        };
        let url = serve_github_receiver(&client, &ns, limits, &stop).await;
        let body = github_push();
        let http = reqwest::Client::new();
        let mut request = http.post(&url).body(body.clone());
        for (k, v) in github_headers("push", &body, TOKEN) {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
    })
    .await;
}

#[tokio::test]
async fn a_rotated_or_deleted_token_takes_effect_from_the_secrets_watch() {
    with_namespace("rotate", |client, ns| async move {
        install_crds(&client).await;
        let stop = CancellationToken::new();
        let _running = Running(stop.clone());
        let url = serve_github_receiver(&client, &ns, Limits::default(), &stop).await;
        let body = github_push();
        let (status, message) =
            post(&url, &github_headers("push", &body, TOKEN), body.clone()).await;
        assert_eq!(status, 200, "{message}");

        // Rotated: the old path (derived from the old token) stops working at once, without
        // waiting for the Receiver's interval.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let rotated = serde_json::json!({"stringData": {"token": "rotated-token"}});
        secrets
            .patch(
                "webhook-token",
                &PatchParams::default(),
                &Patch::Merge(&rotated),
            )
            .await
            .unwrap();
        let mut status = 0;
        for _ in 0..100 {
            status = post(&url, &github_headers("push", &body, TOKEN), body.clone())
                .await
                .0;
            if status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 404, "the old token's path after rotation");

        // Deleted: the token is gone, calls are refused as unavailable.
        secrets
            .delete("webhook-token", &Default::default())
            .await
            .unwrap();
        let mut answer = (0, String::new());
        for _ in 0..100 {
            answer = post(&url, &github_headers("push", &body, TOKEN), body.clone()).await;
            if answer.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer.0, 503, "{}", answer.1);
    })
    .await;
}

#[tokio::test]
async fn a_deleted_receiver_leaves_no_metrics() {
    with_namespace("receiver-delete", |client, ns| async move {
        install_crds(&client).await;
        let stop = CancellationToken::new();
        let _running = Running(stop.clone());
        let shared = gantry_runtime::controller::Shared::new(client.clone());
        let metrics = shared.metrics.clone();
        tokio::spawn(gantry_notification::receiver::run_controller(
            shared,
            Some(ns.clone()),
            stop.clone(),
        ));
        // Its token Secret does not exist: Ready=False, exported as such.
        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        let spec = ReceiverSpec {
            type_: "github".into(),
            secret_ref: Some(LocalObjectReference {
                name: "missing".into(),
            }),
            resources: vec![ReceiverResource {
                kind: "GitRepository".into(),
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        receivers
            .create(&PostParams::default(), &Receiver::new("doomed", spec))
            .await
            .unwrap();
        wait_for(&receivers, "doomed", WAIT, |r| {
            ready(r).is_some_and(|(status, _)| status == "False")
        })
        .await;
        let series = || {
            metrics
                .encode()
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("name=\"doomed\""))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        wait_until("the failure is exported", || {
            series().iter().any(|l| {
                l.starts_with("gotk_reconcile_condition{") && l.contains("status=\"False\"")
            })
        })
        .await;

        receivers
            .delete("doomed", &Default::default())
            .await
            .unwrap();
        wait_for(&receivers, "doomed", WAIT, |r| r.is_none()).await;
        assert_eq!(series(), Vec::<String>::new());
    })
    .await;
}

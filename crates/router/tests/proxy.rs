//! The data path end to end over real HTTP, with loopback stand-in servers as pods and the
//! stand-in scaler as the cluster. Every test checks that each backend connection went to
//! 127.0.0.0/8 and none was refused by the dial guard.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_core::serving::autoscale::Settings;
use gantry_router::metrics::RouterMetrics;
use gantry_router::table::{Endpoint, RevisionConfig, RevisionKey, Target};
use gantry_router::{Router, RouterSettings, proxy};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use support::{Handle, StandInScaler, client, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "hello.team.example.com";

struct Setup {
    router: Router,
    addr: SocketAddr,
    scaler: Arc<StandInScaler>,
    key: RevisionKey,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn setup(settings: RouterSettings, config: RevisionConfig, scaler: StandInScaler) -> Setup {
    let scaler = Arc::new(scaler);
    let settings = RouterSettings {
        loopback_only: true,
        ..settings
    };
    let router = Router::new(
        settings,
        Arc::new(Handle(scaler.clone())),
        RouterMetrics::default(),
    );
    scaler.attach(&router);
    let key = RevisionKey::new("team", "hello-00001");
    router.set_revision(&key, config);
    router.set_replicas(&key, 0);
    router.set_route(
        HOST,
        &[Target {
            revision: key.clone(),
            percent: 100,
        }],
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _) = proxy::bind(router.clone(), "127.0.0.1:0".parse().unwrap(), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    Setup {
        router,
        addr,
        scaler,
        key,
        _stop: tx,
    }
}

fn assert_loopback_only(router: &Router) {
    let g = router.dial_guard();
    assert_eq!(
        g.refused.load(Ordering::SeqCst),
        0,
        "the dial guard refused a destination"
    );
    assert_eq!(
        g.other.load(Ordering::SeqCst),
        0,
        "a connection left 127.0.0.0/8"
    );
    assert!(
        g.loopback.load(Ordering::SeqCst) > 0,
        "no backend connection was made at all"
    );
}

fn served_once(scaler: &StandInScaler, ids: impl Iterator<Item = String>) {
    let mut served: HashMap<String, u32> = HashMap::new();
    for pod in scaler.all_pods() {
        for (id, n) in pod.stats.served.lock().unwrap().iter() {
            *served.entry(id.clone()).or_default() += n;
        }
    }
    for id in ids {
        assert_eq!(
            served.get(&id).copied(),
            Some(1),
            "request {id} served {:?} times",
            served.get(&id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_at_zero_twenty_times() {
    let s = setup(
        RouterSettings::default(),
        RevisionConfig::default(),
        StandInScaler::default(),
    )
    .await;
    let c = client();
    for i in 0..20 {
        let (status, body, _) = get(&c, s.addr, HOST, "/", &format!("r{i}")).await;
        assert_eq!(status, StatusCode::OK, "run {i}: {body}");
        // Back to zero, as the autoscaler would.
        s.scaler.set(&s.key, 0).await;
    }
    assert_eq!(s.scaler.wakes(), 20, "each run woke the revision once");
    // Each wake's first byte is recorded once (warm requests skip that bookkeeping).
    let mut registry = prometheus_client::registry::Registry::default();
    s.router.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let count = text
        .lines()
        .find(|l| l.starts_with("gantry_serving_cold_start_seconds_count{phase=\"first_byte\"}"))
        .unwrap_or_else(|| panic!("no first_byte series in:\n{text}"));
    assert!(count.ends_with(" 20"), "{count}");
    served_once(&s.scaler, (0..20).map(|i| format!("r{i}")));
    assert_loopback_only(&s.router);
}

async fn concurrent_at_zero(n: usize) {
    let scaler = StandInScaler {
        start_delay: Duration::from_millis(200),
        ..Default::default()
    };
    let s = setup(RouterSettings::default(), RevisionConfig::default(), scaler).await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = c.clone();
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            get(&c, addr, HOST, "/", &format!("c{i}")).await
        }));
    }
    for t in tasks {
        let (status, body, _) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(s.scaler.wakes(), 1, "the wake is deduplicated");
    served_once(&s.scaler, (0..n).map(|i| format!("c{i}")));
    let total: u64 = s.scaler.all_pods().iter().map(|p| p.served_total()).sum();
    assert_eq!(total, n as u64, "nothing served twice");
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_at_zero_each_served_once() {
    concurrent_at_zero(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_at_zero_each_served_once() {
    concurrent_at_zero(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_becomes_ready_gives_504_at_the_timeout() {
    let config = RevisionConfig {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let scaler = StandInScaler {
        never_ready: true,
        ..Default::default()
    };
    let s = setup(RouterSettings::default(), config, scaler).await;
    let started = Instant::now();
    let (status, _, retry) = get(&client(), s.addr, HOST, "/", "x").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(retry.is_some(), "504 carries Retry-After");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the timeout"
    );
    assert_eq!(s.scaler.wakes(), 1);
    // The prober tried the (loopback) pod address.
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_limit_answers_503() {
    let config = RevisionConfig {
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let scaler = StandInScaler {
        never_ready: true,
        ..Default::default()
    };
    let settings = RouterSettings {
        queue_limit: 5,
        ..Default::default()
    };
    let s = setup(settings, config, scaler).await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            get(&c, addr, HOST, "/", &format!("q{i}")).await
        }));
    }
    let mut by_status: HashMap<StatusCode, usize> = HashMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap().0).or_default() += 1;
    }
    assert_eq!(
        by_status.get(&StatusCode::SERVICE_UNAVAILABLE),
        Some(&5),
        "{by_status:?}"
    );
    assert_eq!(
        by_status.get(&StatusCode::GATEWAY_TIMEOUT),
        Some(&5),
        "{by_status:?}"
    );
}

async fn warm_pair(s: &Setup) -> (RevisionKey, SocketAddr, SocketAddr) {
    let old = s.key.clone();
    let new = RevisionKey::new("team", "hello-00002");
    s.router.set_revision(&new, RevisionConfig::default());
    s.scaler.set(&old, 1).await;
    s.scaler.set(&new, 1).await;
    let addr_of = |k: &RevisionKey| s.scaler.pods.lock().unwrap()[k][0].addr;
    let (a, b) = (addr_of(&old), addr_of(&new));
    (new, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_20_split_holds_over_2000_requests() {
    let s = setup(
        RouterSettings::default(),
        RevisionConfig::default(),
        StandInScaler::default(),
    )
    .await;
    let (new, a, b) = warm_pair(&s).await;
    s.router.set_route(
        HOST,
        &[
            Target {
                revision: s.key.clone(),
                percent: 80,
            },
            Target {
                revision: new,
                percent: 20,
            },
        ],
    );
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for chunk in 0..100 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let c = c.clone();
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                get(&c, addr, HOST, "/", &format!("s{chunk}-{i}")).await
            }));
        }
        for t in tasks {
            let (status, body, _) = t.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            *counts.entry(body).or_default() += 1;
        }
    }
    let share_a = counts[&a.to_string()] as f64 / 2000.0;
    let share_b = counts[&b.to_string()] as f64 / 2000.0;
    assert!((share_a - 0.8).abs() <= 0.05, "{counts:?}");
    assert!((share_b - 0.2).abs() <= 0.05, "{counts:?}");
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_route_reaches_only_its_revision() {
    let s = setup(
        RouterSettings::default(),
        RevisionConfig::default(),
        StandInScaler::default(),
    )
    .await;
    let (new, a, b) = warm_pair(&s).await;
    let tag_host = "candidate-hello.team.example.com";
    s.router.set_route(
        tag_host,
        &[Target {
            revision: new,
            percent: 100,
        }],
    );
    let c = client();
    for i in 0..20 {
        let (status, body, _) = get(&c, s.addr, tag_host, "/", &format!("t{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b.to_string());
        let (_, body, _) = get(&c, s.addr, &format!("{HOST}:80"), "/", &format!("m{i}")).await;
        assert_eq!(
            body,
            a.to_string(),
            "the main host (port ignored) keeps its revision"
        );
    }
    let (status, _, _) = get(&c, s.addr, "nobody.team.example.com", "/", "n").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_never_gives_a_pod_two_requests() {
    let config = RevisionConfig {
        container_concurrency: 1,
        ..Default::default()
    };
    let s = setup(RouterSettings::default(), config, StandInScaler::default()).await;
    s.scaler.set(&s.key, 2).await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            get(&c, addr, HOST, "/sleep?ms=30", &format!("k{i}")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    let pods = s.scaler.live_pods();
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(
            p.stats.max_in_flight.load(Ordering::SeqCst),
            1,
            "pod {} had two at once",
            p.addr
        );
        assert!(p.served_total() > 0, "least-in-flight used both pods");
    }
    served_once(&s.scaler, (0..40).map(|i| format!("k{i}")));
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_at_zero_works_and_counts_in_flight() {
    let s = setup(
        RouterSettings::default(),
        RevisionConfig::default(),
        StandInScaler::default(),
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let hello = format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    conn.write_all(hello.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            conn.read(&mut byte).await.unwrap(),
            1,
            "connection closed during the handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in ["ping", "pong-pong"] {
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    let rev = s.router.revision(&s.key);
    assert_eq!(
        rev.in_flight.load(Ordering::SeqCst),
        1,
        "an open WebSocket is in flight"
    );
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rev.in_flight.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket stayed in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_and_count_in_flight() {
    let s = setup(
        RouterSettings::default(),
        RevisionConfig::default(),
        StandInScaler::default(),
    )
    .await;
    let req = http::Request::get(format!("http://{}/sse", s.addr))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        &first[..],
        b"data: 0\n\n",
        "the first event arrives before the stream ends"
    );
    let rev = s.router.revision(&s.key);
    assert_eq!(
        rev.in_flight.load(Ordering::SeqCst),
        1,
        "an open stream is in flight"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: 1\n\ndata: 2\n\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rev.in_flight.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_passes_through() {
    let config = RevisionConfig {
        h2c: true,
        ..Default::default()
    };
    let s = setup(RouterSettings::default(), config, StandInScaler::default()).await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("http://{}/", s.addr))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let pods = s.scaler.all_pods();
    assert_eq!(
        pods[0].stats.versions.lock().unwrap().as_slice(),
        &[http::Version::HTTP_2]
    );
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_guard_refuses_addresses_off_the_machine() {
    let config = RevisionConfig {
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = setup(RouterSettings::default(), config, StandInScaler::default()).await;
    // A pod address as kwok hands out by default: must never be dialled.
    s.router.set_endpoints(
        &s.key,
        &[Endpoint {
            addr: "10.244.0.5:8080".parse().unwrap(),
        }],
    );
    s.router.set_replicas(&s.key, 1);
    let (status, _, _) = get(&client(), s.addr, HOST, "/", "g").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let g = s.router.dial_guard();
    assert!(g.refused.load(Ordering::SeqCst) > 0);
    assert_eq!(g.other.load(Ordering::SeqCst), 0);
}

/// A router with default per-Revision settings whose Revision has one ready pod.
async fn one_warm_pod(settings: RouterSettings) -> Setup {
    let s = setup(
        settings,
        RevisionConfig::default(),
        StandInScaler::default(),
    )
    .await;
    s.scaler.set(&s.key, 1).await;
    s
}

/// Sends `n` GETs of `path` at once (ids `<prefix><i>`) and asserts every one is answered 200.
async fn all_ok_at_once(c: &support::Client, addr: SocketAddr, path: &str, prefix: &str, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, path, id) = (c.clone(), path.to_string(), format!("{prefix}{i}"));
            tokio::spawn(async move { get(&c, addr, HOST, &path, &id).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
}

/// Polls `done` every 20 ms until it holds, failing after `limit` with `what`.
async fn eventually(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_requests_reuse_the_pods_connections() {
    let s = one_warm_pod(RouterSettings::default()).await;
    let c = client();
    for i in 0..200 {
        let (status, body, _) = get(&c, s.addr, HOST, "/", &format!("w{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let pod = s.scaler.live_pods()[0].clone();
    assert_eq!(
        pod.stats.conns_used.load(Ordering::SeqCst),
        1,
        "200 requests one after another on one kept-alive connection"
    );
    for round in 0..5 {
        all_ok_at_once(&c, s.addr, "/", &format!("p{round}-"), 20).await;
    }
    let used = pod.stats.conns_used.load(Ordering::SeqCst);
    assert!(
        used <= 20,
        "{used} connections for at most 20 requests at once"
    );
    served_once(&s.scaler, (0..200).map(|i| format!("w{i}")));
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_leaves_the_table_has_its_connections_closed() {
    let s = one_warm_pod(RouterSettings::default()).await;
    let c = client();
    all_ok_at_once(&c, s.addr, "/sleep?ms=100", "l", 10).await;
    let pod = s.scaler.live_pods()[0].clone();
    assert!(pod.stats.conns_open.load(Ordering::SeqCst) > 0);
    // The pod leaves the Revision (its server keeps running, as a terminating pod's may).
    s.router.set_endpoints(&s.key, &[]);
    eventually(
        Duration::from_secs(10),
        "the router kept connections to a pod that left",
        || pod.stats.conns_open.load(Ordering::SeqCst) == 0,
    )
    .await;
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_pod_closes_are_not_reused() {
    let s = one_warm_pod(RouterSettings::default()).await;
    let c = client();
    for i in 0..50 {
        let (status, body, _) = get(&c, s.addr, HOST, "/close", &format!("x{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let pod = s.scaler.live_pods()[0].clone();
    assert_eq!(
        pod.stats.conns_used.load(Ordering::SeqCst),
        50,
        "a connection the pod closes carries one request"
    );
    // Kept connections, then the pod's server restarts on the same address: all of them break.
    for i in 0..20 {
        assert_eq!(
            get(&c, s.addr, HOST, "/", &format!("y{i}")).await.0,
            StatusCode::OK
        );
    }
    let state = s.router.revision(&s.key).pods()[0].clone();
    assert!(!state.conns.is_empty(), "a connection is kept");
    pod.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        match tokio::net::TcpListener::bind(pod.addr).await {
            Ok(l) => {
                drop(l);
                break support::StandIn::start(pod.addr.ip(), pod.addr.port()).await;
            }
            Err(e) => assert!(Instant::now() < deadline, "rebinding {}: {e}", pod.addr),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eventually(
        Duration::from_secs(10),
        "the router noticed its connections closing",
        || state.conns.is_empty(),
    )
    .await;
    for i in 0..20 {
        let (status, body, _) = get(&c, s.addr, HOST, "/", &format!("z{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(restarted.served_total(), 20);
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_per_pod_are_bounded() {
    let settings = RouterSettings {
        max_idle_per_pod: 2,
        ..Default::default()
    };
    let s = one_warm_pod(settings).await;
    let c = client();
    all_ok_at_once(&c, s.addr, "/sleep?ms=500", "b", 10).await;
    let pod = s.scaler.live_pods()[0].clone();
    let used = pod.stats.conns_used.load(Ordering::SeqCst);
    assert!(used > 2, "requests at once took {used} connections");
    let state = s.router.revision(&s.key).pods()[0].clone();
    assert!(state.conns.len() <= 2, "{} idle", state.conns.len());
    eventually(
        Duration::from_secs(10),
        "connections beyond the idle bound stayed open",
        || pod.stats.conns_open.load(Ordering::SeqCst) <= 2,
    )
    .await;
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_path_dials_through_the_guard() {
    let config = RevisionConfig {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    // One probe per pod (then an hour's wait), so a later refusal is the forward's own dial.
    let settings = RouterSettings {
        probe_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let s = setup(settings, config, StandInScaler::default()).await;
    s.router.set_endpoints(
        &s.key,
        &[Endpoint {
            addr: "10.244.0.5:8080".parse().unwrap(),
        }],
    );
    s.router.set_replicas(&s.key, 1);
    let g = s.router.dial_guard();
    eventually(Duration::from_secs(10), "the probe was not refused", || {
        g.refused.load(Ordering::SeqCst) == 1
    })
    .await;
    // As if the pod had passed its probe: the request goes to the forward path's dial.
    for p in s.router.revision(&s.key).pods().iter() {
        p.ready.store(true, Ordering::SeqCst);
    }
    let (status, _, _) = get(&client(), s.addr, HOST, "/", "d").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        g.refused.load(Ordering::SeqCst),
        2,
        "the forward's dial was refused"
    );
    assert_eq!(g.other.load(Ordering::SeqCst), 0);
    assert!(
        !s.router.revision(&s.key).pods()[0]
            .ready
            .load(Ordering::SeqCst),
        "the unreachable pod is routed around"
    );
}

/// Short windows for the autoscaler tests: stable 2 s, grace 1 s, idle after 3 s.
fn short_windows() -> RevisionConfig {
    RevisionConfig {
        autoscale: Settings {
            stable_window: Duration::from_secs(2),
            scale_to_zero_grace: Duration::from_secs(1),
            ..Settings::default()
        },
        ..Default::default()
    }
}

async fn with_autoscaler() -> Setup {
    let s = setup(
        RouterSettings::default(),
        short_windows(),
        StandInScaler::default(),
    )
    .await;
    let r = s.router.clone();
    tokio::spawn(r.run_autoscaler(Duration::from_millis(100), || true, std::future::pending()));
    s
}

async fn replicas_zero_within(s: &Setup, limit: Duration) -> Duration {
    let started = Instant::now();
    let rev = s.router.revision(&s.key);
    while rev.replicas.load(Ordering::SeqCst) != 0 {
        assert!(started.elapsed() < limit, "still awake after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_goes_to_zero_within_window_plus_grace_plus_5s() {
    let s = with_autoscaler().await;
    let (status, _, _) = get(&client(), s.addr, HOST, "/", "i").await;
    assert_eq!(status, StatusCode::OK);
    let took = replicas_zero_within(&s, Duration::from_secs(3 + 5)).await;
    assert!(
        took >= Duration::from_millis(2900),
        "slept before the idle deadline: {took:?}"
    );
    assert_eq!(s.scaler.sleeps(), 1);
    // The router records zero replicas when the scale call returns; the stand-in "cluster"
    // stops the pod in a task of its own just after, as a ReplicaSet would.
    let stopped = Instant::now();
    while !s.scaler.live_pods().is_empty() {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "the pod still runs 5 s after the scale to zero"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_loopback_only(&s.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_every_half_window_never_sleeps() {
    let s = with_autoscaler().await;
    let c = client();
    // 10 windows of 2 s, a request every second.
    for i in 0..20 {
        let (status, _, _) = get(&c, s.addr, HOST, "/", &format!("h{i}")).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(s.scaler.sleeps(), 0, "slept despite steady traffic");
    assert_eq!(s.scaler.wakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lasting_three_windows_completes_and_keeps_it_awake() {
    let s = with_autoscaler().await;
    let (status, _, _) = get(&client(), s.addr, HOST, "/sleep?ms=6000", "long").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.scaler.sleeps(), 0, "slept while a request was in flight");
    // And it still sleeps afterwards.
    replicas_zero_within(&s, Duration::from_secs(3 + 5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_around_the_idle_deadline_all_succeed() {
    let s = with_autoscaler().await;
    let c = client();
    assert_eq!(get(&c, s.addr, HOST, "/", "first").await.0, StatusCode::OK);
    // Idle deadline is 3 s after that request: fire 200 over 2.5 s to 3.5 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            get(&c, addr, HOST, "/", &format!("d{i}")).await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let (status, body, _) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    served_once(&s.scaler, (0..200).map(|i| format!("d{i}")));
}

/// Ticks over a sleeping, untouched Revision are skipped (its idle cost); a `min-scale` set
/// while it sleeps must still raise it at the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_revision_stays_asleep_until_min_scale_raises_it() {
    let s = setup(
        RouterSettings::default(),
        short_windows(),
        StandInScaler::default(),
    )
    .await;
    for _ in 0..3 {
        assert!(
            s.router.autoscale_tick().is_empty(),
            "woke without a request"
        );
    }
    let mut config = short_windows();
    config.autoscale.min_scale = 1;
    s.router.set_revision(&s.key, config);
    let decisions = s.router.autoscale_tick();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].replicas, 1);
    assert_eq!(decisions[0].revision, s.key);
}

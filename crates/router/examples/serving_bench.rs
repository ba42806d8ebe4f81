//! `cargo xtask bench serving`: the router's cold-start overhead and warm latency, on loopback.
//!
//! - Cold start: a Revision at zero, a scaler that starts a stand-in pod after 100 ms; the
//!   overhead is from the moment the pod listens (pod ready) to the first response byte at the
//!   client: what the router adds (probe interval, wake-up of held requests, forwarding).
//! - Warm: an open-loop load generator (latency measured from each request's scheduled send
//!   time, so queueing is not hidden) at fixed rates over 50 keep-alive connections, straight to
//!   the backend and through the router, then closed-loop at saturation. The router runs in a
//!   child process (this example in `router` mode) so its CPU and RSS are its own.
//!
//! Usage: `serving_bench [RUNS] [SECONDS]`; `serving_bench router BACKEND` is the child.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use gantry_router::metrics::RouterMetrics;
use gantry_router::table::{Endpoint, RevisionConfig, RevisionKey, Target};
use gantry_router::{Router, RouterSettings, ScaleReason, Scaler, proxy};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncBufReadExt;

const HOST: &str = "bench.default.example.com";

async fn backend(addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind backend");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    local
}

/// Starts a pod 100 ms after the wake and records when it listens.
struct ColdScaler {
    router: OnceLock<Router>,
    ready_at: Mutex<Option<Instant>>,
}

struct ColdHandle(Arc<ColdScaler>);

impl Scaler for ColdHandle {
    fn scale(
        &self,
        key: &RevisionKey,
        replicas: u32,
        _: ScaleReason,
    ) -> BoxFuture<'static, Result<(), String>> {
        let this = self.0.clone();
        let key = key.clone();
        Box::pin(async move {
            let router = this.router.get().cloned().ok_or("no router")?;
            tokio::spawn(async move {
                if replicas == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let addr = backend("127.0.0.1:0".parse().expect("addr")).await;
                *this.ready_at.lock().expect("lock") = Some(Instant::now());
                router.set_endpoints(&key, &[Endpoint { addr }]);
                router.set_replicas(&key, 1);
            });
            Ok(())
        })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client(conns: usize) -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build_http()
}

async fn request(c: &Client, addr: SocketAddr) -> bool {
    let req = hyper::Request::get(format!("http://{addr}/"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .expect("request");
    match c.request(req).await {
        Ok(resp) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

async fn cold(runs: usize) {
    let scaler = Arc::new(ColdScaler {
        router: OnceLock::new(),
        ready_at: Mutex::new(None),
    });
    let settings = RouterSettings {
        loopback_only: true,
        ..Default::default()
    };
    let router = Router::new(
        settings,
        Arc::new(ColdHandle(scaler.clone())),
        RouterMetrics::default(),
    );
    let _ = scaler.router.set(router.clone());
    let key = RevisionKey::new("default", "bench-00001");
    router.set_revision(&key, RevisionConfig::default());
    router.set_route(
        HOST,
        &[Target {
            revision: key.clone(),
            percent: 100,
        }],
    );
    let (addr, _) = proxy::bind(
        router.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        std::future::pending(),
    )
    .await
    .expect("bind router");
    let mut overhead = Vec::new();
    let mut total = Vec::new();
    for _ in 0..runs {
        router.set_endpoints(&key, &[]);
        router.set_replicas(&key, 0);
        *scaler.ready_at.lock().expect("lock") = None;
        let c = client(1);
        let started = Instant::now();
        let ok = request(&c, addr).await;
        let done = Instant::now();
        let ready = scaler.ready_at.lock().expect("lock").unwrap_or(done);
        assert!(ok, "cold request failed");
        overhead.push((done - ready).as_secs_f64() * 1e3);
        total.push((done - started).as_secs_f64() * 1e3);
    }
    overhead.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    println!("cold start, {runs} runs (pod starts 100 ms after the wake):");
    println!(
        "  overhead over pod ready (pod listening -> response at client): p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.95),
        overhead.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  whole cold request: p50 {:.1} ms, p95 {:.1} ms",
        percentile(&total, 0.5),
        percentile(&total, 0.95)
    );
}

/// Open loop at `rate` over `conns` connections for `secs`; latencies in ms and errors.
async fn open_loop(addr: SocketAddr, rate: u64, conns: usize, secs: u64) -> (Vec<f64>, u64) {
    let c = client(conns);
    let errors = Arc::new(AtomicU64::new(0));
    let per_conn = Duration::from_secs_f64(conns as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let c = c.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut next = start + per_conn.mul_f64(i as f64 / conns as f64);
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                if !request(&c, addr).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push((Instant::now() - next).as_secs_f64() * 1e3);
                next += per_conn;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_by(f64::total_cmp);
    (all, errors.load(Ordering::Relaxed))
}

async fn saturation(addr: SocketAddr, conns: usize, secs: u64) -> f64 {
    let c = client(conns);
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, done) = (c.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                if request(&c, addr).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

/// utime+stime ticks and RSS bytes of a process.
fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command: state is field 0; utime 11, stime 12, rss (pages) 21.
    (num(11) + num(12), num(21) * 4096)
}

async fn warm(secs: u64) {
    let backend_addr = backend("127.0.0.1:0".parse().expect("addr")).await;
    let exe = std::env::current_exe().expect("exe");
    let mut child = tokio::process::Command::new(exe)
        .args(["router", &backend_addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("router child");
    let pid = child.id().unwrap_or(0);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let router_addr: SocketAddr = lines
        .next_line()
        .await
        .ok()
        .flatten()
        .and_then(|l| l.parse().ok())
        .expect("router address");
    // Warm both paths' connections.
    open_loop(backend_addr, 500, 50, 1).await;
    open_loop(router_addr, 500, 50, 1).await;
    println!(
        "warm, 50 connections, {secs} s per case (open loop; latency from the scheduled send time):"
    );
    println!(
        "  {:<22} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "case", "p50 ms", "p99 ms", "max ms", "errors", "router cpu", "router rss"
    );
    for rate in [1000u64, 5000] {
        let (direct, e1) = open_loop(backend_addr, rate, 50, secs).await;
        let (cpu0, _) = proc_stat(pid);
        let t0 = Instant::now();
        let (via, e2) = open_loop(router_addr, rate, 50, secs).await;
        let (cpu1, rss) = proc_stat(pid);
        let cores = (cpu1 - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
        for (name, lat, errors, extra) in [
            (format!("direct {rate} rps"), &direct, e1, String::new()),
            (
                format!("via router {rate} rps"),
                &via,
                e2,
                format!("{cores:>9.2} {:>7.1} MiB", rss as f64 / 1048576.0),
            ),
        ] {
            println!(
                "  {:<22} {:>8.3} {:>8.3} {:>8.2} {:>7} {}",
                name,
                percentile(lat, 0.5),
                percentile(lat, 0.99),
                lat.last().copied().unwrap_or(f64::NAN),
                errors,
                extra
            );
        }
        println!(
            "  added by the router at {rate} rps: p50 {:+.3} ms, p99 {:+.3} ms",
            percentile(&via, 0.5) - percentile(&direct, 0.5),
            percentile(&via, 0.99) - percentile(&direct, 0.99)
        );
    }
    let direct = saturation(backend_addr, 50, secs).await;
    let via = saturation(router_addr, 50, secs).await;
    println!(
        "  saturation (closed loop, 50 connections): direct {direct:.0} rps, via router {via:.0} rps"
    );
    let _ = child.kill().await;
}

async fn router_child(backend: SocketAddr) {
    struct NoScale;
    impl Scaler for NoScale {
        fn scale(
            &self,
            _: &RevisionKey,
            _: u32,
            _: ScaleReason,
        ) -> BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }
    let settings = RouterSettings {
        loopback_only: true,
        ..Default::default()
    };
    let router = Router::new(settings, Arc::new(NoScale), RouterMetrics::default());
    let key = RevisionKey::new("default", "bench-00001");
    router.set_revision(&key, RevisionConfig::default());
    router.set_route(
        HOST,
        &[Target {
            revision: key.clone(),
            percent: 100,
        }],
    );
    router.set_endpoints(&key, &[Endpoint { addr: backend }]);
    router.set_replicas(&key, 1);
    let (addr, server) = proxy::bind(
        router,
        "127.0.0.1:0".parse().expect("addr"),
        std::future::pending(),
    )
    .await
    .expect("bind");
    println!("{addr}");
    // Stops by itself when the parent goes away (its stdin closes), however the parent ends.
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        _ = server => {}
        _ = async { while let Ok(Some(_)) = stdin.next_line().await {} } => {}
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.first().map(String::as_str) == Some("router") {
        let backend = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .expect("backend address");
        runtime.block_on(router_child(backend));
        return;
    }
    let runs = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let secs = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    runtime.block_on(async {
        cold(runs).await;
        warm(secs).await;
    });
}

//! `cargo xtask bench serving`: the router's cold-start overhead and warm latency, on loopback.
//!
//! - Cold start: a Revision at zero, a scaler that starts a stand-in pod after 100 ms; the
//!   overhead is from the moment the pod listens (pod ready) to the first response byte at the
//!   client: what the router adds (probe interval, wake-up of held requests, forwarding).
//! - Warm: an open-loop load generator (latency measured from each request's scheduled send
//!   time, so queueing is not hidden) at fixed rates over 50 keep-alive connections, then
//!   closed-loop at saturation, against three targets in front of the same backend: the backend
//!   itself (direct), Debian's nginx as a reverse proxy (keep-alive upstream, one worker per
//!   core) and the router. The three alternate, round after round, in a rotating order, and the
//!   medians are printed, so a busy machine weighs on all three alike. The router runs in a
//!   child process (this example in `router` mode) so its CPU and memory are its own.
//!
//! Usage: `serving_bench [RUNS] [SECONDS] [ROUNDS] [NGINX]` (NGINX: the nginx binary; without
//! it the nginx column is skipped); `serving_bench router BACKEND` is the child.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// One case's latencies (ms, sorted) and failed requests.
struct Latencies {
    sorted: Vec<f64>,
    errors: u64,
}

/// Open loop at `rate` over `conns` connections for `secs`.
async fn open_loop(addr: SocketAddr, rate: u64, conns: usize, secs: u64) -> Latencies {
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
    let mut sorted = Vec::new();
    for t in tasks {
        sorted.extend(t.await.unwrap_or_default());
    }
    sorted.sort_by(f64::total_cmp);
    Latencies {
        sorted,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Closed loop over `conns` connections for `secs`: successful requests per second.
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

/// Fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// utime+stime ticks of the processes.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| {
            let f = stat_fields(*p);
            // After the command: state is field 0; utime 11, stime 12.
            f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
        })
        .sum()
}

/// A `/proc/<pid>/<file>` line in kB, summed over the processes, as MiB.
fn kb_sum(pids: &[u32], file: &str, key: &str) -> f64 {
    pids.iter()
        .filter_map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/{file}"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .sum::<f64>()
        / 1024.0
}

/// The process and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // ppid is field 2 after the command.
            if stat_fields(p).get(1).copied() == Some(u64::from(pid)) {
                out.push(p);
            }
        }
    }
    out
}

/// What a proxy costs during one case: cores busy, RSS and PSS (MiB, summed over its processes:
/// PSS counts pages nginx's workers share only once).
#[derive(Clone, Copy, Default)]
struct Cost {
    cores: f64,
    rss: f64,
    pss: f64,
}

/// Runs `case` and measures the proxy's processes meanwhile (nothing when `pid` is `None`).
async fn costed<T>(pid: Option<u32>, case: impl std::future::Future<Output = T>) -> (T, Cost) {
    let pids = pid.map(with_children).unwrap_or_default();
    let cpu0 = cpu_ticks(&pids);
    let t0 = Instant::now();
    let out = case.await;
    let cores = (cpu_ticks(&pids) - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    let cost = Cost {
        cores,
        rss: kb_sum(&pids, "status", "VmRSS:"),
        pss: kb_sum(&pids, "smaps_rollup", "Pss:"),
    };
    (out, cost)
}

/// The router in a child process (this example in `router` mode).
async fn start_router(backend: SocketAddr) -> (tokio::process::Child, SocketAddr) {
    let exe = std::env::current_exe().expect("exe");
    let mut child = tokio::process::Command::new(exe)
        .args(["router", &backend.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("router child");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: SocketAddr = lines
        .next_line()
        .await
        .ok()
        .flatten()
        .and_then(|l| l.parse().ok())
        .expect("router address");
    (child, addr)
}

/// Debian's nginx as a reverse proxy to the backend: its own prefix in a temporary directory,
/// loopback only, keep-alive to the upstream (as the router keeps its backend connections), one
/// worker per core. Stopped (SIGTERM to the master, which stops its workers) when dropped, and
/// also when this process dies however it dies: nginx runs under a `sh` that waits for its
/// stdin (a pipe from here) to close.
struct Nginx {
    shell: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    fn start(nginx: &Path, backend: SocketAddr, workers: usize) -> Nginx {
        let dir =
            std::env::temp_dir().join(format!("gantry-serving-bench-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let d = dir.display();
        // keepalive_requests: nginx closes a keep-alive connection after 1000 requests by
        // default, on both sides; the router and the load generator never do.
        let conf = format!(
            "worker_processes {workers};\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n\
               upstream backend {{\n\
                 server {backend};\n\
                 keepalive 128;\n\
                 keepalive_requests 1000000;\n\
               }}\n\
               server {{\n\
                 listen {addr};\n\
                 location / {{\n\
                   proxy_pass http://backend;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let shell = Command::new("sh")
            .arg("-c")
            .arg(
                r#"n="$1"; shift; "$n" "$@" </dev/null & p=$!; read _; kill -TERM "$p"; wait "$p""#,
            )
            .arg("sh")
            .arg(nginx)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let mut this = Nginx { shell, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() || this.master().is_none() {
            if Instant::now() > deadline || this.shell.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(this.dir.join("error.log")).unwrap_or_default();
                panic!("nginx did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        this
    }

    fn master(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.shell.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.shell.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One target of the warm cases.
struct Contender {
    name: &'static str,
    addr: SocketAddr,
    /// The proxy's process (none for direct).
    pid: Option<u32>,
}

/// One round's figures for one contender.
#[derive(Clone, Copy, Default)]
struct Figures {
    p50: [f64; 2],
    p99: [f64; 2],
    errors: u64,
    saturation: f64,
    cost: [Cost; 3],
}

const RATES: [u64; 2] = [1000, 5000];
const CONNS: usize = 50;

async fn measure(c: &Contender, secs: u64) -> Figures {
    let mut f = Figures::default();
    for (i, rate) in RATES.into_iter().enumerate() {
        let (lat, cost) = costed(c.pid, open_loop(c.addr, rate, CONNS, secs)).await;
        f.p50[i] = percentile(&lat.sorted, 0.5);
        f.p99[i] = percentile(&lat.sorted, 0.99);
        f.errors += lat.errors;
        f.cost[i] = cost;
    }
    let (rps, cost) = costed(c.pid, saturation(c.addr, CONNS, secs)).await;
    f.saturation = rps;
    f.cost[2] = cost;
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn warm(secs: u64, rounds: usize, nginx: Option<PathBuf>) {
    let backend_addr = backend("127.0.0.1:0".parse().expect("addr")).await;
    let (mut router, router_addr) = start_router(backend_addr).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let nginx = nginx.map(|bin| Nginx::start(&bin, backend_addr, cores));
    let mut contenders = vec![Contender {
        name: "direct",
        addr: backend_addr,
        pid: None,
    }];
    if let Some(n) = &nginx {
        contenders.push(Contender {
            name: "nginx",
            addr: n.addr,
            pid: n.master(),
        });
    }
    contenders.push(Contender {
        name: "gantry",
        addr: router_addr,
        pid: router.id(),
    });
    // Warm every path's connections.
    for c in &contenders {
        open_loop(c.addr, 500, CONNS, 1).await;
    }
    println!(
        "warm, {CONNS} connections, {secs} s per case, {rounds} rounds alternating {} (load average at start: {}):",
        contenders
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(" / "),
        load_average()
    );
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); contenders.len()];
    for round in 0..rounds {
        // Rotate the order so none always runs first (or right after another).
        for k in 0..contenders.len() {
            let i = (round + k) % contenders.len();
            let f = measure(&contenders[i], secs).await;
            println!(
                "  round {} {:<7} p50/p99 ms: {:.3}/{:.3} at {} rps, {:.3}/{:.3} at {} rps; saturation {:.0} rps; errors {}; proxy {:.2}/{:.2}/{:.2} cores; load {}",
                round + 1,
                contenders[i].name,
                f.p50[0],
                f.p99[0],
                RATES[0],
                f.p50[1],
                f.p99[1],
                RATES[1],
                f.saturation,
                f.errors,
                f.cost[0].cores,
                f.cost[1].cores,
                f.cost[2].cores,
                load_average(),
            );
            all[i].push(f);
        }
    }
    println!(
        "medians over {rounds} rounds (load average now: {}):",
        load_average()
    );
    println!(
        "  {:<7} {:>11} {:>11} {:>11} {:>11} {:>10} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "",
        "p50 1000",
        "p99 1000",
        "p50 5000",
        "p99 5000",
        "sat rps",
        "errors",
        "cpu 1000",
        "cpu 5000",
        "cpu sat",
        "RSS MiB",
        "PSS MiB"
    );
    let med =
        |rows: &[Figures], get: &dyn Fn(&Figures) -> f64| median(rows.iter().map(get).collect());
    for (c, rows) in contenders.iter().zip(&all) {
        let proxy = c.pid.is_some();
        let cost = |v: f64| if proxy { format!("{v:.2}") } else { "-".into() };
        println!(
            "  {:<7} {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>10.0} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8}",
            c.name,
            med(rows, &|f| f.p50[0]),
            med(rows, &|f| f.p99[0]),
            med(rows, &|f| f.p50[1]),
            med(rows, &|f| f.p99[1]),
            med(rows, &|f| f.saturation),
            rows.iter().map(|f| f.errors).sum::<u64>(),
            cost(med(rows, &|f| f.cost[0].cores)),
            cost(med(rows, &|f| f.cost[1].cores)),
            cost(med(rows, &|f| f.cost[2].cores)),
            if proxy {
                format!("{:.1}", med(rows, &|f| f.cost[2].rss))
            } else {
                "-".into()
            },
            if proxy {
                format!("{:.1}", med(rows, &|f| f.cost[2].pss))
            } else {
                "-".into()
            },
        );
    }
    // Added latency: the median over rounds of (proxy − direct) in the same round.
    let direct = &all[0];
    for (c, rows) in contenders.iter().zip(&all).skip(1) {
        let added = |get: &dyn Fn(&Figures) -> f64| {
            median(
                rows.iter()
                    .zip(direct)
                    .map(|(p, d)| get(p) - get(d))
                    .collect(),
            )
        };
        println!(
            "  added by {:<6} p50 {:+.3} ms / p99 {:+.3} ms at {} rps; p50 {:+.3} ms / p99 {:+.3} ms at {} rps; saturation {:.0} % of direct",
            c.name,
            added(&|f| f.p50[0]),
            added(&|f| f.p99[0]),
            RATES[0],
            added(&|f| f.p50[1]),
            added(&|f| f.p99[1]),
            RATES[1],
            100.0 * med(rows, &|f| f.saturation) / med(direct, &|f| f.saturation),
        );
    }
    // The router against nginx within each round (both saw the same machine minutes apart):
    // throughput, and requests per core-second of the proxy's own CPU at saturation.
    let nginx_rows = contenders
        .iter()
        .position(|c| c.name == "nginx")
        .map(|i| &all[i]);
    if let (Some(nginx_rows), Some(gantry_rows)) = (nginx_rows, all.last()) {
        let per_core = |f: &Figures| f.saturation / f.cost[2].cores.max(1e-9);
        let ratio = |get: &dyn Fn(&Figures) -> f64| {
            median(
                gantry_rows
                    .iter()
                    .zip(nginx_rows)
                    .map(|(g, n)| get(g) / get(n))
                    .collect(),
            )
        };
        println!(
            "  gantry / nginx (median of per-round ratios): saturation {:.2}; requests per core-second at saturation {:.2} ({:.0} vs {:.0})",
            ratio(&|f| f.saturation),
            ratio(&per_core),
            median(gantry_rows.iter().map(per_core).collect()),
            median(nginx_rows.iter().map(per_core).collect()),
        );
    }
    drop(nginx);
    let _ = router.kill().await;
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
    let rounds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let nginx = args.get(3).map(PathBuf::from);
    runtime.block_on(async {
        cold(runs).await;
        warm(secs, rounds, nginx).await;
    });
}

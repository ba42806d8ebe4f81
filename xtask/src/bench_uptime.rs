//! `cargo xtask bench uptime`: N HTTP Monitors at one interval against a local HTTP server,
//! checked by `gantry uptime serve` (the same engine `gantry run` uses, without a cluster) for a
//! while; measured: the process's CPU (% of one core) and RSS, and how late checks started
//! (scheduling lateness p50/p99, from the engine's own histogram at `/api/v1/scheduler`), and
//! how fast the history database grows (SQLite file or a private Postgres server, `VACUUM`ed
//! before both measurements so dead row versions do not count), extrapolated to a day.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::bench_support;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal HTTP/1.1 server on loopback answering `200 ok` with keep-alive; counts requests.
async fn target(hits: Arc<AtomicU64>) -> Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        hits.fetch_add(1, Ordering::Relaxed);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn uptime(
    workspace: &Path,
    gantry: Option<&Path>,
    monitors: usize,
    interval: Duration,
    duration: Duration,
    database: &str,
) -> Result<()> {
    let gantry = match gantry {
        Some(g) => g.to_path_buf(),
        None => bench_support::build_release(workspace)?,
    };
    let storage = tempfile::tempdir()?;
    let postgres = match database {
        "sqlite" => None,
        "postgres" => Some(gantry_testkit::postgres::Postgres::start_durable()),
        other => bail!("--database is sqlite or postgres, not {other:?}"),
    };
    let location = match &postgres {
        Some(pg) => gantry_uptime_store::Location::Postgres(pg.url()),
        None => gantry_uptime_store::Location::Sqlite(
            storage.path().join(gantry_uptime_store::store::SQLITE_FILE),
        ),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let hits = Arc::new(AtomicU64::new(0));
        let addr = target(hits.clone()).await?;
        let dir = tempfile::tempdir()?;
        // 500 documents a file: the YAML reader caps documents per file (1024).
        let mut file = std::fs::File::create(dir.path().join("monitors-0.yaml"))?;
        for i in 0..monitors {
            if i > 0 && i % 500 == 0 {
                file = std::fs::File::create(dir.path().join(format!("monitors-{}.yaml", i / 500)))?;
            }
            writeln!(
                file,
                "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: m{i}}}\nspec:\n  type: http\n  interval: {}s\n  http: {{url: \"http://{addr}/m{i}\"}}\n---",
                interval.as_secs()
            )?;
        }
        drop(file);
        let port = free_port()?;
        let mut command = Command::new(&gantry);
        command
            .args(["uptime", "serve", "--config"])
            .arg(dir.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--storage-path")
            .arg(storage.path());
        if let Some(pg) = &postgres {
            command.arg(format!("--database-url={}", pg.url()));
        }
        let child = command
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting gantry uptime serve")?;
        let process = Process(child);
        let pid = process.0.id();
        let client = gantry_runtime::http::client(&Default::default())?;
        let api = format!("http://127.0.0.1:{port}/api/v1/scheduler");
        let started = Instant::now();
        loop {
            if client.get(&api).send().await.is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("gantry uptime serve did not start");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The first interval spreads the first checks; measure the steady state after it.
        eprintln!("[bench] {monitors} monitors every {interval:?}; warming up for one interval");
        tokio::time::sleep(interval).await;
        // The same database, opened here only to measure it.
        let store = gantry_uptime_store::Store::open(gantry_uptime_store::StoreConfig::new(
            location.clone(),
        ))
        .await
        .context("opening the history database")?;
        let size = || async {
            store.vacuum().await?;
            store.size_bytes().await
        };
        let size_before = size().await?;
        let load_before = load_average();
        let cpu_before = bench_support::cpu_seconds(pid);
        let hits_before = hits.load(Ordering::Relaxed);
        let measuring = Instant::now();
        eprintln!("[bench] measuring for {duration:?}");
        tokio::time::sleep(duration).await;
        let cpu = (bench_support::cpu_seconds(pid) - cpu_before) / measuring.elapsed().as_secs_f64() * 100.0;
        let requests = hits.load(Ordering::Relaxed) - hits_before;
        let scheduler: serde_json::Value = client.get(&api).send().await?.json().await?;
        let (rss, _) = bench_support::idle_usage(pid, Duration::from_millis(100)).await;
        let peak = bench_support::peak_rss_mib(pid);
        let size_after = size().await?;
        let per_day = (size_after as f64 - size_before as f64) * 86_400.0
            / measuring.elapsed().as_secs_f64();
        let load_after = load_average();
        let expected = monitors as f64 * measuring.elapsed().as_secs_f64() / interval.as_secs_f64();
        println!("uptime benchmark: {monitors} HTTP monitors every {}s, measured {}s after a {}s warm-up", interval.as_secs(), duration.as_secs(), interval.as_secs());
        println!("  binary                  {}", gantry.display());
        println!("  checks served           {requests} (expected {expected:.0})");
        println!("  CPU                     {cpu:.1} % of one core");
        println!("  RSS                     {rss:.1} MiB (peak {peak:.1} MiB)");
        println!(
            "  scheduling lateness     p50 {} ms, p99 {} ms (over {} checks since start)",
            scheduler["lateness"]["p50Ms"], scheduler["lateness"]["p99Ms"], scheduler["lateness"]["measured"]
        );
        println!(
            "  history ({database})       {:.1} MiB → {:.1} MiB: {:.2} GiB a day (VACUUMed)",
            size_before as f64 / 1048576.0,
            size_after as f64 / 1048576.0,
            per_day / 1073741824.0
        );
        println!("  load average            {load_before} at the start, {load_after} at the end");
        drop(store);
        Ok(())
    })
}

/// `/proc/loadavg`'s three figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

//! The uptime store's benchmark (`cargo xtask bench uptime-store`, which starts the Postgres
//! server and runs this in release):
//!
//! 1. growth and write throughput: `--monitors` monitors checked every 30 s for `--hours` of
//!    simulated time (1 % failures with a message), written through the store's buffer in
//!    rounds; per backend: samples per second, bytes per raw sample and per aggregate row, and
//!    the size per day and at steady state (raw retention 7 days, aggregates 1 year) for that
//!    many monitors; the cost of the hourly retention pass and of `summaries()`.
//! 2. the status page with `--page-monitors` monitors (90 days of daily and 24 hours of hourly
//!    aggregates each): time to load the windows when the store opens, to build the snapshot
//!    from memory and to render the HTML, and the page's size.

use std::time::{Duration, Instant};

use gantry_uptime_store::status::{StatusOptions, StatusPage, render_html};
use gantry_uptime_store::{
    Location, MonitorInfo, MonitorKey, Sample, State, Store, StoreConfig, now_ms,
};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const INTERVAL: i64 = 30_000;

struct Args {
    monitors: usize,
    hours: i64,
    page_monitors: usize,
    postgres_url: Option<String>,
    /// An empty database for the page run (the growth run's monitors would be on the page).
    postgres_page_url: Option<String>,
    dir: std::path::PathBuf,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        monitors: 10_000,
        hours: 2,
        page_monitors: 1000,
        postgres_url: None,
        postgres_page_url: None,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--monitors" => args.monitors = number()?,
            "--hours" => args.hours = number()? as i64,
            "--page-monitors" => args.page_monitors = number()?,
            "--postgres-url" => args.postgres_url = Some(value),
            "--postgres-page-url" => args.postgres_page_url = Some(value),
            "--dir" => args.dir = value.into(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn mib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", bytes / 1024.0 / 1024.0 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn config(location: Location) -> StoreConfig {
    let mut config = StoreConfig::new(location);
    // The benchmark flushes explicitly per round; the background writer must not split rounds.
    config.flush_interval = Duration::from_secs(3600);
    config.retention_interval = Duration::from_secs(24 * 3600);
    config.buffer_capacity = 1_000_000;
    config
}

async fn growth(name: &str, location: Location, a: &Args) -> Result<(), String> {
    let store = Store::open(config(location))
        .await
        .map_err(|e| e.to_string())?;
    let monitors = a.monitors;
    for m in 0..monitors {
        store.upsert_monitor(MonitorInfo {
            key: MonitorKey::new("bench", format!("monitor-{m:05}")),
            display_name: format!("Monitor {m}"),
            group: format!("group-{}", m % 20),
            kind: "http".into(),
            target: format!("http://127.0.0.1:8080/{m}"),
        });
    }
    store.flush().await.map_err(|e| e.to_string())?;
    let rounds = a.hours * HOUR / INTERVAL;
    let start = now_ms() - a.hours * HOUR;
    let start = start - start.rem_euclid(HOUR);
    let mut written = 0u64;
    let mut busy = Duration::ZERO;
    let mut round_times = Vec::new();
    for round in 0..rounds {
        let at = start + round * INTERVAL;
        let samples = (0..monitors).map(|m| {
            // A deterministic spread of response times and 1 % failures.
            let x = (m as i64 * 7919 + round * 104_729) % 1000;
            let fail = x < 10;
            Sample {
                key: MonitorKey::new("bench", format!("monitor-{m:05}")),
                at: at + (m as i64 % 1000) * 30,
                state: if fail { State::Down } else { State::Up },
                success: !fail,
                response_us: Some((20_000 + x * 300) as i32),
                http_status: Some(if fail { 503 } else { 200 }),
                message: fail.then(|| "HTTP 503 Service Unavailable".to_string()),
            }
        });
        let t = Instant::now();
        store.record_many(samples);
        store.flush().await.map_err(|e| e.to_string())?;
        let took = t.elapsed();
        busy += took;
        round_times.push(took);
        written += monitors as u64;
    }
    round_times.sort();
    // Sizes after a VACUUM (autovacuum's work, done now): the steady state, not the dead row
    // versions of the last rounds' updates.
    let unvacuumed = store.size_bytes().await.map_err(|e| e.to_string())?;
    store.vacuum().await.map_err(|e| e.to_string())?;
    let vacuumed = store.size_bytes().await.map_err(|e| e.to_string())?;
    println!(
        "database: {} as written, {} after VACUUM",
        mib(unvacuumed as f64),
        mib(vacuumed as f64)
    );
    let sizes = store.table_sizes().await.map_err(|e| e.to_string())?;
    let size = |t: &str| {
        sizes
            .iter()
            .find(|(n, _)| n == t)
            .map_or(0.0, |(_, b)| *b as f64)
    };
    let per_sample = size("samples") / written as f64;
    let hourly_rows = (monitors as i64 * a.hours) as f64;
    let per_hourly = size("hourly") / hourly_rows;
    // Daily rows: the days the simulated hours touched.
    let days_touched = ((start + a.hours * HOUR - 1) / DAY - start / DAY + 1) as f64;
    let per_daily = size("daily") / (monitors as f64 * days_touched);
    let samples_per_day = monitors as f64 * (DAY / INTERVAL) as f64;
    let raw_day = per_sample * samples_per_day;
    let agg_day = per_hourly * monitors as f64 * 24.0 + per_daily * monitors as f64;
    println!(
        "## {name}: {monitors} monitors every 30 s, {} h simulated",
        a.hours
    );
    println!(
        "write: {written} samples in {:.1} s of flushes = {:.0} samples/s; one 30 s round of \
         {monitors}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        busy.as_secs_f64(),
        written as f64 / busy.as_secs_f64(),
        percentile(&round_times, 0.5).as_secs_f64() * 1e3,
        percentile(&round_times, 0.95).as_secs_f64() * 1e3,
        round_times.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
    println!(
        "bytes: {per_sample:.1} per raw sample, {per_hourly:.0} per hourly row, {per_daily:.0} \
         per daily row (tables with their indexes)"
    );
    println!(
        "per day: raw {}, aggregates {}; steady state (raw 7 d + aggregates 365 d): {} \
         = raw {} + aggregates {}",
        mib(raw_day),
        mib(agg_day),
        mib(raw_day * 7.0 + agg_day * 365.0),
        mib(raw_day * 7.0),
        mib(agg_day * 365.0),
    );
    let t = Instant::now();
    let summaries = store.summaries().await.map_err(|e| e.to_string())?;
    println!(
        "summaries() of {} monitors (uptime 24h/7d/30d, p50/p95): {:.0} ms",
        summaries.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    // The hourly retention pass when one hour of raw samples has expired.
    let t = Instant::now();
    let report = store
        .run_retention_at(start + HOUR + 7 * DAY)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "retention pass deleting one hour of raw samples ({} rows): {:.1} s",
        report.samples,
        t.elapsed().as_secs_f64()
    );
    store.close().await.map_err(|e| e.to_string())?;
    println!();
    Ok(())
}

async fn page(name: &str, location: Location, a: &Args) -> Result<(), String> {
    let store = Store::open(config(location.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let now = now_ms();
    let n = a.page_monitors;
    for m in 0..n {
        store.upsert_monitor(MonitorInfo {
            key: MonitorKey::new("page", format!("monitor-{m:04}")),
            display_name: format!("Monitor <{m}>"),
            group: format!("Group {}", m % 10),
            kind: "http".into(),
            target: format!("http://127.0.0.1:8080/{m}"),
        });
    }
    // The aggregate rows a real history has (90 daily, 24 hourly per monitor), from one
    // sample per hour and day: the page reads rows, not samples.
    let mut batch = Vec::new();
    for m in 0..n {
        let key = MonitorKey::new("page", format!("monitor-{m:04}"));
        let mut push = |at: i64, down: bool| {
            batch.push(Sample {
                key: key.clone(),
                at,
                state: if down { State::Down } else { State::Up },
                success: !down,
                response_us: Some(30_000 + (m as i32 % 50) * 1000),
                http_status: Some(if down { 503 } else { 200 }),
                message: down.then(|| "HTTP 503".to_string()),
            })
        };
        for d in 1..90 {
            push(now - d * DAY, m % 7 == 0 && d % 30 == 0);
        }
        for h in 0..24 {
            push(now - h * HOUR - 1000, false);
        }
    }
    store.record_many(batch);
    store.close().await.map_err(|e| e.to_string())?;
    // A new process: the windows come from the aggregates once, at open.
    let t = Instant::now();
    let store = Store::open(config(location.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let open = t.elapsed();
    let page = StatusPage::new(store.clone(), StatusOptions::default());
    let mut build = Vec::new();
    let mut render = Vec::new();
    let mut bytes = 0;
    for _ in 0..15 {
        let t = Instant::now();
        let snapshot = page.build();
        build.push(t.elapsed());
        let t = Instant::now();
        let html = render_html("Status", &snapshot);
        render.push(t.elapsed());
        bytes = html.len();
    }
    build.sort();
    render.sort();
    let t = Instant::now();
    let _ = page.current().await;
    let first = t.elapsed();
    let mut cached = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let _ = page.current().await;
        cached.push(t.elapsed());
    }
    cached.sort();
    println!("## {name}: status page with {n} monitors");
    println!(
        "store open (windows loaded from the aggregates): {:.0} ms",
        open.as_secs_f64() * 1e3
    );
    println!(
        "snapshot from memory: p50 {:.1} ms, max {:.1} ms; HTML render: p50 {:.1} ms, \
         max {:.1} ms; page {:.0} KiB; first request (build + render) {:.1} ms; cached request \
         p50 {:.3} ms",
        percentile(&build, 0.5).as_secs_f64() * 1e3,
        build.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        percentile(&render, 0.5).as_secs_f64() * 1e3,
        render.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        bytes as f64 / 1024.0,
        first.as_secs_f64() * 1e3,
        percentile(&cached, 0.5).as_secs_f64() * 1e3,
    );
    store.close().await.map_err(|e| e.to_string())?;
    println!();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("uptime-store-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let run = async {
        let sqlite = |file: &str| Location::Sqlite(a.dir.join(file));
        growth("SQLite", sqlite("growth.sqlite"), &a).await?;
        if let Some(url) = &a.postgres_url {
            growth("Postgres", Location::Postgres(url.clone()), &a).await?;
        }
        page("SQLite", sqlite("page.sqlite"), &a).await?;
        if let Some(url) = &a.postgres_page_url {
            page("Postgres", Location::Postgres(url.clone()), &a).await?;
        }
        Ok::<(), String>(())
    };
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uptime-store-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! Compression throughput of goflate against flate2 at the default level (6), on the same
//! inputs, runs alternating so both see the same machine load. `cargo xtask bench gzip` runs it
//! in release.
//!
//! Usage: gzip_bench [SIZE_MIB] [RUNS]

use std::io::Write;
use std::time::{Duration, Instant};

// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

// Kubernetes manifests as a repository holds them: YAML from a small vocabulary with varying
// names and numbers.
fn manifests(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 1024);
    let mut i = 0u64;
    while out.len() < len {
        let r = noise(8, i + 1);
        write!(
            out,
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: team-{}\n  labels:\n    app.kubernetes.io/name: app-{i}\nspec:\n  replicas: {}\n  template:\n    spec:\n      containers:\n        - name: app\n          image: ghcr.io/example/app-{}:v1.{}.{}\n          resources:\n            requests: {{cpu: {}m, memory: {}Mi}}\n",
            r[0] % 16,
            r[1] % 5,
            r[2],
            r[3] % 30,
            r[4],
            u32::from(r[5]) * 10,
            u32::from(r[6]) * 4,
        )
        .ok();
        i += 1;
    }
    out.truncate(len);
    out
}

fn goflate(data: &[u8]) -> Vec<u8> {
    let mut w = goflate::GzipWriter::new(Vec::with_capacity(data.len() / 2));
    for chunk in data.chunks(32 * 1024) {
        w.write_all(chunk).ok();
    }
    w.finish().unwrap_or_default()
}

fn flate2(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::default(),
    );
    for chunk in data.chunks(32 * 1024) {
        w.write_all(chunk).ok();
    }
    w.finish().unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    let len = size_mib << 20;
    println!(
        "gzip at level 6, {size_mib} MiB inputs, {runs} runs each (alternating), load average {}",
        load()
    );
    let mixed = {
        let mut v = manifests(len * 3 / 4);
        v.extend(noise(len - v.len(), 42));
        v
    };
    for (name, data) in [
        ("YAML manifests", manifests(len)),
        ("3/4 YAML + 1/4 random", mixed),
        ("random (incompressible)", noise(len, 7)),
    ] {
        let (mut go_times, mut z_times) = (Vec::new(), Vec::new());
        let (mut go_len, mut z_len) = (0, 0);
        for _ in 0..runs {
            let t = Instant::now();
            go_len = goflate(&data).len();
            go_times.push(t.elapsed());
            let t = Instant::now();
            z_len = flate2(&data).len();
            z_times.push(t.elapsed());
        }
        let (go, z) = (median(go_times), median(z_times));
        let mib = data.len() as f64 / f64::from(1 << 20);
        println!(
            "{name:>24}: goflate {:7.1} MiB/s ({:>9} bytes) | flate2 {:7.1} MiB/s ({:>9} bytes) | goflate/flate2 time {:.2}x",
            mib / go.as_secs_f64(),
            go_len,
            mib / z.as_secs_f64(),
            z_len,
            go.as_secs_f64() / z.as_secs_f64(),
        );
    }
    println!("load average after: {}", load());
}

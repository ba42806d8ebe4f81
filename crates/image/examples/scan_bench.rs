//! Benchmark: one ImageRepository scan (list every tag, apply the default exclusion list, write
//! the tag store, compute the status summary) of a large repository, with time and peak memory.
//!
//! ```sh
//! cargo run --release -p gantry-image --example scan_bench            # 20 000 tags
//! cargo run --release -p gantry-image --example scan_bench -- 200000  # any count
//! ```
//!
//! Two registries: a loopback server paginating with `Link` headers in pages of 100 (how
//! distribution 3, Docker Hub, GHCR and Quay page), and the real `docker-registry` 2.8 from
//! Debian, which ignores `n` and sends the whole list in one answer. Peak memory is the growth
//! of the process's peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` before each scan),
//! so it counts everything the scan allocated, buffers included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_image::registry::{ClientConfig, Reference, RegistryClient};
use gantry_image::tags::TagStore;
use gantry_testkit::registry::{Registry, RegistryAuth};
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("tag count"))
        .unwrap_or(20_000);
    let tags: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "main-{:07x}-{}",
                i * 2654435761 % 0xfffffff,
                1_700_000_000 + i
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = TagStore::new(dir.path());
    println!("scan of {count} tags (2 cores; release build)");

    // Loopback registry paging with Link headers, 100 tags per page.
    let mut sorted = tags.clone();
    sorted.sort();
    let port = serve_pages(Arc::new(sorted)).await;
    let reference = Reference::parse(&format!("127.0.0.1:{port}/bench/app")).unwrap();
    let config = ClientConfig {
        insecure: true,
        page_size: Some(100),
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let (took, pages, peak) = scan(&reference, config, &store).await;
    println!(
        "  loopback, pages of 100 (Link): {:>7.1} ms, {pages} pages, peak memory +{:.1} MiB",
        took.as_secs_f64() * 1000.0,
        peak as f64 / 1048576.0
    );

    // The real registry: one answer with every tag.
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry.push("bench/app", &tags[0]).await;
    registry.seed_tags("bench/app", &tags[0], &tags[1..]);
    let reference = Reference::parse(&registry.image("bench/app")).unwrap();
    let config = ClientConfig {
        insecure: true,
        page_size: Some(100),
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let (took, pages, peak) = scan(&reference, config, &store).await;
    println!(
        "  docker-registry 2.8 (ignores n): {:>7.1} ms, {pages} page, peak memory +{:.1} MiB",
        took.as_secs_f64() * 1000.0,
        peak as f64 / 1048576.0
    );
    let size = std::fs::metadata(store.path("bench", "app")).unwrap().len();
    println!("  tag store file: {:.1} KiB", size as f64 / 1024.0);
}

async fn scan(
    reference: &Reference,
    config: ClientConfig,
    store: &TagStore,
) -> (Duration, u32, u64) {
    let exclusions = [Regex::new(r"^.*\.sig$").unwrap()];
    let client = RegistryClient::new(reference, config).unwrap();
    let before = reset_peak();
    let started = Instant::now();
    let mut writer = store.writer("bench", "app").unwrap();
    let stats = client
        .list_tags(|page| {
            for tag in page {
                if !exclusions.iter().any(|r| r.is_match(&tag)) {
                    writer.push(&tag)?;
                }
            }
            Ok(())
        })
        .await
        .expect("scan");
    let summary = writer.commit().unwrap();
    let _ = (summary.revision(), summary.latest_tags());
    let took = started.elapsed();
    let peak = peak_rss().saturating_sub(before);
    (took, stats.pages, peak)
}

// Resets VmHWM to the current RSS and returns it (bytes).
fn reset_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:") * 1024
}

fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// A registry stand-in answering `/v2/.../tags/list?n=&last=` from `tags` with `Link` headers.
async fn serve_pages(tags: Arc<Vec<String>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let tags = tags.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        buffer.drain(..end + 4);
                        let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
                        let q = |k: &str| {
                            url.query_pairs()
                                .find(|(n, _)| n == k)
                                .map(|(_, v)| v.into_owned())
                        };
                        let n: usize = q("n").and_then(|v| v.parse().ok()).unwrap_or(100);
                        let start = match q("last") {
                            Some(last) => tags.partition_point(|t| *t <= last),
                            None => 0,
                        };
                        let end = (start + n).min(tags.len());
                        let page = &tags[start..end];
                        let link = if end < tags.len() {
                            format!(
                                "Link: <{}?last={}&n={n}>; rel=\"next\"\r\n",
                                url.path(),
                                page.last().unwrap()
                            )
                        } else {
                            String::new()
                        };
                        let body =
                            serde_json::json!({"name": "bench/app", "tags": page}).to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{link}\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

//! `cargo xtask bench receiver`: the webhook server of a release `gantry run` under load.
//!
//! One namespace holds a GitRepository (served by a loopback `git http-backend`) and a `github`
//! Receiver for it. Signed GitHub pushes (valid) and pushes signed with another key (forged)
//! are POSTed at concurrency 1 and N over keep-alive connections; measured per case: requests
//! per second, p50/p99/max latency, errors (a valid call not answered 200, a forged one not
//! answered 400, or no answer within 60 s), and the API server's own count of requests
//! (`apiserver_request_total` from its `/metrics`) for the kinds a webhook can make Gantry touch
//! (Secrets, GitRepositories, Receivers), per webhook call. Background traffic of the control
//! plane (leases, nodes) is other kinds and is not counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use gantry_api::meta::LocalObjectReference;
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use hmac::{KeyInit, Mac};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};

const TOKEN: &str = "bench-receiver-token";
/// Kinds whose API requests a webhook call can cause.
const COUNTED: &[&str] = &["secrets", "gitrepositories", "receivers"];

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs every case with `requests` calls at each concurrency in `concurrency`, against
/// `gantry` (a binary to compare, e.g. another branch's) or a release build of this workspace.
pub fn receiver(
    workspace: &Path,
    kubeconfig: &Path,
    gantry: Option<&Path>,
    requests: usize,
    concurrency: &[usize],
) -> Result<()> {
    let gantry = match gantry {
        Some(path) => path.to_path_buf(),
        None => crate::bench_support::build_release(workspace)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = crate::cluster::client(kubeconfig).await?;
        gantry_testkit::install_crds(&client).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = format!("bench-receiver-{}", std::process::id());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(ns.clone());
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let result = measure(&gantry, kubeconfig, &client, &ns, requests, concurrency).await;
        namespaces.delete(&ns, &DeleteParams::background()).await?;
        result
    })
}

async fn measure(
    gantry: &Path,
    kubeconfig: &Path,
    client: &kube::Client,
    ns: &str,
    requests: usize,
    concurrency: &[usize],
) -> Result<()> {
    let root = tempfile::tempdir()?;
    let repo = TestRepo::new(root.path(), "app");
    repo.write(
        "app/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n",
    );
    repo.commit("app");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);

    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "webhook-token"}, "stringData": {"token": TOKEN}
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let spec = GitRepositorySpec {
        url: server.url("app.git"),
        interval: "10m".into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<GitRepository>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &GitRepository::new("app", spec))
        .await?;
    let spec = ReceiverSpec {
        type_: "github".into(),
        events: vec!["push".into()],
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
    Api::<Receiver>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &Receiver::new("github", spec))
        .await?;

    let storage = tempfile::tempdir()?;
    let port = crate::cluster::free_port()?;
    let log = std::fs::File::create(storage.path().join("gantry.log"))?;
    let child = Command::new(gantry)
        .args(["run", "--leader-elect=false", "--watch-namespace", ns])
        .args(["--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"])
        .args(["--serving-addr=127.0.0.1:0", "--serving-loopback-only=true"])
        .arg(format!("--receiver-addr=127.0.0.1:{port}"))
        .arg("--uptime-addr=127.0.0.1:0")
        .arg("--storage-addr=127.0.0.1:0")
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting gantry run")?;
    let _process = Process(child);

    let url = format!(
        "http://127.0.0.1:{port}{}",
        crate::sandbox::webhook_path(TOKEN, "github", ns)
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build()?;
    let ping = br#"{"zen":"z","hook_id":1}"#.to_vec();
    let ready = Instant::now();
    loop {
        let answer = call(&http, &url, "ping", &ping, TOKEN.as_bytes()).await;
        if answer.is_ok_and(|(status, _)| status == 200) {
            break;
        }
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("the Receiver was not served within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": "1".repeat(40),
        "repository": {"full_name": "org/app"}
    }))?;
    println!(
        "{requests} calls per case, one GitRepository, keep-alive connections; API requests \
         counted for {} (apiserver_request_total)",
        COUNTED.join(", ")
    );
    for (valid, key, expected) in [
        (true, TOKEN.as_bytes(), 200),
        (false, &b"forged-key"[..], 400),
    ] {
        for &c in concurrency {
            let before = api_requests(client).await?;
            let started = Instant::now();
            let calls = futures::stream::iter(0..requests)
                .map(|_| {
                    let (http, url, body) = (&http, &url, &body);
                    async move {
                        let sent = Instant::now();
                        let answer = call(http, url, "push", body, key).await;
                        (sent.elapsed(), answer)
                    }
                })
                .buffer_unordered(c)
                .collect::<Vec<_>>()
                .await;
            let took = started.elapsed();
            // Let the reconciles the calls asked for finish before counting what they cost.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = api_requests(client).await?;
            let mut latencies: Vec<Duration> = calls.iter().map(|(d, _)| *d).collect();
            latencies.sort();
            let errors: Vec<String> = calls
                .iter()
                .filter_map(|(_, answer)| match answer {
                    Ok((status, _)) if *status == expected => None,
                    Ok((status, text)) => Some(format!("{status} {text}")),
                    Err(err) => Some(err.clone()),
                })
                .collect();
            let delta: BTreeMap<String, f64> = after
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
            // Folded from +0.0: an empty f64 sum is -0.0.
            let total = delta.values().fold(0.0, |sum, v| sum + v);
            let detail = delta
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
            let p99 = percentile(&latencies, 0.99);
            println!(
                "{:<6} c={c:<3} {:>6.0} rps  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  errors {}  API requests {:.3} per call ({})",
                if valid { "valid" } else { "forged" },
                requests as f64 / took.as_secs_f64(),
                ms(percentile(&latencies, 0.50)),
                ms(p99),
                ms(*latencies.last().unwrap_or(&Duration::ZERO)),
                errors.len(),
                total / requests as f64,
                if detail.is_empty() {
                    "none".into()
                } else {
                    detail
                },
            );
            if let Some(first) = errors.first() {
                println!("       first error: {first}");
            }
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// POSTs `body` as the GitHub event `event`, signed with `key`.
async fn call(
    http: &reqwest::Client,
    url: &str,
    event: &str,
    body: &[u8],
    key: &[u8],
) -> Result<(u16, String), String> {
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).map_err(|e| e.to_string())?;
    mac.update(body);
    let signature = format!(
        "sha256={}",
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let response = http
        .post(url)
        .header("X-GitHub-Event", event)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.unwrap_or_default()))
}

/// `apiserver_request_total` summed by `<verb> <resource>` for the [`COUNTED`] resources.
async fn api_requests(client: &kube::Client) -> Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let resource = label("resource");
        if !COUNTED.contains(&resource.as_str()) {
            continue;
        }
        let subresource = label("subresource");
        let resource = if subresource.is_empty() {
            resource
        } else {
            format!("{resource}/{subresource}")
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *counts
            .entry(format!("{} {resource}", label("verb")))
            .or_insert(0.0) += value;
    }
    Ok(counts)
}

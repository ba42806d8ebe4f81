//! `cargo xtask bench serving --sleeping N`: what N Knative Services asleep cost `gantry run`.
//!
//! The release `gantry run` (every listener on 127.0.0.1, the router's dial guard on) against
//! the local control plane, watching one fresh namespace: idle CPU and RSS for a period with no
//! ksvc, then N ksvcs created with `autoscaling.knative.dev/initial-scale: "0"` (each gets its
//! Revision and a Deployment at zero and becomes Ready), a settling pause, and the same idle
//! measurement again. What the difference shows is the per-ksvc idle cost: the autoscaler's
//! tick over every Revision, the watch caches, the routing table, metrics series.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use gantry_api::serving::v1::Service;
use gantry_testkit::git::free_port;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::bench_support;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark against the cluster in `kubeconfig` and prints the figures.
pub fn sleeping(
    workspace: &Path,
    kubeconfig: &Path,
    gantry: Option<&Path>,
    count: usize,
    idle: Duration,
) -> Result<()> {
    let gantry = match gantry {
        Some(path) => path.to_owned(),
        None => bench_support::build_release(workspace)?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = crate::cluster::client(kubeconfig).await?;
        gantry_testkit::install_crds(&client).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = format!("bench-sleeping-{}", std::process::id());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(ns.clone());
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let result = measure(&gantry, kubeconfig, &client, &ns, count, idle).await;
        namespaces.delete(&ns, &DeleteParams::background()).await?;
        result
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ksvc(ns: &str, i: usize) -> Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": format!("app-{i:04}"), "namespace": ns },
        "spec": { "template": {
            "metadata": { "annotations": { "autoscaling.knative.dev/initial-scale": "0" } },
            "spec": {
                "containers": [{
                    "image": "example.invalid/app:1",
                    "ports": [{ "containerPort": 8080 }],
                }],
            },
        }},
    }))?)
}

fn ready(s: &Service) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn measure(
    gantry: &Path,
    kubeconfig: &Path,
    client: &kube::Client,
    ns: &str,
    count: usize,
    idle: Duration,
) -> Result<()> {
    let storage = tempfile::tempdir()?;
    let child = Command::new(gantry)
        .args(["run", "--leader-elect=false", "--watch-namespace", ns])
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--serving-addr=127.0.0.1:{}", free_port()))
        .arg("--serving-loopback-only=true")
        .arg(format!("--uptime-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--storage-addr=127.0.0.1:{}", free_port()))
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting gantry run")?;
    let process = Process(child);
    let pid = process.0.id();
    // Let it start, sync its watches and install what it installs.
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!(
        "gantry run, idle, no ksvc: measuring {} s (load average {})",
        idle.as_secs(),
        load_average()
    );
    let (rss_empty, cpu_empty) = bench_support::idle_usage(pid, idle).await;
    println!("  CPU {cpu_empty:.2} % of a core, RSS {rss_empty:.1} MiB");

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let services = services.clone();
            async move {
                services
                    .create(&PostParams::default(), &ksvc(ns, i)?)
                    .await
                    .with_context(|| format!("creating ksvc {i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let created = started.elapsed();
    let deadline = started + Duration::from_secs(1800);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    loop {
        let list = services.list(&ListParams::default()).await?;
        let n = list.items.iter().filter(|s| ready(s)).count();
        let at_zero = deployments
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(0))
            .count();
        if n >= count && at_zero >= count {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {count} ksvcs Ready ({at_zero} Deployments at zero) after 30 min");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let all_ready = started.elapsed();
    println!(
        "{count} ksvcs created in {:.1} s, all Ready with their Deployments at zero after {:.1} s",
        created.as_secs_f64(),
        all_ready.as_secs_f64()
    );
    // Settle: the last status writes, requeues and the watch bursts are over.
    tokio::time::sleep(Duration::from_secs(30)).await;
    println!(
        "gantry run, idle, {count} ksvcs asleep: measuring {} s (load average {})",
        idle.as_secs(),
        load_average()
    );
    let (rss_full, cpu_full) = bench_support::idle_usage(pid, idle).await;
    println!("  CPU {cpu_full:.2} % of a core, RSS {rss_full:.1} MiB");
    println!(
        "{count} ksvcs asleep add {:+.2} % of a core and {:+.1} MiB RSS ({:.1} KiB per ksvc); peak RSS {:.1} MiB",
        cpu_full - cpu_empty,
        rss_full - rss_empty,
        (rss_full - rss_empty) * 1024.0 / count.max(1) as f64,
        bench_support::peak_rss_mib(pid)
    );
    drop(process);
    Ok(())
}

//! `cargo xtask bench gitops`: Flux's benchmark shape on the local control plane.
//! (`cargo xtask bench policy`, at [`policy`], needs no cluster.)
//!
//! N Kustomizations, each applying a Deployment (replicas 0), a ServiceAccount, a Service and an
//! Ingress from one git repository, created at once; measured: the time until every one is
//! Ready, and the peak RSS of the `gantry run` process doing it. For comparison, one
//! `kubectl apply --server-side` of the same 4N objects.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::bench_support;
use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

const APP: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: app
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replicas: 0
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      serviceAccountName: app
      containers:
      - name: app
        image: registry.invalid/app:1.0.0
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  selector: {app: app}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
spec:
  rules:
  - host: app.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: app
            port:
              number: 80
"#;

pub struct Figures {
    pub all_ready: Duration,
    pub peak_rss_mib: f64,
    /// CPU seconds from the GitRepository's creation to all Ready, with kustomize children.
    pub cpu_seconds: f64,
    /// RSS (MiB) and CPU (% of one core) over 30 s once everything is Ready.
    pub idle: (f64, f64),
    pub kubectl: Option<Duration>,
}

/// Runs the benchmark for each count against the cluster in `kubeconfig`.
pub fn gitops(
    workspace: &Path,
    kubeconfig: &Path,
    counts: &[usize],
    concurrency: u16,
) -> Result<Vec<Figures>> {
    let gantry = bench_support::build_release(workspace)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let root = tempfile::tempdir()?;
    let repo = TestRepo::new(root.path(), "bench");
    repo.write("app/app.yaml", APP);
    repo.commit("benchmark application");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);

    let mut all = Vec::new();
    for &count in counts {
        let figures = runtime.block_on(run_one(
            &gantry,
            kubeconfig,
            &server.url("bench.git"),
            count,
            concurrency,
        ))?;
        println!(
            "N={count}: all Ready in {:.1}s, gantry peak RSS {:.0} MiB, CPU {:.1} s ({:.2} cores on average), idle afterwards RSS {:.0} MiB and {:.2}% of one core{}",
            figures.all_ready.as_secs_f64(),
            figures.peak_rss_mib,
            figures.cpu_seconds,
            figures.cpu_seconds / figures.all_ready.as_secs_f64(),
            figures.idle.0,
            figures.idle.1,
            figures
                .kubectl
                .map(|d| format!(
                    "; kubectl apply --server-side of the same {} objects: {:.1}s",
                    count * 4,
                    d.as_secs_f64()
                ))
                .unwrap_or_default()
        );
        all.push(figures);
    }
    Ok(all)
}

/// `cargo xtask bench policy`: runs gantry-core's `policy_bench` example in release mode, which
/// times each kind of ImagePolicy over `tags` generated tags and counts the heap allocations of
/// one choice with a counting global allocator (kept out of xtask itself).
pub fn policy(workspace: &Path, tags: usize, runs: usize) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("Building and running the policy benchmark (release)...");
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "gantry-core"])
        .args(["--example", "policy_bench", "--"])
        .args([tags.to_string(), runs.to_string()])
        .current_dir(workspace)
        .status()?;
    if !status.success() {
        bail!("the policy benchmark failed");
    }
    Ok(())
}

/// `cargo xtask bench uptime-store`: starts a private Postgres server (durable settings, as
/// the testkit runs it: loopback, stopped at the end) and runs the store's benchmark binary in
/// release against it and against SQLite files in a temporary directory.
pub fn uptime_store(
    workspace: &Path,
    monitors: usize,
    hours: usize,
    page_monitors: usize,
) -> Result<()> {
    let postgres = gantry_testkit::postgres::Postgres::start_durable();
    let page_url = postgres.create_another_database("page");
    let dir = tempfile::tempdir().context("temporary directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("Building and running the uptime store benchmark (release)...");
    let status = Command::new(cargo)
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "gantry-uptime-store",
        ])
        .args(["--features", "bench", "--bin", "uptime-store-bench", "--"])
        .args(["--monitors", &monitors.to_string()])
        .args(["--hours", &hours.to_string()])
        .args(["--page-monitors", &page_monitors.to_string()])
        .args(["--postgres-url", &postgres.url()])
        .args(["--postgres-page-url", &page_url])
        .arg("--dir")
        .arg(dir.path())
        .current_dir(workspace)
        .status()?;
    drop(postgres);
    if !status.success() {
        bail!("the uptime store benchmark failed");
    }
    Ok(())
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_one(
    gantry: &Path,
    kubeconfig: &Path,
    url: &str,
    count: usize,
    concurrency: u16,
) -> Result<Figures> {
    let client = crate::cluster::client(kubeconfig).await?;
    gantry_testkit::install_crds(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = format!("bench-{count}-{}", std::process::id());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    let result = measure(gantry, kubeconfig, &client, &ns, url, count, concurrency).await;
    namespaces.delete(&ns, &DeleteParams::background()).await?;
    let mut figures = result?;
    figures.kubectl = match kubectl_apply_time(kubeconfig, &client, count).await {
        Ok(took) => Some(took),
        Err(err) => {
            eprintln!("N={count}: no kubectl comparison: {err:#}");
            None
        }
    };
    Ok(figures)
}

async fn measure(
    gantry: &Path,
    kubeconfig: &Path,
    client: &kube::Client,
    ns: &str,
    url: &str,
    count: usize,
    concurrency: u16,
) -> Result<Figures> {
    let storage = tempfile::tempdir()?;
    let child = Command::new(gantry)
        .args(["run", "--leader-elect=false", "--watch-namespace", ns])
        .args(["--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"])
        .arg(format!("--concurrent={concurrency}"))
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting gantry run")?;
    let process = Process(child);
    let pid = process.0.id();

    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    let spec = GitRepositorySpec {
        url: url.into(),
        interval: "10m".into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = Instant::now();
    let cpu_before = bench_support::cpu_seconds(pid);
    repos
        .create(&PostParams::default(), &GitRepository::new("bench", spec))
        .await?;
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let creates = (0..count).map(|i| {
        let api = kustomizations.clone();
        let spec = KustomizationSpec {
            interval: "1h".into(),
            path: Some("./app".into()),
            prune: true,
            wait: true,
            timeout: Some("5m".into()),
            target_namespace: Some(ns.to_string()),
            name_prefix: Some(format!("k{i}-")),
            source_ref: CrossNamespaceSourceReference {
                name: "bench".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        async move {
            api.create(
                &PostParams::default(),
                &Kustomization::new(&format!("k{i}"), spec),
            )
            .await
        }
    });
    for result in futures::future::join_all(creates).await {
        result?;
    }
    let mut peak = 0.0f64;
    loop {
        peak = peak.max(bench_support::peak_rss_mib(pid));
        let list = kustomizations.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|k| {
                k.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == count {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {ready} of {count} Kustomizations became Ready within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_ready = started.elapsed();
    let cpu_seconds = bench_support::cpu_seconds(pid) - cpu_before;
    peak = peak.max(bench_support::peak_rss_mib(pid));
    // Idle: every Kustomization applied, intervals (1h) far away; what does keeping watch cost?
    let idle = bench_support::idle_usage(pid, Duration::from_secs(30)).await;
    drop(process);
    Ok(Figures {
        all_ready,
        peak_rss_mib: peak,
        cpu_seconds,
        idle,
        kubectl: None,
    })
}

/// One `kubectl apply --server-side` of the same objects into a fresh namespace.
async fn kubectl_apply_time(
    kubeconfig: &Path,
    client: &kube::Client,
    count: usize,
) -> Result<Duration> {
    let ns = format!("bench-kubectl-{count}-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    let mut all = String::new();
    for i in 0..count {
        for doc in APP.split("---\n") {
            let doc = doc
                .replace("name: app\n", &format!("name: k{i}-app\n"))
                .replace(
                    "serviceAccountName: app",
                    &format!("serviceAccountName: k{i}-app"),
                );
            all.push_str("---\n");
            all.push_str(&doc);
        }
    }
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), all)?;
    let started = Instant::now();
    let status = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--field-manager=bench",
            "-n",
            &ns,
            "-f",
        ])
        .arg(file.path())
        .stdout(Stdio::null())
        .status()
        .context("running kubectl (the comparison needs it on PATH)")?;
    let took = started.elapsed();
    namespaces.delete(&ns, &DeleteParams::background()).await?;
    if !status.success() {
        bail!("kubectl apply failed");
    }
    Ok(took)
}

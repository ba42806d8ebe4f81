//! `cargo xtask bench gitops`: Flux's benchmark shape on the local control plane.
//! (`cargo xtask bench policy`, at [`policy`], and `cargo xtask bench sops`, at [`sops`], need no
//! cluster.)
//!
//! N Kustomizations, each applying its own Deployment (replicas 0), ServiceAccount, Service and
//! Ingress from one directory of one git repository, with its own selector (`app-${INDEX}`
//! through `postBuild.substitute`, as fluxcd/flux-benchmark does: a shared selector would make
//! every health check that lists Pods by selector see all N apps), created at once. Measured
//! per run: the time until every one is Ready, the controller's peak RSS and CPU, the API
//! server's CPU, and the API requests by verb and resource (`apiserver_request_total` from the
//! API server's `/metrics`, before and after; the API server counts every client, so rows
//! that the control plane's own controllers make too are marked). Then the **floor**: the same
//! 4N objects server-side-applied by a minimal client at the same concurrency, no dry-run, no
//! status, no health: what the API server itself allows on this machine; and the same client
//! keeping Flux's guarantee (each Kustomization's objects all dry-run before any is applied),
//! the least a controller that keeps it can send; and that plus every other write Flux's API
//! asks for (the benchmark's create of the Kustomization, its finalizer, `Ready`, an Event).
//!
//! Readiness is counted from a watch of the Kustomizations, not by listing them: a LIST of N
//! Kustomizations every half second cost the API server ~3 ms of CPU per Kustomization at
//! N=1000 (7-8 % of its CPU in a profile), load the floor never had. The floors run with the
//! same watches (Deployments and Kustomizations) as the controllers' runs.
//!
//! `--against flux` runs Flux's source-controller and kustomize-controller (built from the Go
//! module proxy, see `flux_controllers`) the same way, alternating with Gantry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;

use crate::bench_support::{self, RequestKey};
use gantry_api::kustomize::v1::{
    CrossNamespaceSourceReference, Kustomization, KustomizationSpec, PostBuild,
};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;

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
    matchLabels:
      app: app-${INDEX}
  template:
    metadata:
      labels:
        app: app-${INDEX}
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
  selector:
    app: app-${INDEX}
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
  - host: app-${INDEX}.example.com
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

/// The kinds the benchmark applies: requests on these (main resource) with the verbs only a
/// GitOps controller uses are its own; the control plane updates Deployments with `UPDATE`.
const APPLIED: &[&str] = &["deployments", "services", "serviceaccounts", "ingresses"];
const CONTROLLER_VERBS: &[&str] = &["GET", "APPLY", "PATCH", "CREATE", "DELETE", "LIST"];

/// What `cargo xtask bench gitops` is asked to do.
pub struct Options {
    pub counts: Vec<usize>,
    pub concurrency: u16,
    /// A `gantry` binary to measure instead of this workspace's release build.
    pub gantry: Option<PathBuf>,
    /// Also run Flux's controllers, alternating with Gantry.
    pub against_flux: bool,
    /// Where Go tools are cached (Flux's controllers).
    pub cache: PathBuf,
    /// Seconds of idle measurement after all are Ready (0: none).
    pub idle_secs: u64,
}

/// Who reconciles the Kustomizations in a run.
#[derive(Clone, Debug)]
enum Contender {
    Gantry(PathBuf),
    Flux(crate::flux_controllers::Binaries),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Gantry(_) => "gantry",
            Contender::Flux(_) => "flux",
        }
    }
}

/// The figures of one run.
#[derive(Debug, Default)]
pub struct Figures {
    pub wall: Duration,
    pub peak_rss_mib: f64,
    /// The largest anonymous RSS seen, sampled every 500 ms with the Ready count (summed over
    /// the controller processes).
    pub peak_anon_mib: f64,
    /// CPU seconds of the controller process(es) from the start to all Ready (children too).
    pub cpu_seconds: f64,
    pub apiserver_cpu_seconds: Option<f64>,
    pub requests: BTreeMap<RequestKey, f64>,
    /// RSS (MiB) and CPU (% of one core) over the idle period once everything is Ready.
    pub idle: Option<(f64, f64)>,
    pub load_before: f64,
    /// Where the wall time went ([`crate::bench_timeline`]).
    pub timeline: Vec<String>,
}

/// Runs the benchmark for each count against the cluster in `kubeconfig`.
pub fn gitops(workspace: &Path, kubeconfig: &Path, opts: &Options) -> Result<()> {
    let gantry = match &opts.gantry {
        Some(path) => path.clone(),
        None => bench_support::build_release(workspace)?,
    };
    let mut contenders = vec![Contender::Gantry(gantry)];
    if opts.against_flux {
        let flux = crate::flux_controllers::build(&opts.cache)?;
        contenders.insert(0, Contender::Flux(flux));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let root = tempfile::tempdir()?;
    let repo = TestRepo::new(root.path(), "bench");
    repo.write("app/app.yaml", APP);
    repo.commit("benchmark application");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);
    let url = server.url("bench.git");

    for &count in &opts.counts {
        let mut results = Vec::new();
        for contender in &contenders {
            let figures = runtime.block_on(run_one(
                contender,
                kubeconfig,
                &url,
                count,
                opts.concurrency,
                opts.idle_secs,
            ))?;
            eprintln!(
                "[bench] {} N={count}: all Ready in {:.1} s, {:.1} requests per Kustomization",
                contender.name(),
                figures.wall.as_secs_f64(),
                figures.requests.values().sum::<f64>() / count as f64
            );
            results.push((contender.name().to_string(), figures));
        }
        for kind in [Floor::Applies, Floor::DryRun, Floor::FluxWrites] {
            let figures = runtime.block_on(floor(kubeconfig, count, opts.concurrency, kind))?;
            results.push((kind.name().to_string(), figures));
        }
        print_table(count, opts.concurrency, &results);
    }
    Ok(())
}

fn print_table(count: usize, concurrency: u16, results: &[(String, Figures)]) {
    let n = count as f64;
    println!(
        "\nN={count} (concurrency {concurrency}; load average before each run: {})",
        results
            .iter()
            .map(|(name, f)| format!("{name} {:.1}", f.load_before))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| run | wall (s) | controller peak RSS (MiB): all / anonymous | controller CPU (s) | API server CPU (s) | controller requests / Kustomization | all requests / Kustomization |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, f) in results {
        let controller: f64 = f
            .requests
            .iter()
            .filter(|(k, _)| is_controller_request(k))
            .map(|(_, v)| v)
            .sum();
        let all: f64 = f.requests.values().sum();
        println!(
            "| {name} | {:.1} | {} | {} | {} | {:.1} | {:.1} |",
            f.wall.as_secs_f64(),
            if name.starts_with("floor") {
                "-".into()
            } else {
                format!("{:.0} / {:.0}", f.peak_rss_mib, f.peak_anon_mib)
            },
            if name.starts_with("floor") {
                "-".into()
            } else {
                format!("{:.1}", f.cpu_seconds)
            },
            f.apiserver_cpu_seconds
                .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            controller / n,
            all / n,
        );
    }
    for (name, f) in results {
        for line in &f.timeline {
            println!("{name}: {line}");
        }
    }
    for (name, f) in results {
        if let Some((rss, cpu)) = f.idle {
            println!("{name} idle afterwards: RSS {rss:.0} MiB, {cpu:.2}% of one core");
        }
    }
    // Rows by verb and resource, per Kustomization, side by side.
    let mut keys: Vec<&RequestKey> = results
        .iter()
        .flat_map(|(_, f)| f.requests.keys())
        .collect();
    keys.sort();
    keys.dedup();
    println!(
        "\nAPI requests per Kustomization by verb and resource (* = counted as the controller's):"
    );
    println!(
        "| request | {} |",
        results
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("| --- |{}", " ---: |".repeat(results.len()));
    for key in keys {
        let cells: Vec<String> = results
            .iter()
            .map(|(_, f)| {
                f.requests
                    .get(key)
                    .map_or_else(|| "-".into(), |v| format!("{:.2}", v / n))
            })
            .collect();
        let mark = if is_controller_request(key) { "*" } else { "" };
        println!("| {key}{mark} | {} |", cells.join(" | "));
    }
}

/// Requests only a GitOps controller (or the floor's client) makes: its own kinds, the applied
/// kinds with the verbs the control plane does not use, and Events (with `replicas: 0` the
/// control plane emits none here: see the floor's column).
fn is_controller_request(key: &RequestKey) -> bool {
    let resource = key.resource.split('/').next().unwrap_or_default();
    if resource == "events" {
        return true;
    }
    if matches!(
        resource,
        "kustomizations" | "gitrepositories" | "ocirepositories" | "buckets"
    ) {
        // The benchmark's own creates are not the controller's.
        return !(key.verb == "POST" || key.verb == "CREATE") || key.resource.contains('/');
    }
    APPLIED.contains(&key.resource.as_str()) && CONTROLLER_VERBS.contains(&key.verb.as_str())
}

async fn run_one(
    contender: &Contender,
    kubeconfig: &Path,
    url: &str,
    count: usize,
    concurrency: u16,
    idle_secs: u64,
) -> Result<Figures> {
    let client = crate::cluster::client(kubeconfig).await?;
    match contender {
        Contender::Gantry(_) => gantry_testkit::install_crds(&client).await,
        Contender::Flux(bin) => crate::flux_controllers::install_crds(&client, bin).await?,
    }
    let ns = format!("bench-{}-{count}-{}", contender.name(), std::process::id());
    create_namespace(&client, &ns).await?;
    let result = measure(
        contender,
        kubeconfig,
        &client,
        &ns,
        url,
        count,
        concurrency,
        idle_secs,
    )
    .await;
    // The controller is stopped: its finalizers would keep the namespace terminating forever.
    drop_finalizers(&client, &ns).await?;
    delete_namespace(&client, &ns).await?;
    result
}

/// Removes the finalizers of the run's Flux objects, so the namespace can go without a
/// controller.
async fn drop_finalizers(client: &kube::Client, ns: &str) -> Result<()> {
    let patch = serde_json::json!({ "metadata": { "finalizers": null } });
    let params = PatchParams::default();
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = kustomizations
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|k| k.metadata.name)
        .collect();
    let results: Vec<_> = futures::stream::iter(names.iter().map(|name| {
        let api = kustomizations.clone();
        let (patch, params) = (&patch, &params);
        async move { api.patch(name, params, &Patch::Merge(patch)).await }
    }))
    .buffer_unordered(50)
    .collect()
    .await;
    for result in results {
        result?;
    }
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    if repos.get_opt("bench").await?.is_some() {
        repos.patch("bench", &params, &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

async fn create_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.to_string());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Deletes `ns` and waits until it is gone, so its deletion does not load the next run.
async fn delete_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(ns, &DeleteParams::background()).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while namespaces.get_opt(ns).await?.is_some() {
        if Instant::now() > deadline {
            eprintln!("namespace {ns} still terminating after 5 minutes; going on");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    contender: &Contender,
    kubeconfig: &Path,
    client: &kube::Client,
    ns: &str,
    url: &str,
    count: usize,
    concurrency: u16,
    idle_secs: u64,
) -> Result<Figures> {
    let storage = tempfile::tempdir()?;
    let processes = match contender {
        Contender::Gantry(gantry) => vec![start_gantry(
            gantry,
            kubeconfig,
            ns,
            concurrency,
            storage.path(),
        )?],
        Contender::Flux(flux) => {
            crate::flux_controllers::start(flux, kubeconfig, ns, concurrency, storage.path())?
        }
    };
    let pids: Vec<u32> = processes.iter().map(|p| p.0.id()).collect();
    // Let the controllers start their watches before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let apiserver = bench_support::apiserver_pid(kubeconfig);
    let load_before = bench_support::load_average();
    let requests_before = bench_support::api_requests(client).await?;
    let apiserver_before = apiserver.map(bench_support::cpu_seconds);
    let cpu_before: f64 = pids.iter().map(|&p| bench_support::cpu_seconds(p)).sum();
    let started = Instant::now();
    let timeline = crate::bench_timeline::Timeline::start(client, ns, started);

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
    repos
        .create(&PostParams::default(), &GitRepository::new("bench", spec))
        .await?;
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let creates = (0..count).map(|i| {
        let api = kustomizations.clone();
        async move {
            api.create(&PostParams::default(), &kustomization(i, ns))
                .await
        }
    });
    let results: Vec<_> = futures::stream::iter(creates)
        .buffer_unordered(50)
        .collect()
        .await;
    for result in results {
        result?;
    }
    let mut peak = 0.0f64;
    let mut peak_anon = 0.0f64;
    let mut sampled = Instant::now() - Duration::from_secs(1);
    // The timeline's watch says when each became Ready: the wall time is when it saw the last.
    let wall = loop {
        if sampled.elapsed() >= Duration::from_millis(500) {
            sampled = Instant::now();
            for &pid in &pids {
                peak = peak.max(bench_support::peak_rss_mib(pid));
            }
            peak_anon = peak_anon.max(pids.iter().map(|&p| bench_support::anon_rss_mib(p)).sum());
        }
        let (ready, last) = timeline.ready();
        if ready == count {
            break last;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {ready} of {count} Kustomizations became Ready within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let timeline = timeline.finish(wall);
    let cpu_seconds = pids
        .iter()
        .map(|&p| bench_support::cpu_seconds(p))
        .sum::<f64>()
        - cpu_before;
    let apiserver_cpu_seconds = apiserver
        .zip(apiserver_before)
        .map(|(pid, before)| bench_support::cpu_seconds(pid) - before);
    let requests = bench_support::request_delta(
        &requests_before,
        &bench_support::api_requests(client).await?,
    );
    for &pid in &pids {
        peak = peak.max(bench_support::peak_rss_mib(pid));
    }
    let idle = if idle_secs > 0 {
        // Every Kustomization applied, intervals (1h) far away: what does keeping watch cost?
        Some(bench_support::idle_usage(pids[0], Duration::from_secs(idle_secs)).await)
    } else {
        None
    };
    drop(processes);
    Ok(Figures {
        wall,
        peak_rss_mib: peak,
        peak_anon_mib: peak_anon,
        cpu_seconds,
        apiserver_cpu_seconds,
        requests,
        idle,
        load_before,
        timeline,
    })
}

/// The run's `i`th Kustomization: `./app` of the `bench` GitRepository with its own name prefix
/// and selector.
fn kustomization(i: usize, ns: &str) -> Kustomization {
    let spec = KustomizationSpec {
        interval: "1h".into(),
        path: Some("./app".into()),
        prune: true,
        wait: true,
        timeout: Some("5m".into()),
        target_namespace: Some(ns.to_string()),
        name_prefix: Some(format!("k{i}-")),
        source_ref: CrossNamespaceSourceReference {
            kind: gantry_api::kustomize::v1::SourceKind::GitRepository,
            name: "bench".into(),
            ..Default::default()
        },
        post_build: Some(PostBuild {
            substitute: BTreeMap::from([("INDEX".to_string(), i.to_string())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Kustomization::new(&format!("k{i}"), spec)
}

fn start_gantry(
    gantry: &Path,
    kubeconfig: &Path,
    ns: &str,
    concurrency: u16,
    storage: &Path,
) -> Result<Process> {
    let child = Command::new(gantry)
        .args(["run", "--leader-elect=false", "--watch-namespace", ns])
        .args(["--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"])
        .args(["--receiver-addr=127.0.0.1:0", "--uptime-addr=127.0.0.1:0"])
        .args(["--serving-addr=127.0.0.1:0", "--serving-loopback-only=true"])
        .arg("--storage-addr=127.0.0.1:0")
        .arg(format!("--concurrent={concurrency}"))
        .arg("--storage-path")
        .arg(storage)
        .env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting gantry run")?;
    Ok(Process(child))
}

/// What a floor run sends, with no controller logic at all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// The 4N server-side applies, `concurrency` in flight: the issue's floor.
    Applies,
    /// Per Kustomization (`concurrency` at a time, one request after the other): its 4 objects
    /// dry-run, then applied. Flux's validation guarantee at the least cost.
    DryRun,
    /// Everything the benchmark and a controller keeping Flux's guarantees must send per
    /// Kustomization: the benchmark's create of the Kustomization, its finalizer, the dry-runs
    /// and applies, the `Ready` status and one Event. A controller's own overhead is what it
    /// takes beyond this row.
    FluxWrites,
}

impl Floor {
    fn name(self) -> &'static str {
        match self {
            Floor::Applies => "floor",
            Floor::DryRun => "floor+dry-run",
            Floor::FluxWrites => "floor+flux-writes",
        }
    }
}

/// Server-side applies `object` (its own kind, in `ns`) with `params`.
async fn apply(
    client: &kube::Client,
    ns: &str,
    object: &serde_json::Value,
    params: &PatchParams,
) -> Result<(), kube::Error> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(name, params, &Patch::Apply(object))
        .await
        .map(drop)
}

/// What a controller writes at the end of a successful run: `Ready` (a merge patch, as Flux
/// sends it) and one Event.
async fn report_ready(
    kustomizations: &Api<Kustomization>,
    events: &Api<Event>,
    ns: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "observedGeneration": 1,
        "lastAppliedRevision": "main@sha1:0",
        "conditions": [{
            "type": "Ready", "status": "True", "observedGeneration": 1,
            "reason": "ReconciliationSucceeded",
            "message": "Applied revision: main@sha1:0",
            "lastTransitionTime": now,
        }],
    }});
    kustomizations
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{name}.")},
        "involvedObject": {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization", "name": name, "namespace": ns,
        },
        "reason": "ReconciliationSucceeded", "type": "Normal",
        "message": "Deployment/k-app created, ServiceAccount/k-app created",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "source": {"component": "bench-floor"},
    }))
    .map_err(kube::Error::SerdeError)?;
    events
        .create(&PostParams::default(), &event)
        .await
        .map(drop)
}

/// A floor run (see [`Floor`]).
async fn floor(kubeconfig: &Path, count: usize, concurrency: u16, kind: Floor) -> Result<Figures> {
    let client = crate::cluster::client(kubeconfig).await?;
    if kind == Floor::FluxWrites {
        gantry_testkit::install_crds(&client).await;
    }
    let ns = format!(
        "bench-{}-{count}-{}",
        kind.name().replace('+', "-"),
        std::process::id()
    );
    create_namespace(&client, &ns).await?;
    let mut groups = Vec::with_capacity(count);
    for i in 0..count {
        let mut objects = Vec::with_capacity(4);
        for doc in APP.split("---\n") {
            let doc = doc
                .replace("name: app\n", &format!("name: k{i}-app\n"))
                .replace(
                    "serviceAccountName: app",
                    &format!("serviceAccountName: k{i}-app"),
                )
                .replace("${INDEX}", &i.to_string());
            let mut object: serde_json::Value = serde_saphyr::from_str(&doc)?;
            object["metadata"]["namespace"] = serde_json::json!(ns);
            objects.push(object);
        }
        groups.push(objects);
    }
    let apiserver = bench_support::apiserver_pid(kubeconfig);
    let load_before = bench_support::load_average();
    let requests_before = bench_support::api_requests(&client).await?;
    let apiserver_before = apiserver.map(bench_support::cpu_seconds);
    let started = Instant::now();
    // The same observers as the controllers' runs (their watches load the API server too).
    let timeline = crate::bench_timeline::Timeline::start(&client, &ns, started);
    let params = PatchParams::apply("bench-floor").force();
    let dry_run = params.clone().dry_run();
    let in_flight = usize::from(concurrency.max(1));
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let results: Vec<Result<(), kube::Error>> = if kind != Floor::Applies {
        futures::stream::iter(groups.iter().enumerate().map(|(i, objects)| {
            let (client, ns, params, dry_run) = (&client, ns.as_str(), &params, &dry_run);
            let (kustomizations, events) = (&kustomizations, &events);
            async move {
                let name = format!("k{i}");
                if kind == Floor::FluxWrites {
                    kustomizations
                        .create(&PostParams::default(), &kustomization(i, ns))
                        .await?;
                    let finalizer = serde_json::json!({
                        "metadata": {"finalizers": ["finalizers.fluxcd.io"]}
                    });
                    kustomizations
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&finalizer))
                        .await?;
                }
                for object in objects {
                    apply(client, ns, object, dry_run).await?;
                }
                for object in objects {
                    apply(client, ns, object, params).await?;
                }
                if kind == Floor::FluxWrites {
                    report_ready(kustomizations, events, ns, &name).await?;
                }
                Ok(())
            }
        }))
        .buffer_unordered(in_flight)
        .collect()
        .await
    } else {
        futures::stream::iter(
            groups
                .iter()
                .flatten()
                .map(|o| apply(&client, &ns, o, &params)),
        )
        .buffer_unordered(in_flight)
        .collect()
        .await
    };
    let wall = started.elapsed();
    let timeline = timeline.finish(wall);
    let apiserver_cpu_seconds = apiserver
        .zip(apiserver_before)
        .map(|(pid, before)| bench_support::cpu_seconds(pid) - before);
    let requests = bench_support::request_delta(
        &requests_before,
        &bench_support::api_requests(&client).await?,
    );
    drop_finalizers(&client, &ns).await?;
    delete_namespace(&client, &ns).await?;
    for result in results {
        result.context("floor apply")?;
    }
    Ok(Figures {
        wall,
        apiserver_cpu_seconds,
        requests,
        load_before,
        timeline,
        ..Figures::default()
    })
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

/// `cargo xtask bench gzip`: goflate's example benchmark in release mode.
pub fn gzip(workspace: &Path, size_mib: usize, runs: usize) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("Building and running the gzip benchmark (release)...");
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "goflate"])
        .args(["--example", "gzip_bench", "--"])
        .args([size_mib.to_string(), runs.to_string()])
        .current_dir(workspace)
        .status()?;
    if !status.success() {
        bail!("the gzip benchmark failed");
    }
    Ok(())
}

/// `cargo xtask bench sops`: the decryption example of gantry-core in release mode, with files
/// the real `sops` at `sops` encrypts.
pub fn sops(workspace: &Path, sops: &Path, count: usize, runs: usize) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("Building and running the SOPS decryption benchmark (release)...");
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "gantry-core"])
        .args(["--example", "sops_bench", "--"])
        .arg(sops)
        .args([count.to_string(), runs.to_string()])
        .current_dir(workspace)
        .status()?;
    if !status.success() {
        bail!("the SOPS benchmark failed");
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

/// `cargo xtask bench serving`: the router's benchmark example, built with optimisations, against
/// the backend directly and through Debian's nginx (installed here if missing, as root).
pub fn serving(workspace: &Path, runs: usize, seconds: u64, rounds: usize) -> Result<()> {
    crate::prerequisites::ensure_bench(&["nginx"])?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("Building and running the serving benchmark (release)...");
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "gantry-router"])
        .args(["--example", "serving_bench", "--"])
        .args([runs.to_string(), seconds.to_string(), rounds.to_string()])
        .arg(NGINX)
        .current_dir(workspace)
        .status()?;
    if !status.success() {
        bail!("the serving benchmark failed");
    }
    Ok(())
}

/// Debian's nginx (package `nginx`, a benchmark prerequisite).
const NGINX: &str = "/usr/sbin/nginx";

/// A child process killed on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

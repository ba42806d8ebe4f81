//! `cargo xtask cluster up|down|status`: a real Kubernetes control plane as local processes.
//!
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which plays the
//! kubelet, so Deployments really roll out and Pods become Ready), all on 127.0.0.1 and free
//! ports, built once from the Go module proxy. See `docs/local-cluster.md`.

mod build;
mod certs;
pub mod process;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};

pub use build::{Binaries, is_built};
use process::Running;

/// The pinned versions; each can be overridden by an environment variable for trying another.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub kwok: String,
}

impl Versions {
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            kubernetes: var("GANTRY_K8S_VERSION", "v1.36.3"),
            // The etcd version that k8s.io/kubernetes v1.36.3's go.mod requires.
            etcd: var("GANTRY_ETCD_VERSION", "v3.6.8"),
            kwok: var("GANTRY_KWOK_VERSION", "v0.8.0"),
        }
    }
}

/// Where things live. `state` is per checkout and disposable; `cache` is per machine and kept.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub cache: PathBuf,
}

impl Paths {
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("admin.kubeconfig")
    }
    fn record(&self) -> PathBuf {
        self.state.join("cluster.json")
    }
    fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
}

/// Knobs for `up`; the defaults are what a developer wants, the rest exists for fault tests.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    pub etcd_port: Option<u16>,
    pub apiserver_port: Option<u16>,
    pub etcd_data_dir: Option<PathBuf>,
    pub nodes: u32,
}

/// What `up` wrote down about a running cluster, read back by `status`, `down` and `test`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub server: String,
    pub kubeconfig: PathBuf,
    pub versions: Versions,
    pub components: Vec<ComponentRecord>,
    /// How kube-apiserver was started, so [`restart_apiserver`] can start it again the same way.
    #[serde(default)]
    pub apiserver_command: Option<(PathBuf, Vec<String>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub name: String,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

impl Record {
    fn load(paths: &Paths) -> Option<Self> {
        let text = fs::read_to_string(paths.record()).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn all_running(&self) -> bool {
        self.components.iter().all(|c| process::is_running(c.pid))
    }
}

/// Brings the cluster up, or confirms the one already running. Returns its record.
pub fn up(paths: &Paths, versions: &Versions, opts: &UpOptions) -> Result<Record> {
    if let Some(record) = Record::load(paths)
        && record.all_running()
        && &record.versions == versions
        && api_ready(&record.kubeconfig)
    {
        eprintln!("The local control plane is already running.");
        return Ok(record);
    }
    // Whatever is left of an earlier run (crashed, half-started, other versions) goes first.
    let stale = process::stop_all(&paths.state, Duration::from_secs(10));
    if stale > 0 {
        eprintln!("Stopped {stale} process(es) left over from an earlier run.");
    }
    if paths.state.exists() {
        fs::remove_dir_all(&paths.state)
            .with_context(|| format!("removing stale state {}", paths.state.display()))?;
    }

    let binaries = build::ensure(&paths.cache, versions)?;
    let started = Instant::now();
    let mut components = Vec::new();
    match start(paths, &binaries, versions, opts, &mut components) {
        Ok(record) => {
            fs::write(paths.record(), serde_json::to_string_pretty(&record)?)?;
            print_summary(&record, paths, started.elapsed());
            Ok(record)
        }
        Err(err) => {
            // Nothing may be left running after a failed start; the logs stay for inspection.
            process::stop_all(&paths.state, Duration::from_secs(5));
            process::reap(&mut components);
            Err(err.context(format!(
                "the local control plane did not start (logs: {})",
                paths.logs().display()
            )))
        }
    }
}

fn start(
    paths: &Paths,
    bin: &Binaries,
    versions: &Versions,
    opts: &UpOptions,
    components: &mut Vec<Running>,
) -> Result<Record> {
    let state = &paths.state;
    fs::create_dir_all(state)?;
    let logs = paths.logs();
    let pki = certs::generate(&state.join("pki"))?;
    let s = |p: &Path| p.to_string_lossy().into_owned();

    let etcd_port = opts.etcd_port.map_or_else(free_port, Ok)?;
    let etcd_peer_port = free_port()?;
    let apiserver_port = opts.apiserver_port.map_or_else(free_port, Ok)?;
    let kcm_port = free_port()?;
    let scheduler_port = free_port()?;
    let kwok_port = free_port()?;
    let server = format!("https://127.0.0.1:{apiserver_port}");
    let mut ports = Vec::new();

    // etcd creates its data directory itself (mode 0700); an unusable path is its error to report.
    let data_dir = opts
        .etcd_data_dir
        .clone()
        .unwrap_or_else(|| state.join("etcd"));
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let etcd_args = vec![
        "--name=gantry".to_string(),
        format!("--data-dir={}", s(&data_dir)),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=gantry={peer_url}"),
        "--unsafe-no-fsync=true".to_string(),
        "--log-level=warn".to_string(),
    ];
    eprintln!("Starting etcd on 127.0.0.1:{etcd_port}");
    let mut etcd = process::spawn(state, "etcd", &bin.etcd, &etcd_args, &logs)?;
    ports.push(("etcd", etcd.pid(), etcd_port, etcd.log.clone()));
    let etcd_health = format!("127.0.0.1:{etcd_port}");
    process::wait_until(&mut etcd, Duration::from_secs(30), || {
        http_get(&etcd_health, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
    })?;
    components.push(etcd);

    let apiserver_args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={apiserver_port}"),
        format!("--cert-dir={}", s(&state.join("apiserver"))),
        format!("--tls-cert-file={}", s(&pki.serving_cert)),
        format!("--tls-private-key-file={}", s(&pki.serving_key)),
        format!("--client-ca-file={}", s(&pki.ca_cert)),
        format!("--service-account-issuer={server}"),
        format!("--service-account-key-file={}", s(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", s(&pki.sa_key)),
        "--service-cluster-ip-range=10.96.0.0/12".to_string(),
        "--authorization-mode=Node,RBAC".to_string(),
        "--allow-privileged=true".to_string(),
        // A test and benchmark cluster: no request throttling in the way.
        "--max-requests-inflight=0".to_string(),
        "--max-mutating-requests-inflight=0".to_string(),
        "--enable-priority-and-fairness=false".to_string(),
        "--profiling=false".to_string(),
    ];
    eprintln!("Starting kube-apiserver on 127.0.0.1:{apiserver_port}");
    let mut apiserver = process::spawn(
        state,
        "kube-apiserver",
        &bin.kube_apiserver,
        &apiserver_args,
        &logs,
    )?;
    ports.push((
        "kube-apiserver",
        apiserver.pid(),
        apiserver_port,
        apiserver.log.clone(),
    ));
    let admin = write_kubeconfig(paths, &pki, &server, "admin")?;
    process::wait_until(&mut apiserver, Duration::from_secs(90), || {
        api_ready(&admin)
    })?;
    components.push(apiserver);

    let kcm_kubeconfig = write_kubeconfig(paths, &pki, &server, "kube-controller-manager")?;
    let kcm_args = vec![
        format!("--kubeconfig={}", s(&kcm_kubeconfig)),
        format!("--authentication-kubeconfig={}", s(&kcm_kubeconfig)),
        format!("--authorization-kubeconfig={}", s(&kcm_kubeconfig)),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={kcm_port}"),
        format!("--cert-dir={}", s(&state.join("kube-controller-manager"))),
        "--leader-elect=false".to_string(),
        "--controllers=*".to_string(),
        format!("--service-account-private-key-file={}", s(&pki.sa_key)),
        format!("--root-ca-file={}", s(&pki.ca_cert)),
        format!("--cluster-signing-cert-file={}", s(&pki.ca_cert)),
        format!("--cluster-signing-key-file={}", s(&pki.ca_key)),
        "--use-service-account-credentials=true".to_string(),
        "--service-cluster-ip-range=10.96.0.0/12".to_string(),
        "--kube-api-qps=1000".to_string(),
        "--kube-api-burst=2000".to_string(),
    ];
    eprintln!("Starting kube-controller-manager");
    let mut kcm = process::spawn(
        state,
        "kube-controller-manager",
        &bin.kube_controller_manager,
        &kcm_args,
        &logs,
    )?;
    ports.push((
        "kube-controller-manager",
        kcm.pid(),
        kcm_port,
        kcm.log.clone(),
    ));

    let scheduler_kubeconfig = write_kubeconfig(paths, &pki, &server, "kube-scheduler")?;
    let scheduler_config = state.join("kube-scheduler.yaml");
    fs::write(
        &scheduler_config,
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
             clientConnection:\n  kubeconfig: {}\n  qps: 1000\n  burst: 2000\n\
             leaderElection:\n  leaderElect: false\n",
            s(&scheduler_kubeconfig)
        ),
    )?;
    let scheduler_args = vec![
        format!("--config={}", s(&scheduler_config)),
        format!("--authentication-kubeconfig={}", s(&scheduler_kubeconfig)),
        format!("--authorization-kubeconfig={}", s(&scheduler_kubeconfig)),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={scheduler_port}"),
        format!("--cert-dir={}", s(&state.join("kube-scheduler"))),
    ];
    eprintln!("Starting kube-scheduler");
    let mut scheduler = process::spawn(
        state,
        "kube-scheduler",
        &bin.kube_scheduler,
        &scheduler_args,
        &logs,
    )?;
    ports.push((
        "kube-scheduler",
        scheduler.pid(),
        scheduler_port,
        scheduler.log.clone(),
    ));

    // kwok also plays the kubelet's server: the API server asks it for container logs (at the
    // node's port, over TLS it does not verify, as it has no --kubelet-certificate-authority),
    // and it serves the file a `Logs` object names, so `kubectl logs` and `flux logs` work.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = runtime.block_on(client(&admin))?;
    runtime.block_on(install_kwok_logs_crd(&client, &bin.kwok_logs_crd))?;
    let kwok_args = vec![
        format!("--kubeconfig={}", s(&admin)),
        format!("--config={}", s(&bin.kwok_stages)),
        "--enable-crds=Logs".to_string(),
        format!("--node-port={kwok_port}"),
        format!("--tls-cert-file={}", s(&pki.serving_cert)),
        format!("--tls-private-key-file={}", s(&pki.serving_key)),
        "--manage-all-nodes=true".to_string(),
        // Pod IPs on loopback: the serving router dials pod addresses directly, and tests bind
        // stand-in servers to them. 10.x addresses would lead off the machine (forbidden here).
        "--cidr=127.244.0.0/16".to_string(),
        "--node-ip=127.0.0.1".to_string(),
        format!("--server-address=127.0.0.1:{kwok_port}"),
        // Without node leases kwok heartbeats a node only every ~10 minutes; the node lifecycle
        // controller then marks it NotReady after 50 s, and with it every Pod on it, for good.
        "--node-lease-duration-seconds=40".to_string(),
    ];
    eprintln!("Starting kwok");
    let mut kwok = process::spawn(state, "kwok", &bin.kwok, &kwok_args, &logs)?;
    ports.push(("kwok", kwok.pid(), kwok_port, kwok.log.clone()));

    process::wait_until(&mut kcm, Duration::from_secs(60), || port_open(kcm_port))?;
    process::wait_until(&mut scheduler, Duration::from_secs(60), || {
        port_open(scheduler_port)
    })?;
    components.extend([kcm, scheduler]);

    let nodes = opts.nodes.max(1);
    for i in 0..nodes {
        runtime.block_on(create_node(&client, &format!("kwok-node-{i}")))?;
    }
    process::wait_until(&mut kwok, Duration::from_secs(60), || {
        runtime.block_on(count_ready_nodes(&client)) >= nodes as usize
    })?;
    components.push(kwok);
    // The controller-manager works once it hands out service accounts; Pods need them.
    let kcm = components
        .iter_mut()
        .find(|c| c.name == "kube-controller-manager")
        .expect("started above");
    process::wait_until(kcm, Duration::from_secs(60), || {
        runtime.block_on(default_service_account_exists(&client))
    })?;

    Ok(Record {
        server,
        kubeconfig: admin,
        versions: versions.clone(),
        apiserver_command: Some((bin.kube_apiserver.clone(), apiserver_args)),
        components: ports
            .into_iter()
            .map(|(name, pid, port, log)| ComponentRecord {
                name: name.to_string(),
                pid,
                port,
                log,
            })
            .collect(),
    })
}

/// Kills kube-apiserver (SIGKILL, as a crash would) and starts it again with the same flags,
/// waiting until it is ready. For fault tests: everything talking to it must recover.
pub fn restart_apiserver(paths: &Paths) -> Result<()> {
    let mut record = Record::load(paths).context("the local control plane is not running")?;
    let (binary, args) = record.apiserver_command.clone().context(
        "this cluster was started by an older xtask; run `cargo xtask cluster down` and `up`",
    )?;
    let component = record
        .components
        .iter_mut()
        .find(|c| c.name == "kube-apiserver")
        .context("no kube-apiserver in the cluster record")?;
    process::kill_now(component.pid);
    // The port is free again only once the old process is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while process::is_running(component.pid) || port_open(component.port) {
        if Instant::now() > deadline {
            bail!("kube-apiserver (pid {}) did not go away", component.pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut apiserver = process::spawn(
        &paths.state,
        "kube-apiserver",
        &binary,
        &args,
        &paths.logs(),
    )?;
    process::wait_until(&mut apiserver, Duration::from_secs(90), || {
        api_ready(&record.kubeconfig)
    })?;
    component.pid = apiserver.pid();
    fs::write(paths.record(), serde_json::to_string_pretty(&record)?)?;
    eprintln!("kube-apiserver restarted (pid {}).", apiserver.pid());
    Ok(())
}

/// Stops everything `up` started in this state directory and removes the state. Quiet and
/// successful when nothing runs.
pub fn down(paths: &Paths) -> Result<()> {
    let stopped = process::stop_all(&paths.state, Duration::from_secs(10));
    if paths.state.exists() {
        fs::remove_dir_all(&paths.state)
            .with_context(|| format!("removing {}", paths.state.display()))?;
    }
    if stopped > 0 {
        eprintln!("Stopped the local control plane ({stopped} processes).");
    }
    Ok(())
}

/// Prints what runs; returns whether the cluster is up and serving.
pub fn status(paths: &Paths) -> bool {
    let Some(record) = Record::load(paths) else {
        let strays = process::find(&paths.state);
        if strays.is_empty() {
            println!("The local control plane is not running.");
        } else {
            println!(
                "The local control plane is not running, but {} process(es) of an earlier run are \
                 ({}); `cargo xtask cluster down` stops them.",
                strays.len(),
                strays
                    .iter()
                    .map(|(pid, _)| pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        return false;
    };
    let serving = api_ready(&record.kubeconfig);
    println!(
        "Local control plane: Kubernetes {}, etcd {}, kwok {}",
        record.versions.kubernetes, record.versions.etcd, record.versions.kwok
    );
    println!(
        "  API server  {} ({})",
        record.server,
        if serving { "ready" } else { "NOT ready" }
    );
    println!("  kubeconfig  {}", record.kubeconfig.display());
    for c in &record.components {
        let state = if process::is_running(c.pid) {
            "running"
        } else {
            "STOPPED"
        };
        println!(
            "  {:<24} pid {:<8} port {:<6} {state}",
            c.name, c.pid, c.port
        );
    }
    serving && record.all_running()
}

/// Whether the local control plane runs and serves, without printing anything.
pub fn status_quiet(paths: &Paths) -> bool {
    Record::load(paths).is_some_and(|r| r.all_running() && api_ready(&r.kubeconfig))
}

/// Whether the API server behind `kubeconfig` answers `/readyz` with `ok`.
pub fn api_ready(kubeconfig: &Path) -> bool {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    runtime.block_on(async {
        let Ok(client) = client(kubeconfig).await else {
            return false;
        };
        let request = http::Request::get("/readyz").body(Vec::new());
        let Ok(request) = request else { return false };
        let answer = tokio::time::timeout(Duration::from_secs(2), client.request_text(request));
        matches!(answer.await, Ok(Ok(body)) if body.trim() == "ok")
    })
}

pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// Creates kwok's `Logs` CRD and waits until it is served, before kwok starts watching it.
async fn install_kwok_logs_crd(client: &kube::Client, file: &Path) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a CRD", file.display()))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .context("creating kwok's Logs CRD")?;
    let gvk = kube::core::GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "logs");
    let logs: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    let deadline = Instant::now() + Duration::from_secs(30);
    while logs.list(&Default::default()).await.is_err() {
        if Instant::now() > deadline {
            bail!("kwok's Logs CRD was not served within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn create_node(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    // kwok's fake kubelet: the annotation and label are what its stages and users select on.
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { "node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake" },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok"
            }
        },
        "status": {
            "allocatable": { "cpu": "64", "memory": "256Gi", "pods": "1000" },
            "capacity": { "cpu": "64", "memory": "256Gi", "pods": "1000" }
        }
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating node {name}"))?;
    Ok(())
}

async fn count_ready_nodes(client: &kube::Client) -> usize {
    let nodes: Api<Node> = Api::all(client.clone());
    let Ok(list) = nodes.list(&Default::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

async fn default_service_account_exists(client: &kube::Client) -> bool {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    matches!(accounts.get_opt("default").await, Ok(Some(_)))
}

fn write_kubeconfig(paths: &Paths, pki: &certs::Pki, server: &str, user: &str) -> Result<PathBuf> {
    let (cert, key) = pki.client(user);
    let path = if user == "admin" {
        paths.kubeconfig()
    } else {
        paths.state.join(format!("{user}.kubeconfig"))
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gantry-local\n  cluster:\n    \
         server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    \
         client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: gantry-local\n  \
         context:\n    cluster: gantry-local\n    user: {user}\ncurrent-context: gantry-local\n",
        ca = pki.ca_cert.display(),
        cert = cert.display(),
        key = key.display(),
    );
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn print_summary(record: &Record, paths: &Paths, took: Duration) {
    println!(
        "The local control plane is up (Kubernetes {}, etcd {}, kwok {}), started in {:.1}s.",
        record.versions.kubernetes,
        record.versions.etcd,
        record.versions.kwok,
        took.as_secs_f64()
    );
    println!("  API server  {}", record.server);
    println!("  kubeconfig  {}", record.kubeconfig.display());
    println!("  logs        {}", paths.logs().display());
    println!(
        "Use it:   export KUBECONFIG={}",
        record.kubeconfig.display()
    );
    println!("Stop it:  cargo xtask cluster down");
}

/// A port the kernel just handed out; released at once for the component to bind.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A plain-HTTP GET for etcd's health endpoint, without an HTTP client dependency.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Where a background `gantry run` started by [`start_gantry`] serves.
pub struct GantryProcess {
    pub pid: u32,
    pub metrics: String,
    pub health: String,
    /// The serving router's address (`--serving-addr`).
    pub serving: String,
    /// Heartbeats and the uptime status page (`--uptime-addr`), `http://127.0.0.1:<port>`.
    pub uptime: String,
    pub log: PathBuf,
}

/// How a background `gantry run` is started by [`start_gantry`].
pub struct GantryOptions<'a> {
    /// Its `GANTRY_CLUSTER` tag: the state directory whose `down` stops it.
    pub tag: &'a Path,
    /// Where its log and storage go.
    pub dir: &'a Path,
    /// `--receiver-addr 127.0.0.1:<port>`; a free port when `None`.
    pub receiver_port: Option<u16>,
    /// Extra environment, e.g. `GANTRY_KUSTOMIZE`.
    pub env: &'a [(&'a str, &'a std::ffi::OsStr)],
}

/// Starts `gantry run` in the background against the cluster in `kubeconfig`, tagged like the
/// cluster's own processes so `cluster down` stops it too. A previous one is stopped first.
pub fn start_gantry(
    binary: &Path,
    kubeconfig: &Path,
    opts: &GantryOptions<'_>,
) -> Result<GantryProcess> {
    for (pid, cmdline) in process::find(opts.tag) {
        if cmdline.contains(" run ") && cmdline.contains("gantry") {
            process::stop_pid(pid, Duration::from_secs(10));
        }
    }
    let (metrics_port, health_port) = (free_port()?, free_port()?);
    let receiver_port = opts.receiver_port.map_or_else(free_port, Ok)?;
    let serving_port = free_port()?;
    let uptime_port = free_port()?;
    let storage = opts.dir.join("gantry-storage");
    fs::create_dir_all(&storage)?;
    let args = vec![
        "run".to_string(),
        "--leader-elect=false".to_string(),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        format!("--health-addr=127.0.0.1:{health_port}"),
        format!("--receiver-addr=127.0.0.1:{receiver_port}"),
        format!("--serving-addr=127.0.0.1:{serving_port}"),
        "--serving-loopback-only=true".to_string(),
        format!("--uptime-addr=127.0.0.1:{uptime_port}"),
        "--storage-addr=127.0.0.1:0".to_string(),
        format!("--storage-path={}", storage.display()),
    ];
    let mut env = vec![("KUBECONFIG", kubeconfig.as_os_str())];
    env.extend_from_slice(opts.env);
    let mut gantry = process::spawn_with_env(
        opts.tag,
        "gantry",
        binary,
        &args,
        &opts.dir.join("logs"),
        &env,
    )?;
    let health = format!("127.0.0.1:{health_port}");
    process::wait_until(&mut gantry, Duration::from_secs(30), || {
        http_get(&health, "/readyz").is_some_and(|b| b.ends_with("ok"))
    })?;
    Ok(GantryProcess {
        pid: gantry.pid(),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        health: format!("http://{health}/readyz"),
        serving: format!("127.0.0.1:{serving_port}"),
        uptime: format!("http://127.0.0.1:{uptime_port}"),
        log: gantry.log.clone(),
    })
}

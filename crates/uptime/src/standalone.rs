//! `gantry uptime serve --config DIR`: the same engine, checks and alerts with no Kubernetes.
//! Monitors, Providers, Alerts and Secrets are read from the YAML files of a directory (the
//! same manifests as in the cluster; objects without a namespace are in `default`), and a small
//! HTTP server offers the heartbeat endpoint, the monitors' state as JSON, and `/metrics`.
//!
//! Meant for a small machine outside the cluster: `gantry run --uptime-heartbeat-url` calls a
//! heartbeat Monitor here, so a silent cluster is noticed from elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use gantry_api::notification::v1beta3::{Alert, Provider};
use gantry_api::uptime::v1alpha1::Monitor;
use gantry_runtime::metrics::Metrics;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use crate::alert::{Delivery, Directory, Notifier};
use crate::engine::{DEFAULT_CONCURRENCY, Engine, LogSink};
use crate::plan::{self, AlertTargets, Clients, Secrets};

/// How long the last write of the history may be retried when the process stops (the
/// database away at that moment): within a service manager's usual stop timeout.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What went wrong reading or serving the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid Monitors:\n{0}")]
    Invalid(String),
    #[error("{0} holds no Monitor")]
    Empty(PathBuf),
    #[error("opening the history store: {0}")]
    Store(#[from] gantry_uptime_store::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

type Id = (String, String);

/// The objects of a configuration directory.
#[derive(Debug, Default, Clone)]
pub struct Config {
    pub monitors: Vec<Monitor>,
    pub providers: HashMap<Id, Provider>,
    pub alerts: HashMap<Id, Alert>,
    pub secrets: HashMap<Id, BTreeMap<String, Vec<u8>>>,
}

fn id<K: kube::Resource>(obj: &mut K) -> Id {
    if obj.meta().namespace.is_none() {
        obj.meta_mut().namespace = Some(DEFAULT_NAMESPACE.into());
    }
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Reads every `*.yaml`/`*.yml` file of `dir` (sorted; other kinds are ignored).
pub fn load(dir: &Path) -> Result<Config, Error> {
    let read_err = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut config = Config::default();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let parse = |message: String| Error::Parse {
            path: path.clone(),
            message,
        };
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| parse(e.to_string()))?;
        for doc in docs {
            if doc.is_null() {
                continue;
            }
            let kind = doc
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let what = |e: serde_json::Error| parse(format!("{kind}: {e}"));
            match kind.as_str() {
                "Monitor" => {
                    let mut m: Monitor = serde_json::from_value(doc).map_err(what)?;
                    id(&mut m);
                    // No API server counts generations here: one derived from the spec lets a
                    // reload tell a changed Monitor (checked again soon) from an unchanged one
                    // (schedule kept).
                    m.metadata.generation = Some(spec_generation(&m));
                    config.monitors.push(m);
                }
                "Provider" => {
                    let mut p: Provider = serde_json::from_value(doc).map_err(what)?;
                    config.providers.insert(id(&mut p), p);
                }
                "Alert" => {
                    let mut a: Alert = serde_json::from_value(doc).map_err(what)?;
                    config.alerts.insert(id(&mut a), a);
                }
                "Secret" => {
                    let mut s: Secret = serde_json::from_value(doc).map_err(what)?;
                    let key = id(&mut s);
                    let mut data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in s.string_data.unwrap_or_default() {
                        data.insert(k, v.into_bytes());
                    }
                    config.secrets.insert(key, data);
                }
                _ => tracing::debug!(path = %path.display(), %kind, "ignored"),
            }
        }
    }
    Ok(config)
}

/// A stable positive number for a Monitor's spec.
fn spec_generation(m: &Monitor) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&m.spec)
        .unwrap_or_default()
        .hash(&mut h);
    i64::try_from(h.finish() >> 2).unwrap_or(1).max(1)
}

/// Providers, Alerts and Secrets from the configuration.
pub struct ConfigDirectory(pub Arc<Config>);

impl Directory for ConfigDirectory {
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        targets: &'a AlertTargets,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Delivery>, String>> {
        Box::pin(resolve_in(self.0.clone(), namespace, targets))
    }
}

/// The configuration in use, which a reload replaces (alerts read it when they are sent).
#[derive(Clone, Default)]
pub struct LiveConfig(Arc<std::sync::RwLock<Arc<Config>>>);

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(config)))
    }

    pub fn get(&self) -> Arc<Config> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, config: Arc<Config>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }
}

impl Directory for LiveConfig {
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        targets: &'a AlertTargets,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Delivery>, String>> {
        Box::pin(resolve_in(self.get(), namespace, targets))
    }
}

async fn resolve_in(
    config: Arc<Config>,
    namespace: &str,
    targets: &AlertTargets,
) -> Result<Vec<Delivery>, String> {
    let config = &config;
    let id = |n: &str| (namespace.to_string(), n.to_string());
    let mut wanted: Vec<(String, BTreeMap<String, String>, Option<String>)> = targets
        .providers
        .iter()
        .map(|p| (p.clone(), BTreeMap::new(), None))
        .collect();
    if let Some(name) = &targets.alert {
        let alert = config
            .alerts
            .get(&id(name))
            .ok_or_else(|| format!("Alert '{namespace}/{name}' not found"))?;
        if !alert.spec.suspend {
            wanted.push((
                alert.spec.provider_ref.name.clone(),
                alert.spec.event_metadata.clone(),
                alert.spec.summary.clone(),
            ));
        }
    }
    let mut out = Vec::new();
    for (name, metadata, summary) in wanted {
        let provider = config
            .providers
            .get(&id(&name))
            .ok_or_else(|| format!("Provider '{namespace}/{name}' not found"))?;
        if provider.spec.suspend {
            continue;
        }
        let read = |secret: String| {
            let found = config.secrets.get(&id(&secret)).map(|d| {
                d.iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect()
            });
            async move { found.ok_or_else(|| format!("secret '{secret}' not found")) }
        };
        let (config, http, headers) =
            gantry_notification::dispatch::prepare_provider(provider, read).await?;
        out.push(Delivery {
            name: format!("{namespace}/{name}"),
            config,
            http,
            headers,
            metadata,
            summary,
        });
    }
    Ok(out)
}

/// Compiles every Monitor of `config` into `engine`; all problems are reported at once.
pub fn schedule(config: &Config, engine: &Engine) -> Result<usize, Error> {
    let plans = plans(config)?;
    let n = plans.len();
    for p in plans {
        engine.upsert(p);
    }
    Ok(n)
}

/// Every Monitor of `config` compiled (suspended ones left out), or all the problems.
fn plans(config: &Config) -> Result<Vec<plan::Plan>, Error> {
    let clients = Clients::default();
    let mut problems = Vec::new();
    let mut plans = Vec::new();
    for monitor in &config.monitors {
        let key = plan::Key::of(monitor);
        if monitor.spec.suspend {
            continue;
        }
        let mut secrets = Secrets::new();
        for name in plan::secret_names(monitor) {
            if let Some(data) = config.secrets.get(&(key.namespace.clone(), name.clone())) {
                secrets.insert(name, data.clone());
            }
        }
        match plan::compile(monitor, &secrets, &clients) {
            Ok(p) => plans.push(p),
            Err(e) => problems.push(format!("  Monitor {key}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems.join("\n")));
    }
    Ok(plans)
}

/// Reads the directory again and applies it: new Monitors are scheduled, changed ones take
/// their new plan with their state and history, removed ones stop. A directory that does not
/// load or holds an invalid Monitor changes nothing (the running configuration goes on); the
/// error says why. Returns how many Monitors are scheduled.
pub fn reload(dir: &Path, live: &LiveConfig, engine: &Engine) -> Result<usize, Error> {
    let config = load(dir)?;
    if config.monitors.is_empty() {
        return Err(Error::Empty(dir.to_path_buf()));
    }
    let plans = plans(&config)?;
    live.set(Arc::new(without_monitors(config)));
    let keep: std::collections::HashSet<plan::Key> = plans.iter().map(|p| p.key.clone()).collect();
    for gone in engine
        .snapshots()
        .into_iter()
        .map(|s| s.key)
        .filter(|k| !keep.contains(k))
    {
        engine.remove(&gone);
    }
    let n = plans.len();
    for p in plans {
        engine.upsert(p);
    }
    Ok(n)
}

/// The configuration kept while serving: the Monitors are compiled into plans and not needed
/// again (about 1.5 KiB each parsed: 15 MiB for 10 000), alerts read only the other kinds.
fn without_monitors(mut config: Config) -> Config {
    config.monitors = Vec::new();
    config
}

/// What identifies the directory's contents cheaply: each YAML file's name, size and mtime.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect();
    all.sort();
    all
}

/// Reloads the directory on SIGHUP, and when a file changes (looked at every `every`).
async fn watch(
    dir: PathBuf,
    live: LiveConfig,
    engine: Engine,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|err| tracing::warn!(%err, "no reload on SIGHUP"))
        .ok();
    let mut seen = fingerprint(&dir);
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = tokio::time::sleep(every) => {
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                "a file changed"
            }
        };
        seen = fingerprint(&dir);
        match reload(&dir, &live, &engine) {
            Ok(monitors) => {
                tracing::info!(dir = %dir.display(), monitors, why, "configuration reloaded")
            }
            Err(err) => tracing::error!(
                dir = %dir.display(), why,
                "configuration not reloaded, the previous one stays in use: {err}"
            ),
        }
    }
}

/// Settings of `gantry uptime serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub concurrency: usize,
    /// Where history is kept (and states recovered from after a restart); memory only when
    /// `None`.
    pub storage: Option<gantry_uptime_store::Location>,
    /// How often the directory is looked at for changes (SIGHUP reloads at once too).
    pub reload_interval: std::time::Duration,
}

impl Settings {
    pub fn new(config: PathBuf, listen: SocketAddr) -> Self {
        Self {
            config,
            listen,
            concurrency: DEFAULT_CONCURRENCY,
            storage: None,
            reload_interval: std::time::Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
struct Served {
    engine: Engine,
    metrics: Metrics,
}

/// Starts serving: returns the engine and the bound address once listening; the returned
/// future runs until `shutdown`.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(Engine, SocketAddr, impl std::future::Future<Output = ()>), Error> {
    let config = load(&settings.config)?;
    if config.monitors.is_empty() {
        return Err(Error::Empty(settings.config.clone()));
    }
    // Compiled before anything starts: an invalid Monitor stops the start with every problem.
    let plans = plans(&config)?;
    let metrics = Metrics::new();
    let live = LiveConfig::new(Arc::new(without_monitors(config)));
    let notifier = Notifier::new(Arc::new(live.clone()));
    let mut engine = Engine::new(
        notifier,
        Arc::new(LogSink),
        Some(metrics.uptime().clone()),
        settings.concurrency,
    );
    let store = match &settings.storage {
        Some(location) => Some(
            gantry_uptime_store::Store::open(gantry_uptime_store::StoreConfig::new(
                location.clone(),
            ))
            .await?,
        ),
        None => None,
    };
    if let Some(store) = &store {
        engine = engine.with_recorder(Arc::new(store.clone()));
    }
    let count = plans.len();
    for plan in plans {
        engine.upsert(plan);
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: settings.listen,
        source,
    })?;
    tracing::info!(%addr, monitors = count, "serving uptime monitors");
    let mut app = crate::heartbeat::router(engine.clone()).merge(
        Router::new()
            .route("/api/v1/monitors", get(monitors))
            .route("/api/v1/scheduler", get(scheduler))
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Served {
                engine: engine.clone(),
                metrics,
            }),
    );
    // The status page (HTML, JSON, badges) from the history, on the same listener.
    if let Some(store) = &store {
        let page = gantry_uptime_store::StatusPage::new(
            store.clone(),
            gantry_uptime_store::StatusOptions::default(),
        );
        app = app.merge(gantry_uptime_store::status::router(page));
    }
    let running = {
        let engine = engine.clone();
        async move {
            let stop = shutdown.clone();
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future();
            let watcher = watch(
                settings.config.clone(),
                live,
                engine.clone(),
                settings.reload_interval,
                shutdown.clone(),
            );
            let (served, (), ()) = tokio::join!(server, engine.run(shutdown), watcher);
            if let Err(err) = served {
                tracing::error!(%err, "uptime server");
            }
            // What is queued is written before the process ends, retried for a while if the
            // database is away.
            if let Some(store) = store
                && let Err(err) = store.close_within(CLOSE_WAIT).await
            {
                tracing::error!(%err, "writing the last results");
            }
        }
    };
    Ok((engine, addr, running))
}

async fn monitors(State(s): State<Served>) -> impl IntoResponse {
    axum::Json(s.engine.snapshots())
}

/// How the scheduler keeps up: checks run and how late they started (p50, p99).
async fn scheduler(State(s): State<Served>) -> impl IntoResponse {
    let (p50, measured) = s.engine.jitter(0.50);
    let (p99, _) = s.engine.jitter(0.99);
    axum::Json(serde_json::json!({
        "monitors": s.engine.len(),
        "checks": s.engine.checks(),
        "lateness": {"measured": measured, "p50Ms": p50.as_millis() as u64, "p99Ms": p99.as_millis() as u64},
    }))
}

async fn metrics_text(State(s): State<Served>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

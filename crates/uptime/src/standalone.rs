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
                    // Standalone objects never change generation: 1 throughout.
                    m.metadata.generation = Some(1);
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

/// Providers, Alerts and Secrets from the configuration.
pub struct ConfigDirectory(pub Arc<Config>);

impl Directory for ConfigDirectory {
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        targets: &'a AlertTargets,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Delivery>, String>> {
        Box::pin(async move {
            let config = &self.0;
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
        })
    }
}

/// Compiles every Monitor of `config` into `engine`; all problems are reported at once.
pub fn schedule(config: &Config, engine: &Engine) -> Result<usize, Error> {
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
    let n = plans.len();
    for p in plans {
        engine.upsert(p);
    }
    Ok(n)
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
}

impl Settings {
    pub fn new(config: PathBuf, listen: SocketAddr) -> Self {
        Self {
            config,
            listen,
            concurrency: DEFAULT_CONCURRENCY,
            storage: None,
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
    let config = Arc::new(load(&settings.config)?);
    if config.monitors.is_empty() {
        return Err(Error::Empty(settings.config.clone()));
    }
    let metrics = Metrics::new();
    let notifier = Notifier::new(Arc::new(ConfigDirectory(config.clone())));
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
    let count = schedule(&config, &engine)?;
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
            let (served, ()) = tokio::join!(server, engine.run(shutdown));
            if let Err(err) = served {
                tracing::error!(%err, "uptime server");
            }
            // What is queued is written before the process ends.
            if let Some(store) = store
                && let Err(err) = store.close().await
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

//! `gantry run`: every controller in one process, sharing one client, plus the health and
//! metrics endpoints and leader election.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{ArgAction, Args, ValueEnum};
use gantry_runtime::metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::controllers;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
    /// JSON with the keys of Flux's controllers, which `flux logs` reads.
    Flux,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where Prometheus scrapes `/metrics`.
    #[arg(long, env = "GANTRY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Where the kubelet probes `/healthz` and `/readyz`.
    #[arg(long, env = "GANTRY_HEALTH_ADDR", default_value = "0.0.0.0:9440")]
    pub health_addr: SocketAddr,
    /// Where the webhook receivers (Flux's `Receiver`) are served.
    #[arg(long, env = "GANTRY_RECEIVER_ADDR", default_value = "0.0.0.0:9292")]
    pub receiver_addr: SocketAddr,
    /// Where source artifacts are stored.
    #[arg(long, env = "GANTRY_STORAGE_PATH", default_value = "/data")]
    pub storage_path: PathBuf,
    /// Where stored artifacts are served over HTTP (Flux's `--storage-addr`), so that
    /// `status.artifact.url` answers.
    #[arg(long, env = "GANTRY_STORAGE_ADDR", default_value = "0.0.0.0:9090")]
    pub storage_addr: SocketAddr,
    /// Host (and port) advertised in `status.artifact.url`, as Flux's `--storage-adv-addr`
    /// (e.g. `source-controller.flux-system.svc.cluster.local.`); overrides
    /// `--artifact-base-url` with `http://<this>`.
    #[arg(long, env = "GANTRY_STORAGE_ADV_ADDR")]
    pub storage_adv_addr: Option<String>,
    /// Base URL advertised in `status.artifact.url`.
    #[arg(
        long,
        env = "GANTRY_ARTIFACT_BASE_URL",
        default_value = "http://gantry.gantry-system.svc.cluster.local."
    )]
    pub artifact_base_url: String,
    /// Watch only this namespace instead of all of them.
    #[arg(long, env = "GANTRY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Elect a leader through a Lease, so that of several replicas only one writes.
    #[arg(long, env = "GANTRY_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gantry-system")]
    pub leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "gantry-leader-election")]
    pub leader_election_id: String,
    /// ServiceAccount (of the Kustomization's namespace) impersonated by Kustomizations that set
    /// no `spec.serviceAccountName`, as Flux's `--default-service-account`: with it nothing is
    /// applied with Gantry's own rights (`gantry install --multi-tenant` sets it).
    #[arg(long, env = "GANTRY_DEFAULT_SERVICE_ACCOUNT")]
    pub default_service_account: Option<String>,
    /// How many objects of one kind are reconciled at once.
    #[arg(long, env = "GANTRY_CONCURRENT", default_value_t = 8)]
    pub concurrent: u16,
    /// Log format.
    #[arg(long, env = "GANTRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where heartbeat Monitors are called (`/heartbeat/<hash>`).
    #[arg(long, env = "GANTRY_UPTIME_ADDR", default_value = "0.0.0.0:9334")]
    pub uptime_addr: SocketAddr,
    /// A heartbeat URL of an outside `gantry uptime serve`, called while this process leads,
    /// so that instance alerts when the cluster goes silent.
    #[arg(long, env = "GANTRY_UPTIME_HEARTBEAT_URL")]
    pub uptime_heartbeat_url: Option<String>,
    /// `postgres://...`: keep the uptime history in Postgres (shared by replicas) instead of an
    /// SQLite file under `--storage-path`.
    #[arg(long, env = "GANTRY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// How often the heartbeat URL is called.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub uptime_heartbeat_interval: Duration,
    #[command(flatten)]
    pub serving: ServingArgs,
    #[command(flatten)]
    pub serving_router: super::serving_router::ServingRouterArgs,
}

/// Knative Serving's cluster-wide settings (`config-domain`, `config-network`, `config-gc`),
/// with Knative's defaults.
#[derive(Debug, Args)]
pub struct ServingArgs {
    /// Domain of Knative Services' URLs (Knative's `config-domain`).
    #[arg(long, env = "GANTRY_SERVING_DOMAIN", default_value = gantry_core::serving::domain::DEFAULT_DOMAIN)]
    pub serving_domain: String,
    /// Go template of a Knative Service's host (Knative's `domain-template`).
    #[arg(long, env = "GANTRY_SERVING_DOMAIN_TEMPLATE", default_value = gantry_core::serving::domain::DEFAULT_DOMAIN_TEMPLATE)]
    pub serving_domain_template: String,
    /// Go template of a traffic tag's name (Knative's `tag-template`).
    #[arg(long, env = "GANTRY_SERVING_TAG_TEMPLATE", default_value = gantry_core::serving::domain::DEFAULT_TAG_TEMPLATE)]
    pub serving_tag_template: String,
    /// Host the Kubernetes Service of each Knative Service points at (ExternalName); default
    /// `gantry-serving.<POD_NAMESPACE>.svc.cluster.local`, the Service `gantry install` creates.
    #[arg(long, env = "GANTRY_SERVING_ROUTER_HOST")]
    pub serving_router_host: Option<String>,
    /// Revisions without traffic younger than this are kept (`disabled` for no limit).
    #[arg(long, default_value = "48h", value_parser = disabled_or_duration)]
    pub serving_gc_retain_since_create_time: DisabledOr<Duration>,
    /// Revisions without traffic active more recently than this are kept (`disabled`).
    #[arg(long, default_value = "15h", value_parser = disabled_or_duration)]
    pub serving_gc_retain_since_last_active_time: DisabledOr<Duration>,
    /// Revisions without traffic always kept per Service.
    #[arg(long, default_value_t = 20)]
    pub serving_gc_min_non_active_revisions: usize,
    /// Revisions without traffic beyond this many are deleted whatever their age (`disabled`).
    #[arg(long, default_value = "1000", value_parser = disabled_or_count)]
    pub serving_gc_max_non_active_revisions: DisabledOr<usize>,
}

/// A setting Knative lets be `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisabledOr<T>(pub Option<T>);

fn disabled_or_duration(text: &str) -> Result<DisabledOr<Duration>, String> {
    if text == "disabled" {
        return Ok(DisabledOr(None));
    }
    gantry_api::meta::parse_duration(text)
        .map(|d| DisabledOr(Some(d)))
        .map_err(|e| e.to_string())
}

fn disabled_or_count(text: &str) -> Result<DisabledOr<usize>, String> {
    if text == "disabled" {
        return Ok(DisabledOr(None));
    }
    text.parse()
        .map(|n| DisabledOr(Some(n)))
        .map_err(|_| format!("'{text}' is neither a count nor 'disabled'"))
}

impl ServingArgs {
    /// The serving controllers' settings; `gantry_namespace` names the router's Service.
    pub fn settings(
        &self,
        gantry_namespace: &str,
        watch_namespace: Option<String>,
        concurrency: u16,
    ) -> Result<gantry_serving::Settings> {
        let gc = gantry_core::serving::gc::Config {
            retain_since_create_time: self.serving_gc_retain_since_create_time.0,
            retain_since_last_active_time: self.serving_gc_retain_since_last_active_time.0,
            min_non_active_revisions: self.serving_gc_min_non_active_revisions,
            max_non_active_revisions: self.serving_gc_max_non_active_revisions.0,
        };
        if gc
            .max_non_active_revisions
            .is_some_and(|max| gc.min_non_active_revisions > max)
        {
            anyhow::bail!(
                "--serving-gc-min-non-active-revisions ({}) must not exceed --serving-gc-max-non-active-revisions",
                gc.min_non_active_revisions
            );
        }
        let templates = gantry_core::serving::domain::Templates {
            domain: self.serving_domain.clone(),
            domain_template: self.serving_domain_template.clone(),
            tag_template: self.serving_tag_template.clone(),
        };
        templates
            .host("name", "namespace")
            .and_then(|_| templates.tag_host("tag", "name", "namespace"))
            .context("--serving-domain-template / --serving-tag-template")?;
        Ok(gantry_serving::Settings {
            templates,
            router_host: self
                .serving_router_host
                .clone()
                .unwrap_or_else(|| gantry_serving::router_host(gantry_namespace)),
            gc,
            namespace: watch_namespace,
            concurrency,
        })
    }
}

pub(crate) fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    gantry_api::meta::parse_duration(text).map_err(|e| e.to_string())
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(args));
    // A blocking task still running (a git fetch stuck on a dead server, a kustomize build) must
    // not keep the process alive: Kubernetes sends SIGTERM on every rollout and drain.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
        LogFormat::Flux => builder.event_format(crate::flux_log::FluxJson).init(),
    }
}

/// Shared with the HTTP handlers.
#[derive(Clone)]
struct Health {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

async fn serve(args: &RunArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster, or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("the Kubernetes API server is not reachable")?;
    tracing::info!(server = %version.git_version, "connected to Kubernetes");

    let shutdown = CancellationToken::new();
    let router_metrics = gantry_router::metrics::RouterMetrics::default();
    let metrics = Metrics::with_registered(|registry| router_metrics.register(registry));
    let health = Health {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let health_listener = TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("binding the health endpoint to {}", args.health_addr))?;
    let metrics_listener = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics endpoint to {}", args.metrics_addr))?;
    tracing::info!(
        health = %health_listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        "serving health and metrics"
    );
    let storage_listener = TcpListener::bind(args.storage_addr)
        .await
        .with_context(|| format!("binding the artifact server to {}", args.storage_addr))?;
    tracing::info!(storage = %storage_listener.local_addr()?, "serving artifacts");
    let storage_app = crate::artifact_server::router(gantry_source::ArtifactStore::new(
        args.storage_path.join("artifacts"),
        artifact_base_url(args),
    ));
    let stop = shutdown.clone();
    let storage_server = tokio::spawn(
        axum::serve(storage_listener, storage_app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );
    let health_app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let metrics_app = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(health.clone());
    let stop = shutdown.clone();
    let health_server = tokio::spawn(
        axum::serve(health_listener, health_app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );
    let stop = shutdown.clone();
    let metrics_server = tokio::spawn(
        axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );
    // A standby replica is healthy and ready too: it must not be restarted or kept out of a
    // rollout just because another replica leads.
    health.ready.store(true, Ordering::SeqCst);

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });

    // Every replica serves the data path and reports its counts; only the leader's autoscaler
    // scales, from the counts of all.
    let leader = Arc::new(AtomicBool::new(false));
    let mut membership = None;
    if args.serving_router.enabled() {
        let router = args.serving_router.router(&client, router_metrics);
        let replica = args.leader_elect.then(|| super::serving_router::Replica {
            identity: identity(),
            namespace: args.leader_election_namespace.clone(),
        });
        membership = args
            .serving_router
            .start(
                client.clone(),
                router,
                args.watch_namespace.clone(),
                replica,
                leader.clone(),
                shutdown.clone(),
            )
            .await?;
    }

    let lease = if args.leader_elect {
        Some(acquire_leadership(&client, args, &shutdown).await?)
    } else {
        None
    };
    leader.store(true, Ordering::SeqCst);
    let result = if shutdown.is_cancelled() {
        Ok(())
    } else {
        let settings = controllers::Settings {
            storage_path: args.storage_path.clone(),
            artifact_base_url: artifact_base_url(args),
            watch_namespace: args.watch_namespace.clone(),
            concurrency: args.concurrent,
            receiver_addr: args.receiver_addr,
            default_service_account: args.default_service_account.clone(),
            serving: args.serving.settings(
                &args.leader_election_namespace,
                args.watch_namespace.clone(),
                args.concurrent,
            )?,
            uptime_addr: args.uptime_addr,
            database_url: args.database_url.clone(),
            uptime_heartbeat: args
                .uptime_heartbeat_url
                .clone()
                .map(|url| (url, args.uptime_heartbeat_interval)),
        };
        let leadership_lost = lease.as_ref().map(|l| l.lost.clone());
        let controllers = controllers::run(client.clone(), metrics, settings, shutdown.clone());
        tokio::pin!(controllers);
        tokio::select! {
            result = &mut controllers => result,
            _ = shutdown.cancelled() => {
                // Reconciles in flight get a bounded time to finish their step (each object is
                // applied whole or not at all); what is cut off, the next leader applies again.
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut controllers).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running at shutdown were stopped");
                        Ok(())
                    }
                }
            }
            _ = async {
                match leadership_lost {
                    Some(lost) => lost.cancelled().await,
                    None => std::future::pending().await,
                }
            } => {
                // Another replica may be writing already: stop at once; the pod restarts as a standby.
                shutdown.cancel();
                Err(anyhow::anyhow!("lost the leader-election lease"))
            }
        }
    };
    shutdown.cancel();
    if let Some(lease) = lease {
        lease.release().await;
    }
    // The replica Lease is deleted on the way out (bounded inside), so the leader stops asking
    // this replica at once instead of after the staleness bound.
    if let Some(task) = membership {
        let _ = task.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = health_server.await;
        let _ = metrics_server.await;
        let _ = storage_server.await;
    })
    .await;
    tracing::info!("stopped");
    result
}

/// `http://<--storage-adv-addr>` when given, else `--artifact-base-url`.
fn artifact_base_url(args: &RunArgs) -> String {
    match args.storage_adv_addr.as_deref().filter(|a| !a.is_empty()) {
        Some(adv) if adv.contains("://") => adv.to_owned(),
        Some(adv) => format!("http://{adv}"),
        None => args.artifact_base_url.clone(),
    }
}

/// How long reconciles in flight may take to finish after SIGTERM. With the Lease release and the
/// servers' own bounds, `gantry run` exits well within Kubernetes' default 30 s grace period
/// (and within 10 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics_text(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// How long a Lease stays valid after its holder last renewed it.
pub const LEASE_DURATION_SECONDS: u64 = 10;
/// How long before expiry the holder renews (so every LEASE_DURATION - LEASE_GRACE = 6 s).
pub const LEASE_GRACE_SECONDS: u64 = 4;

/// Holding the Lease: `lost` fires when another replica took it over.
struct Leadership {
    lost: CancellationToken,
    manager: tokio::task::JoinHandle<()>,
    release: tokio::sync::oneshot::Sender<()>,
}

impl Leadership {
    /// Gives the Lease up, so a standby takes over at once instead of when it expires.
    async fn release(self) {
        let _ = self.release.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.manager).await;
    }
}

/// What a lease manager is built from (again, when the Lease is released).
struct LeaseSettings {
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
}

impl LeaseSettings {
    async fn manager(
        &self,
    ) -> Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError> {
        kube_lease_manager::LeaseManagerBuilder::new(self.client.clone(), &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .with_field_manager("gantry")
            .build()
            .await
    }
}

/// Notifies `released` whenever the Lease has no holder (another replica released it).
async fn watch_release(
    client: kube::Client,
    namespace: String,
    name: String,
    released: Arc<tokio::sync::Notify>,
) {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt, watcher};
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(leases, config).default_backoff().applied_objects());
    while let Some(event) = events.next().await {
        let free = event.ok().is_some_and(|lease| {
            lease
                .spec
                .and_then(|s| s.holder_identity)
                .is_none_or(|h| h.is_empty())
        });
        if free {
            released.notify_one();
        }
    }
}

/// This replica's leader-election identity (also that of its serving replica Lease).
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "gantry".into()),
            std::process::id()
        )
    })
}

/// Waits until this replica holds the Lease (or shutdown is requested).
async fn acquire_leadership(
    client: &kube::Client,
    args: &RunArgs,
    shutdown: &CancellationToken,
) -> Result<Leadership> {
    let identity = identity();
    // Without it the lease manager fails with the API server's 404; say what to do instead.
    let namespace = &args.leader_election_namespace;
    let exists = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .with_context(|| format!("reading the leader-election namespace \"{namespace}\""))?
        .is_some();
    if !exists {
        anyhow::bail!(
            "namespace \"{namespace}\" does not exist: run 'gantry install', or pass \
             --leader-elect=false for a single local process"
        );
    }
    // The standby sleeps until the lease expires, then takes it (after up to 1 s of jitter): a
    // killed leader is replaced at most LEASE_DURATION + ~1 s after its last renewal, well within
    // 15 s. Renewing LEASE_GRACE s early leaves a slow API server time to answer.
    let lease = LeaseSettings {
        client: client.clone(),
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_id.clone(),
        identity: identity.clone(),
    };
    let mut manager = lease
        .manager()
        .await
        .context("setting up leader election")?;
    tracing::info!(lease = %args.leader_election_id, %identity, "waiting to become the leader");

    let lost = CancellationToken::new();
    // The lease manager's standby sleeps until the Lease expires; a watch of the Lease wakes it
    // the moment the leader releases it (graceful exit), so the handover takes a round trip, not
    // the rest of the lease duration.
    let released = Arc::new(tokio::sync::Notify::new());
    let watch = tokio::spawn(watch_release(
        client.clone(),
        args.leader_election_namespace.clone(),
        args.leader_election_id.clone(),
        released.clone(),
    ));
    let (became_leader_tx, became_leader) = tokio::sync::oneshot::channel();
    let (release, mut release_rx) = tokio::sync::oneshot::channel::<()>();
    let lost_signal = lost.clone();
    let task = tokio::spawn(async move {
        let mut became_leader_tx = Some(became_leader_tx);
        loop {
            tokio::select! {
                changed = manager.changed() => match changed {
                    Ok(true) => {
                        if let Some(tx) = became_leader_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(false) => {
                        if became_leader_tx.is_none() {
                            lost_signal.cancel();
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "leader election");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                // Dropping `changed()` only cuts the standby's sleep; the next call re-reads the Lease.
                _ = released.notified(), if became_leader_tx.is_some() => {
                    // The manager trusts its copy of the Lease until that expires; a new one
                    // reads it again and takes it.
                    match lease.manager().await {
                        Ok(fresh) => manager = fresh,
                        Err(err) => tracing::warn!(%err, "re-reading the released lease"),
                    }
                }
                _ = &mut release_rx => {
                    watch.abort();
                    if let Err(err) = manager.release().await {
                        tracing::warn!(%err, "releasing the leader-election lease");
                    }
                    return;
                }
            }
        }
    });
    tokio::select! {
        _ = became_leader => tracing::info!("became the leader"),
        _ = shutdown.cancelled() => {}
    }
    Ok(Leadership {
        lost,
        manager: task,
        release,
    })
}

#[cfg(test)]
mod serving_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn serving_flags_default_to_knatives_settings() {
        let cli = Cli::try_parse_from(["run"]).unwrap();
        let settings = cli.run.serving.settings("gantry-system", None, 4).unwrap();
        assert_eq!(
            settings.templates,
            gantry_core::serving::domain::Templates::default()
        );
        assert_eq!(settings.gc, gantry_core::serving::gc::Config::default());
        assert_eq!(
            settings.router_host,
            "gantry-serving.gantry-system.svc.cluster.local"
        );
    }

    #[test]
    fn gc_limits_can_be_disabled_and_bad_settings_are_refused() {
        let cli = Cli::try_parse_from([
            "run",
            "--serving-gc-retain-since-create-time=disabled",
            "--serving-gc-max-non-active-revisions=disabled",
            "--serving-gc-min-non-active-revisions=3",
            "--serving-domain=example.com",
        ])
        .unwrap();
        let settings = cli.run.serving.settings("ns", None, 4).unwrap();
        assert_eq!(settings.gc.retain_since_create_time, None);
        assert_eq!(settings.gc.max_non_active_revisions, None);
        assert_eq!(settings.gc.min_non_active_revisions, 3);
        assert_eq!(
            settings.templates.host("a", "b").unwrap(),
            "a.b.example.com"
        );
        assert!(
            Cli::try_parse_from(["run", "--serving-gc-max-non-active-revisions=many"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "run",
            "--serving-gc-min-non-active-revisions=5",
            "--serving-gc-max-non-active-revisions=2",
        ])
        .unwrap();
        assert!(cli.run.serving.settings("ns", None, 4).is_err());
        let cli = Cli::try_parse_from(["run", "--serving-domain-template={{.Name"]).unwrap();
        assert!(cli.run.serving.settings("ns", None, 4).is_err());
    }
}

//! The controllers `gantry run` starts, wired to one client, one artifact store, one metrics
//! registry and one event stream.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use gantry_api::source::v1::GitRepository;
use gantry_image::controller::ImageControllers;
use gantry_image::tags::TagStore;
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::metrics::Metrics;
use gantry_runtime::trigger::Trigger;
use gantry_source::GitRepositories;
use gantry_source::OCIRepositories;
use gantry_source::artifact::ArtifactStore;
use tokio_util::sync::CancellationToken;

/// What `gantry run`'s flags decide for the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage_path: PathBuf,
    /// Advertised base URL of artifacts (`status.artifact.url`).
    pub artifact_base_url: String,
    pub watch_namespace: Option<String>,
    pub concurrency: u16,
    /// Where the webhook receiver server listens.
    pub receiver_addr: std::net::SocketAddr,
    /// ServiceAccount Kustomizations without `spec.serviceAccountName` impersonate.
    pub default_service_account: Option<String>,
    /// Knative Serving: domain templates, the router's host, revision GC.
    pub serving: gantry_serving::Settings,
    /// Where heartbeat Monitors are called.
    pub uptime_addr: std::net::SocketAddr,
    /// Postgres for the uptime history (else SQLite under `storage_path`).
    pub database_url: Option<String>,
    /// A heartbeat URL to call, and how often.
    pub uptime_heartbeat: Option<(String, std::time::Duration)>,
}

/// How long the uptime history may keep retrying its last write at shutdown: within
/// `gantry run`'s grace for reconciles in flight (5 s).
const UPTIME_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// Runs every controller until `shutdown` is cancelled.
pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<()> {
    let artifacts_dir = settings.storage_path.join("artifacts");
    std::fs::create_dir_all(&artifacts_dir)
        .with_context(|| format!("creating the artifact storage {}", artifacts_dir.display()))?;
    let store = ArtifactStore::new(artifacts_dir, settings.artifact_base_url.clone());
    // One event stream: Kubernetes Events now, the alert dispatcher's input later.
    let (events_tx, _) = tokio::sync::broadcast::channel(1024);
    // Subscribed before any controller publishes, so the first events reach the alerts too.
    let alert_events = events_tx.subscribe();
    let config = kube::Config::infer()
        .await
        .context("reading the client configuration (for serviceAccountName impersonation)")?;

    let shared = Shared {
        client: client.clone(),
        metrics: metrics.clone(),
        events: events_tx.clone(),
    };
    // A stored artifact wakes the Kustomizations that use it, in process.
    let (artifact_stored, stored_artifacts) = Trigger::<GitRepository>::new();
    let mut source = Controller::new(
        GitRepositories::new(store.clone()).notify_stored(artifact_stored),
        shared.clone(),
    )
    .namespace(settings.watch_namespace.as_deref())
    .concurrency(settings.concurrency);
    let source_trigger = source.trigger();
    let oci = Controller::new(OCIRepositories::new(store.clone()), shared.clone())
        .namespace(settings.watch_namespace.as_deref())
        .concurrency(settings.concurrency);
    // Image automation: a scan that changes a tag list runs its policies at once, a policy whose
    // latest image changes runs the automations of its namespace at once, and a pushed commit
    // makes the GitRepository fetch at once: no hop waits for an interval.
    let workdirs = settings.storage_path.join("automation");
    std::fs::create_dir_all(&workdirs)
        .with_context(|| format!("creating {}", workdirs.display()))?;
    let images = ImageControllers::new(
        shared.clone(),
        gantry_image::controller::Settings {
            tags: TagStore::new(settings.storage_path.join("images")),
            workdirs,
            sources: Some(source_trigger),
            namespace: settings.watch_namespace.clone(),
            concurrency: settings.concurrency,
        },
    );
    let namespace = settings.watch_namespace.as_deref();
    let kustomize = gantry_kustomize::controller::controller(
        gantry_kustomize::controller::Settings::new(store)
            .with_config(config)
            .with_default_service_account(settings.default_service_account.clone()),
        shared.clone(),
        stored_artifacts,
        namespace,
    )
    .concurrency(settings.concurrency);
    let stop = shutdown.clone();
    let stop2 = shutdown.clone();
    let stop3 = shutdown.clone();
    let stop4 = shutdown.clone();
    let notification = gantry_notification::Settings {
        receiver_addr: settings.receiver_addr,
        namespace: settings.watch_namespace.clone(),
        limits: Default::default(),
    };
    tracing::info!(
        namespace = namespace.unwrap_or("(all)"),
        "starting controllers"
    );
    let serving_stop = async move { stop4.cancelled_owned().await };
    // Monitors: the engine only runs here, in the process holding the leader Lease, so each
    // alert is sent once; heartbeats are served beside it.
    // Heartbeats are one feature among many: a busy port is reported, and delivery goes on.
    let uptime_listener = match tokio::net::TcpListener::bind(settings.uptime_addr).await {
        Ok(l) => Some(l),
        Err(err) => {
            tracing::error!(addr = %settings.uptime_addr, %err, "cannot serve heartbeats (--uptime-addr)");
            None
        }
    };
    // The uptime history: states recovered after a restart (so a recovery is announced by the
    // new leader too) and the status page served beside the heartbeats.
    let location = gantry_uptime_store::Location::from_flags(
        &settings.storage_path,
        settings.database_url.as_deref(),
    )?;
    let store = gantry_uptime_store::Store::open(gantry_uptime_store::StoreConfig::new(location))
        .await
        .context("opening the uptime history (--storage-path, --database-url)")?;
    let (engine_tx, engine_rx) = tokio::sync::oneshot::channel();
    let checks = gantry_uptime::controller::run(
        shared.clone(),
        gantry_uptime::controller::Settings {
            namespace: settings.watch_namespace.clone(),
            concurrency: settings.concurrency,
            check_concurrency: gantry_uptime::engine::DEFAULT_CONCURRENCY,
            recorder: Some(std::sync::Arc::new(store.clone())),
        },
        Some(engine_tx),
        shutdown.clone(),
    );
    let history = store.clone();
    let uptime = async move {
        checks.await;
        // Once checks stop, what is queued (results waiting for the database, the last
        // batch, sent alerts' outbox deletions) is written before the process exits.
        if let Err(err) = history.close_within(UPTIME_CLOSE_WAIT).await {
            tracing::error!(%err, "uptime history at shutdown");
        }
    };
    let stop_page = shutdown.clone();
    let heartbeats = async move {
        let (Ok(engine), Some(uptime_listener)) = (engine_rx.await, uptime_listener) else {
            return;
        };
        let page = gantry_uptime_store::StatusPage::new(store.clone(), Default::default());
        let app = gantry_uptime::heartbeat::router(engine)
            .merge(gantry_uptime_store::status::router(page));
        let _ = axum::serve(uptime_listener, app)
            .with_graceful_shutdown(async move { stop_page.cancelled().await })
            .await;
    };
    let stop_beat = shutdown.clone();
    let heartbeat_sender = async move {
        if let Some((url, every)) = settings.uptime_heartbeat.clone() {
            gantry_uptime::heartbeat::send_heartbeats(url, every, stop_beat).await;
        }
    };
    let stop_oci = shutdown.clone();
    let (_, _, _, _, _, notifications, _, _, _) = tokio::join!(
        source.run(async move { stop.cancelled().await }),
        oci.run(async move { stop_oci.cancelled().await }),
        kustomize.run(async move { stop2.cancelled().await }),
        images.run(async move { stop3.cancelled().await }),
        gantry_serving::run(
            shared.clone(),
            settings.serving.clone(),
            futures::FutureExt::shared(Box::pin(serving_stop))
        ),
        gantry_notification::run(shared.clone(), alert_events, notification, shutdown.clone()),
        uptime,
        heartbeats,
        heartbeat_sender,
    );
    notifications.with_context(|| {
        format!(
            "serving webhook receivers on {} (--receiver-addr)",
            settings.receiver_addr
        )
    })?;
    Ok(())
}

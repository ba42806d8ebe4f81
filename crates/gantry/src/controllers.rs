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
}

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
    let (_, _, _, _, notifications) = tokio::join!(
        source.run(async move { stop.cancelled().await }),
        oci.run(async move { stop4.cancelled().await }),
        kustomize.run(async move { stop2.cancelled().await }),
        images.run(async move { stop3.cancelled().await }),
        gantry_notification::run(shared.clone(), alert_events, notification, shutdown.clone()),
    );
    notifications.with_context(|| {
        format!(
            "serving webhook receivers on {} (--receiver-addr)",
            settings.receiver_addr
        )
    })?;
    Ok(())
}

//! The Kustomization controller: a source revision becomes objects in the cluster, pruned,
//! drift-corrected and health-checked, with status written exactly as Flux's
//! kustomize-controller writes it.
//!
//! Per reconciliation: wait for `dependsOn` (a cycle is reported, not waited on), read the
//! source's artifact, build the path, server-side apply in stages (dry-run first), prune what left
//! the inventory, wait for health, then write `status`. Runs are triggered by spec changes, by
//! `reconcile.fluxcd.io/requestedAt`, by a new artifact of the source (its status watch), by a
//! dependency becoming Ready (in-process, at once) and by `interval` (drift correction).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::kustomize::v1::{
    ARTIFACT_FAILED_REASON, BUILD_FAILED_REASON, DeletionPolicy, HEALTH_CHECK_FAILED_REASON,
    Kustomization, KustomizationStatus, PRUNE_FAILED_REASON, RECONCILIATION_FAILED_REASON,
    RECONCILIATION_SUCCEEDED_REASON, SourceKind, SubstituteKind,
};
use gantry_api::meta::{
    DEPENDENCY_NOT_READY_REASON, FINALIZER, HEALTHY_CONDITION, KUSTOMIZE_FIELD_MANAGER,
    READY_CONDITION, RECONCILE_REQUEST_ANNOTATION,
};
use gantry_api::source::v1::{Artifact, GitRepository};
use gantry_core::inventory::{Inventory, InventoryEntry, ObjectId};
use gantry_runtime::backoff;
use gantry_runtime::conditions::{self, Status};
use gantry_runtime::events::{Events, Severity};
use gantry_runtime::metrics::{Metrics, ResourceInfo};
use gantry_runtime::trigger::Trigger;
use gantry_source::artifact::ArtifactStore;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::apply::{self, Applier, ApplyOptions, Owner};
use crate::build::{self, Kustomize, SourceData, SubstituteSource};
use crate::health::WaitOptions;

/// Everything a reconciliation needs; shared by all of them.
pub struct Context {
    pub client: Client,
    /// The client's configuration, for impersonating `spec.serviceAccountName`.
    pub config: Option<kube::Config>,
    /// Account impersonated when `spec.serviceAccountName` is unset (Flux's
    /// `--default-service-account`): with it, nothing is applied with the controller's own rights.
    pub default_service_account: Option<String>,
    pub applier: Applier,
    /// Artifacts of the GitRepository controller in the same process.
    pub artifacts: ArtifactStore,
    pub kustomize: Kustomize,
    pub events: Option<Events>,
    pub metrics: Option<Metrics>,
    /// How often health waits poll.
    pub health_interval: Duration,
    dependents: Trigger<Kustomization>,
    // Whether GitRepositories are watched too (the fallback to the in-process hand-off).
    watch_sources: bool,
    store: OnceLock<Store<Kustomization>>,
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl Context {
    /// A context and the stream of in-process reconcile requests to feed to the controller.
    pub fn new(
        client: Client,
        artifacts: ArtifactStore,
    ) -> (
        Self,
        impl futures::Stream<Item = ObjectRef<Kustomization>> + Send + 'static,
    ) {
        let (dependents, requests) = Trigger::new();
        let context = Self {
            applier: Applier::new(client.clone(), KUSTOMIZE_FIELD_MANAGER),
            client,
            config: None,
            default_service_account: None,
            artifacts,
            kustomize: Kustomize {
                edit_in_place: true,
                ..Kustomize::default()
            },
            events: None,
            metrics: None,
            health_interval: Duration::from_millis(500),
            dependents,
            watch_sources: true,
            store: OnceLock::new(),
            failures: Mutex::default(),
        };
        (context, requests)
    }

    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with_config(mut self, config: kube::Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Impersonate this ServiceAccount (of the Kustomization's own namespace) when
    /// `spec.serviceAccountName` is unset.
    pub fn with_default_service_account(mut self, account: Option<String>) -> Self {
        self.default_service_account = account.filter(|a| !a.is_empty());
        self
    }

    /// Rely on the source controller's in-process hand-off alone: no GitRepository watch. For
    /// tests that prove the hand-off, and for a process that runs both controllers.
    pub fn without_source_watch(mut self) -> Self {
        self.watch_sources = false;
        self
    }

    fn cached(&self, namespace: &str, name: &str) -> Option<Arc<Kustomization>> {
        self.store
            .get()?
            .get(&ObjectRef::new(name).within(namespace))
    }

    fn all_cached(&self) -> Vec<Arc<Kustomization>> {
        self.store.get().map(|s| s.state()).unwrap_or_default()
    }
}

/// Why a reconciliation did not finish. Most outcomes are written to `status` and requeued by
/// `reconcile` itself; these are the ones that could not even be reported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of {0}: {1}")]
    Status(String, #[source] kube::Error),
    #[error("finalizer of {0}: {1}")]
    Finalizer(
        String,
        #[source] Box<kube::runtime::finalizer::Error<Error>>,
    ),
    #[error("deleting the objects of {0}: {1}")]
    Cleanup(String, #[source] apply::ApplyError),
    #[error("{0}")]
    Invalid(String),
}

/// A failed step, carried to the status as Flux's reason and message.
struct Failure {
    reason: &'static str,
    message: String,
    /// Only a spec change can fix it: `Stalled=True` and no retries.
    terminal: bool,
    healthy: Option<bool>,
    /// The event it is announced with; `None` only logs it.
    event: Option<Severity>,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            terminal: false,
            healthy: None,
            event: Some(Severity::Error),
        }
    }

    fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// Waiting for another object rather than failing: Flux only logs a missing source or
    /// artifact (no event, so no alert when everything starts at once) and announces an
    /// unready dependency as info.
    fn waiting(mut self, event: Option<Severity>) -> Self {
        self.event = event;
        self
    }
}

pub async fn reconcile(ks: Arc<Kustomization>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ks.namespace().unwrap_or_default();
    let api: Api<Kustomization> = Api::namespaced(ctx.client.clone(), &namespace);
    let id = format!("{namespace}/{}", ks.name_any());
    finalizer(&api, FINALIZER, ks, move |event| async move {
        match event {
            FinalizerEvent::Apply(ks) => reconcile_live(ks, ctx).await,
            FinalizerEvent::Cleanup(ks) => cleanup(ks, ctx).await,
        }
    })
    .await
    .map_err(|err| Error::Finalizer(id, Box::new(err)))
}

pub fn error_policy(ks: Arc<Kustomization>, err: &Error, ctx: Arc<Context>) -> Action {
    // Adding or removing the finalizer is a guarded JSON patch; it fails when the object in the
    // cache is older than the server's (a second trigger raced the first). Just run again.
    if let Error::Finalizer(_, inner) = err
        && let kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(status))
        | kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(status)) =
            inner.as_ref()
        && matches!(status.code, 409 | 422)
    {
        tracing::debug!(kustomization = %ks.name_any(), "finalizer patch raced a newer version; retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    let key = (ks.namespace().unwrap_or_default(), ks.name_any());
    let failures = {
        let mut all = ctx.failures.lock().expect("failures lock");
        let n = all.entry(key).or_default();
        *n += 1;
        *n
    };
    tracing::warn!(kustomization = %ks.name_any(), namespace = ?ks.namespace(), %err, "reconciliation failed");
    Action::requeue(backoff::after_failures(failures))
}

async fn reconcile_live(ks: Arc<Kustomization>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ks, ctx) = (ks.as_ref(), ctx.as_ref());
    let started = Instant::now();
    let namespace = ks.namespace().unwrap_or_default();
    let name = ks.name_any();
    let interval = ks
        .interval()
        .map_err(|e| Error::Invalid(format!("spec.interval: {e}")))?;
    let retry = ks.retry_interval().unwrap_or(interval);
    let previous = ks.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.last_handled_reconcile_at = ks.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();

    if ks.spec.suspend {
        // Flux writes nothing for a suspended object; only the metric says so.
        record_metrics(ctx, ks, &previous, true);
        return Ok(Action::await_change());
    }

    let outcome = run(ks, ctx, &mut status).await;
    let generation = ks.metadata.generation;
    status.observed_generation = generation;
    let action = match &outcome {
        Ok(revision) => {
            status.last_applied_revision = Some(revision.clone());
            status.last_attempted_revision = Some(revision.clone());
            conditions::succeeded(
                &mut status.conditions,
                generation,
                RECONCILIATION_SUCCEEDED_REASON,
                &format!("Applied revision: {revision}"),
            );
            ctx.failures
                .lock()
                .expect("failures lock")
                .remove(&(namespace.clone(), name.clone()));
            Action::requeue(backoff::jittered(interval, seed(ks)))
        }
        Err(failure) => {
            if let Some(healthy) = failure.healthy {
                let (s, reason) = if healthy {
                    (Status::True, "Succeeded")
                } else {
                    (Status::False, HEALTH_CHECK_FAILED_REASON)
                };
                conditions::set(
                    &mut status.conditions,
                    HEALTHY_CONDITION,
                    s,
                    reason,
                    &failure.message,
                    generation,
                );
            }
            conditions::failed(
                &mut status.conditions,
                generation,
                failure.reason,
                &failure.message,
                failure.terminal,
            );
            if failure.terminal {
                Action::await_change()
            } else {
                Action::requeue(retry)
            }
        }
    };

    write_status(ctx, ks, &status).await?;
    let took = started.elapsed();
    if let Some(metrics) = &ctx.metrics {
        metrics.observe_reconcile("Kustomization", &namespace, &name, took);
    }
    record_metrics(ctx, ks, &status, false);

    if let Err(failure) = &outcome {
        let unchanged = conditions::get(&previous.conditions, READY_CONDITION)
            .is_some_and(|c| c.reason == failure.reason && c.message == failure.message);
        let severity = announcement(failure, unchanged);
        if severity == Some(Severity::Error) {
            tracing::warn!(kustomization = %name, %namespace, reason = failure.reason, message = %failure.message, "reconciliation failed");
        } else if !unchanged {
            tracing::info!(kustomization = %name, %namespace, reason = failure.reason, message = %failure.message, "waiting");
        }
        if let Some(severity) = severity {
            publish(
                ctx,
                ks,
                severity,
                failure.reason,
                &failure.message,
                status.last_attempted_revision.as_deref(),
            )
            .await;
        }
    } else {
        tracing::info!(kustomization = %name, %namespace, revision = ?status.last_applied_revision, took_ms = took.as_millis() as u64, "reconciled");
        let became_ready = !conditions::is_true(&previous.conditions, READY_CONDITION)
            || previous.last_applied_revision != status.last_applied_revision;
        if became_ready {
            trigger_dependents(ctx, &namespace, &name);
        }
    }
    Ok(action)
}

/// The event a failure is announced with: none when Ready already said the same (one event per
/// change, not per retry) or when it only waits for another object.
fn announcement(failure: &Failure, unchanged: bool) -> Option<Severity> {
    if unchanged { None } else { failure.event }
}

/// The reconciliation proper; returns the applied revision. Writes progress into `status`.
async fn run(
    ks: &Kustomization,
    ctx: &Context,
    status: &mut KustomizationStatus,
) -> Result<String, Failure> {
    let namespace = ks.namespace().unwrap_or_default();
    let name = ks.name_any();
    // Read once: the dependency check needs the source's revision too.
    let source = source_artifact(ks, ctx).await;
    let source_revision = source.as_ref().ok().map(|(a, _)| a.revision.as_str());
    check_dependencies(ks, ctx, source_revision).await?;
    let (artifact, source_id) = source?;
    let revision = artifact.revision.clone();
    status.last_attempted_revision = Some(revision.clone());
    let timeout = ks.timeout().unwrap_or(Duration::from_secs(60));

    // A new revision or spec: say so before building, applying and waiting (which may take the
    // whole timeout), so `Ready` never vouches for the old revision meanwhile. Drift-correction
    // runs of an applied revision write nothing here.
    let applied = ks.status.as_ref().is_some_and(|s| {
        s.last_applied_revision.as_deref() == Some(revision.as_str())
            && s.observed_generation == ks.metadata.generation
    });
    if !applied {
        conditions::progressing(
            &mut status.conditions,
            ks.metadata.generation,
            &format!(
                "Fetching manifests for revision {revision} with a timeout of {}",
                go_duration(timeout)
            ),
        );
        if let Err(err) = write_status(ctx, ks, status).await {
            // Progress is informative; the final status write will report any real problem.
            tracing::debug!(kustomization = %name, %namespace, "writing progress: {err}");
        }
    }

    let store = ctx.artifacts.clone();
    let spec = ks.spec.clone();
    let vars = substitute_from(ks, ctx).await?;
    let mut kustomize = ctx.kustomize.clone();
    kustomize.timeout = timeout;
    let path = ks.spec.path.clone();
    // The source controller's store wakes this at once (no polling).
    store
        .wait_for(&artifact, timeout.min(ARTIFACT_PATIENCE))
        .await;
    let built = tokio::task::spawn_blocking(move || {
        let dir = store.open(&artifact).map_err(|e| {
            Failure::new(
                ARTIFACT_FAILED_REASON,
                format!("artifact of '{source_id}': {e}"),
            )
        })?;
        let root = build::resolve_path(dir.path(), path.as_deref());
        if !root.is_dir() {
            return Err(Failure::new(
                ARTIFACT_FAILED_REASON,
                format!(
                    "kustomization path not found: {} is not a directory in revision {}",
                    path.as_deref().unwrap_or("./"),
                    artifact.revision
                ),
            ));
        }
        // Name files as they are in the repository, not in the scratch directory.
        let scratch = format!("{}/", dir.path().display());
        build::build(&root, &spec, &vars, &kustomize, true)
            .map_err(|e| Failure::new(BUILD_FAILED_REASON, e.to_string().replace(&scratch, "")))
    })
    .await
    .map_err(|e| Failure::new(BUILD_FAILED_REASON, format!("build task failed: {e}")))??;

    let applier =
        applier_for(ks, ctx).map_err(|m| Failure::new(RECONCILIATION_FAILED_REASON, m))?;
    let owner = Owner::new(&name, &namespace);
    let mut options = ApplyOptions::new(owner.clone());
    options.force = ks.spec.force;
    options.wait_timeout = timeout;
    let changes = applier
        .apply(built, &options)
        .await
        .map_err(|e| Failure::new(RECONCILIATION_FAILED_REASON, e.to_string()))?;
    let current = changes.to_inventory();
    let old = status
        .inventory
        .as_ref()
        .map(apply::inventory_from_status)
        .transpose()
        .unwrap_or_default()
        .unwrap_or_default();
    let mut summary = changes.summary();
    if ks.spec.prune {
        let pruned = applier
            .prune(&old, &current, &owner)
            .await
            .map_err(|e| Failure::new(PRUNE_FAILED_REASON, e.to_string()))?;
        let lines = pruned.summary();
        if !lines.is_empty() {
            summary = [summary, lines]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    status.inventory = Some(apply::inventory_to_status(&current));

    let targets = if ks.spec.wait {
        changes.health_targets()
    } else {
        health_check_targets(ks)
    };
    if !targets.is_empty() {
        let mut wait = WaitOptions::new(timeout);
        wait.interval = ctx.health_interval;
        let waited = Instant::now();
        if let Err(err) = applier.wait(&targets, &wait).await {
            let mut failure = Failure::new(HEALTH_CHECK_FAILED_REASON, err.to_string());
            failure.healthy = Some(false);
            return Err(failure);
        }
        conditions::set(
            &mut status.conditions,
            HEALTHY_CONDITION,
            Status::True,
            "Succeeded",
            &format!("Health check passed in {:.1?}", waited.elapsed()),
            ks.metadata.generation,
        );
    }

    if !summary.is_empty() {
        publish(
            ctx,
            ks,
            Severity::Info,
            RECONCILIATION_SUCCEEDED_REASON,
            &summary,
            Some(&revision),
        )
        .await;
    }
    Ok(revision)
}

/// A duration as Go prints it (`30s`, `5m0s`, `1h0m0s`), as Flux's messages show timeouts.
fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// The artifact of the Kustomization's source, and the source's id for messages.
async fn source_artifact(ks: &Kustomization, ctx: &Context) -> Result<(Artifact, String), Failure> {
    let source = &ks.spec.source_ref;
    if source.kind != SourceKind::GitRepository {
        return Err(Failure::new(
            ARTIFACT_FAILED_REASON,
            format!(
                "source kind {:?} is not supported by Gantry yet (only GitRepository)",
                source.kind
            ),
        )
        .terminal());
    }
    let source_namespace = source_namespace(ks);
    let source_id = format!("GitRepository/{source_namespace}/{}", source.name);
    let repos: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &source_namespace);
    let repo = match repos.get_opt(&source.name).await {
        Ok(Some(repo)) => repo,
        Ok(None) => {
            return Err(Failure::new(
                ARTIFACT_FAILED_REASON,
                format!("Source '{source_id}' not found"),
            )
            .waiting(None));
        }
        Err(err) => {
            return Err(Failure::new(
                ARTIFACT_FAILED_REASON,
                format!("reading {source_id}: {err}"),
            ));
        }
    };
    match repo.status.and_then(|s| s.artifact) {
        Some(artifact) => Ok((artifact, source_id)),
        None => Err(Failure::new(
            ARTIFACT_FAILED_REASON,
            format!("Source '{source_id}' is not ready, artifact not found"),
        )
        .waiting(None)),
    }
}

fn source_namespace(ks: &Kustomization) -> String {
    ks.spec
        .source_ref
        .namespace
        .clone()
        .unwrap_or_else(|| ks.namespace().unwrap_or_default())
}

/// Every dependency must be Ready at its current generation; one with the same source must also
/// have applied the same revision. A cycle can never become ready: it is a terminal failure.
async fn check_dependencies(
    ks: &Kustomization,
    ctx: &Context,
    source_revision: Option<&str>,
) -> Result<(), Failure> {
    if ks.spec.depends_on.is_empty() {
        return Ok(());
    }
    let namespace = ks.namespace().unwrap_or_default();
    let key = |ns: &str, name: &str| format!("{ns}/{name}");
    let me = key(&namespace, &ks.name_any());
    let deps_of = |id: &String| -> Vec<String> {
        let (ns, name) = id.split_once('/').unwrap_or(("", id));
        let found = if *id == me {
            None
        } else {
            ctx.cached(ns, name)
        };
        let spec_deps = match &found {
            Some(k) => &k.spec.depends_on,
            None if *id == me => &ks.spec.depends_on,
            None => return Vec::new(),
        };
        spec_deps
            .iter()
            .map(|d| key(d.namespace.as_deref().unwrap_or(ns), &d.name))
            .collect()
    };
    if let Some(cycle) = gantry_core::depgraph::find_cycle(&me, deps_of) {
        return Err(Failure::new(
            DEPENDENCY_NOT_READY_REASON,
            format!("dependency cycle detected: {}", cycle.join(" -> ")),
        )
        .terminal());
    }

    for dep in &ks.spec.depends_on {
        let dep_ns = dep.namespace.clone().unwrap_or_else(|| namespace.clone());
        let api: Api<Kustomization> = Api::namespaced(ctx.client.clone(), &dep_ns);
        let not_ready = |why: &str| {
            Failure::new(
                DEPENDENCY_NOT_READY_REASON,
                format!("dependency '{dep_ns}/{}' {why}", dep.name),
            )
            .waiting(Some(Severity::Info))
        };
        let other = match api.get_opt(&dep.name).await {
            Ok(Some(other)) => other,
            Ok(None) => return Err(not_ready("not found")),
            Err(err) => return Err(not_ready(&format!("could not be read: {err}"))),
        };
        let status = other.status.clone().unwrap_or_default();
        let ready = conditions::is_true(&status.conditions, READY_CONDITION)
            && status.observed_generation == other.metadata.generation;
        if !ready {
            return Err(not_ready("is not ready"));
        }
        let same_source = other.spec.source_ref.kind == ks.spec.source_ref.kind
            && other.spec.source_ref.name == ks.spec.source_ref.name
            && source_namespace(&other) == source_namespace(ks);
        if same_source
            && source_revision.is_some()
            && status.last_applied_revision.as_deref() != source_revision
        {
            return Err(not_ready("is not up to date with the source revision"));
        }
    }
    Ok(())
}

/// `postBuild.substituteFrom`: ConfigMaps and Secrets of the Kustomization's namespace, in order.
async fn substitute_from(
    ks: &Kustomization,
    ctx: &Context,
) -> Result<BTreeMap<String, String>, Failure> {
    let Some(post_build) = &ks.spec.post_build else {
        return Ok(BTreeMap::new());
    };
    let namespace = ks.namespace().unwrap_or_default();
    let mut sources = Vec::new();
    for reference in &post_build.substitute_from {
        let data = match reference.kind {
            SubstituteKind::ConfigMap => {
                Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
                    .get_opt(&reference.name)
                    .await
                    .map(|cm| cm.map(|cm| SourceData::Plain(cm.data.unwrap_or_default())))
            }
            SubstituteKind::Secret => Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&reference.name)
                .await
                .map(|s| {
                    s.map(|s| {
                        SourceData::Bytes(
                            s.data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect(),
                        )
                    })
                }),
        }
        .map_err(|e| {
            Failure::new(
                BUILD_FAILED_REASON,
                format!(
                    "substituteFrom {:?} {}: {e}",
                    reference.kind, reference.name
                ),
            )
        })?;
        sources.push(SubstituteSource {
            kind: reference.kind,
            name: reference.name.clone(),
            optional: reference.optional,
            data,
        });
    }
    build::merge_substitute_from(&sources)
        .map_err(|e| Failure::new(BUILD_FAILED_REASON, e.to_string()))
}

/// `spec.serviceAccountName`, else the default account: apply as that account of the
/// Kustomization's namespace (impersonation), as Flux does for tenants.
fn applier_for(ks: &Kustomization, ctx: &Context) -> Result<Applier, String> {
    let account = ks
        .spec
        .service_account_name
        .as_ref()
        .filter(|a| !a.is_empty())
        .or(ctx.default_service_account.as_ref());
    let Some(account) = account else {
        return Ok(ctx.applier.clone());
    };
    let Some(config) = &ctx.config else {
        return Err("spec.serviceAccountName needs the controller's client configuration".into());
    };
    let mut config = config.clone();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{}:{account}",
        ks.namespace().unwrap_or_default()
    ));
    let client = Client::try_from(config).map_err(|e| format!("impersonating {account}: {e}"))?;
    Ok(ctx.applier.with_client(client))
}

/// How long a reconciliation waits for this process to store an artifact its source names
/// (just after a start or a leader handover, the source's status outlives the store).
const ARTIFACT_PATIENCE: Duration = Duration::from_secs(30);

fn health_check_targets(ks: &Kustomization) -> Vec<InventoryEntry> {
    let namespace = ks.namespace().unwrap_or_default();
    ks.spec
        .health_checks
        .iter()
        .map(|check| {
            let api_version = check.api_version.clone().unwrap_or_else(|| "v1".into());
            let ns = check.namespace.clone().unwrap_or_else(|| namespace.clone());
            InventoryEntry {
                id: ObjectId::from_api_version(&api_version, &check.kind, &ns, &check.name),
                version: api_version.rsplit('/').next().unwrap_or("v1").to_string(),
            }
        })
        .collect()
}

/// Deleting a Kustomization: its objects follow `deletionPolicy`.
async fn cleanup(ks: Arc<Kustomization>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ks, ctx) = (ks.as_ref(), ctx.as_ref());
    let namespace = ks.namespace().unwrap_or_default();
    let name = ks.name_any();
    if let Some(metrics) = &ctx.metrics {
        metrics.remove_resource("Kustomization", &namespace, &name);
    }
    if ks.spec.suspend || !ks.deletes_on_removal() {
        return Ok(Action::await_change());
    }
    let inventory: Inventory = ks
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(apply::inventory_from_status)
        .transpose()
        .map_err(|e| Error::Invalid(format!("status.inventory: {e}")))?
        .unwrap_or_default();
    if inventory.is_empty() {
        return Ok(Action::await_change());
    }
    let owner = Owner::new(&name, &namespace);
    let applier = applier_for(ks, ctx).map_err(Error::Invalid)?;
    let id = format!("{namespace}/{name}");
    let deleted = applier
        .delete_all(&inventory, &owner)
        .await
        .map_err(|e| Error::Cleanup(id.clone(), e))?;
    if ks.deletion_policy() == DeletionPolicy::WaitForTermination {
        let entries: Vec<InventoryEntry> = inventory.deletion_order();
        let timeout = ks.timeout().unwrap_or(Duration::from_secs(60));
        applier
            .wait_for_termination(&entries, timeout, ctx.health_interval)
            .await
            .map_err(|e| Error::Cleanup(id, e))?;
    }
    let summary = deleted.summary();
    if !summary.is_empty() {
        publish(ctx, ks, Severity::Info, "Pruned", &summary, None).await;
    }
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    ks: &Kustomization,
    status: &KustomizationStatus,
) -> Result<(), Error> {
    let namespace = ks.namespace().unwrap_or_default();
    let api: Api<Kustomization> = Api::namespaced(ctx.client.clone(), &namespace);
    gantry_runtime::status::apply(&api, &ks.name_any(), KUSTOMIZE_FIELD_MANAGER, status)
        .await
        .map_err(|e| Error::Status(format!("{namespace}/{}", ks.name_any()), e))?;
    Ok(())
}

fn record_metrics(
    ctx: &Context,
    ks: &Kustomization,
    status: &KustomizationStatus,
    suspended: bool,
) {
    let Some(metrics) = &ctx.metrics else { return };
    let ready = conditions::get(&status.conditions, READY_CONDITION);
    let stalled = conditions::get(&status.conditions, gantry_api::meta::STALLED_CONDITION)
        .is_some_and(|c| c.status == "True");
    metrics.set_stalled(
        "Kustomization",
        &ks.namespace().unwrap_or_default(),
        &ks.name_any(),
        stalled,
    );
    metrics.set_resource(&ResourceInfo {
        group: Kustomization::group(&()).into_owned(),
        kind: Kustomization::kind(&()).into_owned(),
        version: Kustomization::version(&()).into_owned(),
        namespace: ks.namespace().unwrap_or_default(),
        name: ks.name_any(),
        ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        suspended,
        revision: status.last_applied_revision.clone().unwrap_or_default(),
    });
}

async fn publish(
    ctx: &Context,
    ks: &Kustomization,
    severity: Severity,
    reason: &str,
    message: &str,
    revision: Option<&str>,
) {
    let Some(events) = &ctx.events else { return };
    let mut metadata = BTreeMap::new();
    if let Some(revision) = revision {
        metadata.insert(
            "kustomize.toolkit.fluxcd.io/revision".to_string(),
            revision.to_string(),
        );
    }
    events
        .publish(ks.object_ref(&()), severity, reason, message, metadata)
        .await;
}

/// Kustomizations that depend on `namespace/name` run now instead of at their retry interval.
fn trigger_dependents(ctx: &Context, namespace: &str, name: &str) {
    for other in ctx.all_cached() {
        let other_ns = other.namespace().unwrap_or_default();
        let depends =
            other.spec.depends_on.iter().any(|d| {
                d.name == name && d.namespace.as_deref().unwrap_or(&other_ns) == namespace
            });
        if depends {
            ctx.dependents.request(&other.name_any(), &other_ns);
        }
    }
}

fn seed(ks: &Kustomization) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // Per object, and different on every run so objects created together drift apart.
    ks.metadata.uid.hash(&mut hasher);
    std::time::SystemTime::now().hash(&mut hasher);
    hasher.finish()
}

/// Runs the controller until `shutdown`: watches Kustomizations (spec changes, reconcile
/// requests and deletions only: our own status writes do not retrigger) and takes in-process
/// requests from dependencies (`requests`) and from the source controller (`stored`: a
/// GitRepository whose new artifact was stored wakes the Kustomizations that use it at once).
/// Unless [`Context::without_source_watch`], the GitRepositories are also watched, as a
/// fallback for artifacts stored elsewhere.
pub async fn run_controller(
    ctx: Context,
    requests: impl futures::Stream<Item = ObjectRef<Kustomization>> + Send + 'static,
    stored: impl futures::Stream<Item = ObjectRef<GitRepository>> + Send + 'static,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (api, repos): (Api<Kustomization>, Api<GitRepository>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (reader, writer) = reflector::store();
    let _ = ctx.store.set(reader.clone());
    let kustomizations = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_request_changed, Default::default());
    // Only a new artifact matters, not every status write of the source.
    let artifacts = watcher(repos, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .predicate_filter(artifact_changed, Default::default());
    let store = reader.clone();
    let stored = stored.flat_map(move |repo| futures::stream::iter(users_of(&store, &repo)));
    let store = reader.clone();
    let watch_sources = ctx.watch_sources;
    let ctx = Arc::new(ctx);
    let mut controller = Controller::for_stream(kustomizations, reader)
        .with_config(ControllerConfig::default().concurrency(concurrency));
    if watch_sources {
        controller = controller.watches_stream(artifacts, move |repo: GitRepository| {
            users_of(&store, &ObjectRef::from_obj(&repo))
        });
    }
    controller
        .reconcile_on(requests)
        .reconcile_on(stored)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "Kustomization reconcile");
            }
        })
        .await;
}

/// The Kustomizations whose source is the GitRepository `repo`.
fn users_of(
    store: &reflector::Store<Kustomization>,
    repo: &ObjectRef<GitRepository>,
) -> Vec<ObjectRef<Kustomization>> {
    let repo_ns = repo.namespace.as_deref().unwrap_or_default();
    store
        .state()
        .into_iter()
        .filter(|ks| {
            let ks_ns = ks.namespace().unwrap_or_default();
            let source = &ks.spec.source_ref;
            source.kind == SourceKind::GitRepository
                && source.name == repo.name
                && source.namespace.as_deref().unwrap_or(&ks_ns) == repo_ns
        })
        .map(|ks| ObjectRef::from_obj(ks.as_ref()))
        .collect()
}

fn spec_or_request_changed(ks: &Kustomization) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(ks).hash(&mut hasher);
    ks.annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .hash(&mut hasher);
    ks.meta().deletion_timestamp.is_some().hash(&mut hasher);
    ks.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

fn artifact_changed(repo: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.digest).hash(&mut hasher);
    artifact.map(|a| &a.revision).hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn failures_are_announced_as_flux_announces_them() {
        let failed = Failure::new(
            RECONCILIATION_FAILED_REASON,
            "Deployment/a/web dry-run failed",
        );
        assert!(matches!(
            announcement(&failed, false),
            Some(Severity::Error)
        ));
        // The same Ready condition again: the retry is not news.
        assert!(announcement(&failed, true).is_none());
        // Created before its source has an artifact (everything applied at once): only a log,
        // or every start would alert.
        let no_artifact = Failure::new(ARTIFACT_FAILED_REASON, "Source is not ready").waiting(None);
        assert!(announcement(&no_artifact, false).is_none());
        let dependency = Failure::new(DEPENDENCY_NOT_READY_REASON, "dependency 'a/b' is not ready")
            .waiting(Some(Severity::Info));
        assert!(matches!(
            announcement(&dependency, false),
            Some(Severity::Info)
        ));
        // A path missing from the revision is a failure, even with the same reason.
        let no_path = Failure::new(ARTIFACT_FAILED_REASON, "kustomization path not found");
        assert!(matches!(
            announcement(&no_path, false),
            Some(Severity::Error)
        ));
    }
}

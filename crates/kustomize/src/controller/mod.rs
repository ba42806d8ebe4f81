//! The Kustomization controller: a source revision becomes objects in the cluster, pruned,
//! drift-corrected and health-checked, with status written exactly as Flux's
//! kustomize-controller writes it.
//!
//! Per reconciliation: wait for `dependsOn` (a cycle is reported, not waited on), read the
//! source's artifact, build the path, server-side apply in stages (dry-run first), prune what left
//! the inventory, wait for health, then write `status`. Runs are triggered by spec changes, by
//! `reconcile.fluxcd.io/requestedAt`, by a new artifact of the source (in-process from the source
//! controller; a watch of the GitRepositories as the fallback), by a dependency becoming Ready
//! (in-process, at once) and by `interval` (drift correction).
//!
//! It runs on the harness ([`gantry_runtime::controller`]), which owns the watch, the finalizer,
//! backoff, status writes, events and metrics. Here are only the domain steps:
//! - `decide`: the decisions (the status a failure gives, when to announce, whether a revision
//!   is applied, whether a dependency is ready), pure and unit-tested;
//! - `steps`: what talks to the cluster (source, dependencies, build, apply, prune, health).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use gantry_api::kustomize::v1::{Kustomization, SourceKind};
use gantry_api::meta::{KUSTOMIZE_FIELD_MANAGER, RECONCILE_REQUEST_ANNOTATION};
use gantry_api::source::v1::{GitRepository, OCIRepository};
use gantry_runtime::controller::{Controller, Cx, Reconciler, Shared, jittered};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use gantry_source::artifact::ArtifactStore;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::apply::{self, Applier};
use crate::build::Kustomize;

mod decide;
mod sources;
mod steps;

use sources::Sources;

/// How the Kustomization controller works in this process.
pub struct Settings {
    /// Artifacts of the GitRepository controller in the same process.
    pub artifacts: ArtifactStore,
    pub kustomize: Kustomize,
    /// The client's configuration, for impersonating `spec.serviceAccountName`.
    pub config: Option<kube::Config>,
    /// Account impersonated when `spec.serviceAccountName` is unset (Flux's
    /// `--default-service-account`): with it, nothing is applied with the controller's own rights.
    pub default_service_account: Option<String>,
    /// How often health waits poll.
    pub health_interval: Duration,
    // Whether GitRepositories are watched too (the fallback to the in-process hand-off).
    watch_sources: bool,
}

impl Settings {
    pub fn new(artifacts: ArtifactStore) -> Self {
        Self {
            artifacts,
            kustomize: Kustomize {
                edit_in_place: true,
                ..Kustomize::default()
            },
            config: None,
            default_service_account: None,
            health_interval: Duration::from_millis(500),
            watch_sources: true,
        }
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
    /// tests that prove the hand-off.
    pub fn without_source_watch(mut self) -> Self {
        self.watch_sources = false;
        self
    }
}

/// The Kustomization controller's domain steps; build it with [`controller`].
pub struct Kustomizations {
    settings: Settings,
    // The harness's cache of Kustomizations: dependencies and dependents are read from it.
    cache: Store<Kustomization>,
    dependents: Trigger<Kustomization>,
    // What the source watches saw: artifacts are read from here, not with a GET per run.
    sources: Sources,
    // Made with the harness's client on first use; clones share its discovery cache.
    applier: OnceLock<Applier>,
}

/// The Kustomization controller on the harness, watching `namespace` (all when `None`), with
/// its hand-offs: a GitRepository whose new artifact this process stored (`stored`) wakes the
/// Kustomizations that use it at once, and, unless [`Settings::without_source_watch`], so does a
/// watch of the GitRepositories' artifacts (the fallback for artifacts stored elsewhere). Set
/// its concurrency and `run` it.
pub fn controller(
    settings: Settings,
    shared: Shared,
    stored: impl Stream<Item = ObjectRef<GitRepository>> + Send + 'static,
    namespace: Option<&str>,
) -> Controller<Kustomizations> {
    let repos: Api<GitRepository> = match namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let watch_sources = settings.watch_sources;
    let oci_repos: Api<OCIRepository> = match namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let mut sources = Sources::default();
    // One watch per source kind: it fills the source stores the runs read their artifact
    // from, and a new artifact (not every status write) wakes the Kustomizations that use it.
    let watches = watch_sources.then(|| {
        let artifacts = sources
            .git_stream(watcher(repos, watcher::Config::default()).default_backoff())
            .applied_objects()
            .predicate_filter(decide::artifact_changed, Default::default())
            .filter_map(|repo| async move {
                repo.inspect_err(|err| tracing::debug!(%err, "GitRepository watch"))
                    .ok()
            });
        let oci_artifacts = sources
            .oci_stream(watcher(oci_repos, watcher::Config::default()).default_backoff())
            .applied_objects()
            .predicate_filter(decide::oci_artifact_changed, Default::default())
            .filter_map(|repo| async move {
                repo.inspect_err(|err| tracing::debug!(%err, "OCIRepository watch"))
                    .ok()
            });
        (artifacts, oci_artifacts)
    });
    let controller = Controller::new_with(shared, |cache, dependents| Kustomizations {
        settings,
        cache,
        dependents,
        sources,
        applier: OnceLock::new(),
    })
    .namespace(namespace)
    .requested_by_related(stored, users_of);
    let Some((artifacts, oci_artifacts)) = watches else {
        return controller;
    };
    controller
        .requested_by_related(artifacts, |repo: &GitRepository, cache| {
            users_of(&ObjectRef::from_obj(repo), cache)
        })
        .requested_by_related(oci_artifacts, |repo: &OCIRepository, cache| {
            oci_users_of(&ObjectRef::from_obj(repo), cache)
        })
}

/// The Kustomizations whose source is the OCIRepository `repo`.
pub fn oci_users_of(
    repo: &ObjectRef<OCIRepository>,
    cache: &Store<Kustomization>,
) -> Vec<ObjectRef<Kustomization>> {
    let repo_ns = repo.namespace.as_deref().unwrap_or_default();
    cache
        .state()
        .into_iter()
        .filter(|ks| {
            let source = &ks.spec.source_ref;
            source.kind == SourceKind::OciRepository
                && source.name == repo.name
                && decide::source_namespace(ks) == repo_ns
        })
        .map(|ks| ObjectRef::from_obj(ks.as_ref()))
        .collect()
}

/// The Kustomizations whose source is the GitRepository `repo`.
pub fn users_of(
    repo: &ObjectRef<GitRepository>,
    cache: &Store<Kustomization>,
) -> Vec<ObjectRef<Kustomization>> {
    let repo_ns = repo.namespace.as_deref().unwrap_or_default();
    cache
        .state()
        .into_iter()
        .filter(|ks| {
            let source = &ks.spec.source_ref;
            source.kind == SourceKind::GitRepository
                && source.name == repo.name
                && decide::source_namespace(ks) == repo_ns
        })
        .map(|ks| ObjectRef::from_obj(ks.as_ref()))
        .collect()
}

/// Why a reconciliation did not finish. Domain failures are written to `status` and requeued at
/// `retryInterval`, as Flux does; these are what the harness retries (or, for a stalled spec,
/// waits on).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    #[error("deleting the applied objects: {0}")]
    Cleanup(#[source] apply::ApplyError),
    #[error("{0}")]
    Invalid(String),
    /// Written to `status` as `Stalled=True`; only a change of the object helps.
    #[error("stalled: {0}")]
    Stalled(String),
}

impl Reconciler for Kustomizations {
    type Object = Kustomization;
    type Error = Error;
    const CONTROLLER: &'static str = KUSTOMIZE_FIELD_MANAGER;

    async fn reconcile(
        &self,
        ks: Arc<Kustomization>,
        cx: &Cx<Kustomization>,
    ) -> Result<Action, Error> {
        let ks = ks.as_ref();
        let started = Instant::now();
        let (namespace, name) = (ks.namespace().unwrap_or_default(), ks.name_any());
        let interval = ks
            .interval()
            .map_err(|e| Error::Invalid(format!("spec.interval: {e}")))?;
        let retry = ks.retry_interval().unwrap_or(interval);
        let previous = ks.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        status.last_handled_reconcile_at =
            ks.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();

        let mut progress_written = false;
        let outcome = self.run(ks, cx, &mut status, &mut progress_written).await;
        decide::settle(ks, &mut status, &outcome);
        // Only what someone can see is written: a drift-correction run that found everything
        // as it was sends nothing (the object already says all of it).
        if progress_written || status != previous {
            cx.write_status(ks, &status).await.map_err(Error::Status)?;
        } else {
            cx.record(ks, Some(&status));
        }

        let failure = match outcome {
            Ok(_) => {
                tracing::info!(kustomization = %name, %namespace, revision = ?status.last_applied_revision, took_ms = started.elapsed().as_millis() as u64, "reconciled");
                if decide::became_ready(&previous, &status) {
                    self.trigger_dependents(&namespace, &name);
                }
                return Ok(Action::requeue(jittered(ks, interval)));
            }
            Err(failure) => failure,
        };
        let unchanged = decide::unchanged(&previous, &failure);
        let severity = decide::announcement(&failure, unchanged);
        if severity == Some(Severity::Error) {
            tracing::warn!(kustomization = %name, %namespace, reason = failure.reason, message = %failure.message, "reconciliation failed");
        } else if !unchanged {
            tracing::info!(kustomization = %name, %namespace, reason = failure.reason, message = %failure.message, "waiting");
        }
        if let Some(severity) = severity {
            let revision = status.last_attempted_revision.as_deref();
            cx.event(ks, severity, failure.reason, &failure.message, revision)
                .await;
        }
        if failure.terminal {
            return Err(Error::Stalled(failure.message));
        }
        Ok(Action::requeue(retry))
    }

    /// Deleting a Kustomization: its objects follow `deletionPolicy` (none while suspended).
    async fn cleanup(&self, ks: Arc<Kustomization>, cx: &Cx<Kustomization>) -> Result<(), Error> {
        self.delete_applied(&ks, cx).await
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::Stalled(_) | Error::Invalid(_))
    }
}

impl Kustomizations {
    /// Kustomizations that depend on `namespace/name` run now instead of at their retry interval.
    fn trigger_dependents(&self, namespace: &str, name: &str) {
        for other in self.cache.state() {
            if decide::depends_on(&other, namespace, name) {
                self.dependents
                    .request(&other.name_any(), &other.namespace().unwrap_or_default());
            }
        }
    }
}

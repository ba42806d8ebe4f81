//! The GitRepository controller: turns the revision a GitRepository points at into an artifact
//! and reports it in `status` exactly as Flux's source-controller does.
//!
//! Per reconciliation: read `secretRef`, ask the remote where the reference points (no pack is
//! downloaded when that is still the last artifact's revision), otherwise fetch and check out
//! the commit, archive it into the [`ArtifactStore`], and write `status` with server-side apply
//! (field manager `source-controller`) on the status subresource. Events are emitted only when
//! something changed: `NewArtifact` for a new artifact, the failure reason for a new failure.
//! Success requeues after `interval` ±5%; failures back off exponentially (750 ms .. 15 min).
//!
//! The controller's own status writes come back as watch events; a small schedule per object
//! turns those into no-ops until the object is due, its generation changes, a new
//! `reconcile.fluxcd.io/requestedAt` arrives or something in the process asks through
//! [`Context::trigger`] (image automation after a push, a webhook).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::meta::{READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON};
use gantry_api::source::v1::{
    ARTIFACT_IN_STORAGE_CONDITION, ARTIFACT_OUTDATED_CONDITION, Artifact, FETCH_FAILED_CONDITION,
    GitRepository, GitRepositoryInclude, GitRepositoryStatus, INCLUDE_UNAVAILABLE_CONDITION,
    STORAGE_OPERATION_FAILED_CONDITION, URL_INVALID_REASON,
};
use gantry_runtime::backoff::after_failures;
use gantry_runtime::conditions::{self, Status};
use gantry_runtime::events::{Events, Severity};
use gantry_runtime::metrics::{Metrics, ResourceInfo};
use gantry_runtime::trigger::Trigger;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::artifact::{ArtifactError, ArtifactStore, GIT_REPOSITORY_KIND};
use crate::duration::parse_go_duration;
use crate::git::{self, Credentials, FetchOutcome, FetchRequest, GitError, Reference};
use crate::sourceignore::{IgnoreError, SourceIgnore};

/// Field manager of status writes, Flux's controller name so ownership carries over.
pub const FIELD_MANAGER: &str = "source-controller";
/// Reason of the event emitted for a new artifact.
pub const NEW_ARTIFACT_REASON: &str = "NewArtifact";
/// Reason when storing the artifact failed.
pub const STORAGE_OPERATION_FAILED_REASON: &str = "StorageOperationFailed";

/// Called with (namespace, name) of a GitRepository whenever a new artifact was stored, so other
/// controllers in the process can react at once.
pub type ArtifactHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What every reconciliation shares.
pub struct Context {
    /// Client for the API server.
    pub client: Client,
    /// Where artifacts go.
    pub store: ArtifactStore,
    /// Who the Kubernetes Events come from (`source-controller`).
    pub reporter: Reporter,
    hook: Option<ArtifactHook>,
    events: Option<Events>,
    metrics: Option<Metrics>,
    schedule: Mutex<HashMap<(String, String), Schedule>>,
    // Objects whose fetch thread still runs. libgit2 cannot be given socket timeouts without
    // `unsafe`, so a server that stops answering can hold a thread past `spec.timeout`; one such
    // thread per object at most.
    in_flight: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
    trigger: Trigger<GitRepository>,
    // The trigger's receiving end, until `run_controller` takes it.
    requests: Mutex<Option<futures::stream::BoxStream<'static, ObjectRef<GitRepository>>>>,
    // Objects asked for through the trigger and not reconciled since: they skip the schedule.
    requested: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
}

// When an object is next due, and what it looked like when that was decided.
#[derive(Clone, Debug)]
struct Schedule {
    // A recreated object (new uid) starts afresh.
    uid: Option<String>,
    generation: Option<i64>,
    requested_at: Option<String>,
    due: Instant,
    failures: u32,
}

impl Context {
    /// A context with a `source-controller` event reporter and no hook.
    pub fn new(client: Client, store: ArtifactStore) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (trigger, requests) = Trigger::new();
        Context {
            reporter,
            client,
            store,
            hook: None,
            events: None,
            metrics: None,
            schedule: Mutex::default(),
            in_flight: Arc::default(),
            trigger,
            requests: Mutex::new(Some(requests.boxed())),
            requested: Arc::default(),
        }
    }

    /// Asks the controller (once [`run_controller`] runs) to fetch a GitRepository now, whatever
    /// its interval: `trigger.request(name, namespace)`. Cheap to clone; hand it to whatever
    /// knows the remote changed (image automation after a push, a push webhook).
    pub fn trigger(&self) -> Trigger<GitRepository> {
        self.trigger.clone()
    }

    // Whether the object was asked for through the trigger; clears the request.
    fn take_requested(&self, key: &(String, String)) -> bool {
        self.requested.lock().is_ok_and(|mut set| set.remove(key))
    }

    /// Publishes events through the process's shared [`Events`] (so in-process subscribers such
    /// as alerting see them) instead of a recorder of its own.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    /// Records `gotk_reconcile_duration_seconds` and `gotk_resource_info` into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Calls `hook(namespace, name)` after every new artifact.
    pub fn with_artifact_hook(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Forgets a deleted GitRepository's schedule and removes its artifacts (call on delete
    /// events; there is no finalizer).
    pub fn forget(&self, namespace: &str, name: &str) -> Result<(), ArtifactError> {
        if let Ok(mut map) = self.schedule.lock() {
            map.remove(&(namespace.to_owned(), name.to_owned()));
        }
        if let Ok(mut set) = self.requested.lock() {
            set.remove(&(namespace.to_owned(), name.to_owned()));
        }
        if let Some(metrics) = &self.metrics {
            metrics.remove_resource("GitRepository", namespace, name);
        }
        self.store.remove_all(GIT_REPOSITORY_KIND, namespace, name)
    }

    fn schedule_of(&self, key: &(String, String)) -> Option<Schedule> {
        self.schedule.lock().ok()?.get(key).cloned()
    }

    fn set_schedule(&self, key: (String, String), s: Schedule) {
        if let Ok(mut map) = self.schedule.lock() {
            map.insert(key, s);
        }
    }
}

/// Why a reconciliation failed; the status already says so when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace.
    #[error("GitRepository has no namespace")]
    NoNamespace,
    /// Reading the secret failed.
    #[error("failed to get secret '{namespace}/{name}': {}", api_message(.source))]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The `proxySecretRef` Secret is unusable.
    #[error("{0}")]
    Proxy(String),
    /// The git operation failed.
    #[error("failed to checkout and determine revision: {0}")]
    Git(#[from] GitError),
    /// Reading ignore rules failed.
    #[error("failed to read ignore rules: {0}")]
    Ignore(#[from] IgnoreError),
    /// Storing the artifact failed.
    #[error("failed to store artifact: {0}")]
    Artifact(#[from] ArtifactError),
    /// The spec cannot work; retrying will not help until it changes.
    #[error("{0}")]
    InvalidSpec(String),
    /// An `include` cannot be used (yet): `NotFound`, `NoArtifact` or `IllegalPath`.
    #[error("{message}")]
    Include {
        reason: &'static str,
        message: String,
    },
    /// Writing status failed.
    #[error("failed to patch status: {0}")]
    Status(#[source] kube::Error),
    /// The blocking worker died.
    #[error("fetch worker failed: {0}")]
    Worker(String),
}

impl Error {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Secret { .. } | Error::Proxy(_) => git::AUTHENTICATION_FAILED,
            Error::Git(e) => e.reason(),
            Error::Ignore(_) | Error::Artifact(_) => STORAGE_OPERATION_FAILED_REASON,
            Error::InvalidSpec(_) => URL_INVALID_REASON,
            Error::Include { reason, .. } => reason,
            _ => git::GIT_OPERATION_FAILED,
        }
    }

    // The condition the failure is recorded under.
    fn condition(&self) -> &'static str {
        match self {
            Error::Ignore(_) | Error::Artifact(_) => STORAGE_OPERATION_FAILED_CONDITION,
            Error::Include { .. } => INCLUDE_UNAVAILABLE_CONDITION,
            _ => FETCH_FAILED_CONDITION,
        }
    }
}

/// Reconciles one GitRepository.
pub async fn reconcile(obj: Arc<GitRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    if obj.spec.suspend {
        record_resource(&ctx, &obj, &namespace, &name, None);
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_inner(&obj, &ctx, &namespace, &name).await;
    if let Some(metrics) = &ctx.metrics
        && !matches!(result, Ok(Outcome::NotDue(_)))
    {
        metrics.observe_reconcile("GitRepository", &namespace, &name, started.elapsed());
    }
    result.map(Outcome::action)
}

// Whether the reconciliation did anything (for metrics) and when to come back.
enum Outcome {
    NotDue(Action),
    Done(Action),
}

impl Outcome {
    fn action(self) -> Action {
        match self {
            Outcome::NotDue(a) | Outcome::Done(a) => a,
        }
    }
}

async fn reconcile_inner(
    obj: &Arc<GitRepository>,
    ctx: &Arc<Context>,
    namespace: &str,
    name: &str,
) -> Result<Outcome, Error> {
    let (obj, ctx) = (obj.as_ref(), ctx.as_ref());
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let key = (namespace.clone(), name.clone());
    let generation = obj.metadata.generation;
    let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
    // Our own status write (or any other status-only change) is not a reason to fetch again.
    let previous = ctx.schedule_of(&key).filter(|s| s.uid == obj.metadata.uid);
    let triggered = ctx.take_requested(&key);
    if let Some(s) = &previous
        && !triggered
        && s.generation == generation
        && s.requested_at == requested_at
        && s.due > Instant::now()
    {
        return Ok(Outcome::NotDue(Action::requeue(s.due - Instant::now())));
    }
    let failures = previous.map_or(0, |s| s.failures);

    let interval = match parse_go_duration(&obj.spec.interval) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            let err = Error::InvalidSpec(format!("invalid interval '{}'", obj.spec.interval));
            return stalled(obj, ctx, &namespace, err, requested_at)
                .await
                .map(Outcome::Done);
        }
    };
    if !["http://", "https://", "ssh://"]
        .iter()
        .any(|s| obj.spec.url.starts_with(s))
    {
        let err = Error::InvalidSpec(format!(
            "URL '{}' is not supported: use http://, https:// or ssh://",
            obj.spec.url
        ));
        return stalled(obj, ctx, &namespace, err, requested_at)
            .await
            .map(Outcome::Done);
    }

    // The spec passed the checks that stall it.
    if let Some(metrics) = &ctx.metrics {
        metrics.set_stalled("GitRepository", &namespace, &name, false);
    }
    match run(obj, ctx, &namespace, &name).await {
        Ok(outcome) => {
            let previous = obj.status.clone().unwrap_or_default();
            let artifact = outcome.artifact;
            let status = success_status(
                obj,
                &previous,
                artifact.clone(),
                outcome.included,
                requested_at.clone(),
            );
            patch_status(ctx, obj, &namespace, status).await?;
            record_resource(
                ctx,
                obj,
                &namespace,
                &name,
                Some((true, SUCCEEDED_REASON, &artifact)),
            );
            let changed = previous
                .artifact
                .as_ref()
                .is_none_or(|a| a.revision != artifact.revision || a.digest != artifact.digest);
            if changed {
                tracing::info!(%namespace, %name, revision = %artifact.revision, "stored new artifact");
                // The Kustomizations first: recording the event is one more API round trip.
                if let Some(hook) = &ctx.hook {
                    hook(&namespace, &name);
                }
                let note = match &outcome.subject {
                    Some(s) => format!("stored artifact for commit '{s}'"),
                    None => ready_message(&artifact.revision),
                };
                publish(
                    ctx,
                    obj,
                    Severity::Info,
                    NEW_ARTIFACT_REASON,
                    note,
                    Some(&artifact.revision),
                )
                .await;
            }
            let wait = jittered(obj, interval);
            ctx.set_schedule(
                key,
                Schedule {
                    uid: obj.metadata.uid.clone(),
                    generation,
                    requested_at,
                    due: Instant::now() + wait,
                    failures: 0,
                },
            );
            Ok(Outcome::Done(Action::requeue(wait)))
        }
        Err(err) => {
            let message = err.to_string();
            tracing::warn!(%namespace, %name, reason = err.reason(), "{message}");
            let previous = obj.status.clone().unwrap_or_default();
            let status = failure_status(obj, &previous, &err, requested_at.clone());
            patch_status(ctx, obj, &namespace, status).await?;
            if let Some(artifact) = &previous.artifact {
                record_resource(
                    ctx,
                    obj,
                    &namespace,
                    &name,
                    Some((false, err.reason(), artifact)),
                );
            }
            let was = conditions::get(&previous.conditions, READY_CONDITION);
            if was.is_none_or(|c| c.status != "False" || c.message != message) {
                publish(ctx, obj, Severity::Error, err.reason(), message, None).await;
            }
            ctx.set_schedule(
                key,
                Schedule {
                    uid: obj.metadata.uid.clone(),
                    generation,
                    requested_at,
                    due: Instant::now() + after_failures(failures + 1),
                    failures: failures + 1,
                },
            );
            Err(err)
        }
    }
}

/// Requeues with exponential backoff after a failed reconciliation.
pub fn error_policy(obj: Arc<GitRepository>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    match err {
        Error::InvalidSpec(_) => Action::await_change(),
        _ => {
            let failures = ctx.schedule_of(&key).map_or(1, |s| s.failures.max(1));
            Action::requeue(after_failures(failures))
        }
    }
}

/// Runs the GitRepository controller (in `namespace`, or all namespaces) with up to
/// `concurrency` reconciliations at once, until `shutdown` completes. Requests sent through
/// [`Context::trigger`] are reconciled at once, skipping the interval.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<GitRepository> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let requests = ctx
        .requests
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .unwrap_or_else(|| futures::stream::empty().boxed());
    // Marked before the controller queues the request, so the reconcile it leads to fetches.
    let requested = ctx.requested.clone();
    let requests = requests.inspect(move |r| {
        let key = (r.namespace.clone().unwrap_or_default(), r.name.clone());
        if let Ok(mut set) = requested.lock() {
            set.insert(key);
        }
    });
    Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .reconcile_on(requests)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("GitRepository reconcile: {e}");
            }
        })
        .await;
}

// Clears the object's in-flight mark when the fetch thread ends, however it ends.
struct InFlight {
    set: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.key);
        }
    }
}

struct Stored {
    artifact: Artifact,
    // Artifacts of `spec.include`, in spec order.
    included: Vec<Artifact>,
    // Commit subject when a new commit was fetched.
    subject: Option<String>,
}

async fn run(
    obj: &GitRepository,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Stored, Error> {
    let credentials = match &obj.spec.secret_ref {
        Some(r) => Credentials::from_secret_data(&secret_data(ctx, namespace, &r.name).await?),
        None => Credentials::default(),
    };
    let proxy = match &obj.spec.proxy_secret_ref {
        Some(r) => {
            let data = secret_data(ctx, namespace, &r.name).await?;
            Some(git::auth::proxy_url(&data).map_err(Error::Proxy)?)
        }
        None => None,
    };
    let includes = resolve_includes(obj, ctx, namespace).await?;
    let included: Vec<Artifact> = includes.iter().map(|(_, a)| a.clone()).collect();
    let timeout = parse_go_duration(obj.timeout()).unwrap_or(Duration::from_secs(60));
    let status = obj.status.clone().unwrap_or_default();
    let same_includes = status.observed_include == obj.spec.include
        && status.included_artifacts.len() == included.len()
        && status
            .included_artifacts
            .iter()
            .zip(&included)
            .all(|(a, b)| a.revision == b.revision && a.digest == b.digest);
    // Only a present artifact built with the same rules allows skipping the fetch.
    let current = status.artifact.clone().filter(|a| {
        ctx.store.exists(a)
            && status.observed_ignore == obj.spec.ignore
            && status.observed_sparse_checkout == obj.spec.sparse_checkout
            && status.observed_recurse_submodules == obj.spec.recurse_submodules
            && same_includes
    });
    let request = FetchRequest {
        url: obj.spec.url.clone(),
        reference: Reference::from_spec(obj.spec.r#ref.as_ref()),
        credentials,
        timeout,
        last_revision: current.as_ref().map(|a| a.revision.clone()),
        recurse_submodules: obj.spec.recurse_submodules,
        proxy,
    };
    let store = ctx.store.clone();
    let ignore = obj.spec.ignore.clone();
    let sparse = obj.spec.sparse_checkout.clone();
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let url = obj.spec.url.clone();
    let flight_key = (namespace.clone(), name.clone());
    let newly = ctx
        .in_flight
        .lock()
        .map(|mut set| set.insert(flight_key.clone()))
        .unwrap_or(true);
    if !newly {
        return Err(Error::Git(GitError::Operation {
            url,
            cause: "the previous fetch has not finished yet (the server stopped answering)".into(),
        }));
    }
    let landing = InFlight {
        set: ctx.in_flight.clone(),
        key: flight_key,
    };
    let work = tokio::task::spawn_blocking(move || -> Result<Option<Stored>, Error> {
        let _landing = landing;
        let dir = tempfile::Builder::new()
            .prefix("gantry-git-")
            .tempdir()
            .map_err(|e| Error::Worker(format!("temporary directory: {e}")))?;
        match git::fetch(&request, dir.path())? {
            FetchOutcome::Unchanged { .. } => Ok(None),
            FetchOutcome::Fetched(commit) => {
                for (include, artifact) in &includes {
                    copy_include(&store, include, artifact, dir.path())?;
                }
                // As in Flux, ignore files are read after the includes are in place, and a
                // sparse checkout does not hide what was included.
                let mut keep = sparse.clone();
                if !keep.is_empty() {
                    keep.extend(includes.iter().map(|(i, _)| i.to_path().to_owned()));
                }
                let rules = SourceIgnore::load(dir.path(), ignore.as_deref())?.only_in(&keep);
                let artifact = store.store(
                    GIT_REPOSITORY_KIND,
                    &namespace,
                    &name,
                    dir.path(),
                    &rules,
                    &commit.revision,
                )?;
                Ok(Some(Stored {
                    artifact,
                    included: includes.into_iter().map(|(_, a)| a).collect(),
                    subject: Some(commit.subject),
                }))
            }
        }
    });
    // The blocking side also watches the deadline; this bounds a connect that hangs.
    let grace = Duration::from_secs(5);
    let outcome = match tokio::time::timeout(timeout + grace, work).await {
        Ok(joined) => joined.map_err(|e| Error::Worker(e.to_string()))??,
        Err(_) => return Err(Error::Git(GitError::Timeout { url, timeout })),
    };
    match outcome {
        Some(stored) => Ok(stored),
        None => Ok(Stored {
            // `current` is Some: Unchanged is only returned when a last revision was given.
            artifact: current.ok_or_else(|| Error::Worker("unchanged without artifact".into()))?,
            included,
            subject: None,
        }),
    }
}

async fn secret_data(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets.get(name).await.map_err(|source| Error::Secret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

// The artifacts of `spec.include`, each checked to exist and be stored.
async fn resolve_includes(
    obj: &GitRepository,
    ctx: &Context,
    namespace: &str,
) -> Result<Vec<(GitRepositoryInclude, Artifact)>, Error> {
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), namespace);
    let mut out = Vec::new();
    for include in &obj.spec.include {
        let name = &include.repository.name;
        for path in [include.from_path.as_deref(), Some(include.to_path())] {
            if path.is_some_and(|p| confined(Path::new("/"), p).is_none()) {
                return Err(Error::Include {
                    reason: "IllegalPath",
                    message: format!(
                        "path calculation for include '{name}' failed: '{}' leaves the artifact",
                        path.unwrap_or_default()
                    ),
                });
            }
        }
        let dep = api.get(name).await.map_err(|e| Error::Include {
            reason: "NotFound",
            message: format!(
                "could not get resource for include '{name}': {}",
                api_message(&e)
            ),
        })?;
        let artifact = dep
            .status
            .and_then(|s| s.artifact)
            .filter(|a| ctx.store.exists(a))
            .ok_or_else(|| Error::Include {
                reason: "NoArtifact",
                message: format!("no artifact available for include '{name}'"),
            })?;
        out.push((include.clone(), artifact));
    }
    Ok(out)
}

// Copies `fromPath` of an included artifact to `toPath` of the checkout in `dir`.
fn copy_include(
    store: &ArtifactStore,
    include: &GitRepositoryInclude,
    artifact: &Artifact,
    dir: &Path,
) -> Result<(), Error> {
    let unpacked = store.open(artifact)?;
    let illegal = |p: &str| Error::Include {
        reason: "IllegalPath",
        message: format!(
            "path calculation for include '{}' failed: '{p}' leaves the artifact",
            include.repository.name
        ),
    };
    let from_path = include.from_path.as_deref().unwrap_or("");
    let from = confined(unpacked.path(), from_path).ok_or_else(|| illegal(from_path))?;
    let to = confined(dir, include.to_path()).ok_or_else(|| illegal(include.to_path()))?;
    let io = |source| {
        Error::Artifact(ArtifactError::Storage {
            path: to.clone(),
            source,
        })
    };
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(io)?;
    }
    copy_tree(&from, &to).map_err(io)
}

// `root` joined with a relative path that must not leave it (`..` beyond the root, absolute).
fn confined(root: &Path, rel: &str) -> Option<std::path::PathBuf> {
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
                out.pop();
            }
            p => {
                depth += 1;
                out.push(p);
            }
        }
    }
    Some(out)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

// What the API server said, as `kubectl` prints it (`secrets "x" not found`).
fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn ready_message(revision: &str) -> String {
    format!("stored artifact for revision '{revision}'")
}

fn success_status(
    obj: &GitRepository,
    previous: &GitRepositoryStatus,
    artifact: Artifact,
    included: Vec<Artifact>,
    requested_at: Option<String>,
) -> GitRepositoryStatus {
    let generation = obj.metadata.generation;
    let message = ready_message(&artifact.revision);
    let mut conds = previous.conditions.clone();
    for gone in [
        FETCH_FAILED_CONDITION,
        STORAGE_OPERATION_FAILED_CONDITION,
        INCLUDE_UNAVAILABLE_CONDITION,
        ARTIFACT_OUTDATED_CONDITION,
    ] {
        conditions::remove(&mut conds, gone);
    }
    conditions::set(
        &mut conds,
        ARTIFACT_IN_STORAGE_CONDITION,
        Status::True,
        SUCCEEDED_REASON,
        &message,
        generation,
    );
    // Ready=True; Reconciling and Stalled removed (kstatus).
    conditions::succeeded(&mut conds, generation, SUCCEEDED_REASON, &message);
    GitRepositoryStatus {
        observed_generation: generation,
        conditions: conds,
        artifact: Some(artifact),
        observed_ignore: obj.spec.ignore.clone(),
        observed_sparse_checkout: obj.spec.sparse_checkout.clone(),
        observed_recurse_submodules: obj.spec.recurse_submodules,
        observed_include: obj.spec.include.clone(),
        included_artifacts: included,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    }
}

fn failure_status(
    obj: &GitRepository,
    previous: &GitRepositoryStatus,
    err: &Error,
    requested_at: Option<String>,
) -> GitRepositoryStatus {
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let reason = err.reason();
    let mut conds = previous.conditions.clone();
    conditions::set(
        &mut conds,
        err.condition(),
        Status::True,
        reason,
        &message,
        generation,
    );
    // Ready=False and, as it will be retried, Reconciling=True (ProgressingWithRetry).
    conditions::failed(&mut conds, generation, reason, &message, false);
    GitRepositoryStatus {
        observed_generation: previous.observed_generation.or(Some(-1)),
        conditions: conds,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    }
}

async fn stalled(
    obj: &GitRepository,
    ctx: &Context,
    namespace: &str,
    err: Error,
    requested_at: Option<String>,
) -> Result<Action, Error> {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let reason = err.reason();
    let mut conds = previous.conditions.clone();
    // Ready=False, Stalled=True: only a change of the spec helps.
    conditions::failed(&mut conds, generation, reason, &message, true);
    let status = GitRepositoryStatus {
        observed_generation: generation,
        conditions: conds,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    };
    patch_status(ctx, obj, namespace, status).await?;
    if let Some(metrics) = &ctx.metrics {
        metrics.set_stalled("GitRepository", namespace, &obj.name_any(), true);
    }
    let was = conditions::get(&previous.conditions, READY_CONDITION);
    if was.is_none_or(|c| c.message != message) {
        publish(ctx, obj, Severity::Error, reason, message, None).await;
    }
    Ok(Action::await_change())
}

async fn patch_status(
    ctx: &Context,
    obj: &GitRepository,
    namespace: &str,
    status: GitRepositoryStatus,
) -> Result<(), Error> {
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), namespace);
    gantry_runtime::status::apply(&api, &obj.name_any(), FIELD_MANAGER, &status)
        .await
        .map_err(Error::Status)?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    obj: &GitRepository,
    severity: Severity,
    reason: &str,
    note: String,
    revision: Option<&str>,
) {
    if let Some(events) = &ctx.events {
        let metadata = revision
            .map(|r| ("source.toolkit.fluxcd.io/revision".to_owned(), r.to_owned()))
            .into_iter()
            .collect();
        events
            .publish(obj.object_ref(&()), severity, reason, &note, metadata)
            .await;
        return;
    }
    let event = Event {
        type_: match severity {
            Severity::Info => EventType::Normal,
            Severity::Error => EventType::Warning,
        },
        reason: reason.to_owned(),
        // The events API caps notes at 1 kB.
        note: Some(truncate(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    // A fresh recorder per event: kube's recorder folds events that differ only in their note
    // into one series, which would hide each new revision's message. Events are only emitted on
    // change, so there is nothing to deduplicate.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!("publishing event {reason}: {e}");
    }
}

// `gotk_resource_info` / `gotk_reconcile_condition` for the object; `state` is (ready, reason,
// artifact), `None` while suspended (last known state kept, marked suspended).
fn record_resource(
    ctx: &Context,
    obj: &GitRepository,
    namespace: &str,
    name: &str,
    state: Option<(bool, &str, &Artifact)>,
) {
    let Some(metrics) = &ctx.metrics else { return };
    let status = obj.status.clone().unwrap_or_default();
    let ready = conditions::get(&status.conditions, READY_CONDITION);
    let (ready, reason, revision) = match state {
        Some((ok, reason, artifact)) => (
            if ok { "True" } else { "False" }.to_owned(),
            reason.to_owned(),
            artifact.revision.clone(),
        ),
        None => (
            ready.map_or("Unknown".into(), |c| c.status.clone()),
            ready.map_or(String::new(), |c| c.reason.clone()),
            status.artifact.map(|a| a.revision).unwrap_or_default(),
        ),
    };
    metrics.set_resource(&ResourceInfo {
        group: "source.toolkit.fluxcd.io".into(),
        kind: "GitRepository".into(),
        version: "v1".into(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ready,
        reason,
        suspended: obj.spec.suspend,
        revision,
    });
}

// The interval with Flux's ±5% jitter, seeded per object and per run.
fn jittered(obj: &GitRepository, interval: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let seed = RandomState::new().hash_one((obj.metadata.uid.as_deref(), Instant::now()));
    gantry_runtime::backoff::jittered(interval, seed)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn repo() -> GitRepository {
        let mut r = GitRepository::new("app", Default::default());
        r.metadata.generation = Some(3);
        r
    }

    fn artifact(revision: &str) -> Artifact {
        Artifact {
            path: "gitrepository/ns/app/x.tar.gz".into(),
            url: "http://x/gitrepository/ns/app/x.tar.gz".into(),
            revision: revision.into(),
            digest: "sha256:00".into(),
            last_update_time: Time(jiff::Timestamp::now()),
            size: Some(1),
            metadata: Default::default(),
        }
    }

    fn types(status: &GitRepositoryStatus) -> Vec<(&str, &str, &str)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn failure_then_success_gives_flux_conditions() {
        let obj = repo();
        let err = Error::Git(GitError::Authentication {
            url: "http://x".into(),
            cause: "401".into(),
        });
        let failed = failure_status(&obj, &Default::default(), &err, Some("t1".into()));
        assert_eq!(
            types(&failed),
            [
                ("Ready", "False", "AuthenticationFailed"),
                ("FetchFailed", "True", "AuthenticationFailed"),
                ("Reconciling", "True", "ProgressingWithRetry"),
            ]
        );
        assert_eq!(failed.observed_generation, Some(-1));
        assert_eq!(failed.last_handled_reconcile_at.as_deref(), Some("t1"));
        assert!(
            failed.conditions[0]
                .message
                .starts_with("failed to checkout and determine revision: authentication failed")
        );

        let ok = success_status(&obj, &failed, artifact("main@sha1:abc"), vec![], None);
        assert_eq!(
            types(&ok),
            [
                ("Ready", "True", "Succeeded"),
                ("ArtifactInStorage", "True", "Succeeded"),
            ]
        );
        assert_eq!(
            ok.conditions[0].message,
            "stored artifact for revision 'main@sha1:abc'"
        );
        assert_eq!(ok.observed_generation, Some(3));
        assert_eq!(ok.last_handled_reconcile_at.as_deref(), Some("t1"), "kept");
    }

    #[test]
    fn include_paths_stay_inside() {
        let root = Path::new("/r");
        assert_eq!(confined(root, "a/b"), Some("/r/a/b".into()));
        assert_eq!(confined(root, "./a/../b/"), Some("/r/b".into()));
        assert_eq!(confined(root, ""), Some("/r".into()));
        assert_eq!(confined(root, "../x"), None);
        assert_eq!(confined(root, "a/../../x"), None);
        assert_eq!(
            confined(root, "/etc"),
            Some("/r/etc".into()),
            "absolute is taken as relative"
        );
    }

    #[test]
    fn a_failure_keeps_the_last_artifact_in_storage() {
        let obj = repo();
        let ok = success_status(
            &obj,
            &Default::default(),
            artifact("main@sha1:abc"),
            vec![],
            None,
        );
        let err = Error::Git(GitError::Operation {
            url: "http://x".into(),
            cause: "connection refused".into(),
        });
        let failed = failure_status(&obj, &ok, &err, None);
        assert!(types(&failed).contains(&("ArtifactInStorage", "True", "Succeeded")));
        assert_eq!(failed.artifact, ok.artifact);
        assert_eq!(failed.observed_generation, Some(3));
    }
}

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
//! turns those into no-ops until the object is due, its generation changes or a new
//! `reconcile.fluxcd.io/requestedAt` arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::meta::{
    PROGRESSING_WITH_RETRY_REASON, READY_CONDITION, RECONCILE_REQUEST_ANNOTATION,
    RECONCILING_CONDITION, STALLED_CONDITION, SUCCEEDED_REASON,
};
use gantry_api::source::v1::{
    ARTIFACT_IN_STORAGE_CONDITION, ARTIFACT_OUTDATED_CONDITION, Artifact, FETCH_FAILED_CONDITION,
    GitRepository, GitRepositoryStatus, STORAGE_OPERATION_FAILED_CONDITION, URL_INVALID_REASON,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
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

const BACKOFF_MIN: Duration = Duration::from_millis(750);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

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
    schedule: Mutex<HashMap<(String, String), Schedule>>,
}

// When an object is next due, and what it looked like when that was decided.
#[derive(Clone, Debug)]
struct Schedule {
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
        Context {
            reporter,
            client,
            store,
            hook: None,
            schedule: Mutex::default(),
        }
    }

    /// Calls `hook(namespace, name)` after every new artifact.
    pub fn with_artifact_hook(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
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
    #[error("failed to get secret '{namespace}/{name}': {source}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
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
            Error::Secret { .. } => git::AUTHENTICATION_FAILED,
            Error::Git(e) => e.reason(),
            Error::Ignore(_) | Error::Artifact(_) => STORAGE_OPERATION_FAILED_REASON,
            Error::InvalidSpec(_) => URL_INVALID_REASON,
            _ => git::GIT_OPERATION_FAILED,
        }
    }

    // The condition the failure is recorded under.
    fn condition(&self) -> &'static str {
        match self {
            Error::Ignore(_) | Error::Artifact(_) => STORAGE_OPERATION_FAILED_CONDITION,
            _ => FETCH_FAILED_CONDITION,
        }
    }
}

/// Reconciles one GitRepository.
pub async fn reconcile(obj: Arc<GitRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    if obj.spec.suspend {
        return Ok(Action::await_change());
    }
    let key = (namespace.clone(), name.clone());
    let generation = obj.metadata.generation;
    let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
    // Our own status write (or any other status-only change) is not a reason to fetch again.
    if let Some(s) = ctx.schedule_of(&key)
        && s.generation == generation
        && s.requested_at == requested_at
        && s.due > Instant::now()
    {
        return Ok(Action::requeue(s.due - Instant::now()));
    }
    let failures = ctx.schedule_of(&key).map_or(0, |s| s.failures);

    let interval = match parse_go_duration(&obj.spec.interval) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            let err = Error::InvalidSpec(format!("invalid interval '{}'", obj.spec.interval));
            return stalled(&obj, &ctx, &namespace, err, requested_at).await;
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
        return stalled(&obj, &ctx, &namespace, err, requested_at).await;
    }

    match run(&obj, &ctx, &namespace, &name).await {
        Ok(outcome) => {
            let previous = obj.status.clone().unwrap_or_default();
            let artifact = outcome.artifact;
            let status = success_status(&obj, &previous, artifact.clone(), requested_at.clone());
            patch_status(&ctx, &obj, &namespace, status).await?;
            let changed = previous
                .artifact
                .as_ref()
                .is_none_or(|a| a.revision != artifact.revision || a.digest != artifact.digest);
            if changed {
                tracing::info!(%namespace, %name, revision = %artifact.revision, "stored new artifact");
                let note = match &outcome.subject {
                    Some(s) => format!("stored artifact for commit '{s}'"),
                    None => ready_message(&artifact.revision),
                };
                publish(&ctx, &obj, EventType::Normal, NEW_ARTIFACT_REASON, note).await;
                if let Some(hook) = &ctx.hook {
                    hook(&namespace, &name);
                }
            }
            let wait = jitter(interval);
            ctx.set_schedule(
                key,
                Schedule {
                    generation,
                    requested_at,
                    due: Instant::now() + wait,
                    failures: 0,
                },
            );
            Ok(Action::requeue(wait))
        }
        Err(err) => {
            let message = err.to_string();
            tracing::warn!(%namespace, %name, reason = err.reason(), "{message}");
            let previous = obj.status.clone().unwrap_or_default();
            let status = failure_status(&obj, &previous, &err, requested_at.clone());
            patch_status(&ctx, &obj, &namespace, status).await?;
            let was = find(&previous.conditions, READY_CONDITION);
            if was.is_none_or(|c| c.status != "False" || c.message != message) {
                publish(&ctx, &obj, EventType::Warning, err.reason(), message).await;
            }
            ctx.set_schedule(
                key,
                Schedule {
                    generation,
                    requested_at,
                    due: Instant::now() + backoff(failures + 1),
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
            Action::requeue(backoff(failures))
        }
    }
}

/// Runs the GitRepository controller on all namespaces until the stream ends (shutdown).
pub async fn run_controller(ctx: Arc<Context>) {
    let api: Api<GitRepository> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("GitRepository reconcile: {e}");
            }
        })
        .await;
}

struct Stored {
    artifact: Artifact,
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
        Some(r) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let secret = secrets.get(&r.name).await.map_err(|source| Error::Secret {
                namespace: namespace.to_owned(),
                name: r.name.clone(),
                source,
            })?;
            let data: std::collections::BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            Credentials::from_secret_data(&data)
        }
        None => Credentials::default(),
    };
    let timeout = parse_go_duration(obj.timeout()).unwrap_or(Duration::from_secs(60));
    let status = obj.status.clone().unwrap_or_default();
    // Only a present artifact built with the same ignore rules allows skipping the fetch.
    let current = status
        .artifact
        .clone()
        .filter(|a| ctx.store.exists(a) && status.observed_ignore == obj.spec.ignore);
    let request = FetchRequest {
        url: obj.spec.url.clone(),
        reference: Reference::from_spec(obj.spec.r#ref.as_ref()),
        credentials,
        timeout,
        last_revision: current.as_ref().map(|a| a.revision.clone()),
    };
    let store = ctx.store.clone();
    let ignore = obj.spec.ignore.clone();
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let url = obj.spec.url.clone();
    let work = tokio::task::spawn_blocking(move || -> Result<Option<Stored>, Error> {
        let dir = tempfile::Builder::new()
            .prefix("gantry-git-")
            .tempdir()
            .map_err(|e| Error::Worker(format!("temporary directory: {e}")))?;
        match git::fetch(&request, dir.path())? {
            FetchOutcome::Unchanged { .. } => Ok(None),
            FetchOutcome::Fetched(commit) => {
                let rules = SourceIgnore::load(dir.path(), ignore.as_deref())?;
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
            subject: None,
        }),
    }
}

fn ready_message(revision: &str) -> String {
    format!("stored artifact for revision '{revision}'")
}

fn success_status(
    obj: &GitRepository,
    previous: &GitRepositoryStatus,
    artifact: Artifact,
    requested_at: Option<String>,
) -> GitRepositoryStatus {
    let generation = obj.metadata.generation;
    let message = ready_message(&artifact.revision);
    let mut conditions = previous.conditions.clone();
    for gone in [
        RECONCILING_CONDITION,
        STALLED_CONDITION,
        FETCH_FAILED_CONDITION,
        STORAGE_OPERATION_FAILED_CONDITION,
        ARTIFACT_OUTDATED_CONDITION,
    ] {
        conditions.retain(|c| c.type_ != gone);
    }
    set(
        &mut conditions,
        READY_CONDITION,
        true,
        SUCCEEDED_REASON,
        &message,
        generation,
    );
    set(
        &mut conditions,
        ARTIFACT_IN_STORAGE_CONDITION,
        true,
        SUCCEEDED_REASON,
        &message,
        generation,
    );
    GitRepositoryStatus {
        observed_generation: generation,
        conditions: order(conditions),
        artifact: Some(artifact),
        observed_ignore: obj.spec.ignore.clone(),
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
    let mut conditions = previous.conditions.clone();
    conditions.retain(|c| c.type_ != STALLED_CONDITION);
    set(
        &mut conditions,
        err.condition(),
        true,
        reason,
        &message,
        generation,
    );
    set(
        &mut conditions,
        READY_CONDITION,
        false,
        reason,
        &message,
        generation,
    );
    set(
        &mut conditions,
        RECONCILING_CONDITION,
        true,
        PROGRESSING_WITH_RETRY_REASON,
        &message,
        generation,
    );
    GitRepositoryStatus {
        observed_generation: previous.observed_generation.or(Some(-1)),
        conditions: order(conditions),
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
    let mut conditions = previous.conditions.clone();
    conditions.retain(|c| c.type_ != RECONCILING_CONDITION);
    set(
        &mut conditions,
        STALLED_CONDITION,
        true,
        reason,
        &message,
        generation,
    );
    set(
        &mut conditions,
        READY_CONDITION,
        false,
        reason,
        &message,
        generation,
    );
    let status = GitRepositoryStatus {
        observed_generation: generation,
        conditions: order(conditions),
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    };
    patch_status(ctx, obj, namespace, status).await?;
    let was = find(&previous.conditions, READY_CONDITION);
    if was.is_none_or(|c| c.message != message) {
        publish(ctx, obj, EventType::Warning, reason, message).await;
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
    let body = serde_json::json!({
        "apiVersion": GitRepository::api_version(&()),
        "kind": GitRepository::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

async fn publish(ctx: &Context, obj: &GitRepository, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
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

fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

// Sets a condition; the transition time moves only when the status flips.
fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    let now = Time(jiff::Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

// Flux lists the summary conditions first.
fn order(mut conditions: Vec<Condition>) -> Vec<Condition> {
    let rank = |t: &str| match t {
        READY_CONDITION => 0,
        RECONCILING_CONDITION => 1,
        STALLED_CONDITION => 2,
        _ => 3,
    };
    conditions.sort_by_key(|c| rank(&c.type_));
    conditions
}

/// `interval` ±5%, so that many objects created together do not fetch in lockstep.
pub fn jitter(interval: Duration) -> Duration {
    // A hash of the current time is random enough here and needs no RNG dependency.
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(std::time::SystemTime::now()) % 10_001;
    let factor = 0.95 + (r as f64 / 10_000.0) * 0.10;
    interval.mul_f64(factor)
}

/// 750 ms doubled per consecutive failure, at most 15 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_five_percent() {
        for _ in 0..200 {
            let d = jitter(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(95) && d <= Duration::from_secs(105),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_fifteen_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(750));
        assert_eq!(backoff(2), Duration::from_millis(1500));
        assert_eq!(backoff(3), Duration::from_secs(3));
        assert_eq!(backoff(40), Duration::from_secs(900));
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut cs = Vec::new();
        set(&mut cs, READY_CONDITION, false, "A", "a", Some(1));
        let first = cs[0].last_transition_time.clone();
        std::thread::sleep(Duration::from_millis(5));
        set(&mut cs, READY_CONDITION, false, "B", "b", Some(2));
        assert_eq!(cs[0].last_transition_time, first);
        assert_eq!(
            (cs[0].reason.as_str(), cs[0].observed_generation),
            ("B", Some(2))
        );
        set(&mut cs, READY_CONDITION, true, "C", "c", Some(2));
        assert_ne!(cs[0].last_transition_time, first);
    }
}

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
//! Deleting a GitRepository removes its artifacts (the harness's finalizer calls
//! [`Reconciler::cleanup`]). The harness ([`gantry_runtime::controller`]) owns scheduling,
//! finalizer, backoff, metrics and events; this file only fetches, stores and reports.

mod include;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_api::meta::{READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON};
use gantry_api::source::v1::{
    ARTIFACT_IN_STORAGE_CONDITION, ARTIFACT_OUTDATED_CONDITION, Artifact, FETCH_FAILED_CONDITION,
    GitRepository, GitRepositoryStatus, INCLUDE_UNAVAILABLE_CONDITION,
    STORAGE_OPERATION_FAILED_CONDITION, URL_INVALID_REASON,
};
use gantry_runtime::conditions::{self, Status};
#[cfg(doc)]
use gantry_runtime::controller::Controller;
use gantry_runtime::controller::{Cx, Reconciler, jittered};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};

use crate::artifact::{ArtifactError, ArtifactStore, GIT_REPOSITORY_KIND};
use crate::git::{self, Credentials, FetchOutcome, FetchRequest, GitError, Reference};
use crate::sourceignore::{IgnoreError, SourceIgnore};
use gantry_api::meta::parse_duration;

/// Field manager of status writes, Flux's controller name so ownership carries over.
pub const FIELD_MANAGER: &str = "source-controller";
/// Reason of the event emitted for a new artifact.
pub const NEW_ARTIFACT_REASON: &str = "NewArtifact";
/// Reason when storing the artifact failed.
pub const STORAGE_OPERATION_FAILED_REASON: &str = "StorageOperationFailed";

/// The GitRepository controller's domain steps. Run it on the harness:
/// `Controller::new(GitRepositories::new(store), shared)`; the controller's
/// [`Controller::trigger`] fetches an object now, whatever its interval (image automation after
/// a push, a webhook).
pub struct GitRepositories {
    store: ArtifactStore,
    // Objects whose fetch thread still runs. libgit2 cannot be given socket timeouts without
    // `unsafe`, so a server that stops answering can hold a thread past `spec.timeout`; one such
    // thread per object at most.
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
    stored: Option<Trigger<GitRepository>>,
}

impl GitRepositories {
    /// Stores artifacts in `store`.
    pub fn new(store: ArtifactStore) -> Self {
        Self {
            store,
            in_flight: Arc::default(),
            stored: None,
        }
    }

    /// Requests `trigger` with each GitRepository whose artifact was just stored: the in-process
    /// hand-off to the Kustomizations that use it (the Kustomization controller maps it).
    pub fn notify_stored(mut self, trigger: Trigger<GitRepository>) -> Self {
        self.stored = Some(trigger);
        self
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

impl Reconciler for GitRepositories {
    type Object = GitRepository;
    type Error = Error;
    const CONTROLLER: &'static str = FIELD_MANAGER;

    async fn reconcile(
        &self,
        obj: Arc<GitRepository>,
        cx: &Cx<GitRepository>,
    ) -> Result<Action, Error> {
        let obj = obj.as_ref();
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
        let interval = match parse_duration(&obj.spec.interval) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                let err = Error::InvalidSpec(format!("invalid interval '{}'", obj.spec.interval));
                return Err(stalled(obj, cx, err, requested_at).await);
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
            return Err(stalled(obj, cx, err, requested_at).await);
        }

        let previous = obj.status.clone().unwrap_or_default();
        match self.fetch(obj, cx, &namespace, &name).await {
            Ok(outcome) => {
                let artifact = outcome.artifact;
                let status = success_status(
                    obj,
                    &previous,
                    artifact.clone(),
                    outcome.included,
                    requested_at,
                );
                cx.write_status(obj, &status).await.map_err(Error::Status)?;
                let changed = previous
                    .artifact
                    .as_ref()
                    .is_none_or(|a| a.revision != artifact.revision || a.digest != artifact.digest);
                // Stored now (a fetch happened) even if the revision is the same: a new leader's
                // empty store, which a Kustomization may be waiting on.
                if changed || outcome.subject.is_some() {
                    // The Kustomizations first: recording the event is one more API round trip.
                    if let Some(stored) = &self.stored {
                        stored.request(&name, &namespace);
                    }
                }
                if changed {
                    tracing::info!(%namespace, %name, revision = %artifact.revision, "stored new artifact");
                    let note = match &outcome.subject {
                        Some(s) => format!("stored artifact for commit '{s}'"),
                        None => ready_message(&artifact.revision),
                    };
                    cx.event(
                        obj,
                        Severity::Info,
                        NEW_ARTIFACT_REASON,
                        &note,
                        Some(&artifact.revision),
                    )
                    .await;
                }
                Ok(Action::requeue(jittered(obj, interval)))
            }
            Err(err) => {
                let status = failure_status(obj, &previous, &err, requested_at);
                cx.report_failure(obj, &status, err.reason(), &err.to_string())
                    .await
                    .map_err(Error::Status)?;
                Err(err)
            }
        }
    }

    async fn cleanup(&self, obj: Arc<GitRepository>, _cx: &Cx<GitRepository>) -> Result<(), Error> {
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        self.store
            .remove_all(GIT_REPOSITORY_KIND, &namespace, &obj.name_any())
            .map_err(Error::Artifact)
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::InvalidSpec(_))
    }
}

// Clears the object's in-flight mark when the fetch thread ends, however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

struct Stored {
    artifact: Artifact,
    // Artifacts of `spec.include`, in spec order.
    included: Vec<Artifact>,
    // Commit subject when a new commit was fetched.
    subject: Option<String>,
}

impl GitRepositories {
    async fn fetch(
        &self,
        obj: &GitRepository,
        cx: &Cx<GitRepository>,
        namespace: &str,
        name: &str,
    ) -> Result<Stored, Error> {
        let client = cx.client();
        let credentials = match &obj.spec.secret_ref {
            Some(r) => {
                Credentials::from_secret_data(&secret_data(client, namespace, &r.name).await?)
            }
            None => Credentials::default(),
        };
        let proxy = match &obj.spec.proxy_secret_ref {
            Some(r) => {
                let data = secret_data(client, namespace, &r.name).await?;
                Some(git::auth::proxy_url(&data).map_err(Error::Proxy)?)
            }
            None => None,
        };
        let includes = include::resolve_includes(obj, client, &self.store, namespace).await?;
        let included: Vec<Artifact> = includes.iter().map(|(_, a)| a.clone()).collect();
        let timeout = parse_duration(obj.timeout()).unwrap_or(Duration::from_secs(60));
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
            self.store.exists(a)
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
        let store = self.store.clone();
        let ignore = obj.spec.ignore.clone();
        let sparse = obj.spec.sparse_checkout.clone();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        let url = obj.spec.url.clone();
        let flight_key = (namespace.clone(), name.clone());
        let newly = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(flight_key.clone());
        if !newly {
            return Err(Error::Git(GitError::Operation {
                url,
                cause: "the previous fetch has not finished yet (the server stopped answering)"
                    .into(),
            }));
        }
        let landing = InFlight {
            set: self.in_flight.clone(),
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
                        include::copy_include(&store, include, artifact, dir.path())?;
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
                artifact: current
                    .ok_or_else(|| Error::Worker("unchanged without artifact".into()))?,
                included,
                subject: None,
            }),
        }
    }
}

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Error> {
    gantry_runtime::secrets::data(client, namespace, name)
        .await
        .map_err(|source| Error::Secret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })
}

pub(super) use gantry_runtime::secrets::api_message;

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

/// The conditions after a failed reconcile, shared by every source kind. A failure that will be
/// retried (`condition`: its own condition, e.g. `FetchFailed`) sets that condition, Ready=False
/// and Reconciling=True (ProgressingWithRetry); a stalled one (`None`: only a spec change helps)
/// sets Ready=False and Stalled=True.
pub(crate) fn failed_conditions(
    previous: &[Condition],
    generation: Option<i64>,
    condition: Option<&str>,
    reason: &str,
    message: &str,
) -> Vec<Condition> {
    let mut conds = previous.to_vec();
    if let Some(condition) = condition {
        conditions::set(
            &mut conds,
            condition,
            Status::True,
            reason,
            message,
            generation,
        );
    }
    conditions::failed(&mut conds, generation, reason, message, condition.is_none());
    conds
}

fn failure_status(
    obj: &GitRepository,
    previous: &GitRepositoryStatus,
    err: &Error,
    requested_at: Option<String>,
) -> GitRepositoryStatus {
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let conds = failed_conditions(
        &previous.conditions,
        generation,
        Some(err.condition()),
        err.reason(),
        &message,
    );
    GitRepositoryStatus {
        observed_generation: previous.observed_generation.or(Some(-1)),
        conditions: conds,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    }
}

// Reports a spec that cannot work (Ready=False, Stalled=True: only a change helps) and hands
// the error back for the harness, which then waits for a change.
async fn stalled(
    obj: &GitRepository,
    cx: &Cx<GitRepository>,
    err: Error,
    requested_at: Option<String>,
) -> Error {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let reason = err.reason();
    let conds = failed_conditions(&previous.conditions, generation, None, reason, &message);
    let status = GitRepositoryStatus {
        observed_generation: generation,
        conditions: conds,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    };
    if let Err(e) = cx.write_status(obj, &status).await {
        return Error::Status(e);
    }
    let was = conditions::get(&previous.conditions, READY_CONDITION);
    if was.is_none_or(|c| c.message != message) {
        cx.event(obj, Severity::Error, reason, &message, None).await;
    }
    err
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

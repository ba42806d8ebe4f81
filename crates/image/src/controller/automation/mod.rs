//! The ImageUpdateAutomation controller: writes the ImagePolicies' latest images into the
//! setter markers of a git repository, commits and pushes, as Flux's image-automation-controller.
//!
//! A run checks out `git.checkout.ref` (else the GitRepository's `ref`) with the GitRepository's
//! credentials, applies the markers under `update.path` with the policies of the automation's
//! namespace (narrowed by `policySelector`), and, when a scalar changed, commits with the
//! author and the rendered `messageTemplate` and pushes to `git.push.branch` / `refspec`. A lost
//! race (someone pushed first) is redone on the new tip at once, never force-pushed.
//!
//! Runs happen on `interval`, on a spec change or `reconcile.fluxcd.io/requestedAt`, and at once
//! when a policy's `latestRef` changes: the policy controller's trigger, mapped to the
//! automations of its namespace by [`in_namespace_of`]. After a push, the GitRepositories that
//! follow the pushed branch are asked to fetch at once (the trigger given to
//! [`ImageUpdateAutomations::notify_pushed`]), so the new commit reaches the Kustomizations
//! without waiting for an interval.
//!
//! Status as Flux writes it: `lastAutomationRunTime`, `lastPushCommit`, `lastPushTime`,
//! `observedPolicies`, `observedSourceRevision`; Ready `Succeeded` with `pushed commit '<short>'
//! to branch '<branch>'` or `repository up-to-date`. A file that is not valid YAML is left
//! untouched and named in a `Ready=False` (`UpdateFailed`) message, while the other files are
//! still committed. Work trees live under `<workdirs>/<namespace>/<name>/`, removed when the
//! object is deleted ([`Reconciler::cleanup`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gantry_api::image::v1::{
    GIT_OPERATION_FAILED_REASON, ImagePolicy, ImageUpdateAutomation, ImageUpdateAutomationStatus,
    SOURCE_MANAGER_FAILED_REASON, UPDATE_FAILED_REASON,
};
use gantry_api::meta::{READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON};
use gantry_api::source::v1::GitRepository;
use gantry_runtime::conditions;
use gantry_runtime::controller::{Cx, Reconciler};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use gantry_source::git::Reference;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use run::Report;

mod run;
mod template;

pub use run::selector_string;
pub use template::template_data;

/// Field manager of status writes and reporter of events: Flux's controller name.
pub const FIELD_MANAGER: &str = "image-automation-controller";

/// The ImageUpdateAutomation controller's domain steps; run it with
/// `Controller::new(ImageUpdateAutomations::new(workdirs), shared)`.
pub struct ImageUpdateAutomations {
    workdirs: PathBuf,
    pushed: Option<Trigger<GitRepository>>,
}

impl ImageUpdateAutomations {
    /// Work trees go under `workdirs` (e.g. the storage path).
    pub fn new(workdirs: impl Into<PathBuf>) -> Self {
        Self {
            workdirs: workdirs.into(),
            pushed: None,
        }
    }

    /// After a push, requests `trigger` (the GitRepository controller's) with the automation's
    /// source and every GitRepository of its namespace following the pushed branch.
    pub fn notify_pushed(mut self, trigger: Trigger<GitRepository>) -> Self {
        self.pushed = Some(trigger);
        self
    }

    /// Where the work trees of `namespace/name` are made.
    pub fn workdir_of(&self, namespace: &str, name: &str) -> PathBuf {
        self.workdirs.join(namespace).join(name)
    }
}

/// Why a run failed; the status already says so when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ImageUpdateAutomation has no namespace")]
    NoNamespace,
    /// The spec cannot work as written; not retried until it changes.
    #[error("{message}")]
    InvalidSpec {
        reason: &'static str,
        message: String,
    },
    /// The GitRepository or its secrets could not be read.
    #[error("{0}")]
    Source(String),
    /// Listing the policies failed.
    #[error("listing ImagePolicies: {0}")]
    Policies(#[source] kube::Error),
    /// Checkout, commit or push failed.
    #[error("{message}")]
    Git {
        reason: &'static str,
        message: String,
    },
    /// Removing the work trees of a deleted object failed.
    #[error("removing the work trees: {0}")]
    Cleanup(#[source] std::io::Error),
    /// Writing status failed.
    #[error("failed to update the object: {0}")]
    Kube(#[source] kube::Error),
}

impl Error {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { reason, .. } | Error::Git { reason, .. } => reason,
            Error::Source(_) | Error::Policies(_) => SOURCE_MANAGER_FAILED_REASON,
            _ => GIT_OPERATION_FAILED_REASON,
        }
    }
}

impl Reconciler for ImageUpdateAutomations {
    type Object = ImageUpdateAutomation;
    type Error = Error;
    const CONTROLLER: &'static str = FIELD_MANAGER;

    async fn reconcile(
        &self,
        obj: Arc<ImageUpdateAutomation>,
        cx: &Cx<ImageUpdateAutomation>,
    ) -> Result<Action, Error> {
        let obj = obj.as_ref();
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
        let previous = obj.status.clone().unwrap_or_default();
        let report = match self.run(obj, cx.client(), &namespace).await {
            Ok(report) => report,
            Err(err) => {
                let status = failed_status(obj, &err, requested_at);
                cx.report_failure(obj, &status, err.reason(), &err.to_string())
                    .await
                    .map_err(Error::Kube)?;
                return Err(err);
            }
        };
        let (status, message) = run_status(obj, &report, requested_at, Timestamp::now());
        cx.write_status(obj, &status).await.map_err(Error::Kube)?;
        if let Some(p) = &report.pushed {
            tracing::info!(%namespace, %name, commit = %p.id, branch = %p.branch, attempts = p.attempts, "{message}");
            // The sources first: the event is one more API round trip.
            if let Some(sources) = &self.pushed {
                let pushed = (report.source_url.as_str(), p.branch.as_str());
                request_fetch(sources, cx.client(), obj, &namespace, pushed).await;
            }
            let note = format!("{message}\n{}", report.commit_message);
            cx.event(
                obj,
                Severity::Info,
                SUCCEEDED_REASON,
                &note,
                Some(&p.revision),
            )
            .await;
        }
        if !report.failed_files.is_empty() {
            tracing::warn!(%namespace, %name, "{message}");
            let was = conditions::get(&previous.conditions, READY_CONDITION);
            if was.is_none_or(|c| c.message != message) {
                cx.event(obj, Severity::Error, UPDATE_FAILED_REASON, &message, None)
                    .await;
            }
        }
        Ok(Action::requeue(
            obj.interval().unwrap_or(Duration::from_secs(60)),
        ))
    }

    async fn cleanup(
        &self,
        obj: Arc<ImageUpdateAutomation>,
        _cx: &Cx<ImageUpdateAutomation>,
    ) -> Result<(), Error> {
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        match std::fs::remove_dir_all(self.workdir_of(&namespace, &obj.name_any())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Cleanup(e)),
            _ => Ok(()),
        }
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::InvalidSpec { .. })
    }
}

/// The automations among `automations` that a new `latestRef` of `policy` may concern: those
/// of its namespace (the label selector is checked by the run itself; one run too many costs a
/// no-op).
pub fn in_namespace_of(
    policy: &ObjectRef<ImagePolicy>,
    automations: &[Arc<ImageUpdateAutomation>],
) -> Vec<ObjectRef<ImageUpdateAutomation>> {
    automations
        .iter()
        .filter(|a| a.metadata.namespace == policy.namespace)
        .map(|a| ObjectRef::from_obj(a.as_ref()))
        .collect()
}

/// The status after a run, and its Ready message: `Succeeded`, or `UpdateFailed` when files
/// could not be updated (the others are still committed).
fn run_status(
    obj: &ImageUpdateAutomation,
    report: &Report,
    requested_at: Option<String>,
    now: Timestamp,
) -> (ImageUpdateAutomationStatus, String) {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let mut status = ImageUpdateAutomationStatus {
        observed_generation: generation,
        last_automation_run_time: Some(Time(now)),
        observed_policies: report.policies.clone(),
        observed_source_revision: Some(report.source_revision.clone()),
        last_handled_reconcile_at: requested_at.or(previous.last_handled_reconcile_at.clone()),
        ..previous
    };
    let mut message = match &report.pushed {
        Some(p) => {
            status.last_push_commit = Some(p.id.clone());
            status.last_push_time = Some(Time(now));
            let short = &p.id[..p.id.len().min(7)];
            let mut m = format!("pushed commit '{short}' to branch '{}'", p.branch);
            if let Some(refspec) = &p.refspec {
                m.push_str(&format!(" and refspec '{refspec}'"));
            }
            m
        }
        None => "repository up-to-date".to_string(),
    };
    if report.failed_files.is_empty() {
        conditions::succeeded(
            &mut status.conditions,
            generation,
            SUCCEEDED_REASON,
            &message,
        );
    } else {
        message = format!("{message}; not updated: {}", report.failed_files.join("; "));
        conditions::failed(
            &mut status.conditions,
            generation,
            UPDATE_FAILED_REASON,
            &message,
            false,
        );
    }
    (status, message)
}

/// The status after a failed run: `Stalled` (and the generation observed) for a spec that
/// cannot work, `Ready=False` with a retry otherwise.
fn failed_status(
    obj: &ImageUpdateAutomation,
    err: &Error,
    requested_at: Option<String>,
) -> ImageUpdateAutomationStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let stalled = !ImageUpdateAutomations::retryable(err);
    let mut status = ImageUpdateAutomationStatus {
        observed_generation: if stalled {
            generation
        } else {
            previous.observed_generation
        },
        last_handled_reconcile_at: requested_at.or(previous.last_handled_reconcile_at.clone()),
        ..previous
    };
    conditions::failed(
        &mut status.conditions,
        generation,
        err.reason(),
        &err.to_string(),
        stalled,
    );
    status
}

// A failure is announced once, not on every retry.
// Asks for a fetch of the automation's own source at once, then of every other GitRepository
// in its namespace that follows `branch` of the same URL.
async fn request_fetch(
    sources: &Trigger<GitRepository>,
    client: &Client,
    obj: &ImageUpdateAutomation,
    namespace: &str,
    pushed: (&str, &str),
) {
    let source_ns = obj.source_namespace().unwrap_or(namespace).to_owned();
    let source = obj.spec.source_ref.name.as_str();
    sources.request(source, &source_ns);
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), &source_ns);
    let Ok(list) = repos.list(&ListParams::default()).await else {
        return;
    };
    for repo in list {
        if follows(&repo, pushed) && repo.name_any() != source {
            sources.request(&repo.name_any(), &source_ns);
        }
    }
}

/// Whether `repo` follows the `(url, branch)` a commit was pushed to.
fn follows(repo: &GitRepository, (url, branch): (&str, &str)) -> bool {
    repo.spec.url == url
        && matches!(Reference::from_spec(repo.spec.r#ref.as_ref()), Reference::Branch(b) if b == branch)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gantry_source::git::push::Pushed;

    use super::template::check_template;
    use super::*;

    fn automation(ns: &str, name: &str) -> ImageUpdateAutomation {
        let mut obj = ImageUpdateAutomation::new(name, Default::default());
        obj.metadata.namespace = Some(ns.into());
        obj.metadata.generation = Some(4);
        obj
    }

    fn report(pushed: Option<Pushed>, failed_files: &[&str]) -> Report {
        Report {
            source_url: "http://127.0.0.1/fleet.git".into(),
            policies: BTreeMap::new(),
            source_revision: "main@sha1:1111111111".into(),
            pushed,
            commit_message: "Update".into(),
            failed_files: failed_files.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn pushed(branch: &str) -> Pushed {
        Pushed {
            id: "abcdef0123456789abcdef0123456789abcdef01".into(),
            branch: branch.into(),
            revision: format!("{branch}@sha1:abcdef0123456789abcdef0123456789abcdef01"),
            checkout_revision: "main@sha1:1111111111".into(),
            refspec: None,
            attempts: 1,
        }
    }

    #[test]
    fn a_run_reports_its_push_or_that_nothing_changed() {
        let obj = automation("apps", "auto");
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (status, message) = run_status(&obj, &report(None, &[]), None, now);
        assert_eq!(message, "repository up-to-date");
        assert_eq!(
            status.last_push_commit, None,
            "no commit needed, none pushed"
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(
            status.observed_source_revision.as_deref(),
            Some("main@sha1:1111111111")
        );
        assert_eq!(status.last_automation_run_time, Some(Time(now)));
        assert!(conditions::is_true(&status.conditions, READY_CONDITION));

        let mut obj = obj;
        obj.status = Some(status);
        let (status, message) = run_status(&obj, &report(Some(pushed("main")), &[]), None, now);
        assert_eq!(message, "pushed commit 'abcdef0' to branch 'main'");
        assert_eq!(
            status.last_push_commit.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef01")
        );
        assert_eq!(status.last_push_time, Some(Time(now)));

        // An up-to-date run later keeps what was pushed last.
        obj.status = Some(status);
        let (later, _) = run_status(&obj, &report(None, &[]), None, now);
        assert_eq!(later.last_push_commit, obj.status.unwrap().last_push_commit);
    }

    #[test]
    fn files_that_cannot_be_updated_fail_the_run_without_stalling() {
        let obj = automation("apps", "auto");
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (status, message) = run_status(
            &obj,
            &report(Some(pushed("main")), &["a.yaml: bad YAML"]),
            None,
            now,
        );
        assert_eq!(
            message,
            "pushed commit 'abcdef0' to branch 'main'; not updated: a.yaml: bad YAML"
        );
        let ready = conditions::get(&status.conditions, READY_CONDITION).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", UPDATE_FAILED_REASON)
        );
        assert!(!conditions::is_true(&status.conditions, "Stalled"));
        assert!(
            status.last_push_commit.is_some(),
            "the other files were pushed"
        );
    }

    #[test]
    fn only_an_invalid_spec_stalls_and_failures_are_announced_once() {
        let obj = automation("apps", "auto");
        let git = Error::Git {
            reason: GIT_OPERATION_FAILED_REASON,
            message: "push refused".into(),
        };
        assert!(ImageUpdateAutomations::retryable(&git));
        let status = failed_status(&obj, &git, Some("asked".into()));
        assert!(!conditions::is_true(&status.conditions, "Stalled"));
        assert_eq!(status.observed_generation, None, "retried: not observed");
        assert_eq!(status.last_handled_reconcile_at.as_deref(), Some("asked"));
        assert!(conditions::failure_is_news(
            &ImageUpdateAutomationStatus::default().conditions,
            "push refused"
        ));
        assert!(!conditions::failure_is_news(
            &status.conditions,
            "push refused"
        ));
        assert!(conditions::failure_is_news(
            &status.conditions,
            "another cause"
        ));

        let invalid = check_template("{{ .Updated }}").unwrap_err();
        assert!(!ImageUpdateAutomations::retryable(&invalid));
        let status = failed_status(&obj, &invalid, None);
        assert!(conditions::is_true(&status.conditions, "Stalled"));
        assert_eq!(status.observed_generation, Some(4));
    }

    #[test]
    fn a_policy_wakes_the_automations_of_its_namespace_and_a_push_its_followers() {
        let automations = [
            Arc::new(automation("apps", "one")),
            Arc::new(automation("other", "two")),
            Arc::new(automation("apps", "three")),
        ];
        let woken = in_namespace_of(&ObjectRef::new("web").within("apps"), &automations);
        let names: Vec<_> = woken.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["one", "three"]);

        let repo = |url: &str, branch: Option<&str>| {
            GitRepository::new(
                "r",
                gantry_api::source::v1::GitRepositorySpec {
                    url: url.into(),
                    r#ref: branch.map(|b| gantry_api::source::v1::GitRepositoryRef {
                        branch: Some(b.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        };
        let url = "http://127.0.0.1/fleet.git";
        assert!(follows(&repo(url, Some("main")), (url, "main")));
        assert!(!follows(&repo(url, Some("staging")), (url, "main")));
        assert!(!follows(
            &repo("http://127.0.0.1/other.git", Some("main")),
            (url, "main")
        ));
    }
}

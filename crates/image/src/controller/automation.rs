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

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_api::image::v1::{
    DEFAULT_COMMIT_MESSAGE, GIT_OPERATION_FAILED_REASON, INVALID_POLICY_SELECTOR_REASON,
    INVALID_SOURCE_CONFIG_REASON, ImagePolicy, ImageRef, ImageUpdateAutomation,
    ImageUpdateAutomationStatus, REMOVED_TEMPLATE_FIELD_REASON, SOURCE_MANAGER_FAILED_REASON,
    UPDATE_FAILED_REASON,
};
use gantry_api::meta::{
    INVALID_SPEC_REASON, READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON,
};
use gantry_api::source::v1::GitRepository;
use gantry_core::gotemplate::{self, Value};
use gantry_core::image::setters::{self, Change, ObjectId, Policies, SetterError};
use gantry_runtime::conditions;
use gantry_runtime::controller::{Cx, Reconciler};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use gantry_source::git::push::{CommitPlan, PushOutcome, PushRequest, Pushed, commit_and_push};
use gantry_source::git::{Credentials, Reference};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

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

// The edit callback's failure: the commit message template could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TemplateFailure(String);

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
                let message = err.to_string();
                tracing::warn!(%namespace, %name, reason = err.reason(), "{message}");
                let status = failed_status(obj, &err, requested_at);
                cx.write_status(obj, &status).await.map_err(Error::Kube)?;
                if failure_is_news(&previous, &message) {
                    cx.event(obj, Severity::Error, err.reason(), &message, None)
                        .await;
                }
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
fn failure_is_news(previous: &ImageUpdateAutomationStatus, message: &str) -> bool {
    conditions::get(&previous.conditions, READY_CONDITION)
        .is_none_or(|c| c.status != "False" || c.message != message)
}

// What one run did.
struct Report {
    source_url: String,
    policies: BTreeMap<String, ImageRef>,
    source_revision: String,
    pushed: Option<Pushed>,
    commit_message: String,
    failed_files: Vec<String>,
}

impl ImageUpdateAutomations {
    async fn run(
        &self,
        obj: &ImageUpdateAutomation,
        client: &Client,
        namespace: &str,
    ) -> Result<Report, Error> {
        let invalid = |reason, message: String| Error::InvalidSpec { reason, message };
        if obj.spec.source_ref.kind != "GitRepository" {
            return Err(invalid(
                INVALID_SOURCE_CONFIG_REASON,
                format!(
                    "source kind '{}' not supported: invalid source configuration",
                    obj.spec.source_ref.kind
                ),
            ));
        }
        let Some(git) = obj.spec.git.clone() else {
            return Err(invalid(
            INVALID_SOURCE_CONFIG_REASON,
            "source kind 'GitRepository' necessitates field .spec.git: invalid source configuration"
                .into(),
        ));
        };
        let update_path = obj.update_path().unwrap_or("").to_owned();
        let relative = safe_relative(&update_path).ok_or_else(|| {
            invalid(
                INVALID_SPEC_REASON,
                format!("spec.update.path '{update_path}' leaves the repository"),
            )
        })?;
        let template = git
            .commit
            .message_template
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_COMMIT_MESSAGE.to_owned());
        check_template(&template)?;

        let source_ns = obj.source_namespace().unwrap_or(namespace).to_owned();
        let source_name = obj.spec.source_ref.name.clone();
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &source_ns);
        let repo = repos
            .get_opt(&source_name)
            .await
            .map_err(|e| {
                Error::Source(format!(
                    "failed to get GitRepository '{source_ns}/{source_name}': {e}"
                ))
            })?
            .ok_or_else(|| {
                Error::Source(format!(
                    "failed to get GitRepository '{source_ns}/{source_name}': not found"
                ))
            })?;
        let credentials = match &repo.spec.secret_ref {
            Some(r) => {
                Credentials::from_secret_data(&secret_data(client, &source_ns, &r.name).await?)
            }
            None => Credentials::default(),
        };
        let proxy = match &repo.spec.proxy_secret_ref {
            Some(r) => Some(
                gantry_source::git::auth::proxy_url(
                    &secret_data(client, &source_ns, &r.name).await?,
                )
                .map_err(Error::Source)?,
            ),
            None => None,
        };
        let policies = select_policies(client, obj, namespace).await?;

        let checkout_ref = git
            .checkout
            .as_ref()
            .map(|c| c.reference.clone())
            .or_else(|| repo.spec.r#ref.clone());
        let mut req = PushRequest::new(
            repo.spec.url.clone(),
            Reference::from_spec(checkout_ref.as_ref()),
            credentials,
        );
        req.push_branch = git.push.as_ref().and_then(|p| p.branch.clone());
        req.refspec = git.push.as_ref().and_then(|p| p.refspec.clone());
        req.push_options = git
            .push
            .as_ref()
            .map(|p| p.options.clone())
            .unwrap_or_default();
        req.proxy = proxy;
        req.timeout = gantry_source::duration::parse_go_duration(repo.timeout())
            .unwrap_or(Duration::from_secs(60));

        let setter_policies: Policies = policies
            .iter()
            .map(|(key, r)| {
                (
                    key.clone(),
                    setters::ImageRef {
                        name: r.name.clone(),
                        tag: r.tag.clone(),
                        digest: r.digest.clone().filter(|d| !d.is_empty()),
                    },
                )
            })
            .collect();
        let author_name = git.commit.author.name.clone().unwrap_or_default();
        let author_email = git.commit.author.email.clone();
        let values = git.commit.message_template_values.clone();
        let automation = (namespace.to_owned(), obj.name_any());
        // Under a folder of the object's own, which its cleanup removes with whatever a crash left.
        let parent = self.workdir_of(namespace, &obj.name_any());
        let workdir = std::fs::create_dir_all(&parent)
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix("gantry-automation-")
                    .tempdir_in(&parent)
            })
            .map_err(|e| Error::Git {
                reason: GIT_OPERATION_FAILED_REASON,
                message: format!("creating a work tree in {}: {e}", parent.display()),
            })?;

        let outcome = tokio::task::spawn_blocking(move || {
            let mut failed_files = Vec::new();
            let mut message = String::new();
            let result = commit_and_push(&req, workdir.path(), |tree: &Path| {
                failed_files.clear();
                let root = tree.join(&relative);
                let reports = match setters::update_path(&root, &setter_policies, true) {
                    Ok(r) => r,
                    Err(e) => {
                        return Err(TemplateFailure(format!(
                            "spec.update.path '{}': {e}",
                            relative.display()
                        )));
                    }
                };
                let mut changes: Vec<Change> = Vec::new();
                for report in reports {
                    match report.outcome {
                        Ok(updated) => changes.extend(updated.changes),
                        Err(e) => failed_files.push(describe(&e)),
                    }
                }
                if changes.is_empty() {
                    return Ok(None);
                }
                let data = template_data(&automation, &changes, &values);
                message = gotemplate::render(&template, &data).map_err(|e| {
                    TemplateFailure(format!("failed to run template from spec: {e}"))
                })?;
                Ok(Some(CommitPlan {
                    message: message.clone(),
                    author_name: author_name.clone(),
                    author_email: author_email.clone(),
                }))
            });
            drop(workdir);
            (result, failed_files, message)
        })
        .await
        .map_err(|e| Error::Git {
            reason: GIT_OPERATION_FAILED_REASON,
            message: format!("the automation run panicked: {e}"),
        })?;
        let (result, failed_files, commit_message) = outcome;
        let outcome = result.map_err(|e| match e {
            gantry_source::git::push::PushError::Edit(t) => Error::InvalidSpec {
                reason: INVALID_SPEC_REASON,
                message: t.0,
            },
            other => Error::Git {
                reason: other.reason(),
                message: other.to_string(),
            },
        })?;
        let (pushed, source_revision) = match outcome {
            PushOutcome::NothingToCommit { revision } => (None, revision),
            PushOutcome::Pushed(p) => {
                let rev = p.checkout_revision.clone();
                (Some(p), rev)
            }
        };
        Ok(Report {
            source_url: repo.spec.url.clone(),
            policies: policies
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.split_once(':').map_or(k.clone(), |(_, n)| n.to_owned()),
                        v,
                    )
                })
                .collect(),
            source_revision,
            pushed,
            commit_message,
            failed_files,
        })
    }
}

fn describe(e: &SetterError) -> String {
    e.to_string()
}

// `path` as a relative path that stays inside the repository, `None` if it would leave it.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

// Templates written for older Flux use fields that no longer exist: say so instead of a
// generic "can't evaluate field" error.
fn check_template(template: &str) -> Result<(), Error> {
    let removed = [
        (
            ".Updated",
            "'.Updated' field. Please use '.Changed' instead",
        ),
        (
            ".Changed.ImageResult",
            "'.Changed.ImageResult' field. Please use '.Changed.FileChanges' or '.Changed.Objects' instead",
        ),
    ];
    for (field, advice) in removed {
        if template.contains(field) {
            return Err(Error::InvalidSpec {
                reason: REMOVED_TEMPLATE_FIELD_REASON,
                message: format!("template uses removed {advice}"),
            });
        }
    }
    // Parse errors are found before any git work.
    let probe = template_data(&(String::new(), String::new()), &[], &BTreeMap::new());
    if let Err(e @ gotemplate::TemplateError::Parse { .. }) = gotemplate::render(template, &probe) {
        return Err(Error::InvalidSpec {
            reason: INVALID_SPEC_REASON,
            message: format!("unable to create commit message template from spec: {e}"),
        });
    }
    Ok(())
}

/// The data Flux gives the commit message template: `.AutomationObject`, `.Changed`
/// (`FileChanges`: file -> object -> changes, `Objects`: object -> changes, `Changes`) and
/// `.Values`.
pub fn template_data(
    automation: &(String, String),
    changes: &[Change],
    values: &BTreeMap<String, String>,
) -> Value {
    let object = |o: &ObjectId| {
        Value::structure(
            o.to_string(),
            [
                ("APIVersion", Value::from(o.api_version.as_str())),
                ("Kind", Value::from(o.kind.as_str())),
                ("Namespace", Value::from(o.namespace.as_str())),
                ("Name", Value::from(o.name.as_str())),
            ],
        )
    };
    let change = |c: &Change| {
        Value::structure(
            format!("{{{} {} {}}}", c.old, c.new, c.setter),
            [
                ("OldValue", Value::from(c.old.as_str())),
                ("NewValue", Value::from(c.new.as_str())),
                ("Setter", Value::from(c.setter.as_str())),
            ],
        )
    };
    let by_file = setters::changed_by_file(changes);
    let file_changes = Value::Map(
        by_file
            .iter()
            .map(|(file, objects)| {
                (
                    Value::from(file.as_str()),
                    Value::Map(
                        objects
                            .iter()
                            .map(|(o, cs)| {
                                (object(o), Value::List(cs.iter().map(change).collect()))
                            })
                            .collect(),
                    ),
                )
            })
            .collect(),
    );
    let mut objects: BTreeMap<&ObjectId, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        objects.entry(&c.object).or_default().push(c);
    }
    let objects = Value::Map(
        objects
            .into_iter()
            .map(|(o, cs)| (object(o), Value::List(cs.into_iter().map(change).collect())))
            .collect(),
    );
    let (ns, name) = automation;
    Value::structure(
        "",
        [
            (
                "AutomationObject",
                Value::structure(
                    format!("{ns}/{name}"),
                    [
                        ("Namespace", Value::from(ns.as_str())),
                        ("Name", Value::from(name.as_str())),
                    ],
                ),
            ),
            (
                "Changed",
                Value::structure(
                    "",
                    [
                        ("FileChanges", file_changes),
                        ("Objects", objects),
                        ("Changes", Value::List(changes.iter().map(change).collect())),
                    ],
                ),
            ),
            (
                "Values",
                Value::Map(
                    values
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                        .collect(),
                ),
            ),
        ],
    )
}

// The automation's policies that have chosen an image, by `<namespace>:<name>`.
async fn select_policies(
    client: &Client,
    obj: &ImageUpdateAutomation,
    namespace: &str,
) -> Result<BTreeMap<String, ImageRef>, Error> {
    let mut params = ListParams::default();
    if let Some(selector) = &obj.spec.policy_selector {
        let expr = selector_string(selector).map_err(|message| Error::InvalidSpec {
            reason: INVALID_POLICY_SELECTOR_REASON,
            message,
        })?;
        if !expr.is_empty() {
            params = params.labels(&expr);
        }
    }
    let api: Api<ImagePolicy> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&params).await.map_err(Error::Policies)?;
    Ok(list
        .into_iter()
        .filter_map(|p| {
            let latest = p.status.as_ref()?.latest_ref.clone()?;
            Some((format!("{namespace}:{}", p.name_any()), latest))
        })
        .collect())
}

/// A label selector in the API's query syntax (`a=b,c in (d,e),!f`).
pub fn selector_string(selector: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(format!(
                    "invalid policySelector: operator '{other}' is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        });
    }
    Ok(parts.join(","))
}

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

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| Error::Source(format!("failed to get secret '{namespace}/{name}': {e}")))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn change(file: &str, name: &str, old: &str, new: &str) -> Change {
        Change {
            file: file.into(),
            line: 3,
            setter: "apps:web".into(),
            old: old.into(),
            new: new.into(),
            object: ObjectId {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: "staging".into(),
                name: name.into(),
            },
        }
    }

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
        assert!(failure_is_news(
            &ImageUpdateAutomationStatus::default(),
            "push refused"
        ));
        assert!(!failure_is_news(&status, "push refused"));
        assert!(failure_is_news(&status, "another cause"));

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

    #[test]
    fn template_data_has_fluxs_shape() {
        let changes = vec![
            change("staging/web.yaml", "web", "reg/web:1", "reg/web:2"),
            change("staging/api.yaml", "api", "reg/api:1", "reg/api:2"),
        ];
        let data = template_data(
            &("flux-system".into(), "auto".into()),
            &changes,
            &BTreeMap::from([("env".to_string(), "staging".to_string())]),
        );
        let template = "{{ .AutomationObject }} {{ .Values.env }}\n{{ range $f, $objs := .Changed.FileChanges }}{{ $f }}:{{ range $o, $cs := $objs }} {{ $o.Kind }}/{{ $o.Name }}{{ range $cs }} {{ .OldValue }}->{{ .NewValue }}{{ end }}{{ end }}\n{{ end }}{{ len .Changed.Changes }} {{ range $o, $_ := .Changed.Objects }}{{ $o.Name }} {{ end }}";
        assert_eq!(
            gotemplate::render(template, &data).unwrap(),
            "flux-system/auto staging\nstaging/api.yaml: Deployment/api reg/api:1->reg/api:2\nstaging/web.yaml: Deployment/web reg/web:1->reg/web:2\n2 api web "
        );
    }

    #[test]
    fn removed_fields_and_parse_errors_are_named() {
        let err = check_template("{{ range .Updated.Images }}{{ . }}{{ end }}").unwrap_err();
        assert_eq!(err.reason(), REMOVED_TEMPLATE_FIELD_REASON);
        assert!(err.to_string().contains(".Changed"), "{err}");
        let err = check_template("{{ if .Changed }}unclosed").unwrap_err();
        assert_eq!(err.reason(), INVALID_SPEC_REASON);
        check_template(DEFAULT_COMMIT_MESSAGE).unwrap();
    }

    #[test]
    fn update_paths_stay_in_the_repository() {
        assert_eq!(
            safe_relative("./clusters/staging"),
            Some(PathBuf::from("clusters/staging"))
        );
        assert_eq!(safe_relative(""), Some(PathBuf::new()));
        assert_eq!(safe_relative("a/../b"), Some(PathBuf::from("b")));
        assert_eq!(safe_relative("../outside"), None);
        assert_eq!(safe_relative("a/../../outside"), None);
    }

    #[test]
    fn selectors_in_query_syntax() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("env".into(), "staging".into())])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                },
                LabelSelectorRequirement {
                    key: "legacy".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&selector).unwrap(),
            "env=staging,tier in (web,api),!legacy"
        );
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(selector_string(&bad).unwrap_err().contains("Near"));
    }
}

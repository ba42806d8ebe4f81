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
//! when a policy's `latestRef` changes (in process). After a push, the GitRepositories that
//! follow the pushed branch are asked to fetch at once, so the new commit reaches the
//! Kustomizations without waiting for an interval.
//!
//! Status as Flux writes it: `lastAutomationRunTime`, `lastPushCommit`, `lastPushTime`,
//! `observedPolicies`, `observedSourceRevision`; Ready `Succeeded` with `pushed commit '<short>'
//! to branch '<branch>'` or `repository up-to-date`. A file that is not valid YAML is left
//! untouched and named in a `Ready=False` (`UpdateFailed`) message, while the other files are
//! still committed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::image::v1::{
    DEFAULT_COMMIT_MESSAGE, GIT_OPERATION_FAILED_REASON, INVALID_POLICY_SELECTOR_REASON,
    INVALID_SOURCE_CONFIG_REASON, ImagePolicy, ImageRef, ImageUpdateAutomation,
    ImageUpdateAutomationStatus, REMOVED_TEMPLATE_FIELD_REASON, SOURCE_MANAGER_FAILED_REASON,
    UPDATE_FAILED_REASON,
};
use gantry_api::meta::{
    FINALIZER, INVALID_SPEC_REASON, READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON,
};
use gantry_api::source::v1::GitRepository;
use gantry_core::gotemplate::{self, Value};
use gantry_core::image::setters::{self, Change, ObjectId, Policies, SetterError};
use gantry_runtime::backoff::after_failures;
use gantry_runtime::conditions;
use gantry_runtime::events::{Events, Severity};
use gantry_runtime::finalizer;
use gantry_runtime::metrics::{Metrics, ResourceInfo};
use gantry_runtime::trigger::Trigger;
use gantry_source::git::push::{CommitPlan, PushOutcome, PushRequest, commit_and_push};
use gantry_source::git::{Credentials, Reference};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

/// Field manager of status writes and reporter of events: Flux's controller name.
pub const FIELD_MANAGER: &str = "image-automation-controller";
const KIND: &str = "ImageUpdateAutomation";
const GROUP: &str = "image.toolkit.fluxcd.io";

/// What every run shares.
pub struct Context {
    pub client: Client,
    events: Events,
    metrics: Option<Metrics>,
    sources: Option<Trigger<GitRepository>>,
    schedule: Mutex<HashMap<(String, String), Schedule>>,
    // Automations asked to run now (by a policy change).
    requested: Mutex<HashSet<(String, String)>>,
    changed_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    changed_tx: mpsc::UnboundedSender<(String, String)>,
    workdirs: PathBuf,
}

#[derive(Clone, Debug)]
struct Schedule {
    uid: Option<String>,
    generation: Option<i64>,
    requested_at: Option<String>,
    due: Instant,
    failures: u32,
}

impl Context {
    /// A context publishing Kubernetes Events as `image-automation-controller`; work trees are
    /// made under the system temporary directory.
    pub fn new(client: Client) -> Self {
        let (sender, _) = tokio::sync::broadcast::channel(16);
        let (changed_tx, rx) = mpsc::unbounded_channel();
        Context {
            events: Events::new(client.clone(), FIELD_MANAGER, sender),
            client,
            metrics: None,
            sources: None,
            schedule: Mutex::default(),
            requested: Mutex::default(),
            changed_rx: Mutex::new(Some(rx)),
            changed_tx,
            workdirs: std::env::temp_dir(),
        }
    }

    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// After a push, asks the GitRepository controller to fetch the pushed branch at once.
    pub fn with_source_trigger(mut self, trigger: Trigger<GitRepository>) -> Self {
        self.sources = Some(trigger);
        self
    }

    /// Work trees go under `dir` (e.g. the storage path) instead of the temporary directory.
    pub fn with_workdirs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdirs = dir.into();
        self
    }

    /// A function for the ImagePolicy controller's latest-ref hook: the automations of that
    /// namespace run at once.
    pub fn policy_changed(&self) -> impl Fn(&str, &str) + Send + Sync + 'static {
        let tx = self.changed_tx.clone();
        move |namespace, name| {
            let _ = tx.send((namespace.to_owned(), name.to_owned()));
        }
    }

    fn schedule_of(&self, key: &(String, String)) -> Option<Schedule> {
        self.schedule.lock().ok()?.get(key).cloned()
    }

    fn set_schedule(&self, key: (String, String), s: Schedule) {
        if let Ok(mut map) = self.schedule.lock() {
            map.insert(key, s);
        }
    }

    fn take_requested(&self, key: &(String, String)) -> bool {
        self.requested.lock().is_ok_and(|mut set| set.remove(key))
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
    /// Writing status or the finalizer failed.
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

/// Reconciles one ImageUpdateAutomation.
pub async fn reconcile(
    obj: Arc<ImageUpdateAutomation>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let api: Api<ImageUpdateAutomation> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = (namespace.clone(), name.clone());
    if obj.metadata.deletion_timestamp.is_some() {
        if let Some(metrics) = &ctx.metrics {
            metrics.remove_resource(KIND, &namespace, &name);
        }
        if let Ok(mut map) = ctx.schedule.lock() {
            map.remove(&key);
        }
        finalizer::remove(&api, &*obj, FINALIZER)
            .await
            .map_err(Error::Kube)?;
        return Ok(Action::await_change());
    }
    finalizer::add(&api, &*obj, FINALIZER)
        .await
        .map_err(Error::Kube)?;
    if obj.spec.suspend {
        return Ok(Action::await_change());
    }
    let generation = obj.metadata.generation;
    let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
    // Our own status writes come back as watch events: not a reason to run again.
    let previous = ctx.schedule_of(&key).filter(|s| s.uid == obj.metadata.uid);
    let asked = ctx.take_requested(&key);
    if let Some(s) = &previous
        && !asked
        && s.generation == generation
        && s.requested_at == requested_at
        && s.due > Instant::now()
    {
        return Ok(Action::requeue(s.due - Instant::now()));
    }
    let failures = previous.as_ref().map_or(0, |s| s.failures);
    let started = Instant::now();
    let status = obj.status.clone().unwrap_or_default();
    let mut new_status = ImageUpdateAutomationStatus {
        last_handled_reconcile_at: requested_at
            .clone()
            .or_else(|| status.last_handled_reconcile_at.clone()),
        ..status.clone()
    };
    let interval = obj.interval().unwrap_or(Duration::from_secs(60));
    let schedule = |due: Duration, failures: u32| Schedule {
        uid: obj.metadata.uid.clone(),
        generation,
        requested_at: requested_at.clone(),
        due: Instant::now() + due,
        failures,
    };

    match run(&obj, &ctx, &namespace).await {
        Ok(report) => {
            new_status.observed_generation = generation;
            new_status.last_automation_run_time = Some(Time(jiff::Timestamp::now()));
            new_status.observed_policies = report.policies.clone();
            new_status.observed_source_revision = Some(report.source_revision.clone());
            let mut message = match &report.pushed {
                Some(p) => {
                    new_status.last_push_commit = Some(p.id.clone());
                    new_status.last_push_time = Some(Time(jiff::Timestamp::now()));
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
                    &mut new_status.conditions,
                    generation,
                    SUCCEEDED_REASON,
                    &message,
                );
            } else {
                message = format!(
                    "{}; not updated: {}",
                    message,
                    report.failed_files.join("; ")
                );
                conditions::failed(
                    &mut new_status.conditions,
                    generation,
                    UPDATE_FAILED_REASON,
                    &message,
                    false,
                );
            }
            write_status(&api, &obj, &new_status).await?;
            if let Some(p) = &report.pushed {
                tracing::info!(%namespace, %name, commit = %p.id, branch = %p.branch, attempts = p.attempts, "{message}");
                let event = format!("{message}\n{}", report.commit_message);
                publish(
                    &ctx,
                    &obj,
                    Severity::Info,
                    SUCCEEDED_REASON,
                    &event,
                    &p.revision,
                )
                .await;
                request_fetch(&ctx, &obj, &namespace, &p.branch, &report.source_url).await;
            }
            if !report.failed_files.is_empty() {
                tracing::warn!(%namespace, %name, "{message}");
                let was = conditions::get(&status.conditions, READY_CONDITION);
                if was.is_none_or(|c| c.message != message) {
                    publish(
                        &ctx,
                        &obj,
                        Severity::Error,
                        UPDATE_FAILED_REASON,
                        &message,
                        "",
                    )
                    .await;
                }
            }
            if let Some(metrics) = &ctx.metrics {
                metrics.observe_reconcile(KIND, &namespace, &name, started.elapsed());
            }
            record_resource(&ctx, &obj, &new_status, &namespace, &name);
            ctx.set_schedule(key, schedule(interval, 0));
            Ok(Action::requeue(interval))
        }
        Err(err) => {
            let message = err.to_string();
            let reason = err.reason();
            let stalled = matches!(err, Error::InvalidSpec { .. });
            tracing::warn!(%namespace, %name, reason, "{message}");
            if stalled {
                new_status.observed_generation = generation;
            }
            conditions::failed(
                &mut new_status.conditions,
                generation,
                reason,
                &message,
                stalled,
            );
            write_status(&api, &obj, &new_status).await?;
            let was = conditions::get(&status.conditions, READY_CONDITION);
            if was.is_none_or(|c| c.status != "False" || c.message != message) {
                publish(&ctx, &obj, Severity::Error, reason, &message, "").await;
            }
            record_resource(&ctx, &obj, &new_status, &namespace, &name);
            if stalled {
                ctx.set_schedule(key, schedule(Duration::from_secs(365 * 24 * 3600), 0));
                return Ok(Action::await_change());
            }
            ctx.set_schedule(key, schedule(after_failures(failures + 1), failures + 1));
            Err(err)
        }
    }
}

/// Requeues with exponential backoff; a bad spec waits for a change.
pub fn error_policy(obj: Arc<ImageUpdateAutomation>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::InvalidSpec { .. } | Error::NoNamespace) {
        return Action::await_change();
    }
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    let failures = ctx.schedule_of(&key).map_or(1, |s| s.failures.max(1));
    Action::requeue(after_failures(failures))
}

// What one run did.
struct Report {
    source_url: String,
    policies: BTreeMap<String, ImageRef>,
    source_revision: String,
    pushed: Option<gantry_source::git::push::Pushed>,
    commit_message: String,
    failed_files: Vec<String>,
}

async fn run(obj: &ImageUpdateAutomation, ctx: &Context, namespace: &str) -> Result<Report, Error> {
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
    let repos: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &source_ns);
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
        Some(r) => Credentials::from_secret_data(&secret_data(ctx, &source_ns, &r.name).await?),
        None => Credentials::default(),
    };
    let proxy = match &repo.spec.proxy_secret_ref {
        Some(r) => Some(
            gantry_source::git::auth::proxy_url(&secret_data(ctx, &source_ns, &r.name).await?)
                .map_err(Error::Source)?,
        ),
        None => None,
    };
    let policies = select_policies(ctx, obj, namespace).await?;

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
    let workdir = tempfile::Builder::new()
        .prefix("gantry-automation-")
        .tempdir_in(&ctx.workdirs)
        .map_err(|e| Error::Git {
            reason: GIT_OPERATION_FAILED_REASON,
            message: format!("creating a work tree: {e}"),
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
            message = gotemplate::render(&template, &data)
                .map_err(|e| TemplateFailure(format!("failed to run template from spec: {e}")))?;
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
    ctx: &Context,
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
    let api: Api<ImagePolicy> = Api::namespaced(ctx.client.clone(), namespace);
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
    ctx: &Context,
    obj: &ImageUpdateAutomation,
    namespace: &str,
    branch: &str,
    url: &str,
) {
    let Some(trigger) = &ctx.sources else { return };
    let source_ns = obj.source_namespace().unwrap_or(namespace).to_owned();
    let source = obj.spec.source_ref.name.as_str();
    trigger.request(source, &source_ns);
    let repos: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &source_ns);
    let Ok(list) = repos.list(&ListParams::default()).await else {
        return;
    };
    for repo in list {
        let follows = match Reference::from_spec(repo.spec.r#ref.as_ref()) {
            Reference::Branch(b) => b == branch,
            _ => false,
        };
        if repo.spec.url == url && follows && repo.name_any() != source {
            trigger.request(&repo.name_any(), &source_ns);
        }
    }
}

async fn secret_data(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
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

async fn write_status(
    api: &Api<ImageUpdateAutomation>,
    obj: &ImageUpdateAutomation,
    status: &ImageUpdateAutomationStatus,
) -> Result<(), Error> {
    gantry_runtime::status::apply(api, &obj.name_any(), FIELD_MANAGER, status)
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    obj: &ImageUpdateAutomation,
    severity: Severity,
    reason: &str,
    message: &str,
    revision: &str,
) {
    let metadata = (!revision.is_empty())
        .then(|| (format!("{GROUP}/revision"), revision.to_owned()))
        .into_iter()
        .collect();
    ctx.events
        .publish(obj.object_ref(&()), severity, reason, message, metadata)
        .await;
}

fn record_resource(
    ctx: &Context,
    obj: &ImageUpdateAutomation,
    status: &ImageUpdateAutomationStatus,
    namespace: &str,
    name: &str,
) {
    let Some(metrics) = &ctx.metrics else { return };
    let ready = conditions::get(&status.conditions, READY_CONDITION);
    metrics.set_resource(&ResourceInfo {
        group: GROUP.into(),
        kind: KIND.into(),
        version: "v1".into(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
        reason: ready.map_or(String::new(), |c| c.reason.clone()),
        suspended: obj.spec.suspend,
        revision: status.last_push_commit.clone().unwrap_or_default(),
    });
    metrics.set_stalled(
        KIND,
        namespace,
        name,
        conditions::is_true(&status.conditions, "Stalled"),
    );
}

/// Runs the ImageUpdateAutomation controller until `shutdown` completes.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ImageUpdateAutomation> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency));
    let store = controller.store();
    let changes = ctx
        .changed_rx
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .expect("run_controller is called once per Context");
    let requester = ctx.clone();
    // A policy's new latestRef runs every automation of its namespace that selects it (the
    // label selector is checked by the run itself; running one too many costs a no-op).
    let requests = futures::stream::unfold(changes, |mut rx| async move {
        rx.recv().await.map(|policy| (policy, rx))
    })
    .flat_map(move |(policy_ns, _policy)| {
        let refs: Vec<ObjectRef<ImageUpdateAutomation>> = store
            .state()
            .iter()
            .filter(|a| a.namespace().as_deref() == Some(policy_ns.as_str()))
            .map(|a| ObjectRef::from_obj(a.as_ref()))
            .collect();
        if let Ok(mut set) = requester.requested.lock() {
            for r in &refs {
                set.insert((r.namespace.clone().unwrap_or_default(), r.name.clone()));
            }
        }
        futures::stream::iter(refs)
    });
    controller
        .reconcile_on(requests)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("ImageUpdateAutomation reconcile: {e}");
            }
        })
        .await;
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

//! The ImagePolicy controller: chooses the latest tag of an ImageRepository's stored tag list
//! by the policy and reports it in `status.latestRef`, as Flux's image-reflector-controller does.
//!
//! A policy runs when its spec changes, on `reconcile.fluxcd.io/requestedAt`, and at once (in
//! process, no API round trip) when a scan changes its repository's tag list. The tag list is
//! streamed from the [`TagStore`]: the choice holds only the current winner in memory.
//!
//! Status: `Ready=True` (`Succeeded`, `Latest image tag for <image> resolved to <tag>`); an
//! invalid range, pattern or order is `Stalled` (`InvalidPolicy`) and not retried until the spec
//! changes; a missing repository or one not scanned yet is `DependencyNotReady`; no matching
//! tag is `Ready=False` and retried with backoff. When `latestRef` changes, the previous one
//! moves to `observedPreviousRef`, an event is published and the latest-ref hook (the
//! ImageUpdateAutomation trigger) is called.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::image::v1::{
    INTERVAL_NOT_CONFIGURED_REASON, ImagePolicy, ImagePolicyStatus, ImageRef, ImageRepository,
    ReflectionPolicy, SortOrder,
};
use gantry_api::meta::{
    DEPENDENCY_NOT_READY_REASON, FINALIZER, READY_CONDITION, RECONCILE_REQUEST_ANNOTATION,
    SUCCEEDED_REASON,
};
use gantry_core::image::policy::{self, Order, Policy, PolicyError, TagFilter};
use gantry_runtime::backoff::after_failures;
use gantry_runtime::conditions;
use gantry_runtime::events::{Events, Severity};
use gantry_runtime::finalizer;
use gantry_runtime::metrics::{Metrics, ResourceInfo};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::repository;
use crate::registry::{Reference, RegistryClient};
use crate::tags::TagStore;

/// Field manager of status writes and reporter of events: Flux's controller name.
pub const FIELD_MANAGER: &str = "image-reflector-controller";
/// Flux's reason for a policy that cannot work as written.
pub const INVALID_POLICY_REASON: &str = "InvalidPolicy";
/// Flux's reason (`metav1.StatusFailure`) for a policy that found nothing this time.
pub const FAILURE_REASON: &str = "Failure";
/// Flux's reason when a cross-namespace reference is not allowed.
pub const ACCESS_DENIED_REASON: &str = "AccessDenied";
const KIND: &str = "ImagePolicy";
const GROUP: &str = "image.toolkit.fluxcd.io";

/// Called with (namespace, name) of an ImagePolicy whose `latestRef` changed.
pub type LatestHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub tags: TagStore,
    events: Events,
    metrics: Option<Metrics>,
    hook: Option<LatestHook>,
    failures: Mutex<HashMap<(String, String), u32>>,
    // Repositories whose tag list changed: (namespace, name), from the scan hook.
    rescans: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    rescan_tx: mpsc::UnboundedSender<(String, String)>,
}

impl Context {
    /// A context publishing Kubernetes Events as `image-reflector-controller`.
    pub fn new(client: Client, tags: TagStore) -> Self {
        let (sender, _) = tokio::sync::broadcast::channel(16);
        let (rescan_tx, rx) = mpsc::unbounded_channel();
        Context {
            events: Events::new(client.clone(), FIELD_MANAGER, sender),
            client,
            tags,
            metrics: None,
            hook: None,
            failures: Mutex::default(),
            rescans: Mutex::new(Some(rx)),
            rescan_tx,
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

    /// Calls `hook(namespace, name)` whenever a policy's `latestRef` changes.
    pub fn with_latest_hook(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// A function for the ImageRepository controller's scan hook: every policy of that
    /// repository runs at once.
    pub fn repository_changed(&self) -> impl Fn(&str, &str) + Send + Sync + 'static {
        let tx = self.rescan_tx.clone();
        move |namespace, name| {
            let _ = tx.send((namespace.to_owned(), name.to_owned()));
        }
    }

    fn failed_once_more(&self, key: &(String, String)) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_default();
        *n += 1;
        *n
    }

    fn clear_failures(&self, key: &(String, String)) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

/// Why a reconciliation failed; the status already says so when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ImagePolicy has no namespace")]
    NoNamespace,
    /// The referenced ImageRepository is missing or not accessible.
    #[error("failed to get the referred ImageRepository: {0}")]
    Repository(String),
    /// No tag could be chosen (no match, a non-numeric tag for a numerical policy).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Reading the stored tags failed.
    #[error("reading the stored tags of '{repository}': {source}")]
    Tags {
        repository: String,
        #[source]
        source: std::io::Error,
    },
    /// Resolving the chosen image's digest failed.
    #[error("failed fetching digest of {image}: {message}")]
    Digest { image: String, message: String },
    /// Writing status or the finalizer failed.
    #[error("failed to update the object: {0}")]
    Kube(#[source] kube::Error),
}

/// Reconciles one ImagePolicy.
pub async fn reconcile(obj: Arc<ImagePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let api: Api<ImagePolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    if obj.metadata.deletion_timestamp.is_some() {
        if let Some(metrics) = &ctx.metrics {
            metrics.remove_resource(KIND, &namespace, &name);
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
    let started = Instant::now();
    let key = (namespace.clone(), name.clone());
    let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
    let status = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let mut new_status = ImagePolicyStatus {
        observed_generation: generation,
        last_handled_reconcile_at: requested_at
            .clone()
            .or_else(|| status.last_handled_reconcile_at.clone()),
        ..status.clone()
    };

    let outcome = evaluate(&obj, &ctx, &namespace).await;
    let result = match outcome {
        Outcome::Chosen(latest) => {
            let changed = status.latest_ref.as_ref() != Some(&latest);
            if changed {
                new_status.observed_previous_ref = status.latest_ref.clone();
                new_status.latest_ref = Some(latest.clone());
            }
            let message = ready_message(&new_status);
            conditions::succeeded(
                &mut new_status.conditions,
                generation,
                SUCCEEDED_REASON,
                &message,
            );
            write_status(&api, &obj, &status, &new_status).await?;
            if changed {
                tracing::info!(%namespace, %name, latest = %latest, "{message}");
                publish(&ctx, &obj, Severity::Info, SUCCEEDED_REASON, &message).await;
                if let Some(hook) = &ctx.hook {
                    hook(&namespace, &name);
                }
            }
            ctx.clear_failures(&key);
            if let Some(metrics) = &ctx.metrics {
                metrics.observe_reconcile(KIND, &namespace, &name, started.elapsed());
            }
            let interval = obj.interval().ok().flatten();
            Ok(interval.map_or_else(Action::await_change, Action::requeue))
        }
        Outcome::Stalled(reason, message) => {
            conditions::failed(
                &mut new_status.conditions,
                generation,
                reason,
                &message,
                true,
            );
            write_status(&api, &obj, &status, &new_status).await?;
            announce_failure(&ctx, &obj, &status, reason, &message).await;
            Ok(Action::await_change())
        }
        Outcome::NotReady(reason, message) => {
            // Waiting for a scan: the scan hook brings the policy back, no retry needed.
            conditions::failed(
                &mut new_status.conditions,
                generation,
                reason,
                &message,
                false,
            );
            new_status.observed_generation = status.observed_generation.or(Some(-1));
            write_status(&api, &obj, &status, &new_status).await?;
            announce_failure(&ctx, &obj, &status, reason, &message).await;
            Ok(Action::requeue(after_failures(ctx.failed_once_more(&key))))
        }
        Outcome::Failed(reason, err) => {
            let message = err.to_string();
            conditions::failed(
                &mut new_status.conditions,
                generation,
                reason,
                &message,
                false,
            );
            new_status.observed_generation = status.observed_generation.or(Some(-1));
            write_status(&api, &obj, &status, &new_status).await?;
            announce_failure(&ctx, &obj, &status, reason, &message).await;
            Err(err)
        }
    };
    record_resource(&ctx, &obj, &new_status, &namespace, &name);
    result
}

/// Requeues with exponential backoff after a failure.
pub fn error_policy(obj: Arc<ImagePolicy>, _err: &Error, ctx: Arc<Context>) -> Action {
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    Action::requeue(after_failures(ctx.failed_once_more(&key)))
}

enum Outcome {
    Chosen(ImageRef),
    /// Not retried until the spec changes.
    Stalled(&'static str, String),
    /// Retried, but not an error (waiting for a dependency).
    NotReady(&'static str, String),
    Failed(&'static str, Error),
}

async fn evaluate(obj: &ImagePolicy, ctx: &Context, namespace: &str) -> Outcome {
    let reflection = obj.digest_reflection_policy();
    if reflection == ReflectionPolicy::Always && obj.spec.interval.is_none() {
        // The CRD rejects this; an object stored before that rule still gets a clear answer.
        return Outcome::Stalled(
            INTERVAL_NOT_CONFIGURED_REASON,
            "spec.interval must be set when spec.digestReflectionPolicy is set to 'Always'".into(),
        );
    }
    let (policy, filter) = match compile(obj) {
        Ok(compiled) => compiled,
        Err(err) => return Outcome::Stalled(INVALID_POLICY_REASON, err.to_string()),
    };
    let repo_ns = obj.repository_namespace().unwrap_or(namespace).to_owned();
    let repo_name = obj.spec.image_repository_ref.name.clone();
    let repos: Api<ImageRepository> = Api::namespaced(ctx.client.clone(), &repo_ns);
    let repo = match repos.get_opt(&repo_name).await {
        Ok(Some(repo)) => repo,
        Ok(None) => {
            return Outcome::NotReady(
                DEPENDENCY_NOT_READY_REASON,
                format!(
                    "failed to get the referred ImageRepository: imagerepositories.image.toolkit.fluxcd.io \"{repo_name}\" not found"
                ),
            );
        }
        Err(e) => {
            return Outcome::Failed(FAILURE_REASON, Error::Repository(e.to_string()));
        }
    };
    if repo_ns != namespace {
        match access_allowed(ctx, &repo, namespace).await {
            Ok(true) => {}
            Ok(false) => {
                return Outcome::NotReady(
                    ACCESS_DENIED_REASON,
                    format!(
                        "failed to get the referred ImageRepository: access denied: ImageRepository '{repo_ns}/{repo_name}' does not allow access from namespace '{namespace}' (spec.accessFrom)"
                    ),
                );
            }
            Err(e) => return Outcome::Failed(FAILURE_REASON, Error::Repository(e.to_string())),
        }
    }
    let image = repo.spec.image.clone();
    if let Err(e) = Reference::parse(&image) {
        return Outcome::Stalled(
            gantry_api::image::v1::IMAGE_URL_INVALID_REASON,
            e.to_string(),
        );
    }

    // Stream the stored list through the policy, off the async workers.
    let store = ctx.tags.clone();
    let (ns2, name2) = (repo_ns.clone(), repo_name.clone());
    let chosen = tokio::task::spawn_blocking(move || -> Result<Option<String>, Error> {
        let io_err = |source| Error::Tags {
            repository: format!("{ns2}/{name2}"),
            source,
        };
        let Some(tags) = store.tags(&ns2, &name2).map_err(io_err)? else {
            return Ok(None);
        };
        let mut read_error = None;
        let tags = tags.map_while(|t| match t {
            Ok(t) => Some(t),
            Err(e) => {
                read_error = Some(e);
                None
            }
        });
        let chosen = policy::choose(&policy, filter.as_ref(), tags);
        if let Some(e) = read_error {
            return Err(io_err(e));
        }
        Ok(Some(chosen?))
    })
    .await
    .unwrap_or_else(|e| {
        Err(Error::Repository(format!(
            "the policy evaluation panicked: {e}"
        )))
    });
    let tag = match chosen {
        Ok(Some(tag)) => tag,
        Ok(None) => {
            return Outcome::NotReady(DEPENDENCY_NOT_READY_REASON, "no tags in database".into());
        }
        Err(err) => return Outcome::Failed(FAILURE_REASON, err),
    };

    let mut latest = ImageRef {
        name: image.clone(),
        tag: tag.clone(),
        digest: None,
    };
    let previous = obj.status.as_ref().and_then(|s| s.latest_ref.clone());
    let fetch = match reflection {
        ReflectionPolicy::Never => false,
        ReflectionPolicy::Always => true,
        ReflectionPolicy::IfNotPresent => match &previous {
            Some(p) if p.name == latest.name && p.tag == latest.tag && p.digest.is_some() => {
                latest.digest = p.digest.clone();
                false
            }
            _ => true,
        },
    };
    if fetch {
        match digest(ctx, &repo, &repo_ns, &tag).await {
            Ok(d) => latest.digest = Some(d),
            Err(message) => {
                return Outcome::Failed(
                    FAILURE_REASON,
                    Error::Digest {
                        image: format!("{image}:{tag}"),
                        message,
                    },
                );
            }
        }
    }
    Outcome::Chosen(latest)
}

/// The policy and filter of the spec, or why they cannot work.
pub fn compile(obj: &ImagePolicy) -> Result<(Policy, Option<TagFilter>), PolicyError> {
    let choice = &obj.spec.policy;
    let order = |o: Option<SortOrder>| match o.unwrap_or_default() {
        SortOrder::Asc => Order::Asc,
        SortOrder::Desc => Order::Desc,
    };
    let policy = match (&choice.semver, &choice.alphabetical, &choice.numerical) {
        (Some(s), None, None) => Policy::semver(&s.range)?,
        (None, Some(a), None) => Policy::Alphabetical(order(a.order)),
        (None, None, Some(n)) => Policy::Numerical(order(n.order)),
        _ => {
            return Err(PolicyError::InvalidOrder(
                "spec.policy must set exactly one of semver, alphabetical, numerical".into(),
            ));
        }
    };
    let filter = match &obj.spec.filter_tags {
        Some(f) => Some(TagFilter::new(
            f.pattern.as_deref().unwrap_or(""),
            f.extract.as_deref().unwrap_or(""),
        )?),
        None => None,
    };
    Ok((policy, filter))
}

/// Flux's Ready message for a chosen image.
pub fn ready_message(status: &ImagePolicyStatus) -> String {
    let Some(latest) = &status.latest_ref else {
        return String::new();
    };
    let mut msg = format!(
        "Latest image tag for {} resolved to {}",
        latest.name, latest.tag
    );
    if let Some(d) = latest.digest.as_deref().filter(|d| !d.is_empty()) {
        msg.push_str(&format!(" with digest {d}"));
    }
    if let Some(prev) = &status.observed_previous_ref
        && prev != latest
    {
        msg.push_str(&format!(" (previously {}:{}", prev.name, prev.tag));
        if let Some(d) = prev.digest.as_deref().filter(|d| !d.is_empty()) {
            msg.push_str(&format!("@{d}"));
        }
        msg.push(')');
    }
    msg
}

// Whether `repo.spec.accessFrom` admits `namespace` (by its labels).
async fn access_allowed(
    ctx: &Context,
    repo: &ImageRepository,
    namespace: &str,
) -> Result<bool, kube::Error> {
    let Some(access) = &repo.spec.access_from else {
        return Ok(false);
    };
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let labels: BTreeMap<String, String> = namespaces
        .get(namespace)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    Ok(access.namespace_selectors.iter().any(|sel| {
        sel.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }))
}

async fn digest(
    ctx: &Context,
    repo: &ImageRepository,
    repo_ns: &str,
    tag: &str,
) -> Result<String, String> {
    let reference = Reference::parse(&repo.spec.image).map_err(|e| e.to_string())?;
    let config = repository::client_config(repo, &ctx.client, repo_ns)
        .await
        .map_err(|e| e.to_string())?;
    let timeout = repo.timeout().unwrap_or(Duration::from_secs(60));
    let client = RegistryClient::new(&reference, config).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.manifest_digest(tag)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn announce_failure(
    ctx: &Context,
    obj: &ImagePolicy,
    before: &ImagePolicyStatus,
    reason: &str,
    message: &str,
) {
    tracing::warn!(namespace = ?obj.namespace(), name = %obj.name_any(), reason, "{message}");
    let was = conditions::get(&before.conditions, READY_CONDITION);
    if was.is_none_or(|c| c.status != "False" || c.message != message) {
        publish(ctx, obj, Severity::Error, reason, message).await;
    }
}

async fn write_status(
    api: &Api<ImagePolicy>,
    obj: &ImagePolicy,
    before: &ImagePolicyStatus,
    after: &ImagePolicyStatus,
) -> Result<(), Error> {
    // Unchanged status: no write, so no watch event and no reconcile echo.
    if before == after {
        return Ok(());
    }
    gantry_runtime::status::apply(api, &obj.name_any(), FIELD_MANAGER, after)
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    obj: &ImagePolicy,
    severity: Severity,
    reason: &str,
    message: &str,
) {
    ctx.events
        .publish(
            obj.object_ref(&()),
            severity,
            reason,
            message,
            BTreeMap::new(),
        )
        .await;
}

fn record_resource(
    ctx: &Context,
    obj: &ImagePolicy,
    status: &ImagePolicyStatus,
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
        revision: status
            .latest_ref
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    });
}

/// Runs the ImagePolicy controller until `shutdown` completes.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ImagePolicy> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency));
    let store = controller.store();
    let rescans = ctx
        .rescans
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .expect("run_controller is called once per Context");
    // A changed tag list runs every policy of that repository.
    let requests = futures::stream::unfold(rescans, |mut rx| async move {
        rx.recv().await.map(|repo| (repo, rx))
    })
    .flat_map(move |(repo_ns, repo_name)| {
        let refs: Vec<ObjectRef<ImagePolicy>> = store
            .state()
            .iter()
            .filter(|p| {
                p.spec.image_repository_ref.name == repo_name
                    && p.repository_namespace() == Some(repo_ns.as_str())
            })
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect();
        futures::stream::iter(refs)
    });
    controller
        .reconcile_on(requests)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("ImagePolicy reconcile: {e}");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::image::v1::{
        AlphabeticalPolicy, ImagePolicyChoice, ImagePolicySpec, SemVerPolicy,
        TagFilter as SpecFilter,
    };

    fn policy(choice: ImagePolicyChoice, filter: Option<SpecFilter>) -> ImagePolicy {
        ImagePolicy::new(
            "p",
            ImagePolicySpec {
                policy: choice,
                filter_tags: filter,
                ..Default::default()
            },
        )
    }

    #[test]
    fn compiles_exactly_one_policy() {
        let ok = policy(
            ImagePolicyChoice {
                semver: Some(SemVerPolicy {
                    range: ">=1.0.0 <2.0.0".into(),
                }),
                ..Default::default()
            },
            None,
        );
        assert!(compile(&ok).is_ok());
        let none = policy(ImagePolicyChoice::default(), None);
        assert!(compile(&none).unwrap_err().is_invalid_spec());
        let bad_range = policy(
            ImagePolicyChoice {
                semver: Some(SemVerPolicy {
                    range: ">=x.y.z.w".into(),
                }),
                ..Default::default()
            },
            None,
        );
        assert!(compile(&bad_range).unwrap_err().is_invalid_spec());
        let bad_regex = policy(
            ImagePolicyChoice {
                alphabetical: Some(AlphabeticalPolicy { order: None }),
                ..Default::default()
            },
            Some(SpecFilter {
                pattern: Some("^main-(?P<ts>[".into()),
                extract: Some("$ts".into()),
            }),
        );
        let err = compile(&bad_regex).unwrap_err();
        assert!(err.is_invalid_spec());
        assert!(err.to_string().contains("^main-(?P<ts>["), "{err}");
    }

    #[test]
    fn ready_message_is_fluxs() {
        let latest = ImageRef {
            name: "reg/app".into(),
            tag: "1.1.0".into(),
            digest: Some("sha256:ab".into()),
        };
        let mut status = ImagePolicyStatus {
            latest_ref: Some(latest.clone()),
            ..Default::default()
        };
        assert_eq!(
            ready_message(&status),
            "Latest image tag for reg/app resolved to 1.1.0 with digest sha256:ab"
        );
        status.observed_previous_ref = Some(ImageRef {
            tag: "1.0.0".into(),
            digest: None,
            ..latest
        });
        assert_eq!(
            ready_message(&status),
            "Latest image tag for reg/app resolved to 1.1.0 with digest sha256:ab (previously reg/app:1.0.0)"
        );
    }
}

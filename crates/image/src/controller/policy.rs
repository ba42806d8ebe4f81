//! The ImagePolicy controller: chooses the latest tag of an ImageRepository's stored tag list
//! by the policy and reports it in `status.latestRef`, as Flux's image-reflector-controller does.
//!
//! A policy runs when its spec changes, on `reconcile.fluxcd.io/requestedAt`, and at once (in
//! process, no API round trip) when a scan changes its repository's tag list: the repository
//! controller's trigger, mapped to the policies that use it by [`using_repository`]. The tag
//! list is streamed from the [`TagStore`]: the choice holds only the current winner in memory.
//!
//! Status: `Ready=True` (`Succeeded`, `Latest image tag for <image> resolved to <tag>`); an
//! invalid range, pattern or order is `Stalled` (`InvalidPolicy`) and not retried until the spec
//! changes; a missing repository or one not scanned yet is `DependencyNotReady`; no matching
//! tag is `Ready=False` and retried with backoff. When `latestRef` changes, the previous one
//! moves to `observedPreviousRef`, an event is published and the trigger given to
//! [`ImagePolicies::notify_changed`] (the automations of the namespace) is requested.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_api::image::v1::{
    IMAGE_URL_INVALID_REASON, INTERVAL_NOT_CONFIGURED_REASON, ImagePolicy, ImagePolicyStatus,
    ImageRef, ImageRepository, ReflectionPolicy, SortOrder,
};
use gantry_api::meta::{
    DEPENDENCY_NOT_READY_REASON, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON,
};
use gantry_core::image::policy::{self, Order, Policy, PolicyError, TagFilter};
use gantry_runtime::conditions;
use gantry_runtime::controller::{Cx, Reconciler};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::secrets;
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

/// The ImagePolicy controller's domain steps; run it with
/// `Controller::new(ImagePolicies::new(tags), shared)`.
pub struct ImagePolicies {
    tags: TagStore,
    changed: Option<Trigger<ImagePolicy>>,
}

impl ImagePolicies {
    /// Reads the tag lists the ImageRepository controller stores in `tags`.
    pub fn new(tags: TagStore) -> Self {
        Self {
            tags,
            changed: None,
        }
    }

    /// Requests `trigger` with each ImagePolicy whose `latestRef` changed: the in-process
    /// hand-off to the automations of its namespace.
    pub fn notify_changed(mut self, trigger: Trigger<ImagePolicy>) -> Self {
        self.changed = Some(trigger);
        self
    }
}

/// Why a reconciliation failed; the status already says so when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ImagePolicy has no namespace")]
    NoNamespace,
    /// The spec cannot work as written; not retried until it changes.
    #[error("{message}")]
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// A dependency is missing, not allowed or not scanned yet; retried, and the first scan
    /// brings the policy back at once.
    #[error("{message}")]
    NotReady {
        reason: &'static str,
        message: String,
    },
    /// The referenced ImageRepository could not be read.
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
    /// Writing status failed.
    #[error("failed to update the object: {0}")]
    Kube(#[source] kube::Error),
}

impl Error {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid { reason, .. } | Error::NotReady { reason, .. } => reason,
            _ => FAILURE_REASON,
        }
    }
}

impl Reconciler for ImagePolicies {
    type Object = ImagePolicy;
    type Error = Error;
    const CONTROLLER: &'static str = FIELD_MANAGER;

    async fn reconcile(
        &self,
        obj: Arc<ImagePolicy>,
        cx: &Cx<ImagePolicy>,
    ) -> Result<Action, Error> {
        let obj = obj.as_ref();
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
        let previous = obj.status.clone().unwrap_or_default();
        let latest = match self.choose(obj, cx.client(), &namespace).await {
            Ok(latest) => latest,
            Err(err) => {
                let message = err.to_string();
                tracing::warn!(%namespace, %name, reason = err.reason(), "{message}");
                let status = failed_status(obj, &err, requested_at);
                write_status(cx, obj, &status).await?;
                if conditions::failure_is_news(&previous.conditions, &message) {
                    cx.event(obj, Severity::Error, err.reason(), &message, None)
                        .await;
                }
                return Err(err);
            }
        };
        let (status, changed) = chosen_status(obj, latest, requested_at);
        write_status(cx, obj, &status).await?;
        if changed {
            let message = ready_message(&status);
            tracing::info!(%namespace, %name, "{message}");
            if let Some(trigger) = &self.changed {
                trigger.request(&name, &namespace);
            }
            cx.event(obj, Severity::Info, SUCCEEDED_REASON, &message, None)
                .await;
        }
        let interval = obj.interval().ok().flatten();
        Ok(interval.map_or_else(Action::await_change, Action::requeue))
    }

    async fn cleanup(&self, _obj: Arc<ImagePolicy>, _cx: &Cx<ImagePolicy>) -> Result<(), Error> {
        // A policy stores nothing outside its status.
        Ok(())
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::Invalid { .. })
    }
}

/// The policies among `policies` that choose from the ImageRepository `repository`.
pub fn using_repository(
    repository: &ObjectRef<ImageRepository>,
    policies: &[Arc<ImagePolicy>],
) -> Vec<ObjectRef<ImagePolicy>> {
    policies
        .iter()
        .filter(|p| {
            p.spec.image_repository_ref.name == repository.name
                && p.repository_namespace() == repository.namespace.as_deref()
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

// An unchanged status is not written again (one API call less per scan of a busy repository).
async fn write_status(
    cx: &Cx<ImagePolicy>,
    obj: &ImagePolicy,
    status: &ImagePolicyStatus,
) -> Result<(), Error> {
    if obj.status.as_ref() == Some(status) {
        cx.record(obj, Some(status));
        return Ok(());
    }
    cx.write_status(obj, status).await.map_err(Error::Kube)
}

/// The status for a chosen image, and whether `latestRef` changed (the old one then moves to
/// `observedPreviousRef`).
fn chosen_status(
    obj: &ImagePolicy,
    latest: ImageRef,
    requested_at: Option<String>,
) -> (ImagePolicyStatus, bool) {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let changed = previous.latest_ref.as_ref() != Some(&latest);
    let mut status = ImagePolicyStatus {
        observed_generation: generation,
        last_handled_reconcile_at: requested_at.or(previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    };
    if changed {
        status.observed_previous_ref = previous.latest_ref;
        status.latest_ref = Some(latest);
    }
    let message = ready_message(&status);
    conditions::succeeded(
        &mut status.conditions,
        generation,
        SUCCEEDED_REASON,
        &message,
    );
    (status, changed)
}

/// The status after a failure: `Stalled` (and the generation observed) for a spec that cannot
/// work, `Ready=False` with a retry otherwise; the last choice is kept.
fn failed_status(
    obj: &ImagePolicy,
    err: &Error,
    requested_at: Option<String>,
) -> ImagePolicyStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let stalled = !ImagePolicies::retryable(err);
    let mut status = ImagePolicyStatus {
        observed_generation: if stalled {
            generation
        } else {
            previous.observed_generation.or(Some(-1))
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

/// What to do about the chosen image's digest.
#[derive(Debug, PartialEq)]
enum DigestPlan {
    /// `Never`: no digest.
    None,
    /// `IfNotPresent` and the same image was chosen before with this digest.
    Known(String),
    /// Ask the registry.
    Fetch,
}

fn digest_plan(
    reflection: ReflectionPolicy,
    previous: Option<&ImageRef>,
    chosen: &ImageRef,
) -> DigestPlan {
    match (reflection, previous) {
        (ReflectionPolicy::Never, _) => DigestPlan::None,
        (ReflectionPolicy::IfNotPresent, Some(p))
            if p.name == chosen.name && p.tag == chosen.tag =>
        {
            p.digest
                .clone()
                .map_or(DigestPlan::Fetch, DigestPlan::Known)
        }
        _ => DigestPlan::Fetch,
    }
}

impl ImagePolicies {
    async fn choose(
        &self,
        obj: &ImagePolicy,
        client: &Client,
        namespace: &str,
    ) -> Result<ImageRef, Error> {
        let reflection = obj.digest_reflection_policy();
        if reflection == ReflectionPolicy::Always && obj.spec.interval.is_none() {
            // The CRD rejects this; an object stored before that rule still gets a clear answer.
            return Err(Error::Invalid {
                reason: INTERVAL_NOT_CONFIGURED_REASON,
                message:
                    "spec.interval must be set when spec.digestReflectionPolicy is set to 'Always'"
                        .into(),
            });
        }
        let (policy, filter) = compile(obj).map_err(|e| Error::Invalid {
            reason: INVALID_POLICY_REASON,
            message: e.to_string(),
        })?;
        let repo_ns = obj.repository_namespace().unwrap_or(namespace).to_owned();
        let repo_name = obj.spec.image_repository_ref.name.clone();
        let repos: Api<ImageRepository> = Api::namespaced(client.clone(), &repo_ns);
        let repo = repos
            .get_opt(&repo_name)
            .await
            .map_err(|e| Error::Repository(e.to_string()))?
            .ok_or_else(|| Error::NotReady {
                reason: DEPENDENCY_NOT_READY_REASON,
                message: format!(
                    "failed to get the referred ImageRepository: imagerepositories.image.toolkit.fluxcd.io \"{repo_name}\" not found"
                ),
            })?;
        if repo_ns != namespace
            && !access_allowed(client, &repo, namespace)
                .await
                .map_err(|e| Error::Repository(e.to_string()))?
        {
            return Err(Error::NotReady {
                reason: ACCESS_DENIED_REASON,
                message: format!(
                    "failed to get the referred ImageRepository: access denied: ImageRepository '{repo_ns}/{repo_name}' does not allow access from namespace '{namespace}' (spec.accessFrom)"
                ),
            });
        }
        let image = repo.spec.image.clone();
        Reference::parse(&image).map_err(|e| Error::Invalid {
            reason: IMAGE_URL_INVALID_REASON,
            message: e.to_string(),
        })?;

        // Stream the stored list through the policy, off the async workers.
        let store = self.tags.clone();
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
        })?;
        let tag = chosen.ok_or_else(|| Error::NotReady {
            reason: DEPENDENCY_NOT_READY_REASON,
            message: "no tags in database".into(),
        })?;

        let mut latest = ImageRef {
            name: image.clone(),
            tag: tag.clone(),
            digest: None,
        };
        let previous = obj.status.as_ref().and_then(|s| s.latest_ref.as_ref());
        latest.digest = match digest_plan(reflection, previous, &latest) {
            DigestPlan::None => None,
            DigestPlan::Known(d) => Some(d),
            DigestPlan::Fetch => Some(digest(client, &repo, &repo_ns, &tag).await.map_err(
                |message| Error::Digest {
                    image: format!("{image}:{tag}"),
                    message,
                },
            )?),
        };
        Ok(latest)
    }
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
    client: &Client,
    repo: &ImageRepository,
    namespace: &str,
) -> Result<bool, kube::Error> {
    let Some(access) = &repo.spec.access_from else {
        return Ok(false);
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
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
    client: &Client,
    repo: &ImageRepository,
    repo_ns: &str,
    tag: &str,
) -> Result<String, String> {
    let reference = Reference::parse(&repo.spec.image).map_err(|e| e.to_string())?;
    let config = secrets::client_config(repo, client, repo_ns)
        .await
        .map_err(|e| e.to_string())?;
    let timeout = repo.timeout().unwrap_or(Duration::from_secs(60));
    let client = RegistryClient::new(&reference, config).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.manifest_digest(tag)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::image::v1::{
        AlphabeticalPolicy, ImagePolicyChoice, ImagePolicySpec, SemVerPolicy,
        TagFilter as SpecFilter,
    };
    use gantry_api::meta::READY_CONDITION;

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

    fn image(tag: &str, digest: Option<&str>) -> ImageRef {
        ImageRef {
            name: "reg/app".into(),
            tag: tag.into(),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn a_new_choice_moves_the_old_one_aside_and_is_news_once() {
        let mut obj = policy(ImagePolicyChoice::default(), None);
        obj.metadata.generation = Some(3);
        let (first, changed) = chosen_status(&obj, image("1.0.0", None), Some("asked".into()));
        assert!(changed);
        assert_eq!(first.latest_ref, Some(image("1.0.0", None)));
        assert_eq!(first.observed_previous_ref, None);
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(first.last_handled_reconcile_at.as_deref(), Some("asked"));
        assert!(conditions::is_true(&first.conditions, READY_CONDITION));

        obj.status = Some(first.clone());
        let (same, changed) = chosen_status(&obj, image("1.0.0", None), None);
        assert!(!changed, "the same choice again");
        assert_eq!(same, first, "nothing to write");

        let (next, changed) = chosen_status(&obj, image("1.1.0", None), None);
        assert!(changed);
        assert_eq!(next.observed_previous_ref, Some(image("1.0.0", None)));
        assert_eq!(
            conditions::get(&next.conditions, READY_CONDITION)
                .unwrap()
                .message,
            "Latest image tag for reg/app resolved to 1.1.0 (previously reg/app:1.0.0)"
        );
    }

    #[test]
    fn failures_keep_the_choice_and_only_an_invalid_spec_stalls() {
        let mut obj = policy(ImagePolicyChoice::default(), None);
        obj.metadata.generation = Some(2);
        obj.status = Some(chosen_status(&obj, image("1.0.0", None), None).0);
        obj.metadata.generation = Some(3);

        let waiting = Error::NotReady {
            reason: DEPENDENCY_NOT_READY_REASON,
            message: "no tags in database".into(),
        };
        let status = failed_status(&obj, &waiting, None);
        assert_eq!(status.latest_ref, Some(image("1.0.0", None)));
        assert_eq!(status.observed_generation, Some(2), "not observed: retried");
        assert!(!conditions::is_true(&status.conditions, "Stalled"));
        let ready = conditions::get(&status.conditions, READY_CONDITION).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "DependencyNotReady")
        );

        let err = compile(&obj).unwrap_err();
        let invalid = Error::Invalid {
            reason: INVALID_POLICY_REASON,
            message: err.to_string(),
        };
        assert!(!ImagePolicies::retryable(&invalid));
        let status = failed_status(&obj, &invalid, None);
        assert!(conditions::is_true(&status.conditions, "Stalled"));
        assert_eq!(status.observed_generation, Some(3));
        let nothing = Error::Policy(PolicyError::NoMatch);
        assert_eq!(nothing.reason(), FAILURE_REASON);
        assert!(ImagePolicies::retryable(&nothing));
    }

    #[test]
    fn digests_are_fetched_as_the_reflection_policy_says() {
        let chosen = image("1.0.0", None);
        let before = image("1.0.0", Some("sha256:ab"));
        assert_eq!(
            digest_plan(ReflectionPolicy::Never, Some(&before), &chosen),
            DigestPlan::None
        );
        assert_eq!(
            digest_plan(ReflectionPolicy::IfNotPresent, Some(&before), &chosen),
            DigestPlan::Known("sha256:ab".into())
        );
        let older = image("0.9.0", Some("sha256:cd"));
        assert_eq!(
            digest_plan(ReflectionPolicy::IfNotPresent, Some(&older), &chosen),
            DigestPlan::Fetch
        );
        assert_eq!(
            digest_plan(
                ReflectionPolicy::IfNotPresent,
                Some(&image("1.0.0", None)),
                &chosen
            ),
            DigestPlan::Fetch
        );
        assert_eq!(
            digest_plan(ReflectionPolicy::IfNotPresent, None, &chosen),
            DigestPlan::Fetch
        );
        assert_eq!(
            digest_plan(ReflectionPolicy::Always, Some(&before), &chosen),
            DigestPlan::Fetch
        );
    }

    #[test]
    fn a_scan_wakes_exactly_the_policies_of_its_repository() {
        let with = |ns: &str, name: &str, repo: &str, repo_ns: Option<&str>| {
            let mut p = policy(ImagePolicyChoice::default(), None);
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some(ns.into());
            p.spec.image_repository_ref.name = repo.into();
            p.spec.image_repository_ref.namespace = repo_ns.map(Into::into);
            Arc::new(p)
        };
        let policies = [
            with("apps", "web", "web", None),
            with("apps", "api", "api", None),
            with("other", "web", "web", None),
            with("team", "shared", "web", Some("apps")),
        ];
        let woken = using_repository(&ObjectRef::new("web").within("apps"), &policies);
        let names: Vec<_> = woken
            .iter()
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name))
            .collect();
        assert_eq!(names, ["apps/web", "team/shared"]);
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

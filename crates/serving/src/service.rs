//! The Service controller: stamps out a Revision per template change, resolves the traffic,
//! marks Revisions routed or not (`routingState`), collects old ones, keeps the Kubernetes
//! Service pointing at the router and writes Knative's status.
//!
//! Anything in the Service that Gantry does not serve stops it before anything is created:
//! `Ready=False` with reason `UnsupportedField` and the paths in the message, a Warning event
//! and a log line (`gantry_core::serving::supported`).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_api::serving::v1::{Addressable, Revision, Service, ServiceStatus, TrafficTarget};
use gantry_api::serving::{
    CONFIGURATIONS_READY, INVALID_SPEC_REASON, NO_GC_ANNOTATION, READY, REVISION_FAILED_REASON,
    REVISION_MISSING_REASON, ROUTES_READY, ROUTING_STATE_ACTIVE, ROUTING_STATE_LABEL,
    ROUTING_STATE_MODIFIED_ANNOTATION, ROUTING_STATE_RESERVE, SERVICE_LABEL,
    UNSUPPORTED_FIELD_REASON, severity,
};
use gantry_core::serving::traffic::{self, RevisionState};
use gantry_core::serving::{domain, gc, naming, supported};
use gantry_runtime::controller::{Cx, Reconciler};
use gantry_runtime::events::Severity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::conditions::{self, set};
use crate::{CONTROLLER, Settings, resources};

/// How often a Service is looked at without a change while GC waits for a Revision to age.
const RESYNC: Duration = Duration::from_secs(600);

/// How often a Service is looked at when no Revision of it can be garbage-collected by time.
const IDLE_RESYNC: Duration = Duration::from_secs(10 * 3600);

/// The Service controller's domain steps.
pub struct Services {
    settings: Arc<Settings>,
}

impl Services {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the Revisions: {0}")]
    List(#[source] kube::Error),
    #[error("creating Revision {name}: {source}")]
    CreateRevision {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("labelling Revision {name}: {source}")]
    Label {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying the Kubernetes Service: {0}")]
    Placeholder(#[source] kube::Error),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error(transparent)]
    Domain(#[from] domain::Error),
    #[error("encoding the Service: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Reconciler for Services {
    type Object = Service;
    type Error = Error;
    const CONTROLLER: &'static str = CONTROLLER;
    // Revisions and the Kubernetes Service go with it (owner references).
    const FINALIZER: Option<&'static str> = None;

    async fn reconcile(&self, svc: Arc<Service>, cx: &Cx<Service>) -> Result<Action, Error> {
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let mut status = base_status(&svc, &self.settings.templates)?;

        let findings = supported::findings(&serde_json::to_value(svc.as_ref())?);
        if !findings.is_empty() {
            let list: Vec<String> = findings.iter().map(ToString::to_string).collect();
            let message = format!("Gantry does not support: {}", list.join("; "));
            return refuse(cx, &svc, status, UNSUPPORTED_FIELD_REASON, &message).await;
        }
        let spec_traffic = spec_traffic(&svc);
        if let Err(e) = traffic::validate(&spec_traffic) {
            return refuse(cx, &svc, status, INVALID_SPEC_REASON, &e.to_string()).await;
        }

        let revisions_api: Api<Revision> = Api::namespaced(cx.client().clone(), &namespace);
        let mut revisions = owned_revisions(&revisions_api, &svc).await?;
        let latest = revisions.iter().max_by_key(|r| resources::generation_of(r));
        if !latest.is_some_and(|r| resources::matches_template(r, &svc)) {
            let generation = latest.map_or(0, resources::generation_of) + 1;
            let rev_name = naming::revision_name(
                &name,
                generation,
                svc.spec.template.metadata.name.as_deref(),
            );
            if !naming::valid_name(&rev_name) {
                let message = format!(
                    "Revision name '{rev_name}' is not a valid name (a DNS label of at most {} characters)",
                    naming::MAX_NAME_LENGTH
                );
                return refuse(cx, &svc, status, INVALID_SPEC_REASON, &message).await;
            }
            if revisions.iter().any(|r| r.name_any() == rev_name) {
                let message = format!(
                    "Revision \"{rev_name}\" already exists with another template: a changed template needs a new spec.template.metadata.name"
                );
                return refuse(cx, &svc, status, REVISION_FAILED_REASON, &message).await;
            }
            let rev = resources::revision(&svc, &rev_name, generation);
            let params = PostParams {
                field_manager: Some(CONTROLLER.into()),
                ..PostParams::default()
            };
            match revisions_api.create(&params, &rev).await {
                Ok(created) => {
                    tracing::info!(%namespace, service = %name, revision = %rev_name, "created Revision");
                    cx.event(
                        &svc,
                        Severity::Info,
                        "Created",
                        &format!("Created Revision \"{rev_name}\""),
                        None,
                    )
                    .await;
                    revisions.push(created);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let message = format!(
                        "Revision \"{rev_name}\" already exists and does not belong to Service \"{name}\""
                    );
                    return refuse(cx, &svc, status, REVISION_FAILED_REASON, &message).await;
                }
                Err(source) => {
                    return Err(Error::CreateRevision {
                        name: rev_name,
                        source,
                    });
                }
            }
        }

        // The newest Revision is the latest created; the newest Ready one the latest ready.
        revisions.sort_by_key(resources::generation_of);
        let latest_created = revisions.last();
        let latest_ready = revisions
            .iter()
            .rev()
            .find(|r| rev_condition(r, READY) == Some("True"));
        status.latest_created_revision_name = latest_created.map(|r| r.name_any());
        status.latest_ready_revision_name = latest_ready.map(|r| r.name_any());
        configurations_ready(&mut status, &name, latest_created);

        let state = |rev: &str| match revisions.iter().find(|r| r.name_any() == rev) {
            None => RevisionState::Missing,
            Some(r) => match rev_condition(r, READY) {
                Some("True") => RevisionState::Ready,
                Some("False") => RevisionState::Failed,
                _ => RevisionState::NotReady,
            },
        };
        let resolved = traffic::resolve(
            &name,
            &spec_traffic,
            status.latest_ready_revision_name.as_deref(),
            state,
        );
        let routed = match &resolved {
            Ok(targets) => {
                status.traffic = targets
                    .iter()
                    .map(|t| status_target(t, &name, &namespace, &self.settings.templates))
                    .collect::<Result<_, _>>()?;
                set(
                    &mut status.conditions,
                    ROUTES_READY,
                    "True",
                    "",
                    "",
                    severity::ERROR,
                );
                targets.clone()
            }
            // Until the new traffic can be routed, the old routes stay (status keeps them).
            Err(e) => {
                let s = if e.waiting() { "Unknown" } else { "False" };
                set(
                    &mut status.conditions,
                    ROUTES_READY,
                    s,
                    REVISION_MISSING_REASON,
                    &e.to_string(),
                    severity::ERROR,
                );
                status
                    .traffic
                    .iter()
                    .filter_map(|t| {
                        Some(traffic::Resolved {
                            tag: t.tag.clone(),
                            revision_name: t.revision_name.clone()?,
                            latest_revision: t.latest_revision.unwrap_or(false),
                            percent: t.percent,
                        })
                    })
                    .collect()
            }
        };
        conditions::set_ready(
            &mut status.conditions,
            &[CONFIGURATIONS_READY, ROUTES_READY],
        );

        mark_routing_states(&revisions_api, &revisions, &routed, latest_created).await?;
        apply_placeholder(cx, &svc, &self.settings.router_host).await?;
        let gc_pending = collect_garbage(
            &revisions_api,
            &revisions,
            &routed,
            latest_ready,
            &self.settings.gc,
        )
        .await;

        cx.write_status(&svc, &status)
            .await
            .map_err(Error::Status)?;
        // Changes to its Revisions and its Kubernetes Service wake the Service
        // (`labelled_changes`); only GC's clock needs a timer. Otherwise a rare look (Knative's
        // informers resync every 10 h too) and 1000 ksvcs cost no steady reconcile load.
        let resync = if gc_pending { RESYNC } else { IDLE_RESYNC };
        Ok(Action::requeue(resync))
    }

    async fn cleanup(&self, _svc: Arc<Service>, _cx: &Cx<Service>) -> Result<(), Error> {
        Ok(())
    }
}

/// The status fields every reconcile writes whatever happens: URL, address, generation, and
/// what the previous status said otherwise.
fn base_status(svc: &Service, templates: &domain::Templates) -> Result<ServiceStatus, Error> {
    let (name, namespace) = (svc.name_any(), svc.namespace().unwrap_or_default());
    let mut status = svc.status.clone().unwrap_or_default();
    status.observed_generation = svc.metadata.generation;
    status.url = Some(domain::url(&templates.host(&name, &namespace)?));
    status.address = Some(Addressable {
        name: None,
        url: Some(domain::cluster_local_url(&name, &namespace)),
    });
    Ok(status)
}

/// Writes `Ready=False` for a spec Gantry will not run, with an event and a log line, and waits
/// for the Service to change.
async fn refuse(
    cx: &Cx<Service>,
    svc: &Service,
    mut status: ServiceStatus,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    set(
        &mut status.conditions,
        CONFIGURATIONS_READY,
        "False",
        reason,
        message,
        severity::ERROR,
    );
    conditions::set_ready(
        &mut status.conditions,
        &[CONFIGURATIONS_READY, ROUTES_READY],
    );
    cx.report_failure(svc, &status, reason, message)
        .await
        .map_err(Error::Status)?;
    Ok(Action::await_change())
}

fn spec_traffic(svc: &Service) -> Vec<traffic::Target> {
    svc.spec
        .traffic
        .iter()
        .map(|t| traffic::Target {
            tag: t.tag.clone(),
            revision_name: t.revision_name.clone(),
            latest_revision: t.latest_revision,
            percent: t.percent,
        })
        .collect()
}

fn status_target(
    t: &traffic::Resolved,
    name: &str,
    namespace: &str,
    templates: &domain::Templates,
) -> Result<TrafficTarget, domain::Error> {
    let url = match &t.tag {
        Some(tag) => Some(domain::url(&templates.tag_host(tag, name, namespace)?)),
        None => None,
    };
    Ok(TrafficTarget {
        tag: t.tag.clone(),
        revision_name: Some(t.revision_name.clone()),
        latest_revision: Some(t.latest_revision),
        percent: t.percent,
        url,
        ..TrafficTarget::default()
    })
}

/// `ConfigurationsReady` from the latest created Revision's `Ready`.
fn configurations_ready(status: &mut ServiceStatus, name: &str, latest: Option<&Revision>) {
    let cs = &mut status.conditions;
    match latest.map(|r| {
        (
            r.name_any(),
            r.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY)),
        )
    }) {
        Some((_, Some(c))) if c.status == "True" => {
            set(cs, CONFIGURATIONS_READY, "True", "", "", severity::ERROR);
        }
        Some((rev, Some(c))) if c.status == "False" => {
            let message = format!("Revision \"{rev}\" failed with message: {}.", c.message);
            set(
                cs,
                CONFIGURATIONS_READY,
                "False",
                REVISION_FAILED_REASON,
                &message,
                severity::ERROR,
            );
        }
        _ => {
            let message =
                format!("Configuration \"{name}\" is waiting for a Revision to become ready.");
            set(
                cs,
                CONFIGURATIONS_READY,
                "Unknown",
                REVISION_MISSING_REASON,
                &message,
                severity::ERROR,
            );
        }
    }
}

fn rev_condition<'a>(rev: &'a Revision, type_: &str) -> Option<&'a str> {
    rev.status
        .as_ref()
        .and_then(|s| conditions::status(&s.conditions, type_))
}

/// The Revisions this Service owns.
async fn owned_revisions(api: &Api<Revision>, svc: &Service) -> Result<Vec<Revision>, Error> {
    let selector = format!("{SERVICE_LABEL}={}", svc.name_any());
    let uid = svc.uid();
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::List)?;
    Ok(list
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .collect())
}

/// Knative's `routingState`: `active` for routed Revisions (and the latest created one while it
/// comes up), `reserve` for the others, with the time it changed (GC counts from it).
async fn mark_routing_states(
    api: &Api<Revision>,
    revisions: &[Revision],
    routed: &[traffic::Resolved],
    latest_created: Option<&Revision>,
) -> Result<(), Error> {
    let latest = latest_created.map(|r| r.name_any());
    for rev in revisions {
        let name = rev.name_any();
        let active = traffic::routes_to(routed, &name) || latest.as_deref() == Some(name.as_str());
        let state = if active {
            ROUTING_STATE_ACTIVE
        } else {
            ROUTING_STATE_RESERVE
        };
        if rev.labels().get(ROUTING_STATE_LABEL).map(String::as_str) == Some(state) {
            continue;
        }
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let patch = json!({ "metadata": {
            "labels": { ROUTING_STATE_LABEL: state },
            "annotations": { ROUTING_STATE_MODIFIED_ANNOTATION: now.to_string() },
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Label { name, source })?;
    }
    Ok(())
}

/// Keeps the Kubernetes Service named after the Knative Service pointing at the router.
async fn apply_placeholder(
    cx: &Cx<Service>,
    svc: &Service,
    router_host: &str,
) -> Result<(), Error> {
    let wanted = resources::placeholder_service(svc, router_host);
    let api: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(cx.client().clone(), &svc.namespace().unwrap_or_default());
    let mut body = serde_json::to_value(&wanted)?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Service");
    api.patch(
        &svc.name_any(),
        &PatchParams::apply(CONTROLLER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Placeholder)?;
    Ok(())
}

/// Deletes the Revisions Knative's `config-gc` rules select. Failures are logged and retried at
/// the next reconcile, as Knative does.
async fn collect_garbage(
    api: &Api<Revision>,
    revisions: &[Revision],
    routed: &[traffic::Resolved],
    latest_ready: Option<&Revision>,
    config: &gc::Config,
) -> bool {
    let candidates: Vec<gc::Candidate> = revisions
        .iter()
        .map(|r| {
            let name = r.name_any();
            gc::Candidate {
                reserve: !traffic::routes_to(routed, &name)
                    && r.labels().get(ROUTING_STATE_LABEL).map(String::as_str)
                        == Some(ROUTING_STATE_RESERVE),
                created: r
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or_else(jiff::Timestamp::now, |t| t.0),
                routing_state_modified: r
                    .annotations()
                    .get(ROUTING_STATE_MODIFIED_ANNOTATION)
                    .and_then(|t| t.parse().ok()),
                preserved: r
                    .annotations()
                    .get(NO_GC_ANNOTATION)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                name,
            }
        })
        .collect();
    let latest = latest_ready.map(|r| r.name_any());
    let collect = |now| gc::collect(&candidates, latest.as_deref(), config, now);
    let due = collect(jiff::Timestamp::now());
    // What would go if enough time passed: more than is due now means a later look is needed.
    let mut pending = collect(jiff::Timestamp::MAX).len() > due.len();
    for name in due {
        tracing::info!(namespace = api.namespace().unwrap_or_default(), revision = %name, "deleting Revision without traffic (config-gc)");
        if let Err(err) = api.delete(&name, &DeleteParams::background()).await {
            tracing::warn!(revision = %name, %err, "garbage-collecting Revision");
            pending = true;
        }
    }
    pending
}

/// Services whose objects of kind `K` changed, from a metadata-only watch of the objects that
/// carry the Service label: Revisions (one became Ready, scaled, failed) and the Kubernetes
/// Service named after it (edited or deleted by hand: put back at once, as Knative's informers
/// do, not at the next resync). The label is all this reads; the reconcile reads the rest.
pub fn labelled_changes<K>(
    client: Client,
    namespace: Option<&str>,
) -> impl Stream<Item = ObjectRef<Service>> + Send + 'static
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<PartialObjectMeta<K>> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    watcher(api, watcher::Config::default().labels(SERVICE_LABEL))
        .default_backoff()
        .touched_objects()
        .filter_map(|r| async move {
            let r = r.ok()?;
            let svc = r.labels().get(SERVICE_LABEL)?.clone();
            Some(ObjectRef::new(&svc).within(&r.namespace()?))
        })
}

//! The Revision controller: creates the Revision's Deployment (once, with the initial scale)
//! and reports `Ready`, `ContainerHealthy`, `ResourcesAvailable` and `Active` from it. The
//! Deployment's watch wakes it, so `Active=False`/`NoTraffic` follows a scale to zero by the
//! autoscaler.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use gantry_api::serving::v1::{ContainerStatus, Revision, RevisionStatus};
use gantry_api::serving::{
    ACTIVE, CONTAINER_HEALTHY, DEPLOYING_REASON, INITIAL_SCALE_ANNOTATION, MIN_SCALE_ANNOTATION,
    NO_TRAFFIC_REASON, QUEUED_REASON, RESOURCES_AVAILABLE, REVISION_LABEL, severity,
};
use gantry_core::serving::naming;
use gantry_runtime::controller::{Cx, Reconciler};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::conditions::{self, set};
use crate::{CONTROLLER, INITIAL_SCALE_MANAGER, resources};

/// The Revision controller's domain steps.
pub struct Revisions;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading Deployment {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Deployment {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

impl Reconciler for Revisions {
    type Object = Revision;
    type Error = Error;
    const CONTROLLER: &'static str = CONTROLLER;
    // Its Deployment goes with it (owner reference): nothing to clean up.
    const FINALIZER: Option<&'static str> = None;

    async fn reconcile(&self, rev: Arc<Revision>, cx: &Cx<Revision>) -> Result<Action, Error> {
        let namespace = rev.namespace().unwrap_or_default();
        let name = naming::deployment_name(&rev.name_any());
        let api: Api<Deployment> = Api::namespaced(cx.client().clone(), &namespace);
        let existing = api.get_opt(&name).await.map_err(|source| Error::Read {
            name: name.clone(),
            source,
        })?;
        let deployment = match existing {
            Some(d) => d,
            None => {
                let replicas = initial_replicas(&rev);
                let wanted = resources::deployment(&rev, replicas);
                // The one write of `replicas`, under its own field manager: afterwards the
                // autoscaler owns it through `/scale`.
                let params = PostParams {
                    field_manager: Some(INITIAL_SCALE_MANAGER.into()),
                    ..PostParams::default()
                };
                match api.create(&params, &wanted).await {
                    Ok(d) => d,
                    // Created meanwhile (a previous reconcile's write raced its watch).
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        api.get(&name).await.map_err(|source| Error::Read {
                            name: name.clone(),
                            source,
                        })?
                    }
                    Err(source) => return Err(Error::Create { name, source }),
                }
            }
        };
        let status = status_for(&rev, &deployment);
        cx.write_status(&rev, &status)
            .await
            .map_err(Error::Status)?;
        Ok(Action::await_change())
    }

    async fn cleanup(&self, _rev: Arc<Revision>, _cx: &Cx<Revision>) -> Result<(), Error> {
        Ok(())
    }
}

/// `initial-scale` (default 1) raised to `min-scale`.
pub fn initial_replicas(rev: &Revision) -> i32 {
    let annotations = rev.annotations();
    naming::initial_replicas(
        annotations
            .get(INITIAL_SCALE_ANNOTATION)
            .map(String::as_str),
        annotations.get(MIN_SCALE_ANNOTATION).map(String::as_str),
    )
}

/// The Revision's status from its Deployment. `ContainerHealthy` and `ResourcesAvailable` stay
/// True once a pod was ready (a Revision at zero is still Ready); `Active` (severity Info) says
/// whether it has pods: `False`/`NoTraffic` at zero replicas.
pub fn status_for(rev: &Revision, deployment: &Deployment) -> RevisionStatus {
    let mut status = rev.status.clone().unwrap_or_default();
    status.observed_generation = rev.metadata.generation;
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    status.desired_replicas = Some(desired);
    status.actual_replicas = Some(ready);
    status.container_statuses = rev
        .spec
        .container()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image_digest: None,
        })
        .into_iter()
        .collect();
    let deadline_exceeded = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
        .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let cs = &mut status.conditions;
    let was_healthy = conditions::is_true(cs, CONTAINER_HEALTHY);
    // Scaled to zero from the start (initial-scale 0) is as good as having been up.
    let up = ready > 0 || was_healthy || (desired == 0 && ready == 0);
    if let Some(c) = deadline_exceeded.filter(|_| !up) {
        let message = c.message.clone().unwrap_or_default();
        set(
            cs,
            RESOURCES_AVAILABLE,
            "False",
            "ProgressDeadlineExceeded",
            &message,
            severity::ERROR,
        );
        set(
            cs,
            CONTAINER_HEALTHY,
            "Unknown",
            DEPLOYING_REASON,
            "",
            severity::ERROR,
        );
    } else if up {
        set(cs, RESOURCES_AVAILABLE, "True", "", "", severity::ERROR);
        set(cs, CONTAINER_HEALTHY, "True", "", "", severity::ERROR);
    } else {
        set(
            cs,
            RESOURCES_AVAILABLE,
            "Unknown",
            DEPLOYING_REASON,
            "",
            severity::ERROR,
        );
        set(
            cs,
            CONTAINER_HEALTHY,
            "Unknown",
            DEPLOYING_REASON,
            "",
            severity::ERROR,
        );
    }
    if ready > 0 {
        set(cs, ACTIVE, "True", "", "", severity::INFO);
    } else if desired == 0 {
        set(
            cs,
            ACTIVE,
            "False",
            NO_TRAFFIC_REASON,
            "The target is not receiving traffic.",
            severity::INFO,
        );
    } else {
        if was_healthy {
            let message = "Requests to the target are being buffered as resources are provisioned.";
            set(
                cs,
                ACTIVE,
                "Unknown",
                QUEUED_REASON,
                message,
                severity::INFO,
            );
        } else {
            set(cs, ACTIVE, "Unknown", DEPLOYING_REASON, "", severity::INFO);
        }
    }
    conditions::set_ready(cs, &[RESOURCES_AVAILABLE, CONTAINER_HEALTHY]);
    status
}

/// Revisions whose Deployment changed (replicas, readiness), from a watch on the Deployments
/// Revisions own.
pub fn deployment_changes(
    client: Client,
    namespace: Option<&str>,
) -> impl Stream<Item = ObjectRef<Revision>> + Send + 'static {
    let api: Api<Deployment> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    // Deletions too: a Deployment deleted by hand is created again (with the initial scale).
    watcher(api, watcher::Config::default().labels(REVISION_LABEL))
        .default_backoff()
        .touched_objects()
        .filter_map(|d| async move {
            let d = d.ok()?;
            let rev = d.labels().get(REVISION_LABEL)?.clone();
            Some(ObjectRef::new(&rev).within(&d.namespace()?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::serving::READY;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn cond<'a>(s: &'a RevisionStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn deploying_ready_then_scaled_to_zero() {
        let mut rev = Revision::new("a-00001", Default::default());
        let s = status_for(&rev, &deployment(1, 0));
        assert_eq!(cond(&s, READY).0, "Unknown");
        assert_eq!(cond(&s, ACTIVE), ("Unknown", DEPLOYING_REASON));
        rev.status = Some(s);
        let s = status_for(&rev, &deployment(1, 1));
        assert_eq!(cond(&s, READY).0, "True");
        assert_eq!(cond(&s, ACTIVE).0, "True");
        assert_eq!(s.actual_replicas, Some(1));
        rev.status = Some(s);
        let s = status_for(&rev, &deployment(0, 0));
        assert_eq!(cond(&s, READY).0, "True", "Ready stays True at zero");
        assert_eq!(cond(&s, ACTIVE), ("False", NO_TRAFFIC_REASON));
        let active = s.conditions.iter().find(|c| c.type_ == ACTIVE).unwrap();
        assert_eq!(active.severity, "Info");
        assert_eq!(s.desired_replicas, Some(0));
        rev.status = Some(s);
        let s = status_for(&rev, &deployment(1, 0));
        assert_eq!(cond(&s, ACTIVE), ("Unknown", QUEUED_REASON));
        assert_eq!(cond(&s, READY).0, "True");
    }

    #[test]
    fn initial_scale_zero_is_ready_at_once() {
        let rev = Revision::new("a-00001", Default::default());
        let s = status_for(&rev, &deployment(0, 0));
        assert_eq!(cond(&s, READY).0, "True");
        assert_eq!(cond(&s, ACTIVE), ("False", NO_TRAFFIC_REASON));
    }
}

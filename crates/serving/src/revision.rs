//! The Revision controller: creates the Revision's Deployment (once, with the initial scale),
//! puts back what a hand edit changed in it (everything but `replicas`, which is the
//! autoscaler's), and reports `Ready`, `ContainerHealthy`, `ResourcesAvailable` and `Active`
//! from it. The Deployment's watch wakes it, so `Active=False`/`NoTraffic` follows a scale to
//! zero by the autoscaler.

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
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
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
    #[error("correcting Deployment {name}: {source}")]
    Correct {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("encoding Deployment {name}: {source}")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
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
            Some(d) => correct(&api, &rev, d).await?,
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
        let starving = wants_pods_but_has_none(&deployment);
        let trouble = if starving {
            first_pod_trouble(cx.client(), &namespace, &rev, &deployment).await
        } else {
            None
        };
        let status = status_with_pods(&rev, &deployment, trouble.as_ref());
        cx.write_status(&rev, &status)
            .await
            .map_err(Error::Status)?;
        // Pod conditions change without the Deployment changing (the scheduler, the kubelet):
        // look again while pods are wanted and none is available.
        Ok(if starving {
            Action::requeue(POD_RECHECK)
        } else {
            Action::await_change()
        })
    }

    async fn cleanup(&self, _rev: Arc<Revision>, _cx: &Cx<Revision>) -> Result<(), Error> {
        Ok(())
    }
}

/// The Deployment as the Revision wants it, for server-side apply: without `replicas`, so the
/// apply neither owns nor resets the autoscaler's field.
pub fn applied_deployment(rev: &Revision) -> Result<serde_json::Value, serde_json::Error> {
    let mut body = serde_json::to_value(resources::deployment(rev, 0))?;
    if let Some(spec) = body
        .get_mut("spec")
        .and_then(serde_json::Value::as_object_mut)
    {
        spec.remove("replicas");
    }
    body["apiVersion"] = "apps/v1".into();
    body["kind"] = "Deployment".into();
    Ok(body)
}

/// The first path where `have` lacks or changed something `want` sets, if any (the API server
/// adds defaults and others may add fields: only what the controller sets is compared).
pub fn difference(want: &serde_json::Value, have: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().find_map(|(k, v)| match h.get(k) {
            // Unset or empty in `want`: nothing to compare (an empty map sets nothing).
            _ if v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) => None,
            Some(hv) => difference(v, hv).map(|p| format!(".{k}{p}")),
            None => Some(format!(".{k}")),
        }),
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => w
            .iter()
            .zip(h)
            .enumerate()
            .find_map(|(i, (a, b))| difference(a, b).map(|p| format!("[{i}]{p}"))),
        _ if want == have => None,
        _ => Some(String::new()),
    }
}

/// Puts back what was edited in the Revision's Deployment (by hand, by another tool) with a
/// forced server-side apply of everything but `replicas`. Knative reconciles its Deployment
/// the same way; the replica count stays the autoscaler's.
async fn correct(
    api: &Api<Deployment>,
    rev: &Revision,
    have: Deployment,
) -> Result<Deployment, Error> {
    let name = naming::deployment_name(&rev.name_any());
    let encode = |source| Error::Encode {
        name: name.clone(),
        source,
    };
    let want = applied_deployment(rev).map_err(encode)?;
    let current = serde_json::to_value(&have).map_err(encode)?;
    let compared = |v: &serde_json::Value| {
        serde_json::json!({
            "metadata": { "labels": v["metadata"]["labels"], "annotations": v["metadata"]["annotations"] },
            "spec": v["spec"],
        })
    };
    let Some(changed) = difference(&compared(&want), &compared(&current)) else {
        return Ok(have);
    };
    tracing::info!(
        namespace = rev.namespace().unwrap_or_default(),
        deployment = %name,
        %changed,
        "correcting a changed Revision Deployment (replicas stay the autoscaler's)"
    );
    api.patch(
        &name,
        &PatchParams::apply(CONTROLLER).force(),
        &Patch::Apply(&want),
    )
    .await
    .map_err(|source| Error::Correct {
        name: name.clone(),
        source,
    })
}

/// How often a Revision whose pods do not come up is looked at again.
const POD_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// What Knative surfaces from a Revision's first pod when none is available: the scheduler's
/// refusal, the serving container's last exit, or (after the progress deadline) why it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodTrouble {
    /// `ResourcesAvailable=False` with the pod's `PodScheduled` reason and message.
    Unschedulable { reason: String, message: String },
    /// `ContainerHealthy=False`, reason `ExitCode<n>`.
    Exited { code: i32, message: String },
    /// `ResourcesAvailable=False` with the container's waiting reason (e.g. `ImagePullBackOff`).
    Waiting { reason: String, message: String },
}

/// The Deployment wants pods and has none available (Knative looks at the pods then).
fn wants_pods_but_has_none(d: &Deployment) -> bool {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    desired > 0 && available == 0
}

/// Whether the Deployment's progress deadline passed (`Progressing=False`).
fn timed_out(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
}

/// Knative's reading of one pod (`reconcileDeployment`): unschedulable first, then the serving
/// container's last termination, then, past the deadline, its waiting reason.
pub fn pod_trouble(pod: &Pod, container: &str, deadline_passed: bool) -> Option<PodTrouble> {
    let status = pod.status.as_ref()?;
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| PodTrouble::Unschedulable {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        });
    let cs = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == container);
    let from_container = cs.and_then(|cs| {
        if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            let message = t
                .message
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    if t.exit_code == 0 {
                        "container exited with no error".into()
                    } else {
                        String::new()
                    }
                });
            return Some(PodTrouble::Exited {
                code: t.exit_code,
                message,
            });
        }
        let waiting = cs.state.as_ref()?.waiting.as_ref()?;
        deadline_passed.then(|| PodTrouble::Waiting {
            reason: waiting.reason.clone().unwrap_or_default(),
            message: waiting.message.clone().unwrap_or_default(),
        })
    });
    // Knative applies both; the container's finding is the later, more specific one.
    from_container.or(unschedulable)
}

/// The first pod's trouble, if any. A failed list is logged and read as "no trouble", as
/// Knative does: the next look tries again.
async fn first_pod_trouble(
    client: &Client,
    namespace: &str,
    rev: &Revision,
    d: &Deployment,
) -> Option<PodTrouble> {
    let selector = d
        .spec
        .as_ref()?
        .selector
        .match_labels
        .as_ref()?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(err) => {
            tracing::warn!(%namespace, revision = %rev.name_any(), %err, "listing the Revision's pods");
            return None;
        }
    };
    let container = rev
        .spec
        .container()
        .and_then(|c| c.name.clone())
        .unwrap_or_else(|| gantry_api::serving::DEFAULT_CONTAINER_NAME.to_owned());
    pod_trouble(list.items.first()?, &container, timed_out(d))
}

/// [`status_for`] plus what the first pod says when the Revision has none available.
pub fn status_with_pods(
    rev: &Revision,
    deployment: &Deployment,
    trouble: Option<&PodTrouble>,
) -> RevisionStatus {
    let mut status = status_for(rev, deployment);
    let Some(trouble) = trouble else {
        return status;
    };
    let cs = &mut status.conditions;
    match trouble {
        PodTrouble::Unschedulable { reason, message } | PodTrouble::Waiting { reason, message } => {
            set(
                cs,
                RESOURCES_AVAILABLE,
                "False",
                reason,
                message,
                severity::ERROR,
            );
        }
        PodTrouble::Exited { code, message } => {
            let message = format!("Container failed with: {message}");
            let reason = format!("ExitCode{code}");
            set(
                cs,
                CONTAINER_HEALTHY,
                "False",
                &reason,
                &message,
                severity::ERROR,
            );
        }
    }
    conditions::set_ready(cs, &[RESOURCES_AVAILABLE, CONTAINER_HEALTHY]);
    status
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
    // Metadata only: the label is all this reads, and a whole Deployment (its pod template,
    // `managedFields`) would be decoded for every change only to be dropped.
    let api: Api<PartialObjectMeta<Deployment>> = match namespace {
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
    fn the_applied_deployment_leaves_replicas_out_and_edits_are_found() {
        let rev: Revision = serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": { "name": "a-00001", "namespace": "team", "uid": "u" },
            "spec": { "containers": [{ "name": "user-container", "image": "img:1" }] }
        }))
        .unwrap();
        let want = applied_deployment(&rev).unwrap();
        assert!(want["spec"].get("replicas").is_none());
        assert_eq!(want["kind"], "Deployment");
        // What the API server stores: the same plus defaults and someone's replicas.
        let mut stored = serde_json::to_value(resources::deployment(&rev, 7)).unwrap();
        stored["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            "IfNotPresent".into();
        stored["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst".into();
        stored["metadata"]["uid"] = "d".into();
        assert_eq!(
            difference(&want, &stored),
            None,
            "defaults and replicas are no drift"
        );
        // Created without annotations; the Deployment controller adds its own later.
        stored["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert_eq!(
            difference(&want, &stored),
            None,
            "an empty map sets nothing"
        );
        stored["spec"]["template"]["spec"]["containers"][0]["image"] = "img:hacked".into();
        assert_eq!(
            difference(&want, &stored).as_deref(),
            Some(".spec.template.spec.containers[0].image"),
            "an edited image is drift"
        );
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "p" }, "status": status }))
            .unwrap()
    }

    #[test]
    fn the_first_pod_says_why_there_is_none_as_knative_reports_it() {
        let rev = Revision::new("a-00001", Default::default());
        let unschedulable = pod(serde_json::json!({ "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu."
        }]}));
        let trouble = pod_trouble(&unschedulable, "user-container", false);
        let s = status_with_pods(&rev, &deployment(1, 0), trouble.as_ref());
        assert_eq!(cond(&s, RESOURCES_AVAILABLE), ("False", "Unschedulable"));
        assert_eq!(cond(&s, READY), ("False", "Unschedulable"));

        let crashed = pod(serde_json::json!({ "containerStatuses": [{
            "name": "user-container", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
            "lastState": { "terminated": { "exitCode": 5, "message": "I failed" } },
            "state": { "waiting": { "reason": "CrashLoopBackOff" } }
        }]}));
        let trouble = pod_trouble(&crashed, "user-container", false);
        assert_eq!(
            trouble,
            Some(PodTrouble::Exited {
                code: 5,
                message: "I failed".into()
            })
        );
        let s = status_with_pods(&rev, &deployment(1, 0), trouble.as_ref());
        assert_eq!(cond(&s, CONTAINER_HEALTHY), ("False", "ExitCode5"));
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == CONTAINER_HEALTHY)
            .unwrap();
        assert_eq!(c.message, "Container failed with: I failed");
        assert_eq!(cond(&s, READY).0, "False");

        // Waiting (e.g. pulling) counts only once the progress deadline passed.
        let pulling = pod(serde_json::json!({ "containerStatuses": [{
            "name": "user-container", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": { "waiting": { "reason": "ImagePullBackOff", "message": "can't pull" } }
        }]}));
        assert_eq!(pod_trouble(&pulling, "user-container", false), None);
        assert_eq!(
            pod_trouble(&pulling, "user-container", true),
            Some(PodTrouble::Waiting {
                reason: "ImagePullBackOff".into(),
                message: "can't pull".into()
            })
        );
        // Nothing wrong: the Deployment decides, as before.
        let s = status_with_pods(&rev, &deployment(1, 0), None);
        assert_eq!(cond(&s, RESOURCES_AVAILABLE), ("Unknown", DEPLOYING_REASON));
    }

    #[test]
    fn initial_scale_zero_is_ready_at_once() {
        let rev = Revision::new("a-00001", Default::default());
        let s = status_for(&rev, &deployment(0, 0));
        assert_eq!(cond(&s, READY).0, "True");
        assert_eq!(cond(&s, ACTIVE), ("False", NO_TRAFFIC_REASON));
    }
}

use serde_json::{Value, json};

use super::*;

/// A Deployment as the API server returns it mid-way or after a rollout.
fn deployment(generation: i64, spec_replicas: i64, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web", "namespace": "apps", "generation": generation },
        "spec": {
            "replicas": spec_replicas,
            "progressDeadlineSeconds": 600,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "nginx:1.27" }] }
            }
        },
        "status": status
    })
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-11-26T07:00:00Z"
    })
}

fn with_kind(api_version: &str, kind: &str, rest: Value) -> Value {
    let mut object = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": { "name": "x", "namespace": "apps" }
    });
    if let (Some(target), Value::Object(rest)) = (object.as_object_mut(), rest) {
        for (key, value) in rest {
            if key == "metadata" {
                let meta = target["metadata"].as_object_mut().unwrap();
                for (k, v) in value.as_object().unwrap() {
                    meta.insert(k.clone(), v.clone());
                }
            } else {
                target.insert(key, value);
            }
        }
    }
    object
}

#[track_caller]
fn check(name: &str, object: Value, status: Status, message: &str) {
    let health = compute(&object);
    assert_eq!(health.status, status, "{name}: {health:?}");
    assert!(
        health.message.contains(message),
        "{name}: message {:?} does not contain {message:?}",
        health.message
    );
}

#[test]
fn deployments() {
    let available = condition("Available", "True", "MinimumReplicasAvailable", "ok");
    let new_rs_available = condition(
        "Progressing",
        "True",
        "NewReplicaSetAvailable",
        "ReplicaSet \"web-5d8f\" has successfully progressed.",
    );
    let cases = [
        (
            "rolled out",
            deployment(
                2,
                3,
                json!({
                    "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                    "readyReplicas": 3, "availableReplicas": 3,
                    "conditions": [available.clone(), new_rs_available.clone()]
                }),
            ),
            Status::Current,
            "Deployment is available. Replicas: 3",
        ),
        (
            "new spec not yet observed",
            deployment(
                3,
                3,
                json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                        "readyReplicas": 3, "availableReplicas": 3,
                        "conditions": [available.clone(), new_rs_available.clone()] }),
            ),
            Status::InProgress,
            "Deployment generation is 3, but latest observed generation is 2",
        ),
        (
            "scaling up",
            deployment(
                1,
                3,
                json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                        "readyReplicas": 1, "availableReplicas": 1 }),
            ),
            Status::InProgress,
            "replicas: 1/3",
        ),
        (
            "rolling update half way",
            deployment(
                2,
                2,
                json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                        "readyReplicas": 2, "availableReplicas": 2 }),
            ),
            Status::InProgress,
            "Updated: 1/2",
        ),
        (
            "old pods terminating",
            deployment(
                2,
                2,
                json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 2,
                        "readyReplicas": 2, "availableReplicas": 2 }),
            ),
            Status::InProgress,
            "Pending termination: 1",
        ),
        (
            "updated pods not available",
            deployment(
                2,
                2,
                json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                        "readyReplicas": 1, "availableReplicas": 1 }),
            ),
            Status::InProgress,
            "Available: 1/2",
        ),
        (
            "counts fine but progress not reported yet",
            deployment(
                1,
                1,
                json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                        "readyReplicas": 1, "availableReplicas": 1,
                        "conditions": [available.clone(),
                            condition("Progressing", "True", "ReplicaSetUpdated", "")] }),
            ),
            Status::InProgress,
            "ReplicaSet not Available",
        ),
        (
            "not Available",
            deployment(
                1,
                1,
                json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                        "readyReplicas": 1, "availableReplicas": 1,
                        "conditions": [condition("Available", "False", "MinimumReplicasUnavailable", ""),
                                       new_rs_available.clone()] }),
            ),
            Status::InProgress,
            "Deployment not Available",
        ),
        (
            "progress deadline exceeded fails fast",
            deployment(
                2,
                2,
                json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                        "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1,
                        "conditions": [available.clone(), condition("Progressing", "False",
                            "ProgressDeadlineExceeded",
                            "ReplicaSet \"web-7c9\" has timed out progressing.")] }),
            ),
            Status::Failed,
            "Progress deadline exceeded",
        ),
        (
            "freshly created, no status",
            deployment(1, 1, json!({})),
            Status::InProgress,
            "replicas: 0/1",
        ),
        (
            "scaled to zero",
            deployment(
                4,
                0,
                json!({ "observedGeneration": 4,
                        "conditions": [available.clone(), new_rs_available.clone()] }),
            ),
            Status::Current,
            "Replicas: 0",
        ),
        (
            "being deleted",
            {
                let mut d = deployment(1, 1, json!({ "observedGeneration": 1 }));
                d["metadata"]["deletionTimestamp"] = json!("2026-11-26T07:05:00Z");
                d
            },
            Status::Terminating,
            "Resource scheduled for deletion",
        ),
    ];
    for (name, object, status, message) in cases {
        check(name, object, status, message);
    }
}

#[test]
fn a_deployment_without_progress_deadline_relies_on_counts() {
    let mut d = deployment(
        1,
        2,
        json!({ "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                "readyReplicas": 2, "availableReplicas": 2,
                "conditions": [condition("Available", "True", "MinimumReplicasAvailable", "")] }),
    );
    d["spec"]
        .as_object_mut()
        .unwrap()
        .remove("progressDeadlineSeconds");
    check("no deadline", d, Status::Current, "Deployment is available");
}

#[test]
fn stateful_sets() {
    let sts = |spec: Value, status: Value| {
        with_kind(
            "apps/v1",
            "StatefulSet",
            json!({ "metadata": { "generation": 1 }, "spec": spec, "status": status }),
        )
    };
    let cases = [
        (
            "ready",
            sts(
                json!({ "replicas": 3 }),
                json!({ "observedGeneration": 1, "replicas": 3, "readyReplicas": 3,
                        "currentReplicas": 3, "updatedReplicas": 3,
                        "currentRevision": "db-7b5", "updateRevision": "db-7b5" }),
            ),
            Status::Current,
            "All replicas scheduled as expected. Replicas: 3",
        ),
        (
            "too few replicas",
            sts(
                json!({ "replicas": 3 }),
                json!({ "observedGeneration": 1, "replicas": 2 }),
            ),
            Status::InProgress,
            "Replicas: 2/3",
        ),
        (
            "not ready",
            sts(
                json!({ "replicas": 3 }),
                json!({ "observedGeneration": 1, "replicas": 3, "readyReplicas": 1 }),
            ),
            Status::InProgress,
            "Ready: 1/3",
        ),
        (
            "revision mismatch",
            sts(
                json!({ "replicas": 2 }),
                json!({ "observedGeneration": 1, "replicas": 2, "readyReplicas": 2,
                        "currentReplicas": 2, "updatedReplicas": 1,
                        "currentRevision": "db-1", "updateRevision": "db-2" }),
            ),
            Status::InProgress,
            "Waiting for updated revision to match current",
        ),
        (
            "partition rollout pending",
            sts(
                json!({ "replicas": 4, "updateStrategy": { "type": "RollingUpdate",
                        "rollingUpdate": { "partition": 2 } } }),
                json!({ "observedGeneration": 1, "replicas": 4, "readyReplicas": 4,
                        "updatedReplicas": 1 }),
            ),
            Status::InProgress,
            "updated: 1/2",
        ),
        (
            "partition rollout done",
            sts(
                json!({ "replicas": 4, "updateStrategy": { "type": "RollingUpdate",
                        "rollingUpdate": { "partition": 2 } } }),
                json!({ "observedGeneration": 1, "replicas": 4, "readyReplicas": 4,
                        "updatedReplicas": 2 }),
            ),
            Status::Current,
            "Partition rollout complete. updated: 2",
        ),
        (
            "OnDelete is user managed",
            sts(
                json!({ "replicas": 4, "updateStrategy": { "type": "OnDelete" } }),
                json!({ "observedGeneration": 1 }),
            ),
            Status::Current,
            "ondelete",
        ),
    ];
    for (name, object, status, message) in cases {
        check(name, object, status, message);
    }
}

#[test]
fn daemon_sets_and_replica_sets() {
    let ds = |status: Value| {
        with_kind(
            "apps/v1",
            "DaemonSet",
            json!({ "metadata": { "generation": 1 }, "status": status }),
        )
    };
    let rs = |replicas: i64, status: Value| {
        with_kind(
            "apps/v1",
            "ReplicaSet",
            json!({ "metadata": { "generation": 1 }, "spec": { "replicas": replicas },
                    "status": status }),
        )
    };
    let cases = [
        (
            "daemonset not observed",
            ds(json!({})),
            Status::InProgress,
            "Missing .status.desiredNumberScheduled",
        ),
        (
            "daemonset scheduling",
            ds(
                json!({ "observedGeneration": 1, "desiredNumberScheduled": 3,
                       "currentNumberScheduled": 2 }),
            ),
            Status::InProgress,
            "Current: 2/3",
        ),
        (
            "daemonset not ready",
            ds(
                json!({ "observedGeneration": 1, "desiredNumberScheduled": 3,
                       "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
                       "numberAvailable": 3, "numberReady": 2 }),
            ),
            Status::InProgress,
            "Ready: 2/3",
        ),
        (
            "daemonset ready",
            ds(
                json!({ "observedGeneration": 1, "desiredNumberScheduled": 3,
                       "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
                       "numberAvailable": 3, "numberReady": 3 }),
            ),
            Status::Current,
            "Replicas: 3",
        ),
        (
            "replicaset failure",
            rs(
                2,
                json!({ "observedGeneration": 1, "conditions": [condition("ReplicaFailure",
                    "True", "FailedCreate", "pods \"x\" is forbidden: exceeded quota")] }),
            ),
            Status::InProgress,
            "Replica Failure condition",
        ),
        (
            "replicaset ready",
            rs(
                2,
                json!({ "observedGeneration": 1, "replicas": 2, "fullyLabeledReplicas": 2,
                        "readyReplicas": 2, "availableReplicas": 2 }),
            ),
            Status::Current,
            "ReplicaSet is available. Replicas: 2",
        ),
    ];
    for (name, object, status, message) in cases {
        check(name, object, status, message);
    }
}

#[test]
fn jobs_pods_and_claims() {
    let job = |status: Value| {
        with_kind(
            "batch/v1",
            "Job",
            json!({ "spec": { "completions": 1, "backoffLimit": 0 }, "status": status }),
        )
    };
    let pod = |status: Value| with_kind("v1", "Pod", json!({ "status": status }));
    let pvc = |status: Value| with_kind("v1", "PersistentVolumeClaim", json!({ "status": status }));
    let cases = [
        (
            "job not started",
            job(json!({})),
            Status::InProgress,
            "Job not started",
        ),
        (
            "job running",
            job(json!({ "startTime": "2026-11-26T07:00:00Z", "active": 1 })),
            Status::Current,
            "Job in progress. success:0, active: 1, failed: 0",
        ),
        (
            "job complete",
            job(json!({ "startTime": "2026-11-26T07:00:00Z", "succeeded": 1,
                        "conditions": [condition("Complete", "True", "", "")] })),
            Status::Current,
            "Job Completed. succeeded: 1/1",
        ),
        (
            "job failed",
            job(json!({ "startTime": "2026-11-26T07:00:00Z", "failed": 1,
                        "conditions": [condition("Failed", "True", "BackoffLimitExceeded",
                            "Job has reached the specified backoff limit")] })),
            Status::Failed,
            "Job Failed. failed: 1/1",
        ),
        (
            "pod ready",
            pod(json!({ "phase": "Running",
                        "conditions": [condition("Ready", "True", "", "")] })),
            Status::Current,
            "Pod is Ready",
        ),
        (
            "pod crash looping",
            pod(json!({ "phase": "Running",
                "conditions": [condition("Ready", "False", "ContainersNotReady", "")],
                "containerStatuses": [
                    { "name": "app", "state": { "waiting": { "reason": "CrashLoopBackOff" } } },
                    { "name": "sidecar", "state": { "running": {} } }
                ] })),
            Status::Failed,
            "Containers in CrashLoop state: app",
        ),
        (
            "pod unschedulable",
            pod(json!({ "phase": "Pending",
                "conditions": [condition("PodScheduled", "False", "Unschedulable",
                    "0/1 nodes are available")] })),
            Status::Failed,
            "Pod could not be scheduled",
        ),
        (
            "pod pending",
            pod(json!({ "phase": "Pending" })),
            Status::InProgress,
            "Pending phase",
        ),
        (
            "pod not observed",
            pod(json!({})),
            Status::InProgress,
            "Pod phase not available",
        ),
        (
            "pod completed",
            pod(json!({ "phase": "Succeeded" })),
            Status::Current,
            "completed successfully",
        ),
        (
            "pod odd phase",
            pod(json!({ "phase": "Exploded" })),
            Status::Unknown,
            "unknown phase Exploded",
        ),
        (
            "pvc bound",
            pvc(json!({ "phase": "Bound" })),
            Status::Current,
            "PVC is Bound",
        ),
        (
            "pvc pending",
            pvc(json!({ "phase": "Pending" })),
            Status::InProgress,
            "PVC is not Bound. phase: Pending",
        ),
    ];
    for (name, object, status, message) in cases {
        check(name, object, status, message);
    }
}

#[test]
fn services_crds_pdbs_and_always_ready_kinds() {
    let svc = |spec: Value| with_kind("v1", "Service", json!({ "spec": spec }));
    let crd = |conditions: Value| {
        with_kind(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({ "status": { "conditions": conditions } }),
        )
    };
    let cases = [
        (
            "cluster ip service",
            svc(json!({ "type": "ClusterIP", "clusterIP": "10.0.0.12" })),
            Status::Current,
            "Service is ready",
        ),
        (
            "load balancer without ip",
            svc(json!({ "type": "LoadBalancer" })),
            Status::InProgress,
            "ClusterIP not set. Service type: LoadBalancer",
        ),
        (
            "load balancer with ip",
            svc(json!({ "type": "LoadBalancer", "clusterIP": "10.0.0.13" })),
            Status::Current,
            "Service is ready",
        ),
        (
            "crd established",
            crd(json!([
                condition("NamesAccepted", "True", "NoConflicts", ""),
                condition("Established", "True", "InitialNamesAccepted", "")
            ])),
            Status::Current,
            "CRD is established",
        ),
        (
            "crd installing",
            crd(json!([condition(
                "Established",
                "False",
                "Installing",
                "installing"
            )])),
            Status::InProgress,
            "Install in progress",
        ),
        (
            "crd without conditions yet",
            crd(json!([])),
            Status::InProgress,
            "Install in progress",
        ),
        (
            "crd names conflict",
            crd(json!([condition(
                "NamesAccepted",
                "False",
                "ListKindConflict",
                "\"WidgetList\" is already in use"
            )])),
            Status::Failed,
            "already in use",
        ),
        (
            "pdb observed",
            with_kind(
                "policy/v1",
                "PodDisruptionBudget",
                json!({ "metadata": { "generation": 2 }, "status": { "observedGeneration": 2 } }),
            ),
            Status::Current,
            "AllowedDisruptions has been computed.",
        ),
        (
            "pdb not observed",
            with_kind(
                "policy/v1",
                "PodDisruptionBudget",
                json!({ "metadata": { "generation": 2 }, "status": { "observedGeneration": 1 } }),
            ),
            Status::InProgress,
            "latest observed generation is 1",
        ),
        (
            "configmap",
            with_kind("v1", "ConfigMap", json!({ "data": { "a": "b" } })),
            Status::Current,
            "always ready",
        ),
        (
            "serviceaccount",
            with_kind("v1", "ServiceAccount", json!({})),
            Status::Current,
            "Resource is current",
        ),
    ];
    for (name, object, status, message) in cases {
        check(name, object, status, message);
    }
}

#[test]
fn flux_objects_use_their_conditions() {
    let ks = |generation: i64, status: Value| {
        with_kind(
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            json!({ "metadata": { "generation": generation }, "status": status }),
        )
    };
    let cases = [
        (
            "ready",
            ks(
                2,
                json!({ "observedGeneration": 2, "conditions": [condition("Ready", "True",
                    "ReconciliationSucceeded", "Applied revision: main@sha1:abc")] }),
            ),
            Status::Current,
            "Resource is current",
        ),
        (
            "reconciling",
            ks(
                2,
                json!({ "observedGeneration": 2, "conditions": [
                    condition("Reconciling", "True", "Progressing", "Reconciliation in progress"),
                    condition("Ready", "Unknown", "Progressing", "Reconciliation in progress")] }),
            ),
            Status::InProgress,
            "Reconciliation in progress",
        ),
        (
            "stalled",
            ks(
                2,
                json!({ "observedGeneration": 2, "conditions": [
                    condition("Stalled", "True", "BuildFailed", "kustomize build failed"),
                    condition("Ready", "False", "BuildFailed", "kustomize build failed")] }),
            ),
            Status::Failed,
            "kustomize build failed",
        ),
        (
            "not ready, retrying",
            ks(
                2,
                json!({ "observedGeneration": 2, "conditions": [condition("Ready", "False",
                    "HealthCheckFailed", "timeout waiting for: [Deployment/apps/web status: 'InProgress']")] }),
            ),
            Status::InProgress,
            "timeout waiting for",
        ),
        (
            "default observedGeneration -1",
            ks(1, json!({ "observedGeneration": -1 })),
            Status::InProgress,
            "Kustomization generation is 1, but latest observed generation is -1",
        ),
        (
            "custom resource without status",
            with_kind("example.com/v1", "Widget", json!({ "spec": { "size": 1 } })),
            Status::Current,
            "Resource is current",
        ),
    ];
    for (name, object, status, message) in cases {
        check(name, object, status, message);
    }
}

#[test]
fn status_spelling_matches_kstatus() {
    let all = [
        (Status::InProgress, "InProgress"),
        (Status::Failed, "Failed"),
        (Status::Current, "Current"),
        (Status::Terminating, "Terminating"),
        (Status::NotFound, "NotFound"),
        (Status::Unknown, "Unknown"),
    ];
    for (status, text) in all {
        assert_eq!(status.to_string(), text);
    }
    assert_eq!(Health::not_found().status, Status::NotFound);
}

#[test]
fn garbage_never_panics() {
    for value in [
        json!(null),
        json!("text"),
        json!({ "kind": 5 }),
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "status": "weird" }),
        json!({ "apiVersion": "v1", "kind": "Pod", "status": { "conditions": "no" } }),
    ] {
        let _ = compute(&value);
    }
}

#[test]
fn flux_waits_for_jobs_to_complete() {
    let job = |status: Value| {
        with_kind(
            "batch/v1",
            "Job",
            json!({ "spec": { "completions": 1 }, "status": status }),
        )
    };
    let running = job(json!({ "startTime": "2026-11-26T07:00:00Z", "active": 1 }));
    assert_eq!(
        compute(&running).status,
        Status::Current,
        "kstatus: a running Job is Current"
    );
    let health = compute_flux(&running);
    assert_eq!(health, Health::in_progress("Job in progress"));
    let done = job(json!({ "startTime": "2026-11-26T07:00:00Z", "succeeded": 1,
        "conditions": [condition("Complete", "True", "", "")] }));
    assert_eq!(compute_flux(&done).status, Status::Current);
    let failed = job(json!({ "failed": 1,
        "conditions": [condition("Failed", "True", "BackoffLimitExceeded", "")] }));
    assert_eq!(compute_flux(&failed).status, Status::Failed);
    let deployment = deployment(1, 1, json!({}));
    assert_eq!(compute_flux(&deployment), compute(&deployment));
}

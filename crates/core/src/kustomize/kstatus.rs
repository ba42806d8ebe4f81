//! Health of a Kubernetes object, computed from the object alone, with the rules of kstatus
//! (sigs.k8s.io/cli-utils `pkg/kstatus/status`), which is what Flux's health checks use.
//!
//! The order of the checks matters and follows kstatus:
//! 1. `metadata.deletionTimestamp` set: [`Status::Terminating`].
//! 2. `metadata.generation` differs from `status.observedGeneration` (when both exist):
//!    [`Status::InProgress`], the controller has not seen the latest spec.
//! 3. `Reconciling=True`: [`Status::InProgress`]; `Stalled=True`: [`Status::Failed`].
//! 4. Kind-specific rules for the built-in workloads, PVC, Service, CRD, PDB, Job, Pod.
//! 5. Anything else: [`Status::Current`].
//!
//! One deliberate addition to kstatus at step 5: an object with a `Ready` condition that is not
//! `True` is [`Status::InProgress`] rather than `Current`. Plain kstatus would call a Flux object
//! (or a cert-manager Certificate) healthy while its `Ready` is `False` without `Stalled`; a
//! health check that waits for it must not.

use std::fmt;

use serde_json::Value;

/// The health of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The controller is still working towards the desired state.
    InProgress,
    /// The controller gave up or the rollout cannot succeed without a change.
    Failed,
    /// The desired state is reached.
    Current,
    /// The object is being deleted.
    Terminating,
    /// The object does not exist.
    NotFound,
    /// The status could not be determined (e.g. an unknown Pod phase).
    Unknown,
}

impl Status {
    /// The kstatus spelling (`InProgress`, `Current`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "InProgress",
            Status::Failed => "Failed",
            Status::Current => "Current",
            Status::Terminating => "Terminating",
            Status::NotFound => "NotFound",
            Status::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A computed status with a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub status: Status,
    pub message: String,
}

impl Health {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Health {
            status,
            message: message.into(),
        }
    }

    fn current(message: impl Into<String>) -> Self {
        Health::new(Status::Current, message)
    }

    fn in_progress(message: impl Into<String>) -> Self {
        Health::new(Status::InProgress, message)
    }

    fn failed(message: impl Into<String>) -> Self {
        Health::new(Status::Failed, message)
    }

    /// The health of an object that does not exist.
    pub fn not_found() -> Self {
        Health::new(Status::NotFound, "Resource not found")
    }
}

/// Computes the health of `object` (a whole object as read from the API server, status
/// included).
pub fn compute(object: &Value) -> Health {
    if let Some(health) = generic(object) {
        return health;
    }
    let group = api_group(object);
    let kind = str_at(object, &["kind"]).unwrap_or_default();
    match (group, kind) {
        ("", "Service") => service(object),
        ("", "Pod") => pod(object),
        ("", "PersistentVolumeClaim") => pvc(object),
        ("", "Secret" | "ConfigMap") | ("batch", "CronJob") => {
            Health::current("Resource is always ready")
        }
        ("apps", "StatefulSet") => stateful_set(object),
        ("apps" | "extensions", "DaemonSet") => daemon_set(object),
        ("apps" | "extensions", "Deployment") => deployment(object),
        ("apps" | "extensions", "ReplicaSet") => replica_set(object),
        ("policy", "PodDisruptionBudget") => {
            // The disruption controller sets no conditions; a matching observedGeneration
            // (checked above) is all there is to know.
            Health::current("AllowedDisruptions has been computed.")
        }
        ("batch", "Job") => job(object),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(object),
        _ => ready_condition(object),
    }
}

/// Health as Flux's kustomize-controller judges it when waiting: [`compute`], except that a
/// Job is `Current` only once it has completed (kstatus calls a running Job `Current`; a
/// health check that waits for a migration Job must wait for it to finish).
pub fn compute_flux(object: &Value) -> Health {
    let is_job = api_group(object) == "batch" && str_at(object, &["kind"]) == Some("Job");
    if !is_job {
        return compute(object);
    }
    if let Some(health) = generic(object) {
        return health;
    }
    let completed = conditions(object)
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True");
    let health = job(object);
    if health.status == Status::Current && !completed {
        return Health::in_progress("Job in progress");
    }
    health
}

/// The group of `apiVersion` (empty for the core group).
fn api_group(object: &Value) -> &str {
    match str_at(object, &["apiVersion"]) {
        Some(api_version) => match api_version.split_once('/') {
            Some((group, _)) => group,
            None => "",
        },
        None => "",
    }
}

fn at<'a>(object: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(object, |value, key| value.get(key))
}

fn str_at<'a>(object: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(object, path).and_then(Value::as_str)
}

fn int_at(object: &Value, path: &[&str], default: i64) -> i64 {
    at(object, path).and_then(Value::as_i64).unwrap_or(default)
}

/// A condition from `status.conditions` in the usual shape.
struct Condition<'a> {
    type_: &'a str,
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

fn conditions(object: &Value) -> Vec<Condition<'_>> {
    let Some(list) = at(object, &["status", "conditions"]).and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|c| Condition {
            type_: str_at(c, &["type"]).unwrap_or_default(),
            status: str_at(c, &["status"]).unwrap_or_default(),
            reason: str_at(c, &["reason"]).unwrap_or_default(),
            message: str_at(c, &["message"]).unwrap_or_default(),
        })
        .collect()
}

/// Rules that hold for every kind; `None` when they decide nothing.
fn generic(object: &Value) -> Option<Health> {
    if str_at(object, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_empty()) {
        return Some(Health::new(
            Status::Terminating,
            "Resource scheduled for deletion",
        ));
    }
    let generation = at(object, &["metadata", "generation"]).and_then(Value::as_i64);
    let observed = at(object, &["status", "observedGeneration"]).and_then(Value::as_i64);
    if let (Some(generation), Some(observed)) = (generation, observed)
        && generation != observed
    {
        let kind = str_at(object, &["kind"]).unwrap_or_default();
        return Some(Health::in_progress(format!(
            "{kind} generation is {generation}, but latest observed generation is {observed}"
        )));
    }
    for c in conditions(object) {
        if c.type_ == "Reconciling" && c.status == "True" {
            return Some(Health::in_progress(c.message));
        }
        if c.type_ == "Stalled" && c.status == "True" {
            return Some(Health::failed(c.message));
        }
    }
    None
}

fn ready_condition(object: &Value) -> Health {
    match conditions(object).into_iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status != "True" => {
            let message = if c.message.is_empty() {
                format!("Ready condition is {}", c.status)
            } else {
                c.message.to_string()
            };
            Health::in_progress(message)
        }
        _ => Health::current("Resource is current"),
    }
}

fn deployment(object: &Value) -> Health {
    // Without progressDeadlineSeconds the controller never reports progress, so only the
    // replica counts can tell (kstatus treats i32::MAX as "unset", as the controller does).
    let deadline = int_at(
        object,
        &["spec", "progressDeadlineSeconds"],
        i32::MAX as i64,
    );
    let mut progressing = deadline == i32::MAX as i64;
    let mut available = false;
    for c in conditions(object) {
        match c.type_ {
            "Progressing" => {
                // Fail fast: the controller itself has given up on this rollout.
                if c.reason == "ProgressDeadlineExceeded" {
                    return Health::failed("Progress deadline exceeded");
                }
                if c.status == "True" && c.reason == "NewReplicaSetAvailable" {
                    progressing = true;
                }
            }
            "Available" if c.status == "True" => available = true,
            _ => {}
        }
    }
    let spec = int_at(object, &["spec", "replicas"], 1);
    let replicas = int_at(object, &["status", "replicas"], 0);
    let updated = int_at(object, &["status", "updatedReplicas"], 0);
    let ready = int_at(object, &["status", "readyReplicas"], 0);
    let avail = int_at(object, &["status", "availableReplicas"], 0);
    if spec > replicas {
        return Health::in_progress(format!("replicas: {replicas}/{spec}"));
    }
    if spec > updated {
        return Health::in_progress(format!("Updated: {updated}/{spec}"));
    }
    if replicas > spec {
        return Health::in_progress(format!("Pending termination: {}", replicas - spec));
    }
    if updated > avail {
        return Health::in_progress(format!("Available: {avail}/{updated}"));
    }
    if spec > ready {
        return Health::in_progress(format!("Ready: {ready}/{spec}"));
    }
    if !progressing {
        return Health::in_progress("ReplicaSet not Available");
    }
    if !available {
        return Health::in_progress("Deployment not Available");
    }
    Health::current(format!("Deployment is available. Replicas: {replicas}"))
}

fn stateful_set(object: &Value) -> Health {
    if str_at(object, &["spec", "updateStrategy", "type"]) == Some("OnDelete") {
        return Health::current("StatefulSet is using the ondelete update strategy");
    }
    let spec = int_at(object, &["spec", "replicas"], 1);
    let ready = int_at(object, &["status", "readyReplicas"], 0);
    let current = int_at(object, &["status", "currentReplicas"], 0);
    let updated = int_at(object, &["status", "updatedReplicas"], 0);
    let replicas = int_at(object, &["status", "replicas"], 0);
    let partition = int_at(
        object,
        &["spec", "updateStrategy", "rollingUpdate", "partition"],
        -1,
    );
    if spec > replicas {
        return Health::in_progress(format!("Replicas: {replicas}/{spec}"));
    }
    if spec > ready {
        return Health::in_progress(format!("Ready: {ready}/{spec}"));
    }
    if replicas > spec {
        return Health::in_progress(format!("Pending termination: {}", replicas - spec));
    }
    if partition != -1 {
        if updated < spec - partition {
            return Health::in_progress(format!("updated: {updated}/{}", spec - partition));
        }
        return Health::current(format!("Partition rollout complete. updated: {updated}"));
    }
    if spec > current {
        return Health::in_progress(format!("current: {current}/{spec}"));
    }
    let current_revision = str_at(object, &["status", "currentRevision"]).unwrap_or_default();
    let update_revision = str_at(object, &["status", "updateRevision"]).unwrap_or_default();
    if current_revision != update_revision {
        return Health::in_progress("Waiting for updated revision to match current");
    }
    Health::current(format!(
        "All replicas scheduled as expected. Replicas: {replicas}"
    ))
}

fn daemon_set(object: &Value) -> Health {
    let desired = int_at(object, &["status", "desiredNumberScheduled"], -1);
    let current = int_at(object, &["status", "currentNumberScheduled"], 0);
    let updated = int_at(object, &["status", "updatedNumberScheduled"], 0);
    let available = int_at(object, &["status", "numberAvailable"], 0);
    let ready = int_at(object, &["status", "numberReady"], 0);
    if desired == -1 {
        return Health::in_progress("Missing .status.desiredNumberScheduled");
    }
    if desired > current {
        return Health::in_progress(format!("Current: {current}/{desired}"));
    }
    if desired > updated {
        return Health::in_progress(format!("Updated: {updated}/{desired}"));
    }
    if desired > available {
        return Health::in_progress(format!("Available: {available}/{desired}"));
    }
    if desired > ready {
        return Health::in_progress(format!("Ready: {ready}/{desired}"));
    }
    Health::current(format!(
        "All replicas scheduled as expected. Replicas: {desired}"
    ))
}

fn replica_set(object: &Value) -> Health {
    if conditions(object)
        .iter()
        .any(|c| c.type_ == "ReplicaFailure" && c.status == "True")
    {
        return Health::in_progress("Replica Failure condition. Check Pods");
    }
    let spec = int_at(object, &["spec", "replicas"], 1);
    let replicas = int_at(object, &["status", "replicas"], 0);
    let ready = int_at(object, &["status", "readyReplicas"], 0);
    let available = int_at(object, &["status", "availableReplicas"], 0);
    let labelled = int_at(object, &["status", "fullyLabeledReplicas"], 0);
    if spec > labelled {
        return Health::in_progress(format!("Labelled: {labelled}/{spec}"));
    }
    if spec > available {
        return Health::in_progress(format!("Available: {available}/{spec}"));
    }
    if spec > ready {
        return Health::in_progress(format!("Ready: {ready}/{spec}"));
    }
    if replicas > spec {
        return Health::in_progress(format!("Pending termination: {}", replicas - spec));
    }
    Health::current(format!("ReplicaSet is available. Replicas: {replicas}"))
}

fn pvc(object: &Value) -> Health {
    match str_at(object, &["status", "phase"]) {
        Some("Bound") => Health::current("PVC is Bound"),
        phase => Health::in_progress(format!(
            "PVC is not Bound. phase: {}",
            phase.unwrap_or("unknown")
        )),
    }
}

fn pod(object: &Value) -> Health {
    let conditions = conditions(object);
    match str_at(object, &["status", "phase"]).unwrap_or_default() {
        "Succeeded" => Health::current("Pod has completed successfully"),
        "Failed" => Health::current("Pod has completed, but not successfully"),
        "Running" => {
            if conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                return Health::current("Pod is Ready");
            }
            let crash_looping = crash_looping_containers(object);
            if !crash_looping.is_empty() {
                return Health::failed(format!(
                    "Containers in CrashLoop state: {}",
                    crash_looping.join(",")
                ));
            }
            Health::in_progress("Pod is running but is not Ready")
        }
        "Pending" => {
            let unschedulable = conditions.iter().any(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason == "Unschedulable"
            });
            if unschedulable {
                return Health::failed("Pod could not be scheduled");
            }
            Health::in_progress("Pod is in the Pending phase")
        }
        "" => Health::in_progress("Pod phase not available"),
        other => Health::new(Status::Unknown, format!("unknown phase {other}")),
    }
}

fn crash_looping_containers(object: &Value) -> Vec<&str> {
    let Some(statuses) = at(object, &["status", "containerStatuses"]).and_then(Value::as_array)
    else {
        return Vec::new();
    };
    statuses
        .iter()
        .filter(|s| str_at(s, &["state", "waiting", "reason"]) == Some("CrashLoopBackOff"))
        .filter_map(|s| str_at(s, &["name"]))
        .collect()
}

fn job(object: &Value) -> Health {
    let parallelism = int_at(object, &["spec", "parallelism"], 1);
    let completions = int_at(object, &["spec", "completions"], parallelism);
    let succeeded = int_at(object, &["status", "succeeded"], 0);
    let active = int_at(object, &["status", "active"], 0);
    let failed = int_at(object, &["status", "failed"], 0);
    for c in conditions(object) {
        match (c.type_, c.status) {
            ("Complete", "True") => {
                return Health::current(format!(
                    "Job Completed. succeeded: {succeeded}/{completions}"
                ));
            }
            ("Failed", "True") => {
                return Health::failed(format!("Job Failed. failed: {failed}/{completions}"));
            }
            _ => {}
        }
    }
    if str_at(object, &["status", "startTime"]).is_none_or(str::is_empty) {
        return Health::in_progress("Job not started");
    }
    Health::current(format!(
        "Job in progress. success:{succeeded}, active: {active}, failed: {failed}"
    ))
}

fn service(object: &Value) -> Health {
    // kstatus deliberately does not wait for a load balancer's ingress (clusters without a
    // load-balancer controller would never become healthy); only the cluster IP must exist.
    let type_ = str_at(object, &["spec", "type"]).unwrap_or("ClusterIP");
    let cluster_ip = str_at(object, &["spec", "clusterIP"]).unwrap_or_default();
    if type_ == "LoadBalancer" && cluster_ip.is_empty() {
        return Health::in_progress("ClusterIP not set. Service type: LoadBalancer");
    }
    Health::current("Service is ready")
}

fn crd(object: &Value) -> Health {
    for c in conditions(object) {
        if c.type_ == "NamesAccepted" && c.status == "False" {
            return Health::failed(c.message);
        }
        if c.type_ == "Established" {
            if c.status == "False" && c.reason != "Installing" {
                return Health::failed(c.message);
            }
            if c.status == "True" {
                return Health::current("CRD is established");
            }
        }
    }
    Health::in_progress("Install in progress")
}

#[cfg(test)]
mod tests;

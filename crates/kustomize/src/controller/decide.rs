//! The Kustomization controller's decisions, apart from the steps that act on them: what status
//! an outcome gives, which failures are announced, whether a revision is already applied,
//! whether dependencies allow a run. Pure functions of objects, tested without a cluster.

use std::time::Duration;

use gantry_api::kustomize::v1::{
    HEALTH_CHECK_FAILED_REASON, Kustomization, KustomizationStatus, RECONCILIATION_SUCCEEDED_REASON,
};
use gantry_api::meta::{DEPENDENCY_NOT_READY_REASON, HEALTHY_CONDITION, READY_CONDITION};
use gantry_api::source::v1::{GitRepository, OCIRepository};
use gantry_core::kustomize::inventory::{InventoryEntry, ObjectId};
use gantry_runtime::conditions::{self, Status};
use gantry_runtime::events::Severity;
use kube::ResourceExt;

/// A failed step, carried to the status as Flux's reason and message.
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    /// Only a spec change can fix it: `Stalled=True` and no retries.
    pub terminal: bool,
    /// What the `Healthy` condition says, when the failure is about health.
    pub healthy: Option<bool>,
    /// The event it is announced with; `None` only logs it.
    pub event: Option<Severity>,
}

impl Failure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            terminal: false,
            healthy: None,
            event: Some(Severity::Error),
        }
    }

    pub fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// Waiting for another object rather than failing: Flux only logs a missing source or
    /// artifact (no event, so no alert when everything starts at once) and announces an
    /// unready dependency as info.
    pub fn waiting(mut self, event: Option<Severity>) -> Self {
        self.event = event;
        self
    }

    /// A dependency that is not ready (yet): waited for, announced as info.
    pub fn dependency(namespace: &str, name: &str, why: &str) -> Self {
        Self::new(
            DEPENDENCY_NOT_READY_REASON,
            format!("dependency '{namespace}/{name}' {why}"),
        )
        .waiting(Some(Severity::Info))
    }
}

/// Writes the outcome of a run into `status`: the applied revision and `Ready=True`, or the
/// failure's reason on `Ready` (and `Healthy`, and `Stalled` when terminal).
pub fn settle(
    ks: &Kustomization,
    status: &mut KustomizationStatus,
    outcome: &Result<String, Failure>,
) {
    let generation = ks.metadata.generation;
    status.observed_generation = generation;
    match outcome {
        Ok(revision) => {
            status.last_applied_revision = Some(revision.clone());
            status.last_attempted_revision = Some(revision.clone());
            conditions::succeeded(
                &mut status.conditions,
                generation,
                RECONCILIATION_SUCCEEDED_REASON,
                &format!("Applied revision: {revision}"),
            );
        }
        Err(failure) => {
            if let Some(healthy) = failure.healthy {
                let (s, reason) = if healthy {
                    (Status::True, "Succeeded")
                } else {
                    (Status::False, HEALTH_CHECK_FAILED_REASON)
                };
                conditions::set(
                    &mut status.conditions,
                    HEALTHY_CONDITION,
                    s,
                    reason,
                    &failure.message,
                    generation,
                );
            }
            conditions::failed(
                &mut status.conditions,
                generation,
                failure.reason,
                &failure.message,
                failure.terminal,
            );
        }
    }
}

/// Whether `Ready` already said what `failure` says (a retry of the same failure is not news).
pub fn unchanged(previous: &KustomizationStatus, failure: &Failure) -> bool {
    conditions::get(&previous.conditions, READY_CONDITION)
        .is_some_and(|c| c.reason == failure.reason && c.message == failure.message)
}

/// The event a failure is announced with: none when Ready already said the same (one event per
/// change, not per retry) or when it only waits for another object.
pub fn announcement(failure: &Failure, unchanged: bool) -> Option<Severity> {
    if unchanged { None } else { failure.event }
}

/// Whether a success is news for the dependents: Ready just became true or moved to a new
/// revision.
pub fn became_ready(previous: &KustomizationStatus, now: &KustomizationStatus) -> bool {
    !conditions::is_true(&previous.conditions, READY_CONDITION)
        || previous.last_applied_revision != now.last_applied_revision
}

/// Whether `revision` at the current generation is what the last successful run applied: then a
/// run is drift correction and writes no progress status.
pub fn already_applied(ks: &Kustomization, revision: &str) -> bool {
    ks.status.as_ref().is_some_and(|s| {
        s.last_applied_revision.as_deref() == Some(revision)
            && s.observed_generation == ks.metadata.generation
    })
}

/// The `Reconciling` message written before a long build and apply.
pub fn progress_message(revision: &str, timeout: Duration) -> String {
    format!(
        "Fetching manifests for revision {revision} with a timeout of {}",
        go_duration(timeout)
    )
}

/// Why dependency `dep` (`None`: not found) holds `ks` back, or `None` when it is ready: Ready at
/// its current generation, and, when it has the same source, at the same `source_revision`.
pub fn dependency_blocks(
    ks: &Kustomization,
    dep: Option<&Kustomization>,
    source_revision: Option<&str>,
) -> Option<&'static str> {
    let Some(dep) = dep else {
        return Some("not found");
    };
    let status = dep.status.clone().unwrap_or_default();
    let ready = conditions::is_true(&status.conditions, READY_CONDITION)
        && status.observed_generation == dep.metadata.generation;
    if !ready {
        return Some("is not ready");
    }
    let same_source = dep.spec.source_ref.kind == ks.spec.source_ref.kind
        && dep.spec.source_ref.name == ks.spec.source_ref.name
        && source_namespace(dep) == source_namespace(ks);
    (same_source
        && source_revision.is_some()
        && status.last_applied_revision.as_deref() != source_revision)
        .then_some("is not up to date with the source revision")
}

/// A `dependsOn` cycle through `ks` (`ns/name` ids, first repeated last), following the
/// dependencies `lookup` finds; such a Kustomization can never become ready.
pub fn dependency_cycle(
    ks: &Kustomization,
    lookup: impl Fn(&str, &str) -> Option<std::sync::Arc<Kustomization>>,
) -> Option<Vec<String>> {
    let key = |ns: &str, name: &str| format!("{ns}/{name}");
    let me = key(&ks.namespace().unwrap_or_default(), &ks.name_any());
    let deps_of = |id: &String| -> Vec<String> {
        let (ns, name) = id.split_once('/').unwrap_or(("", id));
        let found = if *id == me { None } else { lookup(ns, name) };
        let spec_deps = match &found {
            Some(k) => &k.spec.depends_on,
            None if *id == me => &ks.spec.depends_on,
            None => return Vec::new(),
        };
        spec_deps
            .iter()
            .map(|d| key(d.namespace.as_deref().unwrap_or(ns), &d.name))
            .collect()
    };
    gantry_core::kustomize::depgraph::find_cycle(&me, deps_of)
}

/// Whether `ks` lists `namespace/name` in `dependsOn`.
pub fn depends_on(ks: &Kustomization, namespace: &str, name: &str) -> bool {
    let own = ks.namespace().unwrap_or_default();
    ks.spec
        .depends_on
        .iter()
        .any(|d| d.name == name && d.namespace.as_deref().unwrap_or(&own) == namespace)
}

/// Namespace of the source: the reference's, or the Kustomization's own.
pub fn source_namespace(ks: &Kustomization) -> String {
    ks.source_namespace().unwrap_or_default().to_owned()
}

/// `spec.healthChecks` as inventory entries (namespace defaults to the Kustomization's).
pub fn health_check_targets(ks: &Kustomization) -> Vec<InventoryEntry> {
    let namespace = ks.namespace().unwrap_or_default();
    ks.spec
        .health_checks
        .iter()
        .map(|check| {
            let api_version = check.api_version.clone().unwrap_or_else(|| "v1".into());
            let ns = check.namespace.clone().unwrap_or_else(|| namespace.clone());
            InventoryEntry {
                id: ObjectId::from_api_version(&api_version, &check.kind, &ns, &check.name),
                version: api_version.rsplit('/').next().unwrap_or("v1").to_string(),
            }
        })
        .collect()
}

/// What of a GitRepository wakes its Kustomizations through the fallback watch: its artifact,
/// not its other status writes.
pub fn artifact_changed(repo: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.digest).hash(&mut hasher);
    artifact.map(|a| &a.revision).hash(&mut hasher);
    Some(hasher.finish())
}

/// [`artifact_changed`] for an OCIRepository.
pub fn oci_artifact_changed(repo: &OCIRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.digest).hash(&mut hasher);
    artifact.map(|a| &a.revision).hash(&mut hasher);
    Some(hasher.finish())
}

/// A duration as Go prints it (`30s`, `5m0s`, `1h0m0s`), as Flux's messages show timeouts.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests;

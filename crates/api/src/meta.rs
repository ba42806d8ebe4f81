//! Types and names shared by every Flux kind (Flux keeps them in `fluxcd/pkg/apis/meta`): object
//! references, condition types and reasons, and the annotations, labels and finalizer the
//! controllers and the `flux` CLI agree on.
//!
//! The constants are part of the wire contract: `flux reconcile` writes [`RECONCILE_REQUEST_ANNOTATION`]
//! and waits for the value to come back in `status.lastHandledReconcileAt`, `kubectl wait
//! --for=condition=Ready` reads [`READY_CONDITION`], dashboards group by the reasons.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to an object in the same namespace as the referrer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub struct LocalObjectReference {
    /// Name of the referred object.
    pub name: String,
}

/// A reference to a Secret in the referrer's namespace, and optionally one key of it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub struct SecretKeyReference {
    /// Name of the Secret.
    pub name: String,
    /// Key in the Secret; unset means the consumer's documented default key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A reference to an object of a known kind, in any namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub struct NamespacedObjectReference {
    /// Name of the referred object.
    pub name: String,
    /// Namespace of the referred object; unset means the referrer's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A typed reference to any Kubernetes object, in any namespace (health checks).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedObjectKindReference {
    /// `group/version` of the object; unset means the preferred version of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// Namespace of the object; unset means the referrer's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A dependency on another object of the same kind, optionally judged by a CEL expression
/// instead of its Ready condition.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DependencyReference {
    /// Name of the dependency.
    pub name: String,
    /// Namespace of the dependency; unset means the dependent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// CEL expression over the dependency that decides readiness in place of the Ready condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_expr: Option<String>,
}

/// Where to find the kubeconfig of a remote cluster: exactly one of the two references.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.configMapRef) || has(self.secretRef)",
        "message": "exactly one of spec.kubeConfig.configMapRef or spec.kubeConfig.secretRef must be specified"
    },
    {
        "rule": "!has(self.configMapRef) || !has(self.secretRef)",
        "message": "exactly one of spec.kubeConfig.configMapRef or spec.kubeConfig.secretRef must be specified"
    }
]))]
pub struct KubeConfigReference {
    /// ConfigMap describing a cloud provider's cluster (keys `provider`, `cluster`, `address`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalObjectReference>,
    /// Secret holding a kubeconfig file (key `value` unless `key` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyReference>,
}

// Condition types (kstatus: `Reconciling` and `Stalled` are present only while True).
/// Whether the object reached its desired state.
pub const READY_CONDITION: &str = "Ready";
/// Work is in progress towards the desired state.
pub const RECONCILING_CONDITION: &str = "Reconciling";
/// The controller cannot make progress without a change to the object or its inputs.
pub const STALLED_CONDITION: &str = "Stalled";
/// The result of the last health assessment (Kustomization).
pub const HEALTHY_CONDITION: &str = "Healthy";

// Reasons shared by every kind.
/// The reconciliation succeeded.
pub const SUCCEEDED_REASON: &str = "Succeeded";
/// The reconciliation failed.
pub const FAILED_REASON: &str = "Failed";
/// A reconciliation is in progress.
pub const PROGRESSING_REASON: &str = "Progressing";
/// A reconciliation is in progress after a failure.
pub const PROGRESSING_WITH_RETRY_REASON: &str = "ProgressingWithRetry";
/// The object is suspended.
pub const SUSPENDED_REASON: &str = "Suspended";
/// A dependency is not ready yet.
pub const DEPENDENCY_NOT_READY_REASON: &str = "DependencyNotReady";
/// The object's spec is invalid and retrying will not help.
pub const INVALID_SPEC_REASON: &str = "InvalidSpec";

// Annotations, labels, finalizer.
/// A new value requests an immediate reconciliation; echoed to `status.lastHandledReconcileAt`.
pub const RECONCILE_REQUEST_ANNOTATION: &str = "reconcile.fluxcd.io/requestedAt";
/// A new value requests a forced reconciliation; echoed to `status.lastHandledForceAt`.
pub const FORCE_REQUEST_ANNOTATION: &str = "reconcile.fluxcd.io/forceAt";
/// Finalizer every Flux controller puts on the objects it reconciles.
pub const FINALIZER: &str = "finalizers.fluxcd.io";
/// Field manager Flux's kustomize-controller applies with; kept so ownership carries over.
pub const KUSTOMIZE_FIELD_MANAGER: &str = "kustomize-controller";
/// Owner label: name of the Kustomization that applied the object.
pub const KUSTOMIZE_NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
/// Owner label: namespace of the Kustomization that applied the object.
pub const KUSTOMIZE_NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";
/// Per-object server-side apply policy: `Override` (default), `Merge`, `IfNotPresent`, `Ignore`.
pub const KUSTOMIZE_SSA_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/ssa";
/// Per-object prune opt-out: `disabled`.
pub const KUSTOMIZE_PRUNE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/prune";
/// Per-object reconcile opt-out: `disabled`.
pub const KUSTOMIZE_RECONCILE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/reconcile";
/// Per-object recreate-on-immutable-change: `enabled`.
pub const KUSTOMIZE_FORCE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/force";
/// Per-object opt-out of `postBuild` substitution: `disabled`.
pub const KUSTOMIZE_SUBSTITUTE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/substitute";
/// Value of the per-object annotations that switch a behaviour off.
pub const DISABLED_VALUE: &str = "disabled";
/// Value of the per-object annotations that switch a behaviour on.
pub const ENABLED_VALUE: &str = "enabled";

/// What the controller harness reads of every Flux object: whether it is suspended and its
/// status, so status writes, `gotk_*` metrics and events are handled in one place for all kinds.
pub trait FluxObject {
    /// The object's status type.
    type Status: FluxStatus;
    /// `spec.suspend`.
    fn suspended(&self) -> bool;
    /// `status`, absent before the first status write.
    fn flux_status(&self) -> Option<&Self::Status>;
}

/// One condition as the harness reads it, whatever the kind's condition type (Flux's
/// `metav1.Condition`, Knative's condition with a severity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConditionView<'a> {
    pub status: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
}

/// What every Flux status shows: kstatus conditions and the revision the object serves.
pub trait FluxStatus: Serialize {
    /// `status.conditions` when they are `metav1.Condition`s; kinds with another condition type
    /// (Knative's) return none here and answer [`condition`](Self::condition) instead.
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        &[]
    }
    /// The condition of type `type_`.
    fn condition(&self, type_: &str) -> Option<ConditionView<'_>> {
        self.conditions()
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| ConditionView {
                status: &c.status,
                reason: &c.reason,
                message: &c.message,
            })
    }
    /// The revision `gotk_resource_info` reports (artifact, last applied, latest image).
    fn revision(&self) -> Option<&str>;
    /// [`revision`](Self::revision) as the `revision` label shows it; statuses that compose it
    /// from several fields (ImagePolicy's `name:tag@digest`) override this.
    fn revision_label(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.revision().map(std::borrow::Cow::Borrowed)
    }
}

/// A duration field that is not a Go duration (or is negative).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration '{text}': expected e.g. 30s, 1m, 1h30m, 500ms")]
pub struct DurationError {
    pub text: String,
}

/// Parses a Go duration as Flux's API fields take them (`1m`, `1h30m`, `1.5s`, `500ms`, `0`):
/// the one parser every controller uses, Go's own grammar (kube-core implements it).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    match text.parse::<kube::core::Duration>() {
        // kube-core takes "" as zero; Go (and the CRD pattern) refuses it.
        Ok(d) if !d.is_negative() && !text.is_empty() => Ok(d.into()),
        _ => Err(DurationError {
            text: text.to_owned(),
        }),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m0s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "1", "m", "1x", "1.2.3s", "-1m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

//! `kustomize.toolkit.fluxcd.io/v1`: Kustomization, which builds a path of a source artifact and
//! applies the result to the cluster, prunes what disappeared and checks health.
//!
//! Field names, defaults and validation follow Flux's kustomize-controller v1 CRD exactly; the test
//! `tests/schema.rs` compares the generated schema against the facts extracted from Flux's CRD.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::meta::{
    DependencyReference, KubeConfigReference, LocalObjectReference, NamespacedObjectKindReference,
};

// Ready reasons specific to Kustomizations (see also `crate::meta`).
/// Everything was applied (and is healthy if health checks were asked for).
pub const RECONCILIATION_SUCCEEDED_REASON: &str = "ReconciliationSucceeded";
/// The reconciliation failed for another reason.
pub const RECONCILIATION_FAILED_REASON: &str = "ReconciliationFailed";
/// The source artifact could not be fetched.
pub const ARTIFACT_FAILED_REASON: &str = "ArtifactFailed";
/// Building the manifests failed.
pub const BUILD_FAILED_REASON: &str = "BuildFailed";
/// A health check failed or timed out.
pub const HEALTH_CHECK_FAILED_REASON: &str = "HealthCheckFailed";
/// Deleting stale objects failed.
pub const PRUNE_FAILED_REASON: &str = "PruneFailed";

/// Lower bound of the computed timeout, and what is subtracted from the interval to get it.
const MIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds `path` of a source artifact with kustomize (or takes the plain YAML there), applies the
/// result with server-side apply, prunes objects removed from the source and assesses health.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "kustomize.toolkit.fluxcd.io",
    version = "v1",
    kind = "Kustomization",
    plural = "kustomizations",
    singular = "kustomization",
    namespaced,
    shortname = "ks",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-appliers",
    status = "KustomizationStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KustomizationSpec {
    /// Labels and annotations set on every applied object, overriding equal keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_metadata: Option<CommonMetadata>,

    /// Kustomizations that must be ready before this one is reconciled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependencyReference>,

    /// Decrypt SOPS-encrypted Secrets before applying them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<Decryption>,

    /// What happens to the applied objects when this Kustomization is deleted; `MirrorPrune` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// How often to reconcile (also the drift-correction period); jittered.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,

    /// How soon to retry after a failure; `interval` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub retry_interval: Option<String>,

    /// Apply to a remote cluster described by this kubeconfig instead of the local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config: Option<KubeConfigReference>,

    /// Directory in the artifact to build; its root when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Variable substitution on the built manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_build: Option<PostBuild>,

    /// Delete objects that were applied before but are no longer in the build.
    pub prune: bool,

    /// Objects whose health decides readiness (ignored when `wait` is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<NamespacedObjectKindReference>,

    /// CEL health rules for custom kinds, used when `wait` or `healthChecks` apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check_exprs: Vec<CustomHealthCheck>,

    /// Strategic-merge or JSON 6902 patches applied to the build, optionally to selected objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,

    /// Image name/tag/digest overrides, as in kustomize's `images`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,

    /// ServiceAccount (in this namespace) to impersonate when applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// The source whose artifact holds the manifests.
    pub source_ref: CrossNamespaceSourceReference,

    /// Stop reconciling (runs already started finish) until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Namespace set on every namespaced object of the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub target_namespace: Option<String>,

    /// Time limit for build, apply and health checks; `max(interval - 30s, 30s)` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,

    /// Recreate objects whose update fails on an immutable field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub force: bool,

    /// Wait for every applied object to become healthy (replaces `healthChecks`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,

    /// Paths of kustomize Components to add to the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,

    /// Drop listed components that do not exist in the source instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_missing_components: bool,

    /// Prefix added to the name of every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub name_prefix: Option<String>,

    /// Suffix added to the name of every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub name_suffix: Option<String>,

    /// JSON pointers to leave alone when detecting and correcting drift.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<IgnoreRule>,

    /// Kustomize build annotations to keep on the applied objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_metadata: Vec<BuildMetadataOption>,
}

/// Labels and annotations for every applied object.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct CommonMetadata {
    /// Annotations to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// SOPS decryption settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Decryption {
    /// Decryption engine.
    pub provider: DecryptionProvider,
    /// Secret with private keys (and static cloud credentials, which win over the ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// ServiceAccount whose identity authenticates to a cloud KMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Decryption engines.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DecryptionProvider {
    // Mozilla SOPS.
    #[default]
    Sops,
}

/// Garbage collection when the Kustomization is deleted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum DeletionPolicy {
    // Delete if `prune` is true, orphan otherwise.
    #[default]
    MirrorPrune,
    // Delete the applied objects.
    Delete,
    // Delete the applied objects and wait until they are gone.
    WaitForTermination,
    // Leave the applied objects in place.
    Orphan,
}

/// Variable substitution after the build.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostBuild {
    /// Variables and values (`${var}`, `${var:=default}`; `$${var}` escapes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub substitute: BTreeMap<String, String>,
    /// ConfigMaps and Secrets whose data keys are further variables, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub substitute_from: Vec<SubstituteReference>,
    /// When to substitute: `WithVariables` (only if some variable is defined; the default) or `Always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitute_strategy: Option<SubstituteStrategy>,
}

/// A ConfigMap or Secret holding substitution variables.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct SubstituteReference {
    /// `ConfigMap` or `Secret`.
    pub kind: SubstituteKind,
    /// Name of the object, in the Kustomization's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Treat a missing object as empty instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub optional: bool,
}

/// Kinds that can hold substitution variables.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum SubstituteKind {
    // Values are base64-decoded first.
    Secret,
    #[default]
    ConfigMap,
}

/// When to run substitution.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum SubstituteStrategy {
    // Only when at least one variable is defined.
    #[default]
    WithVariables,
    // Even with no variables defined.
    Always,
}

/// The source of a Kustomization.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceSourceReference {
    /// `group/version` of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the source.
    pub kind: SourceKind,
    /// Name of the source.
    pub name: String,
    /// Namespace of the source; the Kustomization's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kinds a Kustomization can take manifests from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum SourceKind {
    #[serde(rename = "OCIRepository")]
    OciRepository,
    #[default]
    GitRepository,
    Bucket,
    ExternalArtifact,
}

/// A CEL health rule for objects of one kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomHealthCheck {
    /// `group/version` of the kind.
    pub api_version: String,
    /// The kind the rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// True when the object reached its desired state.
    pub current: String,
    /// True while the object is still progressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
    /// True when the object failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// An inline patch and the objects it applies to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Patch {
    /// A strategic-merge patch, or a JSON 6902 list of operations, as YAML/JSON text.
    pub patch: String,
    /// Objects to patch; for strategic merge, the patch's own identity when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Selector>,
}

/// Selects objects by identity, labels or annotations (every set field must match).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// API group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name (a regular expression in kustomize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label selector expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Annotation selector expression, same syntax as labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_selector: Option<String>,
}

/// An image override.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Image name to match, without tag.
    pub name: String,
    /// Replacement name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    /// Replacement tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// Replacement digest; `newTag` is ignored when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Paths to ignore during drift detection, optionally only for some objects.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct IgnoreRule {
    /// JSON pointers (RFC 6901).
    pub paths: Vec<String>,
    /// Objects the rule applies to; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Selector>,
}

/// Kustomize build metadata kept on applied objects.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum BuildMetadataOption {
    // Where each object came from.
    OriginAnnotations,
    // Which transformers touched each object.
    TransformerAnnotations,
}

/// What the controller last observed, applied and found.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KustomizationStatus {
    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Healthy`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// Source revision of the last successful apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,

    /// Origin revision (e.g. the OCI `org.opencontainers.image.revision`) of the last successful apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_origin_revision: Option<String>,

    /// Source revision of the last attempt, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,

    /// The objects applied by the last successful reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<ResourceInventory>,

    /// Recent reconciliations, one entry per distinct result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Snapshot>,
}

/// The applied objects.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ResourceInventory {
    /// One entry per object.
    pub entries: Vec<ResourceRef>,
}

/// One applied object.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    /// `<namespace>_<name>_<group>_<kind>` (namespace empty for cluster-scoped objects).
    pub id: String,
    /// API version the object was applied with.
    pub v: String,
}

/// A record of reconciliations that produced the same result.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// `<algorithm>:<hex>` checksum of the reconciled objects.
    pub digest: String,
    /// First time this result was reconciled.
    #[schemars(schema_with = "crate::schema::date_time")]
    pub first_reconciled: Time,
    /// Last time this result was reconciled.
    #[schemars(schema_with = "crate::schema::date_time")]
    pub last_reconciled: Time,
    /// Duration of the last reconciliation (Go duration).
    pub last_reconciled_duration: String,
    /// Outcome of the last reconciliation.
    pub last_reconciled_status: String,
    /// How many reconciliations produced this result.
    pub total_reconciliations: i64,
    /// Extra information, e.g. the revision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Kustomization {
    /// `spec.deletionPolicy` with Flux's default.
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy.unwrap_or_default()
    }

    /// Whether deleting this Kustomization deletes what it applied.
    pub fn deletes_on_removal(&self) -> bool {
        match self.deletion_policy() {
            DeletionPolicy::MirrorPrune => self.spec.prune,
            DeletionPolicy::Delete | DeletionPolicy::WaitForTermination => true,
            DeletionPolicy::Orphan => false,
        }
    }

    /// `spec.interval` parsed.
    pub fn interval(&self) -> Result<Duration, crate::meta::DurationError> {
        crate::meta::parse_duration(&self.spec.interval)
    }

    /// `spec.retryInterval`, falling back to the interval as Flux does.
    pub fn retry_interval(&self) -> Result<Duration, crate::meta::DurationError> {
        match &self.spec.retry_interval {
            Some(retry) => crate::meta::parse_duration(retry),
            None => self.interval(),
        }
    }

    /// `spec.timeout`, or `interval - 30s`, never below 30 s (Flux's rule).
    pub fn timeout(&self) -> Result<Duration, crate::meta::DurationError> {
        let timeout = match &self.spec.timeout {
            Some(timeout) => crate::meta::parse_duration(timeout)?,
            None => self.interval()?.saturating_sub(MIN_TIMEOUT),
        };
        Ok(timeout.max(MIN_TIMEOUT))
    }

    /// Namespace of the source: the reference's, or this Kustomization's.
    pub fn source_namespace(&self) -> Option<&str> {
        self.spec
            .source_ref
            .namespace
            .as_deref()
            .or(self.metadata.namespace.as_deref())
    }
}

impl crate::meta::FluxObject for Kustomization {
    type Status = KustomizationStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&KustomizationStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for KustomizationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn revision(&self) -> Option<&str> {
        self.last_applied_revision.as_deref()
    }
}

impl JsonSchema for Kustomization {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("Kustomization")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<KustomizationSpec, KustomizationStatus>(
            generator,
            "Builds a path of a source artifact and applies, prunes and health-checks the result.",
        )
    }
}

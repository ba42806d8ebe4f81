//! `image.toolkit.fluxcd.io/v1`: ImageRepository (scan a registry's tags), ImagePolicy (choose
//! the newest tag) and ImageUpdateAutomation (write the choice into git).
//!
//! Field names, defaults and validation follow Flux's image-reflector-controller and
//! image-automation-controller v1 CRDs exactly; `tests/schema.rs` compares the generated schemas
//! against the facts recorded from Flux's CRDs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::meta::{LocalObjectReference, NamespacedObjectReference};
use crate::source::v1::GitRepositoryRef;

/// Tags excluded from a scan when `spec.exclusionList` is empty (cosign signature tags).
pub const DEFAULT_EXCLUSION: &str = r"^.*\.sig$";
/// How many tags `status.lastScanResult.latestTags` holds.
pub const LATEST_TAGS_COUNT: usize = 10;
/// How often an ImagePolicy with `digestReflectionPolicy: Always` refreshes when `interval` is unset.
pub const DEFAULT_POLICY_INTERVAL: Duration = Duration::from_secs(600);
/// Commit message of an automation without `messageTemplate`.
pub const DEFAULT_COMMIT_MESSAGE: &str = "Update from image update automation";

// Reasons of the image reflector (ImageRepository, ImagePolicy).
/// `spec.image` cannot be parsed as an image reference.
pub const IMAGE_URL_INVALID_REASON: &str = "ImageURLInvalid";
/// The Secret lacks the fields needed, or the registry refused the credentials.
pub const AUTHENTICATION_FAILED_REASON: &str = "AuthenticationFailed";
/// Reading from the registry (or the tag database) failed.
pub const READ_OPERATION_FAILED_REASON: &str = "ReadOperationFailed";
/// The object needs an interval and has none.
pub const INTERVAL_NOT_CONFIGURED_REASON: &str = "IntervalNotConfigured";

// Reasons of the image automation (ImageUpdateAutomation).
/// `spec.update` names a strategy that does not exist.
pub const INVALID_UPDATE_STRATEGY_REASON: &str = "InvalidUpdateStrategy";
/// The source reference or its settings cannot be used.
pub const INVALID_SOURCE_CONFIG_REASON: &str = "InvalidSourceConfiguration";
/// Preparing the working copy of the source failed.
pub const SOURCE_MANAGER_FAILED_REASON: &str = "SourceManagerFailed";
/// A clone, commit or push failed.
pub const GIT_OPERATION_FAILED_REASON: &str = "GitOperationFailed";
/// Applying the setters to the files failed.
pub const UPDATE_FAILED_REASON: &str = "UpdateFailed";
/// `spec.policySelector` is not a valid label selector.
pub const INVALID_POLICY_SELECTOR_REASON: &str = "InvalidPolicySelector";
/// The commit template uses a field Flux removed (`.Updated`).
pub const REMOVED_TEMPLATE_FIELD_REASON: &str = "RemovedTemplateField";

/// A registry repository whose tags are scanned on an interval and kept for ImagePolicies.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "image.toolkit.fluxcd.io",
    version = "v1",
    kind = "ImageRepository",
    plural = "imagerepositories",
    singular = "imagerepository",
    namespaced,
    shortname = "imgrepo",
    shortname = "imagerepo",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-images",
    status = "ImageRepositoryStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Tags","type":"string","jsonPath":".status.lastScanResult.tagCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Last scan","type":"string","jsonPath":".status.lastScanResult.scanTime","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositorySpec {
    /// The image repository, e.g. `alpine`, `ghcr.io/fluxcd/flux` or `registry:5000/team/app`.
    pub image: String,

    /// Time between scans (Go duration).
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,

    /// Time limit for one scan; the interval when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"))]
    pub timeout: Option<String>,

    /// Secret of type `kubernetes.io/dockerconfigjson` with registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Secret with proxy settings (`address`, optional `username`/`password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,

    /// ServiceAccount whose image pull secrets are used as credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// Secret with a CA (`ca.crt`) and/or a client certificate (`tls.crt`, `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,

    /// Stop scanning until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Which namespaces may refer to this repository from an ImagePolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_from: Option<AccessFrom>,

    /// Regular expressions; matching tags are dropped. `^.*\.sig$` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25), extend("default" = [r"^.*\.sig$"]))]
    pub exclusion_list: Vec<String>,

    /// Who provides credentials: `generic` (from `secretRef`) or a cloud identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "generic"))]
    pub provider: Option<ImageProvider>,

    /// Talk plain HTTP to the registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// Credential provider for a registry.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ImageProvider {
    // Static credentials from `secretRef`.
    #[default]
    Generic,
    // Amazon ECR via the workload identity.
    Aws,
    // Azure Container Registry via the workload identity.
    Azure,
    // Google Artifact Registry via the workload identity.
    Gcp,
}

/// Namespaces allowed to refer to an object across namespaces.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessFrom {
    /// Selectors, ORed; an empty `matchLabels` matches every namespace.
    pub namespace_selectors: Vec<NamespaceSelector>,
}

/// Namespaces whose labels contain all of `matchLabels`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels the namespace must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// The outcome of the last scan.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScanResult {
    /// Stable digest of the scanned tag list (changes exactly when the list does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// How many tags the scan kept (after the exclusion list).
    #[schemars(schema_with = "crate::schema::integer")]
    pub tag_count: i64,
    /// When the scan finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::date_time")]
    pub scan_time: Option<Time>,
    /// The first 10 tags in descending string order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest_tags: Vec<String>,
}

/// What the reflector last observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositoryStatus {
    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `spec.image` with the implied parts explicit, e.g. `docker.io/library/alpine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_image_name: Option<String>,

    /// The last successful scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan_result: Option<ScanResult>,

    /// The exclusion list `lastScanResult` was computed with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_exclusion_list: Vec<String>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl ImageRepository {
    /// `spec.exclusionList`, or the default when it is empty.
    pub fn exclusion_list(&self) -> Vec<String> {
        if self.spec.exclusion_list.is_empty() {
            vec![DEFAULT_EXCLUSION.to_string()]
        } else {
            self.spec.exclusion_list.clone()
        }
    }

    /// Time between scans.
    pub fn interval(&self) -> Result<Duration, crate::meta::DurationError> {
        crate::meta::parse_duration(&self.spec.interval)
    }

    /// Time limit of one scan: `timeout`, else the interval, never below one second (as Flux).
    pub fn timeout(&self) -> Result<Duration, crate::meta::DurationError> {
        let timeout = match &self.spec.timeout {
            Some(timeout) => crate::meta::parse_duration(timeout)?,
            None => self.interval()?,
        };
        Ok(timeout.max(Duration::from_secs(1)))
    }
}

/// Chooses the newest tag of an ImageRepository by a policy.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "image.toolkit.fluxcd.io",
    version = "v1",
    kind = "ImagePolicy",
    plural = "imagepolicies",
    singular = "imagepolicy",
    namespaced,
    shortname = "imgpol",
    shortname = "imagepol",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-images",
    status = "ImagePolicyStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".status.latestRef.name"}"#,
    printcolumn = r#"{"name":"Tag","type":"string","jsonPath":".status.latestRef.tag"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.interval) || (has(self.digestReflectionPolicy) && self.digestReflectionPolicy == 'Always')",
        "message": "spec.interval is only accepted when spec.digestReflectionPolicy is set to 'Always'"
    },
    {
        "rule": "has(self.interval) || !has(self.digestReflectionPolicy) || self.digestReflectionPolicy != 'Always'",
        "message": "spec.interval must be set when spec.digestReflectionPolicy is set to 'Always'"
    }
]))]
pub struct ImagePolicySpec {
    /// The ImageRepository whose tags are chosen from; its namespace defaults to the policy's.
    pub image_repository_ref: NamespacedObjectReference,

    /// How to order the tags.
    pub policy: ImagePolicyChoice,

    /// Keep only tags matching `pattern`, and compare `extract` expanded from the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_tags: Option<TagFilter>,

    /// When to put the chosen image's digest into `status.latestRef.digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Never"))]
    pub digest_reflection_policy: Option<ReflectionPolicy>,

    /// How often to refresh the digest with `digestReflectionPolicy: Always` (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<String>,

    /// Stop reconciling until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// Exactly one ordering (the controller rejects none or several).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicyChoice {
    /// The highest version within a semver range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<SemVerPolicy>,
    /// Byte-wise string order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabetical: Option<AlphabeticalPolicy>,
    /// Numeric order (every candidate must be a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerical: Option<NumericalPolicy>,
}

/// A semver range in Masterminds syntax.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct SemVerPolicy {
    /// E.g. `>=1.0.0 <2.0.0`, `^1.2`, `~1.2.3 || 2.x`.
    pub range: String,
}

/// Alphabetical ordering.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct AlphabeticalPolicy {
    /// `asc` chooses the last tag in order, `desc` the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "asc"))]
    pub order: Option<SortOrder>,
}

/// Numerical ordering.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct NumericalPolicy {
    /// `asc` chooses the largest number, `desc` the smallest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "asc"))]
    pub order: Option<SortOrder>,
}

/// Sort direction of a policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    // Choose the greatest.
    #[default]
    Asc,
    // Choose the least.
    Desc,
}

/// Tag filtering before ordering.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct TagFilter {
    /// Regular expression a tag must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Template expanded from the match (`$name`, `${name}`, `$1`); the value that is ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
}

/// When the digest of the chosen image is resolved.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum ReflectionPolicy {
    // Resolve on every reconciliation (and every `interval`).
    Always,
    // Resolve when the chosen image changed or has no digest yet.
    IfNotPresent,
    // Never resolve; `latestRef.digest` stays empty.
    #[default]
    Never,
}

/// An image reference as ImagePolicy and ImageUpdateAutomation report it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The image without tag, e.g. `ghcr.io/org/app`.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The manifest digest (`sha256:...`), when reflected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)?;
        if let Some(digest) = self.digest.as_deref().filter(|d| !d.is_empty()) {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What the policy controller last chose.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicyStatus {
    /// The image the policy chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ref: Option<ImageRef>,

    /// The previous `latestRef`, to report what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_previous_ref: Option<ImageRef>,

    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl ImagePolicy {
    /// `spec.digestReflectionPolicy`, `Never` when unset.
    pub fn digest_reflection_policy(&self) -> ReflectionPolicy {
        self.spec.digest_reflection_policy.unwrap_or_default()
    }

    /// Namespace of the ImageRepository (the policy's own when the reference names none).
    pub fn repository_namespace(&self) -> Option<&str> {
        self.spec
            .image_repository_ref
            .namespace
            .as_deref()
            .or(self.metadata.namespace.as_deref())
    }

    /// Refresh period with `Always` (default 10 minutes); `None` for the other policies.
    pub fn interval(&self) -> Result<Option<Duration>, crate::meta::DurationError> {
        if self.digest_reflection_policy() != ReflectionPolicy::Always {
            return Ok(None);
        }
        match self.spec.interval.as_deref() {
            Some(interval) => crate::meta::parse_duration(interval).map(Some),
            None => Ok(Some(DEFAULT_POLICY_INTERVAL)),
        }
    }
}

/// Updates files in a git repository from ImagePolicies, commits and pushes.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "image.toolkit.fluxcd.io",
    version = "v1",
    kind = "ImageUpdateAutomation",
    plural = "imageupdateautomations",
    singular = "imageupdateautomation",
    namespaced,
    shortname = "iua",
    shortname = "imgupd",
    shortname = "imgauto",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-images",
    status = "ImageUpdateAutomationStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Last run","type":"string","jsonPath":".status.lastAutomationRunTime","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdateAutomationSpec {
    /// The GitRepository to check out, update and push to.
    pub source_ref: CrossNamespaceSourceReference,

    /// How to check out, commit and push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSpec>,

    /// Lower bound of how often the automation runs (Go duration).
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,

    /// Only ImagePolicies with these labels are applied; all in the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::label_selector")]
    pub policy_selector: Option<LabelSelector>,

    /// Which files to update and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"strategy": "Setters"}))]
    pub update: Option<UpdateStrategy>,

    /// Stop running until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// The source an automation writes to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceSourceReference {
    /// API version of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the source; only `GitRepository`.
    #[schemars(extend("enum" = ["GitRepository"], "default" = "GitRepository"))]
    pub kind: String,
    /// Name of the source.
    pub name: String,
    /// Namespace of the source; the automation's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Git settings of an automation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitSpec {
    /// What to check out; the GitRepository's `spec.ref` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<GitCheckoutSpec>,
    /// Author, message and signing of the commits.
    pub commit: CommitSpec,
    /// Where to push; the checkout branch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSpec>,
}

/// The reference to check out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct GitCheckoutSpec {
    /// Branch, tag, semver, name or commit, with GitRepository's precedence.
    #[serde(rename = "ref")]
    pub reference: GitRepositoryRef,
}

/// How commits are made.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommitSpec {
    /// Author (and committer) of the commits.
    pub author: CommitUser,
    /// Sign the commits with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SigningKey>,
    /// Go template of the commit message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_template: Option<String>,
    /// Extra values for the template (`.Values`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub message_template_values: BTreeMap<String, String>,
}

/// A commit author.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct CommitUser {
    /// Name of the author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Email of the author.
    pub email: String,
}

/// Secret with a commit signing key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    /// `git.asc` (and optional `passphrase`) for gpg; `identity` (and optional `password`) for ssh.
    pub secret_ref: LocalObjectReference,
    /// Key format; `gpg` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<SigningKeyType>,
}

/// Format of a signing key.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SigningKeyType {
    // OpenPGP key in `git.asc`.
    #[default]
    Gpg,
    // SSH key in `identity`.
    Ssh,
}

/// Where commits go.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct PushSpec {
    /// Branch to push to, created from the checkout branch if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Refspec to push as well (no deletion or force: it must not start with `+` or `:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^$|^[^+:]"))]
    pub refspec: Option<String>,
    /// Push options sent to the server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// How files are updated.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct UpdateStrategy {
    /// The only strategy: `Setters` (markers on YAML scalars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Setters"))]
    pub strategy: Option<UpdateStrategyName>,
    /// Directory to update, relative to the repository root; the root when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Update strategies.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum UpdateStrategyName {
    // `# {"$imagepolicy": "ns:name[:tag|:name|:digest]"}` markers on scalars.
    #[default]
    Setters,
}

/// What the automation last did.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdateAutomationStatus {
    /// When the automation last ran to completion (with or without changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::date_time")]
    pub last_automation_run_time: Option<Time>,

    /// SHA-1 of the last commit pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push_commit: Option<String>,

    /// When the last commit was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::date_time")]
    pub last_push_time: Option<Time>,

    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The policies applied in the last run, by name, with their `latestRef`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed_policies: BTreeMap<String, ImageRef>,

    /// The source revision the last run started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_source_revision: Option<String>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl ImageUpdateAutomation {
    /// Time between runs.
    pub fn interval(&self) -> Result<Duration, crate::meta::DurationError> {
        crate::meta::parse_duration(&self.spec.interval)
    }

    /// Namespace of the GitRepository (the automation's own when the reference names none).
    pub fn source_namespace(&self) -> Option<&str> {
        self.spec
            .source_ref
            .namespace
            .as_deref()
            .or(self.metadata.namespace.as_deref())
    }

    /// `spec.update.path`, `None` for the repository root.
    pub fn update_path(&self) -> Option<&str> {
        self.spec.update.as_ref().and_then(|u| u.path.as_deref())
    }
}

impl crate::meta::FluxObject for ImageRepository {
    type Status = ImageRepositoryStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&ImageRepositoryStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for ImageRepositoryStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The last scan's revision (the tag list's digest).
    fn revision(&self) -> Option<&str> {
        self.last_scan_result.as_ref()?.revision.as_deref()
    }
}

impl crate::meta::FluxObject for ImagePolicy {
    type Status = ImagePolicyStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&ImagePolicyStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for ImagePolicyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The latest tag.
    fn revision(&self) -> Option<&str> {
        self.latest_ref.as_ref().map(|r| r.tag.as_str())
    }

    /// The latest image, `name:tag[@digest]`.
    fn revision_label(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.latest_ref.as_ref().map(|r| r.to_string().into())
    }
}

impl crate::meta::FluxObject for ImageUpdateAutomation {
    type Status = ImageUpdateAutomationStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&ImageUpdateAutomationStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for ImageUpdateAutomationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The last pushed commit.
    fn revision(&self) -> Option<&str> {
        self.last_push_commit.as_deref()
    }
}

impl JsonSchema for ImageRepository {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("ImageRepository")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<ImageRepositorySpec, ImageRepositoryStatus>(
            generator,
            "An image repository whose tags the reflector scans.",
        )
    }
}

impl JsonSchema for ImagePolicy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("ImagePolicy")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<ImagePolicySpec, ImagePolicyStatus>(
            generator,
            "A rule choosing the newest tag of an ImageRepository.",
        )
    }
}

impl JsonSchema for ImageUpdateAutomation {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("ImageUpdateAutomation")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<ImageUpdateAutomationSpec, ImageUpdateAutomationStatus>(
            generator,
            "Writes the images ImagePolicies chose into a git repository and pushes.",
        )
    }
}

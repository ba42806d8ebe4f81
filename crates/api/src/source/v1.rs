//! `source.toolkit.fluxcd.io/v1`: the kinds that turn a remote source into an artifact.
//!
//! Field names, defaults and validation follow Flux's source-controller v1 CRD exactly; the test
//! `tests/schema.rs` compares the generated schema against the facts extracted from Flux's CRD.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::meta::LocalObjectReference;

/// Branch followed when `spec.ref` names nothing.
pub const DEFAULT_BRANCH: &str = "master";
/// Git operation timeout when `spec.timeout` is unset (the CRD defaults it to this too).
pub const DEFAULT_TIMEOUT: &str = "60s";

// Condition types specific to sources (see also `crate::meta`).
/// The artifact for the current revision is in storage.
pub const ARTIFACT_IN_STORAGE_CONDITION: &str = "ArtifactInStorage";
/// The stored artifact is older than what the spec asks for (present only while True).
pub const ARTIFACT_OUTDATED_CONDITION: &str = "ArtifactOutdated";
/// Fetching from the remote failed (present only while True).
pub const FETCH_FAILED_CONDITION: &str = "FetchFailed";
/// Building the artifact failed (present only while True).
pub const BUILD_FAILED_CONDITION: &str = "BuildFailed";
/// Result of commit/tag signature verification (present only when `verify` is set).
pub const SOURCE_VERIFIED_CONDITION: &str = "SourceVerified";
/// A storage operation failed (present only while True).
pub const STORAGE_OPERATION_FAILED_CONDITION: &str = "StorageOperationFailed";
/// An `include` is missing or has no artifact (present only while True).
pub const INCLUDE_UNAVAILABLE_CONDITION: &str = "IncludeUnavailable";

// Reasons specific to sources.
/// A clone/fetch/checkout succeeded.
pub const GIT_OPERATION_SUCCEEDED_REASON: &str = "GitOperationSucceeded";
/// A clone/fetch/checkout failed.
pub const GIT_OPERATION_FAILED_REASON: &str = "GitOperationFailed";
/// Credentials are missing fields or were refused.
pub const AUTHENTICATION_FAILED_REASON: &str = "AuthenticationFailed";
/// The URL cannot be used.
pub const URL_INVALID_REASON: &str = "URLInvalid";
/// Signature verification failed.
pub const VERIFICATION_ERROR_REASON: &str = "VerificationError";
/// The stored artifact already matches the source.
pub const ARTIFACT_UP_TO_DATE_REASON: &str = "ArtifactUpToDate";
/// Writing the artifact to storage failed.
pub const ARCHIVE_OPERATION_FAILED_REASON: &str = "ArchiveOperationFailed";

/// A git repository to watch; each revision it resolves to becomes an artifact for Kustomizations.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "GitRepository",
    plural = "gitrepositories",
    singular = "gitrepository",
    namespaced,
    shortname = "gitrepo",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-sources",
    status = "GitRepositoryStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.serviceAccountName) || (has(self.provider) && (self.provider == 'azure' || self.provider == 'aws'))",
    "message": "serviceAccountName can only be set when provider is 'azure' or 'aws'"
}]))]
pub struct GitRepositorySpec {
    /// Repository URL: `http://`, `https://` or `ssh://` (scp-style `git@host:path` is not accepted).
    #[schemars(regex(pattern = r"^(http|https|ssh)://.*$"))]
    pub url: String,

    /// Secret with credentials: `username`/`password` or `bearerToken` for HTTPS,
    /// `identity`/`known_hosts` (and optional `password`) for SSH, `ca.crt`/`tls.crt`/`tls.key` for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Who provides credentials: static ones from `secretRef` (`generic`) or a cloud identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<GitProvider>,

    /// Kubernetes ServiceAccount whose identity authenticates to the cloud provider (`azure`, `aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// How often to look for new commits (Go duration, e.g. `1m`, `1h30m`); jittered.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,

    /// Time limit for one git operation such as a clone; defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"), extend("default" = "60s"))]
    pub timeout: Option<String>,

    /// What to check out; unset means the `master` branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<GitRepositoryRef>,

    /// Verify commit and/or tag signatures before producing an artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<GitRepositoryVerification>,

    /// Secret with proxy settings (`address`, optional `username`/`password`) for reaching the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,

    /// Exclusion patterns in .gitignore syntax; when set they replace the default exclusions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,

    /// Stop reconciling (nothing is fetched or emitted) until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Also check out submodules, with their own default settings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recurse_submodules: bool,

    /// Artifacts of other GitRepositories to copy into this one's artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<GitRepositoryInclude>,

    /// Only check out these directories; the artifact then contains only them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sparse_checkout: Vec<String>,
}

/// Which revision to follow. Precedence: `commit`, `name`, `semver`, `tag`, `branch`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryRef {
    /// Branch to follow; `master` when nothing else is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Tag to check out; wins over `branch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Semver range over tags; the highest match is checked out; wins over `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Full reference name, e.g. `refs/heads/main` or `refs/pull/1/head`; wins over `semver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Commit SHA to check out; wins over everything. With `branch`, the clone is of that branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Credential provider for a GitRepository.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum GitProvider {
    // Static credentials from `secretRef`.
    #[default]
    Generic,
    // AWS CodeCommit via the workload identity.
    Aws,
    // Azure DevOps via the workload identity.
    Azure,
    // GitHub App credentials from `secretRef`.
    Github,
}

/// Signature verification settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryVerification {
    /// What to verify; `HEAD` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "HEAD"))]
    pub mode: Option<GitVerificationMode>,
    /// Secret with the trusted public keys: PGP under `*.asc` keys, SSH under `*.sshpub` keys.
    pub secret_ref: LocalObjectReference,
}

/// Which git objects must carry a trusted signature.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum GitVerificationMode {
    // Old spelling of `HEAD`, kept for compatibility.
    #[serde(rename = "head")]
    LegacyHead,
    // The commit HEAD points to after checkout.
    #[default]
    #[serde(rename = "HEAD")]
    Head,
    // The tag object named by the reference.
    Tag,
    // Both the tag and the commit it points to.
    TagAndHEAD,
}

impl GitVerificationMode {
    /// Whether the checked-out commit must be verified.
    pub fn verifies_head(self) -> bool {
        matches!(self, Self::LegacyHead | Self::Head | Self::TagAndHEAD)
    }

    /// Whether the tag object must be verified.
    pub fn verifies_tag(self) -> bool {
        matches!(self, Self::Tag | Self::TagAndHEAD)
    }
}

/// Another GitRepository whose artifact (or part of it) is copied into this one's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryInclude {
    /// The GitRepository to include, in the same namespace.
    pub repository: LocalObjectReference,
    /// Directory of the included artifact to copy; its root when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_path: Option<String>,
    /// Where to put it; the included repository's name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_path: Option<String>,
}

impl GitRepositoryInclude {
    /// Destination directory inside the artifact.
    pub fn to_path(&self) -> &str {
        self.to_path.as_deref().unwrap_or(&self.repository.name)
    }
}

/// What the controller last observed and produced.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryStatus {
    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled` and the source-specific conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The artifact of the last successful reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,

    /// Artifacts of the `include`d repositories used for `artifact`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_artifacts: Vec<Artifact>,

    /// `spec.ignore` as used for the current artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_ignore: Option<String>,

    /// `spec.recurseSubmodules` as used for the current artifact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observed_recurse_submodules: bool,

    /// `spec.include` as used for the current artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_include: Vec<GitRepositoryInclude>,

    /// `spec.sparseCheckout` as used for the current artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_sparse_checkout: Vec<String>,

    /// The verification mode last applied (`HEAD`, `Tag`, `TagAndHEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_verification_mode: Option<String>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// A packaged revision of a source, as served to consumers.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Path of the file relative to the storage root.
    pub path: String,
    /// HTTP address the artifact can be downloaded from.
    pub url: String,
    /// Revision in the origin, e.g. `main@sha1:<40 hex>`.
    pub revision: String,
    /// Digest of the file, `<algorithm>:<checksum>` (e.g. `sha256:...`).
    #[schemars(regex(pattern = r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"))]
    pub digest: String,
    /// When the artifact was last updated.
    #[schemars(schema_with = "crate::schema::date_time")]
    pub last_update_time: Time,
    /// Size of the file in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Upstream metadata, e.g. OCI annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl GitRepository {
    /// The branch to follow when the reference names nothing more specific.
    pub fn branch(&self) -> &str {
        self.spec
            .r#ref
            .as_ref()
            .and_then(|r| r.branch.as_deref())
            .unwrap_or(DEFAULT_BRANCH)
    }

    /// `spec.timeout`, or the CRD default when the object did not come through an API server.
    pub fn timeout(&self) -> &str {
        self.spec.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT)
    }
}

impl crate::meta::FluxObject for GitRepository {
    type Status = GitRepositoryStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&GitRepositoryStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for GitRepositoryStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn revision(&self) -> Option<&str> {
        self.artifact.as_ref().map(|a| a.revision.as_str())
    }
}

impl JsonSchema for GitRepository {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("GitRepository")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<GitRepositorySpec, GitRepositoryStatus>(
            generator,
            "A git repository whose revisions the source controller packages as artifacts.",
        )
    }
}

/// Prefix of every `OCIRepository` URL.
pub const OCI_REPOSITORY_PREFIX: &str = "oci://";
/// `spec.layerSelector.operation`: unpack the layer (a tar+gzip) and archive its files.
pub const OCI_LAYER_EXTRACT: &str = "extract";
/// `spec.layerSelector.operation`: store the layer's compressed bytes as they are.
pub const OCI_LAYER_COPY: &str = "copy";
/// Tag pulled when `spec.ref` names nothing.
pub const OCI_DEFAULT_TAG: &str = "latest";
/// Pulling the manifest or a layer failed (Flux's `OCIPullFailedReason`).
pub const OCI_PULL_FAILED_REASON: &str = "OCIArtifactPullFailed";
/// The selected layer could not be found, unpacked or copied.
pub const OCI_LAYER_OPERATION_FAILED_REASON: &str = "OCIArtifactLayerOperationFailed";
/// Listing tags or choosing one failed.
pub const READ_OPERATION_FAILED_REASON: &str = "ReadOperationFailed";

/// An OCI artifact repository (what `flux push artifact` writes); each digest it resolves to
/// becomes an artifact for Kustomizations.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "OCIRepository",
    plural = "ocirepositories",
    singular = "ocirepository",
    namespaced,
    shortname = "ocirepo",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-sources",
    status = "OCIRepositoryStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OCIRepositorySpec {
    /// Repository address, `oci://<registry>/<path>` without tag or digest.
    #[schemars(regex(pattern = r"^oci://.*$"))]
    pub url: String,

    /// What to pull; the `latest` tag when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<OCIRepositoryRef>,

    /// Which layer becomes the artifact; the first layer, extracted, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_selector: Option<OCILayerSelector>,

    /// Who provides credentials: `secretRef` (`generic`) or a cloud identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "generic"))]
    pub provider: Option<OCIProvider>,

    /// Secret of type `kubernetes.io/dockerconfigjson` with the registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Signature verification (cosign, notation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<OCIRepositoryVerification>,

    /// ServiceAccount whose image pull secrets are used as credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Secret with `ca.crt` and/or `tls.crt`/`tls.key` for the registry's TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,

    /// Secret with proxy settings (`address`, optional `username`/`password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,

    /// How often to look for a new digest (Go duration); jittered.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,

    /// Time limit for the registry operations of one reconciliation; defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"), extend("default" = "60s"))]
    pub timeout: Option<String>,

    /// Exclusion patterns in .gitignore syntax; when set they replace the default exclusions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,

    /// Talk plain HTTP to the registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,

    /// Stop reconciling until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// What to pull. Precedence: `digest`, `semver`, `tag`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OCIRepositoryRef {
    /// Manifest digest `sha256:<hex>`; wins over `semver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Semver range over the tags; the highest match is pulled; wins over `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Regular expression a tag must match to be considered by `semver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver_filter: Option<String>,
    /// Tag to pull; `latest` when nothing is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Which layer of the artifact to use, and how.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OCILayerSelector {
    /// The first layer with this media type is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// `extract` (default) or `copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OCILayerOperation>,
}

/// What is done with the selected layer.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OCILayerOperation {
    // Unpack the tar+gzip layer and archive its files (with the ignore rules).
    #[default]
    Extract,
    // Store the compressed layer as it is.
    Copy,
}

/// Credential provider for an OCIRepository.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OCIProvider {
    // Static credentials from `secretRef`.
    #[default]
    Generic,
    // AWS ECR via the workload identity.
    Aws,
    // Azure Container Registry via the workload identity.
    Azure,
    // Google Artifact Registry via the workload identity.
    Gcp,
}

/// Signature verification settings of an OCIRepository.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OCIRepositoryVerification {
    /// `cosign` or `notation`.
    #[schemars(extend("default" = "cosign", "enum" = ["cosign", "notation"]))]
    pub provider: String,
    /// Secret with the trusted public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Identities accepted for cosign keyless signatures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(rename = "matchOIDCIdentity")]
    pub match_oidc_identity: Vec<OIDCIdentityMatch>,
}

/// Issuer and subject patterns of a keyless signature's certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OIDCIdentityMatch {
    /// Regular expression for the OIDC issuer.
    pub issuer: String,
    /// Regular expression for the identity subject.
    pub subject: String,
}

/// What the controller last observed and produced.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OCIRepositoryStatus {
    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled` and the source-specific conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// Download address of the last artifact (deprecated in Flux, still written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// The artifact of the last successful reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,

    /// `spec.ignore` as used for the current artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_ignore: Option<String>,

    /// `spec.layerSelector` as used for the current artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_layer_selector: Option<OCILayerSelector>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl OCIRepository {
    /// `spec.timeout`, or the CRD default when the object did not come through an API server.
    pub fn timeout(&self) -> &str {
        self.spec.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The layer operation, `extract` when unset.
    pub fn layer_operation(&self) -> OCILayerOperation {
        self.spec
            .layer_selector
            .as_ref()
            .and_then(|s| s.operation)
            .unwrap_or_default()
    }

    /// The media type the layer must have, if any.
    pub fn layer_media_type(&self) -> Option<&str> {
        self.spec
            .layer_selector
            .as_ref()
            .and_then(|s| s.media_type.as_deref())
            .filter(|m| !m.is_empty())
    }
}

impl crate::meta::FluxObject for OCIRepository {
    type Status = OCIRepositoryStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&OCIRepositoryStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for OCIRepositoryStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn revision(&self) -> Option<&str> {
        self.artifact.as_ref().map(|a| a.revision.as_str())
    }
}

impl JsonSchema for OCIRepository {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("OCIRepository")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<OCIRepositorySpec, OCIRepositoryStatus>(
            generator,
            "An OCI artifact repository whose digests the source controller packages as artifacts.",
        )
    }
}

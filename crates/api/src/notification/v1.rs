//! `notification.toolkit.fluxcd.io/v1`: `Receiver`, an incoming webhook that requests an
//! immediate reconcile of the objects it names.
//!
//! Field names, defaults and validation follow Flux's notification-controller v1 CRD exactly;
//! `tests/schema.rs` compares the generated schema against the facts extracted from it.
//!
//! `type` and `kind` are strings constrained by an `enum` in the schema rather than Rust enums:
//! the API server already rejects values the CRD does not list, and a value a newer Flux adds must
//! not make every Receiver in the cluster undecodable for the watch.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::meta::LocalObjectReference;

/// Receiver types (`spec.type`).
pub mod receiver_type {
    pub const GENERIC: &str = "generic";
    pub const GENERIC_HMAC: &str = "generic-hmac";
    pub const GENERIC_OIDC: &str = "generic-oidc";
    pub const GITHUB: &str = "github";
    pub const GITLAB: &str = "gitlab";
    pub const BITBUCKET: &str = "bitbucket";
    pub const HARBOR: &str = "harbor";
    pub const DOCKERHUB: &str = "dockerhub";
    pub const QUAY: &str = "quay";
    pub const GCR: &str = "gcr";
    pub const NEXUS: &str = "nexus";
    pub const ACR: &str = "acr";
    pub const CDEVENTS: &str = "cdevents";
}

/// `spec.interval` when unset (the CRD defaults it to this too).
pub const DEFAULT_RECEIVER_INTERVAL: &str = "10m";
/// Secret key holding the receiver token.
pub const TOKEN_KEY: &str = "token";
/// Prefix of `status.webhookPath`.
pub const WEBHOOK_PATH_PREFIX: &str = "/hook/";

// Ready reasons of a Receiver.
/// The Receiver is serving its webhook path.
pub const RECEIVER_SUCCEEDED_REASON: &str = "Succeeded";
/// The token could not be read (secret or key missing).
pub const TOKEN_NOT_FOUND_REASON: &str = "TokenNotFound";

/// An incoming webhook: a verified call requests a reconcile of every matched resource.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "notification.toolkit.fluxcd.io",
    version = "v1",
    kind = "Receiver",
    plural = "receivers",
    singular = "receiver",
    namespaced,
    status = "ReceiverStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'generic-oidc' || (has(self.oidcProviders) && size(self.oidcProviders) > 0)",
        "message": "generic-oidc receivers must define at least one oidcProvider"
    },
    {
        "rule": "self.type == 'generic-oidc' || !has(self.oidcProviders) || size(self.oidcProviders) == 0",
        "message": "oidcProviders can only be set when type is generic-oidc"
    },
    {
        "rule": "self.type != 'generic-oidc' || !has(self.secretRef)",
        "message": "secretRef cannot be set when type is generic-oidc"
    },
    {
        "rule": "self.type == 'generic-oidc' || has(self.secretRef)",
        "message": "secretRef is required when type is not generic-oidc"
    }
]))]
pub struct ReceiverSpec {
    /// Who sends the webhook; decides how a call is verified and read.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = [
        "generic", "generic-hmac", "generic-oidc", "github", "gitlab", "bitbucket", "harbor",
        "dockerhub", "quay", "gcr", "nexus", "acr", "cdevents"
    ]))]
    pub type_: String,

    /// How often the Secret reference is re-read; `10m` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), extend("default" = "10m"))]
    pub interval: Option<String>,

    /// Event types to act on (e.g. `push` for GitHub, `Push Hook` for GitLab); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,

    /// The objects a verified call requests a reconcile of.
    pub resources: Vec<ReceiverResource>,

    /// CEL expression deciding per resource whether to request a reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_filter: Option<String>,

    /// Secret whose `token` key authenticates calls (not with `generic-oidc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// OIDC issuers trusted by a `generic-oidc` Receiver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["issuerURL"]))]
    pub oidc_providers: Vec<OidcProvider>,

    /// Stop handling calls (they are answered 503) until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// One object (or, with name `*`, every object matching `matchLabels`) a Receiver triggers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverResource {
    /// `group/version` of the object; unset means the kind's Flux API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the object.
    #[schemars(extend("enum" = [
        "Bucket", "GitRepository", "Kustomization", "HelmRelease", "HelmChart", "HelmRepository",
        "ImageRepository", "ImagePolicy", "ImageUpdateAutomation", "OCIRepository",
        "ArtifactGenerator", "ExternalArtifact"
    ]))]
    pub kind: String,
    /// Name of the object, or `*` for every object of the kind matching `matchLabels`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the object; unset means the Receiver's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub namespace: Option<String>,
    /// Labels the objects must carry (with name `*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// CEL expression deciding, in addition to `resourceFilter`, whether to request a reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// An OIDC issuer trusted by a `generic-oidc` Receiver.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OidcProvider {
    /// Issuer URL, matched against the token's `iss` claim.
    #[serde(rename = "issuerURL")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub issuer_url: String,
    /// Expected `aud` claim; `notification-controller` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Named CEL expressions over the claims, available to the validations as `vars.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<OidcVariable>,
    /// CEL conditions every accepted token must satisfy.
    #[schemars(length(min = 1))]
    pub validations: Vec<OidcValidation>,
}

/// A named CEL expression over OIDC claims.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct OidcVariable {
    /// Variable name (a CEL identifier).
    pub name: String,
    /// CEL expression giving its value.
    pub expression: String,
}

/// A CEL condition on OIDC claims, with the message returned when it fails.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct OidcValidation {
    /// CEL boolean expression.
    pub expression: String,
    /// Returned to the caller when the expression is false.
    pub message: String,
}

/// What the controller last observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverStatus {
    /// The `metadata.generation` last reconciled; `-1` before the first reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// `/hook/` + hex(sha256(token + name + namespace)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl Receiver {
    /// `spec.interval`, or the CRD default when the object did not come through an API server.
    pub fn interval(&self) -> &str {
        self.spec
            .interval
            .as_deref()
            .unwrap_or(DEFAULT_RECEIVER_INTERVAL)
    }
}

impl crate::meta::FluxObject for Receiver {
    type Status = ReceiverStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&ReceiverStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for ReceiverStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn revision(&self) -> Option<&str> {
        None
    }
}

impl JsonSchema for Receiver {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("Receiver")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<ReceiverSpec, ReceiverStatus>(
            generator,
            "An incoming webhook that requests a reconcile of the objects it names.",
        )
    }
}

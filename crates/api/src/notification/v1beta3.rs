//! `notification.toolkit.fluxcd.io/v1beta3`: `Alert` (which events go where) and `Provider` (how
//! to reach one destination).
//!
//! As in Flux, neither kind has a status in v1beta3: they are configuration read when an event
//! is dispatched. Problems (a missing Provider, an unreachable endpoint) are reported as
//! Kubernetes Events on the Alert and in the logs.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::meta::LocalObjectReference;

/// Provider types (`spec.type`) Gantry delivers to.
pub mod provider_type {
    pub const GENERIC: &str = "generic";
    pub const GENERIC_HMAC: &str = "generic-hmac";
    pub const SLACK: &str = "slack";
    pub const DISCORD: &str = "discord";
    pub const MSTEAMS: &str = "msteams";
    pub const GITHUB: &str = "github";
}

/// Delivery timeout when `spec.timeout` is unset.
pub const DEFAULT_PROVIDER_TIMEOUT: &str = "15s";

/// Which events, from which objects, are sent to which Provider.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "notification.toolkit.fluxcd.io",
    version = "v1beta3",
    kind = "Alert",
    plural = "alerts",
    singular = "alert",
    namespaced,
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AlertSpec {
    /// The Provider (same namespace) events are sent with.
    pub provider_ref: LocalObjectReference,

    /// `error` sends only error events; `info` (the default) sends all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["info", "error"], "default" = "info"))]
    pub event_severity: Option<String>,

    /// The objects whose events are sent (by kind, name or `*`, namespace, labels).
    pub event_sources: Vec<CrossNamespaceObjectReference>,

    /// Regular expressions; when set, only messages matching one of them are sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion_list: Vec<String>,

    /// Metadata added to every event sent (never overriding the event's own keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub event_metadata: BTreeMap<String, String>,

    /// Regular expressions; messages matching any of them are not sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusion_list: Vec<String>,

    /// Short description of the impact (deprecated in favour of `eventMetadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub summary: Option<String>,

    /// Stop sending until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// A typed reference to objects of one kind: by name, or `*` with `matchLabels`, in any namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceObjectReference {
    /// `group/version` of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the referent.
    #[schemars(extend("enum" = [
        "Bucket", "GitRepository", "Kustomization", "HelmRelease", "HelmChart", "HelmRepository",
        "ImageRepository", "ImagePolicy", "ImageUpdateAutomation", "OCIRepository",
        "ArtifactGenerator", "ExternalArtifact"
    ]))]
    pub kind: String,
    /// Name of the referent, or `*` for all of the kind.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referent; unset means the referrer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub namespace: Option<String>,
    /// Labels the referents must carry (with name `*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// One destination for alerts: a chat webhook, a generic HTTP endpoint, a commit status API.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "notification.toolkit.fluxcd.io",
    version = "v1beta3",
    kind = "Provider",
    plural = "providers",
    singular = "provider",
    namespaced,
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.type == 'github' || self.type == 'gitlab' || self.type == 'gitea' || self.type == 'bitbucketserver' || self.type == 'bitbucket' || self.type == 'azuredevops' || !has(self.commitStatusExpr)",
    "message": "spec.commitStatusExpr is only supported for the 'github', 'gitlab', 'gitea', 'bitbucketserver', 'bitbucket', 'azuredevops' provider types"
}]))]
pub struct ProviderSpec {
    /// Which implementation delivers (`slack`, `discord`, `msteams`, `generic`, `github`, ...).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = [
        "slack", "discord", "msteams", "rocket", "generic", "generic-hmac", "github", "gitlab",
        "gitea", "bitbucketserver", "bitbucket", "azuredevops", "googlechat", "googlepubsub",
        "webex", "sentry", "azureeventhub", "telegram", "lark", "matrix", "opsgenie",
        "alertmanager", "grafana", "githubdispatch", "pagerduty", "datadog", "nats"
    ]))]
    pub type_: String,

    /// Deprecated, unused in v1beta3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<String>,

    /// Channel to post to (chat providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub channel: Option<String>,

    /// Name to post as (chat providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub username: Option<String>,

    /// Where to send: a webhook URL, or the repository URL for commit status providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub address: Option<String>,

    /// Time limit of one delivery; `15s` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"))]
    pub timeout: Option<String>,

    /// HTTP/S proxy address (deprecated in favour of `proxySecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(http|https)://.*$"), length(max = 2048))]
    pub proxy: Option<String>,

    /// Secret with the proxy: `address`, optional `username`/`password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,

    /// Secret with credentials: `address`, `token`, `headers` (YAML map), `username`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Secret with a PEM CA under `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,

    /// ServiceAccount for cloud provider authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// CEL expression for a custom commit status description (commit status providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_status_expr: Option<String>,

    /// Stop delivering until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

impl Alert {
    /// `spec.eventSeverity`, `info` when unset.
    pub fn event_severity(&self) -> &str {
        self.spec.event_severity.as_deref().unwrap_or("info")
    }
}

impl Provider {
    /// `spec.timeout`, or Flux's default.
    pub fn timeout(&self) -> &str {
        self.spec
            .timeout
            .as_deref()
            .unwrap_or(DEFAULT_PROVIDER_TIMEOUT)
    }
}

impl JsonSchema for Alert {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("Alert")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root_without_status::<AlertSpec>(
            generator,
            "Which events, from which objects, are sent to which Provider.",
        )
    }
}

impl JsonSchema for Provider {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("Provider")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root_without_status::<ProviderSpec>(generator, "One destination for alerts.")
    }
}

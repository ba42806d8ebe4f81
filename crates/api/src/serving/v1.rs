//! `serving.knative.dev/v1`: `Service` and `Revision`, with Knative's field names, printer
//! columns and short names.
//!
//! Knative's CRDs describe the whole Kubernetes pod spec; Gantry serves part of it (see
//! [`crate::serving`] and the README). The schema accepts everything Knative's does and keeps
//! what it does not know (`x-kubernetes-preserve-unknown-fields`), and each struct keeps unknown
//! keys in `unsupported`: a field Gantry does not serve reaches the controller, which reports it
//! by path instead of the API server pruning it silently.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Volume, VolumeMount,
};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Condition;

/// A Knative Service: a template stamped out into immutable Revisions, and the traffic split
/// over them.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Service",
    plural = "services",
    singular = "service",
    shortname = "kservice",
    shortname = "ksvc",
    category = "all",
    category = "knative",
    category = "serving",
    namespaced,
    status = "ServiceStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"LatestCreated","type":"string","jsonPath":".status.latestCreatedRevisionName"}"#,
    printcolumn = r#"{"name":"LatestReady","type":"string","jsonPath":".status.latestReadyRevisionName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ServiceSpec {
    /// The Revision to stamp out; each change makes a new Revision.
    #[serde(default)]
    pub template: RevisionTemplateSpec,
    /// How traffic is split over Revisions; unset means 100% to the latest ready Revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
    /// Fields Gantry does not serve (reported, never ignored).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// `spec.template`: the metadata and spec of the Revisions to create.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct RevisionTemplateSpec {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    #[serde(default)]
    pub spec: RevisionSpec,
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// `spec.template.metadata`: the Revision's name (`<service>-<generation>` when unset), labels
/// and annotations.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// A Revision's spec: Knative's `RevisionSpec` (a pod spec plus the request settings). The
/// `Revision` kind (an immutable snapshot of a Service's template, backed by a Deployment
/// `<revision>-deployment`) has it as its spec.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Revision",
    plural = "revisions",
    singular = "revision",
    shortname = "rev",
    category = "all",
    category = "knative",
    category = "serving",
    namespaced,
    status = "RevisionStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Config Name","type":"string","jsonPath":".metadata.labels['serving\\.knative\\.dev/configuration']"}"#,
    printcolumn = r#"{"name":"Generation","type":"string","jsonPath":".metadata.labels['serving\\.knative\\.dev/configurationGeneration']"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#,
    printcolumn = r#"{"name":"Actual Replicas","type":"integer","jsonPath":".status.actualReplicas"}"#,
    printcolumn = r#"{"name":"Desired Replicas","type":"integer","jsonPath":".status.desiredReplicas"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct RevisionSpec {
    /// The serving container (Gantry serves exactly one).
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Volumes the container mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Hard limit of requests in flight per pod; `0` (default) means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    /// Longest a request may take, in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Longest until the first byte of the response, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<i64>,
    /// Longest a request may go without bytes either way, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// The serving container, with the fields Gantry serves.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Container {
    /// `user-container` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// At most one: the port requests are sent to (8080 when unset; named `h2c` for HTTP/2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "open_object")]
    pub resources: Option<ResourceRequirements>,
    /// Knative's default when unset: a TCP probe of the serving port. Kept as written
    /// (Knative lets `httpGet`/`tcpSocket` omit the port, which `core/v1.Probe` cannot say);
    /// the port is filled in on the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "open_object")]
    pub readiness_probe: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// The serving port.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ContainerPort {
    /// `h2c` for HTTP/2 cleartext; anything else (or nothing) for HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i32>,
    /// `TCP` (the only protocol HTTP runs on here; Knative's CRD defaults it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// One traffic target: a Revision (or the latest ready one), its share and an optional tag.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct TrafficTarget {
    /// Names a dedicated URL (`{tag}-{name}.{namespace}.{domain}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// `true`: the latest ready Revision (in status: whether it was resolved from that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// Share of the traffic, 0-100; the shares of a Service add up to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Status only: the tag's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, Value>,
}

/// What the controller last observed of a Service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ConfigurationsReady`, `RoutesReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `http://{name}.{namespace}.{domain}` (the domain template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The in-cluster address: `http://{name}.{namespace}.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    /// The traffic split, resolved to concrete Revisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// Knative's `duckv1.Addressable`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What the controller last observed of a Revision.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ContainerHealthy`, `ResourcesAvailable`, `Active`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    /// Ready pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_replicas: Option<i32>,
    /// The Deployment's `spec.replicas` (the autoscaler's decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
}

/// A container of the Revision and the image digest it resolved to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl RevisionSpec {
    /// The serving container (the first; a second one is reported as unsupported).
    pub fn container(&self) -> Option<&Container> {
        self.containers.first()
    }
}

impl Container {
    /// The port requests go to: the declared `containerPort`, else 8080.
    pub fn user_port(&self) -> i32 {
        self.ports
            .first()
            .and_then(|p| p.container_port)
            .filter(|p| *p != 0)
            .unwrap_or(super::DEFAULT_USER_PORT)
    }

    /// Whether the container speaks HTTP/2 cleartext (its port is named `h2c`).
    pub fn h2c(&self) -> bool {
        self.ports
            .first()
            .and_then(|p| p.name.as_deref())
            .is_some_and(|n| n == super::H2C_PORT_NAME)
    }
}

/// An object field whose shape is Kubernetes' own (probes, resources, ...): kept whole.
fn open_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of [`open_object`]s.
fn open_objects(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    })
}

impl JsonSchema for Service {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("KnativeService")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root_knative::<ServiceSpec, ServiceStatus>(
            generator,
            "A Knative Service: a template stamped out into immutable Revisions and the traffic \
             split over them.",
        )
    }
}

impl JsonSchema for Revision {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("KnativeRevision")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root_knative::<RevisionSpec, RevisionStatus>(
            generator,
            "An immutable snapshot of a Knative Service's template.",
        )
    }
}

impl crate::meta::FluxObject for Service {
    type Status = ServiceStatus;

    /// Knative has no `spec.suspend`.
    fn suspended(&self) -> bool {
        false
    }

    fn flux_status(&self) -> Option<&ServiceStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxObject for Revision {
    type Status = RevisionStatus;

    fn suspended(&self) -> bool {
        false
    }

    fn flux_status(&self) -> Option<&RevisionStatus> {
        self.status.as_ref()
    }
}

fn knative_condition<'a>(
    conditions: &'a [Condition],
    type_: &str,
) -> Option<crate::meta::ConditionView<'a>> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| crate::meta::ConditionView {
            status: &c.status,
            reason: &c.reason,
            message: &c.message,
        })
}

impl crate::meta::FluxStatus for ServiceStatus {
    fn condition(&self, type_: &str) -> Option<crate::meta::ConditionView<'_>> {
        knative_condition(&self.conditions, type_)
    }

    /// The Revision serving the latest template.
    fn revision(&self) -> Option<&str> {
        self.latest_ready_revision_name.as_deref()
    }
}

impl crate::meta::FluxStatus for RevisionStatus {
    fn condition(&self, type_: &str) -> Option<crate::meta::ConditionView<'_>> {
        knative_condition(&self.conditions, type_)
    }

    fn revision(&self) -> Option<&str> {
        None
    }
}

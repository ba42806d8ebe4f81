//! Knative Serving's API (`serving.knative.dev`), served by Gantry so that existing Knative
//! `Service` manifests run unchanged.
//!
//! - [`v1`]: `Service` (`ksvc`) and `Revision` (`rev`).
//! - Here: the labels, annotations, condition types and reasons Knative's controllers and CLI
//!   agree on (Knative keeps them in `pkg/apis/serving`, `pkg/apis/autoscaling` and the
//!   `*_lifecycle.go` files), and Knative's condition shape ([`Condition`]), which carries a
//!   `severity` and no `observedGeneration`, unlike `metav1.Condition`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod v1;

/// API group.
pub const GROUP: &str = "serving.knative.dev";

// Labels Knative puts on Revisions, Deployments and pods.
/// Name of the Service a Revision (and its pods) belongs to.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// UID of that Service.
pub const SERVICE_UID_LABEL: &str = "serving.knative.dev/serviceUID";
/// Name of the Configuration (for a Service: the Service's name).
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// UID of the Configuration (Gantry has no separate Configuration: the Service's UID).
pub const CONFIGURATION_UID_LABEL: &str = "serving.knative.dev/configurationUID";
/// The configuration generation that stamped out the Revision.
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";
/// Name of the Revision (on its Deployment and pods).
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// UID of the Revision: the Deployment's selector.
pub const REVISION_UID_LABEL: &str = "serving.knative.dev/revisionUID";
/// `app`, defaulted to the Revision's name on pods (Knative's `AppLabelKey`).
pub const APP_LABEL: &str = "app";
/// Whether a Revision is routed: `active`, `reserve` (no traffic; eligible for GC) or `pending`.
pub const ROUTING_STATE_LABEL: &str = "serving.knative.dev/routingState";
/// When [`ROUTING_STATE_LABEL`] last changed (RFC 3339).
pub const ROUTING_STATE_MODIFIED_ANNOTATION: &str = "serving.knative.dev/routingStateModified";
/// `true` keeps a Revision from garbage collection.
pub const NO_GC_ANNOTATION: &str = "serving.knative.dev/no-gc";
/// Value of [`ROUTING_STATE_LABEL`] for a Revision that gets traffic.
pub const ROUTING_STATE_ACTIVE: &str = "active";
/// Value of [`ROUTING_STATE_LABEL`] for a Revision without traffic.
pub const ROUTING_STATE_RESERVE: &str = "reserve";
/// Set by Knative's webhook on Services: who created / last changed them (kept if present).
pub const CREATOR_ANNOTATION: &str = "serving.knative.dev/creator";
/// See [`CREATOR_ANNOTATION`].
pub const LAST_MODIFIER_ANNOTATION: &str = "serving.knative.dev/lastModifier";
/// The container a `kubectl exec/logs` defaults to (Knative sets it on pods).
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

// Autoscaling annotations (`autoscaling.knative.dev/…`).
/// Prefix of every autoscaling annotation; keys Gantry does not know are reported, not ignored.
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";
pub const MIN_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/min-scale";
pub const MAX_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/max-scale";
pub const INITIAL_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/initial-scale";
pub const TARGET_ANNOTATION: &str = "autoscaling.knative.dev/target";
pub const TARGET_UTILIZATION_ANNOTATION: &str =
    "autoscaling.knative.dev/target-utilization-percentage";
pub const METRIC_ANNOTATION: &str = "autoscaling.knative.dev/metric";
pub const WINDOW_ANNOTATION: &str = "autoscaling.knative.dev/window";
pub const SCALE_TO_ZERO_POD_RETENTION_ANNOTATION: &str =
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period";
pub const ACTIVATION_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/activation-scale";
/// Knative's autoscaler class; Gantry is a KPA (`kpa.autoscaling.knative.dev`) only.
pub const CLASS_ANNOTATION: &str = "autoscaling.knative.dev/class";
/// The only [`CLASS_ANNOTATION`] value Gantry serves.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";

/// Every `autoscaling.knative.dev/` annotation Gantry implements.
pub const SUPPORTED_AUTOSCALING_ANNOTATIONS: &[&str] = &[
    MIN_SCALE_ANNOTATION,
    MAX_SCALE_ANNOTATION,
    INITIAL_SCALE_ANNOTATION,
    TARGET_ANNOTATION,
    TARGET_UTILIZATION_ANNOTATION,
    METRIC_ANNOTATION,
    WINDOW_ANNOTATION,
    SCALE_TO_ZERO_POD_RETENTION_ANNOTATION,
    ACTIVATION_SCALE_ANNOTATION,
];

// Defaults (Knative's `config-defaults`, `revision_helpers.go`).
/// Port of the serving container when none is declared.
pub const DEFAULT_USER_PORT: i32 = 8080;
/// Name Knative gives the serving container's port on the Deployment.
pub const USER_PORT_NAME: &str = "user-port";
/// Port name that asks for HTTP/2 cleartext to the container.
pub const H2C_PORT_NAME: &str = "h2c";
/// Name of the serving container when the manifest gives none.
pub const DEFAULT_CONTAINER_NAME: &str = "user-container";
/// `timeoutSeconds` when unset (Knative's `revision-timeout-seconds`).
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 300;

// Condition types.
/// Overall readiness (Service and Revision).
pub const READY: &str = "Ready";
/// Service: the latest Revision of its configuration is ready.
pub const CONFIGURATIONS_READY: &str = "ConfigurationsReady";
/// Service: its traffic targets are resolved and routed.
pub const ROUTES_READY: &str = "RoutesReady";
/// Revision: the container passed its readiness checks.
pub const CONTAINER_HEALTHY: &str = "ContainerHealthy";
/// Revision: its Deployment exists and has what it needs.
pub const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";
/// Revision: it has (or is getting) pods; `False`/`NoTraffic` when scaled to zero.
pub const ACTIVE: &str = "Active";

// Reasons Knative uses.
/// Service/Revision: a newer Revision is not ready yet.
pub const REVISION_MISSING_REASON: &str = "RevisionMissing";
/// Service: the latest created Revision failed.
pub const REVISION_FAILED_REASON: &str = "RevisionFailed";
/// Revision: scaled to zero.
pub const NO_TRAFFIC_REASON: &str = "NoTraffic";
/// Revision: pods are being created.
pub const DEPLOYING_REASON: &str = "Deploying";
/// Revision: activating from zero.
pub const ACTIVATING_REASON: &str = "Activating";
/// Service: the spec asks for something Gantry does not serve (Gantry's own reason).
pub const UNSUPPORTED_FIELD_REASON: &str = "UnsupportedField";
/// Service: the spec is invalid (a Revision name taken by another Service, bad traffic).
pub const INVALID_SPEC_REASON: &str = "InvalidSpec";

/// Knative's condition severity: an `Error` condition affects readiness; `Info`/`Warning` do not.
pub mod severity {
    pub const ERROR: &str = "";
    pub const WARNING: &str = "Warning";
    pub const INFO: &str = "Info";
}

/// A condition as Knative writes it (`knative.dev/pkg/apis.Condition`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type (`Ready`, `ConfigurationsReady`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Empty (an error: it affects readiness), `Warning` or `Info`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub severity: String,
    /// When the condition last changed status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// One-word CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

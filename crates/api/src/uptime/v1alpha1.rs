//! `uptime.gantry.dev/v1alpha1`: `Monitor`, one endpoint checked at an interval (HTTP(S),
//! keyword, TCP, DNS, TLS certificate, or a heartbeat pushed to Gantry), its state
//! (Uptime Kuma's PENDING/UP/DOWN/MAINTENANCE) and where alerts about it go.
//!
//! Conditions are Gatus's (`[STATUS] == 200`, `[BODY].status == UP`, ...): see
//! `gantry_core::uptime::condition`. Defaults are written out in the schema and applied again
//! by the accessors, so objects that never went through an API server (standalone mode) behave
//! the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::meta::{LocalObjectReference, SecretKeyReference};

/// `spec.interval` when unset.
pub const DEFAULT_INTERVAL: &str = "60s";
/// `spec.timeout` when unset.
pub const DEFAULT_TIMEOUT: &str = "10s";
/// `spec.failureThreshold` when unset (failures in a row before DOWN).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// `spec.successThreshold` when unset (successes in a row before UP again).
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;

/// Condition type: the last checks say the endpoint is up (`True`), down (`False`), or not
/// known yet / pending confirmation (`Unknown`).
pub const UP_CONDITION: &str = "Up";
/// Ready reason: the Monitor is scheduled.
pub const MONITORING_REASON: &str = "Monitoring";
/// Up reasons, one per state.
pub const STATE_UP_REASON: &str = "Up";
pub const STATE_DOWN_REASON: &str = "Down";
pub const STATE_PENDING_REASON: &str = "Pending";
pub const STATE_MAINTENANCE_REASON: &str = "Maintenance";
/// Event reasons.
pub const MONITOR_DOWN_REASON: &str = "MonitorDown";
pub const MONITOR_UP_REASON: &str = "MonitorUp";
pub const MONITOR_SLOW_REASON: &str = "MonitorSlow";
pub const MONITOR_PENDING_REASON: &str = "MonitorPending";
pub const MONITOR_MAINTENANCE_REASON: &str = "MonitorMaintenance";

/// What kind of check a Monitor runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MonitorType {
    /// An HTTP(S) request (`spec.http`).
    #[default]
    Http,
    /// An HTTP(S) request whose body must contain (or not contain) `spec.http.keyword`.
    Keyword,
    /// A TCP connection (`spec.tcp`).
    Tcp,
    /// A DNS query (`spec.dns`).
    Dns,
    /// A TLS handshake, for the certificate's expiry (`spec.tls`).
    Tls,
    /// A call Gantry expects every interval (`spec.heartbeat`).
    Heartbeat,
}

impl MonitorType {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorType::Http => "http",
            MonitorType::Keyword => "keyword",
            MonitorType::Tcp => "tcp",
            MonitorType::Dns => "dns",
            MonitorType::Tls => "tls",
            MonitorType::Heartbeat => "heartbeat",
        }
    }
}

/// One endpoint checked at an interval, and where alerts about it go.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "uptime.gantry.dev",
    version = "v1alpha1",
    kind = "Monitor",
    plural = "monitors",
    singular = "monitor",
    shortname = "mon",
    namespaced,
    status = "MonitorStatus",
    schema = "manual",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Uptime(24h)","type":"string","jsonPath":".status.uptime.last24h"}"#,
    printcolumn = r#"{"name":"Response","type":"string","jsonPath":".status.lastResult.responseTime"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MonitorSpec {
    /// The kind of check; its settings are in the field of the same name (`keyword` uses `http`).
    #[serde(rename = "type", default)]
    pub type_: MonitorType,

    /// HTTP(S) settings (types `http` and `keyword`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,

    /// TCP settings (type `tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,

    /// DNS settings (type `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCheck>,

    /// TLS settings (type `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCheck>,

    /// Heartbeat settings (type `heartbeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatCheck>,

    /// How often the check runs; `60s` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), extend("default" = "60s"))]
    pub interval: Option<String>,

    /// How long one check may take; `10s` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), extend("default" = "10s"))]
    pub timeout: Option<String>,

    /// Failed checks in a row before the Monitor is DOWN (PENDING until then); 3 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1), extend("default" = 3))]
    pub failure_threshold: Option<u32>,

    /// Successful checks in a row before a DOWN Monitor is UP again; 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1), extend("default" = 1))]
    pub success_threshold: Option<u32>,

    /// How soon a check is retried after a connection error while confirming a failure
    /// (PENDING); the interval by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub retry_interval: Option<String>,

    /// Gatus-style conditions that must all hold, e.g. `[STATUS] == 200`,
    /// `[RESPONSE_TIME] < 300`, `[BODY].status == UP`. Unset: the type's default
    /// (`[STATUS] < 400` for HTTP, `[CONNECTED] == true` for TCP and TLS,
    /// `[DNS_RCODE] == NOERROR` for DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,

    /// Windows in which checks run but no alert is sent (state MAINTENANCE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,

    /// Where alerts go and which are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertSettings>,

    /// Group on the status page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,

    /// Name on the status page and in alerts; the object's name by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,

    /// Stop checking until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// An HTTP(S) request and what its response must look like.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    /// `http://` or `https://` URL.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// `GET` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Basic auth from a Secret with `username` and `password` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret_ref: Option<LocalObjectReference>,
    /// Bearer token from a Secret (key `token` unless `key` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretKeyReference>,
    /// Follow redirects (at most 10); true by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    /// Skip TLS certificate verification (self-signed endpoints); false by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Client certificate (`tls.crt`, `tls.key`) and extra CA (`ca.crt`) from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// The text that must be in the body (type `keyword`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// With `keyword`: the text must *not* be in the body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_keyword: bool,
}

/// A TCP connection.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpCheck {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// A DNS query.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsCheck {
    /// The name queried.
    pub name: String,
    /// The DNS server, `ip[:port]` (port 53 by default).
    pub server: String,
    /// `A` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["A", "AAAA", "CNAME", "MX", "NS", "TXT", "SRV", "PTR", "SOA"]))]
    pub record_type: Option<String>,
    /// Answers that must all be present (IP addresses, host names, text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_answers: Vec<String>,
}

/// A TLS handshake, to watch the certificate's expiry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsCheck {
    /// Host name or IP address.
    pub host: String,
    /// 443 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Name sent in SNI and checked in the certificate; `host` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Extra trusted CA (`ca.crt`) from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectReference>,
    /// The certificate must stay valid at least this long, e.g. `72h` (adds
    /// `[CERTIFICATE_EXPIRATION] > <value>` to the conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_validity: Option<String>,
}

/// A push monitor: something calls Gantry every interval.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatCheck {
    /// Secret whose key (`token` by default) is part of the heartbeat URL.
    pub token_secret_ref: SecretKeyReference,
}

/// When a maintenance window repeats.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Recurrence {
    /// Once, at `start` (a date and time).
    #[default]
    Once,
    /// Every day at `start` (a time of day).
    Daily,
    /// On `weekdays` at `start`.
    Weekly,
    /// On `daysOfMonth` at `start`.
    Monthly,
}

/// A window in which alerts are not sent.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// `once` (default), `daily`, `weekly`, `monthly`.
    #[serde(default)]
    pub recurrence: Recurrence,
    /// `2026-12-24T22:00` for `once`, `22:00` otherwise, in `timeZone`.
    pub start: String,
    /// How long the window lasts, e.g. `2h`.
    pub duration: String,
    /// IANA time zone, e.g. `Europe/Paris`; UTC by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// `weekly`: days, e.g. `[Sat, Sun]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekdays: Vec<String>,
    /// `monthly`: days of the month (1-31).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_month: Vec<u8>,
}

/// Which alerts a Monitor sends, and to whom.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertSettings {
    /// Providers (`notification.toolkit.fluxcd.io/v1beta3`, same namespace) alerts go to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provider_refs: Vec<LocalObjectReference>,
    /// An Alert (same namespace) whose Provider, metadata and summary are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_ref: Option<LocalObjectReference>,
    /// Alert when the Monitor goes DOWN; true by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_down: Option<bool>,
    /// Alert when it is UP again, with the outage's duration; true by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_recovery: Option<bool>,
    /// Alert when a successful check took longer than this, e.g. `2s` (once per slow spell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_response: Option<String>,
    /// Repeat the DOWN alert at this interval while down, e.g. `1h`; never by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
}

/// One check's result as the status shows it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastResult {
    /// RFC 3339.
    pub time: String,
    pub success: bool,
    /// e.g. `123ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time: Option<String>,
    /// What failed, or a short summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Uptime ratios, as percentages with two decimals (`99.95%`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UptimeFigures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last24h: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last7d: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last30d: Option<String>,
}

/// Response time percentiles in milliseconds over recent successful checks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseTimes {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
}

/// What the controller last observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitorStatus {
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the spec is valid and scheduled) and `Up`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// `UP`, `DOWN`, `PENDING` or `MAINTENANCE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<LastResult>,
    /// When the state last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
    /// Uptime over 24 hours, 7 and 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<UptimeFigures>,
    /// Response time percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_times: Option<ResponseTimes>,
    /// Heartbeat monitors: the path to call (`/heartbeat/<token hash>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_path: Option<String>,
    /// The last `reconcile.fluxcd.io/requestedAt` value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl Monitor {
    /// `spec.interval` or its default.
    pub fn interval(&self) -> &str {
        self.spec.interval.as_deref().unwrap_or(DEFAULT_INTERVAL)
    }

    /// `spec.timeout` or its default.
    pub fn timeout(&self) -> &str {
        self.spec.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT)
    }

    pub fn failure_threshold(&self) -> u32 {
        self.spec
            .failure_threshold
            .unwrap_or(DEFAULT_FAILURE_THRESHOLD)
            .max(1)
    }

    pub fn success_threshold(&self) -> u32 {
        self.spec
            .success_threshold
            .unwrap_or(DEFAULT_SUCCESS_THRESHOLD)
            .max(1)
    }
}

impl crate::meta::FluxObject for Monitor {
    type Status = MonitorStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    fn flux_status(&self) -> Option<&MonitorStatus> {
        self.status.as_ref()
    }
}

impl crate::meta::FluxStatus for MonitorStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn revision(&self) -> Option<&str> {
        None
    }
}

impl JsonSchema for Monitor {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        crate::schema::name("Monitor")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        crate::schema::root::<MonitorSpec, MonitorStatus>(
            generator,
            "An endpoint checked at an interval, its state, and where alerts about it go.",
        )
    }
}

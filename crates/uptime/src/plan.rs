//! A Monitor's spec checked and compiled once into a [`Plan`]: parsed durations, conditions and
//! windows, the HTTP client and TLS verifier it needs, its credentials resolved. Everything
//! wrong with a spec is found here (→ `Ready=False`, reason `InvalidSpec`), not at each check.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_api::meta::parse_duration;
use gantry_api::uptime::v1alpha1::{Monitor, MonitorType};
use gantry_core::uptime::condition::{self, Condition, Placeholder};
use gantry_core::uptime::maintenance::{self, Window};
use gantry_core::uptime::state;
use hickory_proto::rr::{Name, RecordType};
use kube::ResourceExt;
use rustls::client::danger::ServerCertVerifier;
use sha2::{Digest, Sha256};

use crate::{dns, tls};

/// Which Monitor: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Key {
    pub fn of(monitor: &Monitor) -> Self {
        Key {
            namespace: monitor.namespace().unwrap_or_default(),
            name: monitor.name_any(),
        }
    }
}

/// Why a Monitor cannot be scheduled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlanError {
    /// The spec itself is wrong: retrying will not help.
    #[error("{0}")]
    InvalidSpec(String),
    /// A Secret it names is missing or incomplete: retried.
    #[error("secret '{name}': {reason}")]
    Secret { name: String, reason: String },
}

/// The Secrets a spec names, by name: key → bytes. Filled by the caller (the cluster, or the
/// standalone configuration).
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Names of the Secrets a Monitor's spec refers to.
pub fn secret_names(monitor: &Monitor) -> Vec<String> {
    let spec = &monitor.spec;
    let mut names = Vec::new();
    if let Some(http) = &spec.http {
        names.extend(http.basic_auth_secret_ref.iter().map(|r| r.name.clone()));
        names.extend(http.bearer_token_secret_ref.iter().map(|r| r.name.clone()));
        names.extend(http.cert_secret_ref.iter().map(|r| r.name.clone()));
    }
    if let Some(tls) = &spec.tls {
        names.extend(tls.ca_secret_ref.iter().map(|r| r.name.clone()));
    }
    if let Some(hb) = &spec.heartbeat {
        names.push(hb.token_secret_ref.name.clone());
    }
    names.sort();
    names.dedup();
    names
}

/// HTTP clients shared by Monitors with the same TLS and redirect settings (one connection
/// pool and TLS configuration for thousands of Monitors, not one each).
#[derive(Clone, Default)]
pub struct Clients {
    clients: Arc<Mutex<HashMap<u64, reqwest::Client>>>,
}

impl Clients {
    fn get(
        &self,
        follow: bool,
        insecure: bool,
        ca: Option<&[u8]>,
        cert: Option<(&[u8], &[u8])>,
    ) -> Result<reqwest::Client, String> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (follow, insecure, ca, cert).hash(&mut h);
        let key = h.finish();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let roots = tls::roots_with(ca)?;
        let config = tls::client_config(tls::verifier(roots, insecure)?, cert)?;
        let redirect = if follow {
            reqwest::redirect::Policy::limited(MAX_REDIRECTS)
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .tls_info(true)
            .redirect(redirect)
            // Checks go straight to the endpoint, whatever proxy the environment names.
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("gantry-uptime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Redirects followed before a check fails as a loop.
pub const MAX_REDIRECTS: usize = 10;

/// How a check authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    Basic { username: String, password: String },
    Bearer(String),
}

/// What a check connects to.
#[derive(Clone)]
pub enum Target {
    Http {
        url: reqwest::Url,
        method: reqwest::Method,
        headers: Vec<(String, String)>,
        body: Option<String>,
        auth: Option<Auth>,
        client: reqwest::Client,
        /// Text that must (`true`: must not) be in the body.
        keyword: Option<(String, bool)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Dns {
        name: Name,
        server: SocketAddr,
        record_type: RecordType,
        expected: Vec<String>,
    },
    Tls {
        host: String,
        port: u16,
        server_name: rustls::pki_types::ServerName<'static>,
        verifier: Arc<dyn ServerCertVerifier>,
    },
    Heartbeat,
}

/// Where alerts about a Monitor go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertTargets {
    pub providers: Vec<String>,
    pub alert: Option<String>,
}

/// A Monitor ready to be checked.
#[derive(Clone)]
pub struct Plan {
    pub key: Key,
    pub generation: Option<i64>,
    pub type_: MonitorType,
    pub target: Target,
    /// What the alerts and the status page call the endpoint (URL, host:port, name).
    pub endpoint: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub retry_interval: Duration,
    pub conditions: Vec<Condition>,
    pub needs_body: bool,
    pub windows: Vec<Window>,
    pub settings: state::Settings,
    pub alerts: AlertTargets,
    pub display_name: String,
    pub group: Option<String>,
    /// Heartbeat monitors: `/heartbeat/<hash>`.
    pub heartbeat_path: Option<String>,
}

impl Plan {
    /// Whether a maintenance window is open at `now`.
    pub fn in_maintenance(&self, now: jiff::Timestamp) -> bool {
        self.windows.iter().any(|w| w.active(now))
    }
}

/// The path a heartbeat monitor is called at: `/heartbeat/` + hex(sha256(token + name +
/// namespace)), so the path proves knowledge of the token without showing it.
pub fn heartbeat_path(token: &str, name: &str, namespace: &str) -> String {
    let digest = Sha256::digest(format!("{token}{name}{namespace}").as_bytes());
    format!("/heartbeat/{}", hex::encode(digest))
}

fn duration(field: &str, text: &str) -> Result<Duration, PlanError> {
    parse_duration(text).map_err(|e| PlanError::InvalidSpec(format!("spec.{field}: {e}")))
}

fn secret_value(secrets: &Secrets, name: &str, key: &str) -> Result<Vec<u8>, PlanError> {
    let data = secrets.get(name).ok_or_else(|| PlanError::Secret {
        name: name.into(),
        reason: "not found".into(),
    })?;
    data.get(key).cloned().ok_or_else(|| PlanError::Secret {
        name: name.into(),
        reason: format!("has no '{key}' key"),
    })
}

fn text(bytes: Vec<u8>, name: &str, key: &str) -> Result<String, PlanError> {
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| PlanError::Secret {
            name: name.into(),
            reason: format!("'{key}' is not UTF-8"),
        })
}

/// Checks and compiles a Monitor.
pub fn compile(monitor: &Monitor, secrets: &Secrets, clients: &Clients) -> Result<Plan, PlanError> {
    let invalid = |m: String| PlanError::InvalidSpec(m);
    let key = Key::of(monitor);
    let spec = &monitor.spec;
    let interval = duration("interval", monitor.interval())?;
    if interval < Duration::from_secs(1) {
        return Err(invalid("spec.interval must be at least 1s".into()));
    }
    let timeout = duration("timeout", monitor.timeout())?;
    if timeout.is_zero() {
        return Err(invalid("spec.timeout must be more than 0".into()));
    }
    let retry_interval = match &spec.retry_interval {
        Some(t) => duration("retryInterval", t)?.max(Duration::from_millis(500)),
        None => interval,
    };
    let mut condition_texts = spec.conditions.clone();
    let missing = |what: &str| invalid(format!("type {} needs spec.{what}", spec.type_.as_str()));
    let (target, endpoint) = match spec.type_ {
        MonitorType::Http | MonitorType::Keyword => {
            let http = spec.http.as_ref().ok_or_else(|| missing("http"))?;
            let url = reqwest::Url::parse(&http.url)
                .map_err(|e| invalid(format!("spec.http.url '{}': {e}", http.url)))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(format!(
                    "spec.http.url '{}': only http and https are checked",
                    http.url
                )));
            }
            let method = http
                .method
                .as_deref()
                .unwrap_or("GET")
                .to_ascii_uppercase()
                .parse::<reqwest::Method>()
                .map_err(|_| invalid("spec.http.method is not an HTTP method".into()))?;
            let keyword = match (spec.type_, &http.keyword) {
                (MonitorType::Keyword, Some(k)) if !k.is_empty() => {
                    Some((k.clone(), http.invert_keyword))
                }
                (MonitorType::Keyword, _) => {
                    return Err(invalid("type keyword needs spec.http.keyword".into()));
                }
                _ => None,
            };
            let auth = if let Some(r) = &http.basic_auth_secret_ref {
                Some(Auth::Basic {
                    username: text(
                        secret_value(secrets, &r.name, "username")?,
                        &r.name,
                        "username",
                    )?,
                    password: text(
                        secret_value(secrets, &r.name, "password")?,
                        &r.name,
                        "password",
                    )?,
                })
            } else if let Some(r) = &http.bearer_token_secret_ref {
                let k = r.key.as_deref().unwrap_or("token");
                Some(Auth::Bearer(text(
                    secret_value(secrets, &r.name, k)?,
                    &r.name,
                    k,
                )?))
            } else {
                None
            };
            let (ca, cert) = match &http.cert_secret_ref {
                Some(r) => {
                    let data = secrets.get(&r.name).ok_or_else(|| PlanError::Secret {
                        name: r.name.clone(),
                        reason: "not found".into(),
                    })?;
                    let pair = match (data.get("tls.crt"), data.get("tls.key")) {
                        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                        (None, None) => None,
                        _ => {
                            return Err(PlanError::Secret {
                                name: r.name.clone(),
                                reason: "needs both tls.crt and tls.key".into(),
                            });
                        }
                    };
                    (data.get("ca.crt").cloned(), pair)
                }
                None => (None, None),
            };
            let client = clients
                .get(
                    http.follow_redirects.unwrap_or(true),
                    http.insecure_skip_verify,
                    ca.as_deref(),
                    cert.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                )
                .map_err(|e| match &http.cert_secret_ref {
                    Some(r) => PlanError::Secret {
                        name: r.name.clone(),
                        reason: e.clone(),
                    },
                    None => invalid(e),
                })?;
            if condition_texts.is_empty() {
                condition_texts.push("[STATUS] < 400".into());
            }
            let endpoint = http.url.clone();
            (
                Target::Http {
                    url,
                    method,
                    headers: http.headers.clone().into_iter().collect(),
                    body: http.body.clone(),
                    auth,
                    client,
                    keyword,
                },
                endpoint,
            )
        }
        MonitorType::Tcp => {
            let tcp = spec.tcp.as_ref().ok_or_else(|| missing("tcp"))?;
            if tcp.host.is_empty() || tcp.port == 0 {
                return Err(invalid("spec.tcp needs a host and a port".into()));
            }
            if condition_texts.is_empty() {
                condition_texts.push("[CONNECTED] == true".into());
            }
            (
                Target::Tcp {
                    host: tcp.host.clone(),
                    port: tcp.port,
                },
                format!("{}:{}", tcp.host, tcp.port),
            )
        }
        MonitorType::Dns => {
            let d = spec.dns.as_ref().ok_or_else(|| missing("dns"))?;
            let name = dns::name(&d.name).map_err(|e| invalid(format!("spec.dns.name: {e}")))?;
            let server =
                dns::server(&d.server).map_err(|e| invalid(format!("spec.dns.server: {e}")))?;
            let record_type = dns::record_type(d.record_type.as_deref().unwrap_or("A"))
                .map_err(|e| invalid(format!("spec.dns.recordType: {e}")))?;
            if condition_texts.is_empty() {
                condition_texts.push("[DNS_RCODE] == NOERROR".into());
            }
            (
                Target::Dns {
                    name,
                    server,
                    record_type,
                    expected: d.expected_answers.clone(),
                },
                format!("{} {} @{}", d.name, record_type, d.server),
            )
        }
        MonitorType::Tls => {
            let t = spec.tls.as_ref().ok_or_else(|| missing("tls"))?;
            let port = t.port.unwrap_or(443);
            let sni = t.server_name.clone().unwrap_or_else(|| t.host.clone());
            let server_name = rustls::pki_types::ServerName::try_from(sni.clone())
                .map_err(|_| invalid(format!("spec.tls.serverName '{sni}' is not a host name")))?;
            let ca = match &t.ca_secret_ref {
                Some(r) => Some(secret_value(secrets, &r.name, "ca.crt")?),
                None => None,
            };
            let roots = tls::roots_with(ca.as_deref()).map_err(|reason| PlanError::Secret {
                name: t
                    .ca_secret_ref
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default(),
                reason,
            })?;
            let verifier = tls::verifier(roots, false).map_err(invalid)?;
            if let Some(min) = &t.min_validity {
                duration("tls.minValidity", min)?;
                condition_texts.push(format!("[CERTIFICATE_EXPIRATION] > {min}"));
            }
            if condition_texts.is_empty() {
                condition_texts.push("[CONNECTED] == true".into());
            }
            (
                Target::Tls {
                    host: t.host.clone(),
                    port,
                    server_name,
                    verifier,
                },
                format!("{}:{port}", t.host),
            )
        }
        MonitorType::Heartbeat => {
            let hb = spec
                .heartbeat
                .as_ref()
                .ok_or_else(|| missing("heartbeat"))?;
            let k = hb.token_secret_ref.key.as_deref().unwrap_or("token");
            let token = text(
                secret_value(secrets, &hb.token_secret_ref.name, k)?,
                &hb.token_secret_ref.name,
                k,
            )?;
            if token.is_empty() {
                return Err(PlanError::Secret {
                    name: hb.token_secret_ref.name.clone(),
                    reason: format!("'{k}' is empty"),
                });
            }
            let path = heartbeat_path(&token, &key.name, &key.namespace);
            (Target::Heartbeat, path)
        }
    };
    let conditions = condition::parse_all(&condition_texts)
        .map_err(|e| invalid(format!("spec.conditions: {e}")))?;
    check_placeholders(spec.type_, &conditions)?;
    let needs_body = matches!(
        target,
        Target::Http {
            keyword: Some(_),
            ..
        }
    ) || conditions
        .iter()
        .any(|c| c.placeholders().any(|p| p == Placeholder::Body));
    let windows = spec
        .maintenance
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let d = duration(&format!("maintenance[{i}].duration"), &w.duration)?;
            let recurrence = serde_json::to_value(w.recurrence)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            maintenance::parse(&maintenance::Spec {
                recurrence: &recurrence,
                start: &w.start,
                duration: d,
                time_zone: w.time_zone.as_deref(),
                weekdays: &w.weekdays,
                days_of_month: &w.days_of_month,
            })
            .map_err(|e| invalid(format!("spec.maintenance[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let alerts = spec.alerts.clone().unwrap_or_default();
    let settings = state::Settings {
        failure_threshold: monitor.failure_threshold(),
        success_threshold: monitor.success_threshold(),
        repeat: alerts
            .repeat_interval
            .as_deref()
            .map(|t| duration("alerts.repeatInterval", t))
            .transpose()?,
        slow: alerts
            .slow_response
            .as_deref()
            .map(|t| duration("alerts.slowResponse", t))
            .transpose()?,
        alert_on_down: alerts.on_down.unwrap_or(true),
        alert_on_recovery: alerts.on_recovery.unwrap_or(true),
    };
    let heartbeat_path = matches!(target, Target::Heartbeat).then(|| endpoint.clone());
    Ok(Plan {
        generation: monitor.metadata.generation,
        type_: spec.type_,
        target,
        endpoint,
        interval,
        timeout,
        retry_interval,
        conditions,
        needs_body,
        windows,
        settings,
        alerts: AlertTargets {
            providers: alerts
                .provider_refs
                .iter()
                .map(|r| r.name.clone())
                .collect(),
            alert: alerts.alert_ref.map(|r| r.name),
        },
        display_name: spec
            .display_name
            .clone()
            .unwrap_or_else(|| key.name.clone()),
        group: spec.group.clone(),
        heartbeat_path,
        key,
    })
}

/// Refuses a placeholder the check type never produces (it would fail every check).
fn check_placeholders(type_: MonitorType, conditions: &[Condition]) -> Result<(), PlanError> {
    use Placeholder as P;
    for c in conditions {
        for p in c.placeholders() {
            let ok = match type_ {
                MonitorType::Http | MonitorType::Keyword => !matches!(p, P::DnsRcode),
                MonitorType::Tcp => matches!(p, P::Connected | P::ResponseTime | P::Ip),
                MonitorType::Dns => {
                    matches!(p, P::DnsRcode | P::ResponseTime | P::Body | P::Connected)
                }
                MonitorType::Tls => matches!(
                    p,
                    P::Connected | P::ResponseTime | P::CertificateExpiration | P::Ip
                ),
                MonitorType::Heartbeat => matches!(p, P::Connected | P::ResponseTime),
            };
            if !ok {
                return Err(PlanError::InvalidSpec(format!(
                    "spec.conditions: '{}': {} is not known for {} monitors",
                    c.text,
                    p.name(),
                    type_.as_str()
                )));
            }
        }
    }
    Ok(())
}

//! The alert dispatcher: every event published in-process goes through every Alert; selected
//! events are rendered for the Alert's Provider and delivered in the background.
//!
//! Delivery never blocks a reconciliation: the event stream is a broadcast channel (a slow
//! dispatcher loses old events, never stalls a publisher) and each delivery is its own task.
//! Failed deliveries are retried with backoff (5xx, 429 honouring `Retry-After`, timeouts,
//! refused connections), at most [`MAX_ATTEMPTS`] times; a final failure is logged, counted and
//! recorded as a Warning Event on the Alert. An Alert whose Provider is missing gets a Warning
//! Event (reason `ProviderNotFound`) instead of a delivery.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::notification::v1beta3::{Alert, Provider};
use gantry_core::notification::alert::{self, Event, Filter, Outgoing, ProviderConfig, Source};
use gantry_runtime::events::FluxEvent;
use gantry_runtime::http::{ClientOptions, client};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::CONTROLLER;

/// Deliveries per event and Provider, the first included.
pub const MAX_ATTEMPTS: u32 = 4;
/// Longest wait between attempts (also caps `Retry-After`).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Reason of the Warning Event for an Alert whose Provider does not exist.
pub const PROVIDER_NOT_FOUND_REASON: &str = "ProviderNotFound";
/// Reason of the Warning Event for a delivery that failed for good.
pub const DELIVERY_FAILED_REASON: &str = "NotificationFailed";
/// Reason of the Warning Event for an Alert or Provider that cannot be used as written.
pub const INVALID_REASON: &str = "InvalidSpec";

/// Delivery counters (also logged); exposed for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub suppressed: AtomicU64,
}

/// Shared by the dispatch loop and the delivery tasks.
pub struct Dispatcher {
    client: Client,
    alerts: Store<Alert>,
    providers: Store<Provider>,
    recorder: Recorder,
    recent: Mutex<HashMap<u64, Instant>>,
    pub stats: Arc<Stats>,
    /// Base wait before the first retry (doubles per attempt).
    pub retry_base: Duration,
}

/// Runs the dispatcher until `shutdown`.
pub async fn run(
    client: Client,
    events: broadcast::Receiver<FluxEvent>,
    namespace: Option<String>,
    shutdown: CancellationToken,
) {
    let dispatcher = Dispatcher::start(client, namespace, shutdown.clone()).await;
    dispatcher.consume(events, shutdown).await;
}

fn watch<K>(client: &Client, namespace: &Option<String>, stop: CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|_| async {});
    tokio::spawn(async move {
        tokio::select! {
            _ = stream => {}
            _ = stop.cancelled() => {}
        }
    });
    store
}

impl Dispatcher {
    /// Starts caches of Alerts and Providers and waits until they are filled.
    pub async fn start(
        client: Client,
        namespace: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let alerts = watch::<Alert>(&client, &namespace, shutdown.clone());
        let providers = watch::<Provider>(&client, &namespace, shutdown.clone());
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            let _ = alerts.wait_until_ready().await;
            let _ = providers.wait_until_ready().await;
        })
        .await;
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Dispatcher {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            alerts,
            providers,
            recent: Mutex::default(),
            stats: Arc::default(),
            retry_base: Duration::from_secs(1),
        })
    }

    /// Handles events until the stream closes or `shutdown`.
    pub async fn consume(
        self: Arc<Self>,
        mut events: broadcast::Receiver<FluxEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        tracing::warn!(lost, "alert dispatcher fell behind; events were dropped");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            self.clone().dispatch(event).await;
        }
    }

    /// Sends one event to every Alert that selects it (deliveries run in the background).
    pub async fn dispatch(self: Arc<Self>, event: FluxEvent) {
        let event = match to_core(&event) {
            Some(e) => e,
            None => return,
        };
        let mut labels: Option<Option<BTreeMap<String, String>>> = None;
        for alert in self.alerts.state() {
            if alert.spec.suspend {
                continue;
            }
            let namespace = alert.namespace().unwrap_or_default();
            let filter = match filter_of(&alert) {
                Ok(f) => f,
                Err(err) => {
                    self.warn(&alert.object_ref(&()), INVALID_REASON, &err.to_string())
                        .await;
                    continue;
                }
            };
            if labels.is_none() && alert::needs_labels(&filter, &event) {
                labels = Some(self.labels_of(&event).await);
            }
            let object_labels = labels.as_ref().and_then(|l| l.as_ref());
            if !alert::selects(&filter, &event, object_labels) {
                continue;
            }
            let key = alert::duplicate_key(&format!("{namespace}/{}", alert.name_any()), &event);
            if self.is_duplicate(key) {
                self.stats.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let provider_ref = ObjectRef::new(&alert.spec.provider_ref.name).within(&namespace);
            let Some(provider) = self.providers.get(&provider_ref) else {
                let message = format!(
                    "provider '{}' not found in namespace '{namespace}'",
                    alert.spec.provider_ref.name
                );
                tracing::warn!(alert = %alert.name_any(), %namespace, "{message}");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.warn(&alert.object_ref(&()), PROVIDER_NOT_FOUND_REASON, &message)
                    .await;
                continue;
            };
            if provider.spec.suspend {
                continue;
            }
            let mut event = event.clone();
            alert::enrich(
                &mut event,
                &alert.spec.event_metadata,
                alert.spec.summary.as_deref(),
            );
            let this = self.clone();
            tokio::spawn(async move { this.deliver(alert, provider, event).await });
        }
    }

    fn is_duplicate(&self, key: u64) -> bool {
        let Ok(mut recent) = self.recent.lock() else {
            return false;
        };
        let now = Instant::now();
        recent.retain(|_, at| now.duration_since(*at) < alert::DUPLICATE_WINDOW);
        if recent.contains_key(&key) {
            return true;
        }
        recent.insert(key, now);
        false
    }

    async fn labels_of(&self, event: &Event) -> Option<BTreeMap<String, String>> {
        let o = &event.involved_object;
        let resource = crate::resources::api_resource(o.api_version.as_deref(), &o.kind)?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &o.namespace, &resource);
        let object = api.get_metadata_opt(&o.name).await.ok()??;
        Some(object.metadata.labels.unwrap_or_default())
    }

    async fn warn(&self, object: &ObjectReference, reason: &str, message: &str) {
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(message.chars().take(1024).collect()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, object).await {
            tracing::warn!(%err, reason, "recording a Kubernetes event failed");
        }
    }

    async fn deliver(self: Arc<Self>, alert: Arc<Alert>, provider: Arc<Provider>, event: Event) {
        let alert_ref = alert.object_ref(&());
        let provider_name = format!(
            "{}/{}",
            provider.namespace().unwrap_or_default(),
            provider.name_any()
        );
        let (config, http, headers) = match self.prepare(&provider).await {
            Ok(p) => p,
            Err(message) => {
                tracing::warn!(provider = %provider_name, "{message}");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.warn(&alert_ref, INVALID_REASON, &message).await;
                return;
            }
        };
        let mut outgoing = match alert::render(&config, &event) {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.warn(
                    &alert_ref,
                    INVALID_REASON,
                    &format!("provider {provider_name}: {err}"),
                )
                .await;
                return;
            }
        };
        // The secret's `headers` go on every request (e.g. an API key the endpoint wants).
        outgoing.headers.extend(headers);
        match send_with_retries(&http, &outgoing, self.retry_base, &self.stats).await {
            Ok(attempts) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(provider = %provider_name, attempts, "alert delivered");
            }
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "failed to send notification for {}/{}/{} to provider {provider_name}: {err}",
                    event.involved_object.kind,
                    event.involved_object.namespace,
                    event.involved_object.name
                );
                tracing::error!("{message}");
                self.warn(&alert_ref, DELIVERY_FAILED_REASON, &message)
                    .await;
            }
        }
    }

    /// The provider's settings with its Secrets resolved, and an HTTP client for it.
    async fn prepare(
        &self,
        provider: &Provider,
    ) -> Result<(ProviderConfig, reqwest::Client, Vec<(String, String)>), String> {
        let namespace = provider.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let read = |name: String| {
            let secrets = secrets.clone();
            let namespace = namespace.clone();
            async move {
                let secret = secrets
                    .get_opt(&name)
                    .await
                    .map_err(|e| format!("reading secret '{namespace}/{name}': {e}"))?
                    .ok_or_else(|| format!("secret '{name}' not found"))?;
                let data: BTreeMap<String, String> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                Ok::<_, String>(data)
            }
        };
        prepare_provider(provider, read).await
    }
}

/// A Secret's data, values as text.
pub type SecretData = BTreeMap<String, String>;

/// A Provider's settings with its Secrets resolved (`read` fetches one by name), and an HTTP
/// client for it: what the alert dispatcher and the uptime monitors (in the cluster and
/// standalone) deliver with.
pub async fn prepare_provider<F, Fut>(
    provider: &Provider,
    read: F,
) -> Result<(ProviderConfig, reqwest::Client, Vec<(String, String)>), String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<SecretData, String>>,
{
    let mut config = ProviderConfig {
        type_: provider.spec.type_.clone(),
        address: provider.spec.address.clone().unwrap_or_default(),
        channel: provider.spec.channel.clone(),
        username: provider.spec.username.clone(),
        token: None,
        uid: provider.metadata.uid.clone().unwrap_or_default(),
    };
    let mut headers = Vec::new();
    if let Some(secret_ref) = &provider.spec.secret_ref {
        let data = read(secret_ref.name.clone()).await?;
        if let Some(address) = data.get("address") {
            config.address = address.trim().to_string();
        }
        config.token = data.get("token").map(|t| t.trim().to_string());
        if let Some(yaml) = data.get("headers") {
            let map: BTreeMap<String, String> = serde_saphyr::from_str(yaml)
                .map_err(|e| format!("the secret's 'headers' is not a YAML map: {e}"))?;
            headers.extend(map);
        }
    }
    let mut options = ClientOptions {
        timeout: Some(
            gantry_api::meta::parse_duration(provider.timeout())
                .ok()
                .ok_or_else(|| format!("invalid timeout '{}'", provider.timeout()))?,
        ),
        proxy: provider.spec.proxy.clone(),
        ..Default::default()
    };
    if let Some(proxy_ref) = &provider.spec.proxy_secret_ref {
        let data = read(proxy_ref.name.clone()).await?;
        let address = data
            .get("address")
            .ok_or("the proxy secret has no 'address'")?;
        options.proxy = Some(match (data.get("username"), data.get("password")) {
            (Some(u), Some(p)) => address.replacen("://", &format!("://{u}:{p}@"), 1),
            _ => address.clone(),
        });
    }
    if let Some(cert_ref) = &provider.spec.cert_secret_ref {
        let data = read(cert_ref.name.clone()).await?;
        let ca = data
            .get("ca.crt")
            .or_else(|| data.get("caFile"))
            .ok_or("the certificate secret has no 'ca.crt'")?;
        options.ca_pem = Some(ca.clone().into_bytes());
    }
    let http = client(&options).map_err(|e| e.to_string())?;
    Ok((config, http, headers))
}

fn filter_of(alert: &Alert) -> Result<Filter, alert::BadPattern> {
    Ok(Filter {
        namespace: alert.namespace().unwrap_or_default(),
        severity: alert.event_severity().to_string(),
        sources: alert
            .spec
            .event_sources
            .iter()
            .map(|s| Source {
                kind: s.kind.clone(),
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                match_labels: s.match_labels.clone(),
            })
            .collect(),
        inclusion: alert::compile(&alert.spec.inclusion_list)?,
        exclusion: alert::compile(&alert.spec.exclusion_list)?,
    })
}

/// Flux's event JSON from the in-process event.
pub fn to_core(event: &FluxEvent) -> Option<Event> {
    let value = serde_json::to_value(event).ok()?;
    let mut event = serde_json::from_value(value).ok()?;
    // Alerts and providers see the metadata as Flux's notification-controller passes it on.
    alert::cleanup_metadata(&mut event);
    Some(event)
}

/// Why a delivery failed for good.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{status} after {attempts} attempt(s): {body}")]
    Status {
        status: u16,
        attempts: u32,
        body: String,
    },
    #[error("after {attempts} attempt(s): {source}")]
    Transport {
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
}

/// The wait after failed attempt `attempt` (1-based): `base` doubling per attempt, at most
/// [`MAX_RETRY_WAIT`].
pub fn retry_wait(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY_WAIT)
}

/// POSTs `outgoing`, retrying transport errors, 429 and 5xx with doubling waits from `base`
/// (a 429's `Retry-After` wins, capped at [`MAX_RETRY_WAIT`]). Returns the attempts used.
pub async fn send_with_retries(
    http: &reqwest::Client,
    outgoing: &Outgoing,
    base: Duration,
    stats: &Stats,
) -> Result<u32, DeliveryError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = http.post(&outgoing.url).body(outgoing.body.clone());
        for (k, v) in &outgoing.headers {
            request = request.header(k, v);
        }
        let wait = retry_wait(base, attempt);
        let (retry, error, wait) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(attempt),
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_RETRY_WAIT));
                let body: String = response
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(512)
                    .collect();
                let retry = status.as_u16() == 429 || status.is_server_error();
                let wait = if status.as_u16() == 429 {
                    retry_after.unwrap_or(wait)
                } else {
                    wait
                };
                let error = DeliveryError::Status {
                    status: status.as_u16(),
                    attempts: attempt,
                    body,
                };
                (retry, error, wait)
            }
            Err(source) => (
                true,
                DeliveryError::Transport {
                    attempts: attempt,
                    source,
                },
                wait,
            ),
        };
        if !retry || attempt >= MAX_ATTEMPTS {
            return Err(error);
        }
        tracing::debug!(url = %outgoing.url, attempt, ?wait, "{error}; retrying");
        stats.retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_runtime::events::Severity;

    #[test]
    fn providers_get_the_metadata_flux_passes_on() {
        let revision = format!("main@sha1:{}", "ab".repeat(20));
        let event = FluxEvent {
            involved_object: ObjectReference {
                kind: Some("Kustomization".into()),
                namespace: Some("apps".into()),
                name: Some("web".into()),
                api_version: Some("kustomize.toolkit.fluxcd.io/v1".into()),
                ..Default::default()
            },
            severity: Severity::Error,
            timestamp: jiff::Timestamp::now(),
            message: "m".into(),
            reason: "ReconciliationFailed".into(),
            metadata: BTreeMap::from([
                (
                    "kustomize.toolkit.fluxcd.io/revision".to_string(),
                    revision.clone(),
                ),
                (
                    "kustomize.toolkit.fluxcd.io/checksum".to_string(),
                    "c".to_string(),
                ),
            ]),
            reporting_controller: "kustomize-controller".into(),
        };
        let core = to_core(&event).unwrap();
        assert_eq!(
            core.metadata,
            BTreeMap::from([("revision".to_string(), revision)])
        );
    }
}

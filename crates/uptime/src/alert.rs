//! Alerts about Monitors, through Flux's Providers: an [`Alert`](state::Alert) decided by the
//! state machine becomes Flux's event JSON, is rendered by the same provider code as delivery
//! events (generic, generic-hmac, slack, discord, msteams) and sent with the same retries.
//!
//! Sending never blocks a check: each delivery is its own task; a provider that is down is
//! retried ([`MAX_ATTEMPTS`](gantry_notification::dispatch::MAX_ATTEMPTS)) in the background
//! and the failure is logged and counted.
//!
//! With a history store, an alert is first written to its outbox as a [`Queued`] alert, in the
//! same transaction as the state change that raised it, and deleted once its deliveries are
//! done: a process killed in between leaves it to the next one, which sends it
//! ([`crate::engine::Engine::run`]). Delivery is at least once: a process killed in the
//! milliseconds between a delivery and the deletion repeats that alert.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use gantry_api::uptime::v1alpha1::{MONITOR_DOWN_REASON, MONITOR_SLOW_REASON, MONITOR_UP_REASON};
use gantry_core::notification::alert::{self, Event, InvolvedObject, ProviderConfig};
use gantry_core::uptime::state::{self, human};
use gantry_notification::dispatch::{MAX_ATTEMPTS, Stats, retry_wait, send_with_retries};

use crate::engine::PERSIST_WAIT;
use crate::plan::{AlertTargets, Plan};

/// Reporter of alert events (Flux's `reportingController`).
pub const CONTROLLER: &str = "uptime-controller";

/// One Provider ready to send to, with the Alert settings that apply.
pub struct Delivery {
    /// `namespace/name` of the Provider (for logs).
    pub name: String,
    pub config: ProviderConfig,
    pub http: reqwest::Client,
    pub headers: Vec<(String, String)>,
    /// An `alertRef`'s `eventMetadata` and `summary`.
    pub metadata: BTreeMap<String, String>,
    pub summary: Option<String>,
}

/// Finds the Providers a Monitor names (the cluster's API, or the standalone configuration).
pub trait Directory: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        targets: &'a AlertTargets,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, String>>;
}

/// An alert as the outbox keeps it: everything needed to send it again in another process.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Queued {
    /// `namespace/name` of the Monitor (for logs).
    pub monitor: String,
    pub namespace: String,
    pub providers: Vec<String>,
    pub alert: Option<String>,
    pub event: Event,
}

impl Queued {
    /// `None` when the Monitor names no Provider nor Alert.
    pub fn new(plan: &Plan, alert: &state::Alert, now: jiff::Timestamp) -> Option<Self> {
        if plan.alerts == AlertTargets::default() {
            return None;
        }
        Some(Queued {
            monitor: plan.key.to_string(),
            namespace: plan.key.namespace.clone(),
            providers: plan.alerts.providers.clone(),
            alert: plan.alerts.alert.clone(),
            event: event_for(plan, alert, now),
        })
    }
}

/// Called once an alert's deliveries are over (sent, or refused for good).
pub type Done = Box<dyn FnOnce() + Send>;

/// Sends alerts in the background.
#[derive(Clone)]
pub struct Notifier {
    directory: Arc<dyn Directory>,
    pub stats: Arc<Stats>,
    /// Wait before the first retry (doubles per attempt).
    pub retry_base: Duration,
}

impl Notifier {
    pub fn new(directory: Arc<dyn Directory>) -> Self {
        Self {
            directory,
            stats: Arc::default(),
            retry_base: Duration::from_secs(1),
        }
    }

    /// Sends `alert` about `plan`'s Monitor to its Providers, in the background.
    pub fn send(&self, plan: &Plan, alert: &state::Alert, now: jiff::Timestamp) {
        self.send_after(plan, alert, now, None);
    }

    /// [`Notifier::send`] once `stored` resolves (the state the alert announces is in the
    /// history database), or after [`PERSIST_WAIT`] at most.
    pub fn send_after(
        &self,
        plan: &Plan,
        alert: &state::Alert,
        now: jiff::Timestamp,
        stored: Option<BoxFuture<'static, ()>>,
    ) {
        if let Some(queued) = Queued::new(plan, alert, now) {
            self.send_queued(queued, stored, None);
        }
    }

    /// Sends a [`Queued`] alert once `stored` resolves (or after [`PERSIST_WAIT`]), then calls
    /// `done` when every delivery is over, successful or not: an alert a Provider refuses after
    /// its retries (or whose Providers are still not found after them) is not sent again. A
    /// process stopping before that never calls `done`.
    pub fn send_queued(
        &self,
        queued: Queued,
        stored: Option<BoxFuture<'static, ()>>,
        done: Option<Done>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let key = queued.monitor.clone();
            if let Some(stored) = stored
                && tokio::time::timeout(PERSIST_WAIT, stored).await.is_err()
            {
                tracing::warn!(monitor = %key, "alert sent before its state was stored (history database slow or away)");
            }
            let targets = AlertTargets {
                providers: queued.providers,
                alert: queued.alert,
            };
            match this.resolve(&key, &queued.namespace, &targets).await {
                Ok(deliveries) => {
                    let sends = deliveries.into_iter().map(|delivery| {
                        let mut event = queued.event.clone();
                        alert::enrich(&mut event, &delivery.metadata, delivery.summary.as_deref());
                        let this = this.clone();
                        let key = key.clone();
                        async move { this.deliver(&key, delivery, event).await }
                    });
                    futures::future::join_all(sends).await;
                }
                Err(err) => {
                    this.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(monitor = %key, "alert not sent: {err}");
                }
            }
            if let Some(done) = done {
                done();
            }
        });
    }

    /// The alert's Providers. A failure (a Provider or its Secret not there yet, the API server
    /// away for a moment) is retried on the deliveries' schedule before the alert is given up:
    /// the outbox row goes with it, so one failed lookup must not cost the alert.
    async fn resolve(
        &self,
        key: &str,
        namespace: &str,
        targets: &AlertTargets,
    ) -> Result<Vec<Delivery>, String> {
        let mut attempt = 1;
        loop {
            match self.directory.resolve(namespace, targets).await {
                Ok(deliveries) => return Ok(deliveries),
                Err(err) if attempt >= MAX_ATTEMPTS => return Err(err),
                Err(err) => {
                    let wait = retry_wait(self.retry_base, attempt);
                    tracing::warn!(monitor = %key, attempt, ?wait, "alert's Providers not found: {err}; retrying");
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn deliver(&self, key: &str, delivery: Delivery, event: Event) {
        let mut outgoing = match alert::render(&delivery.config, &event) {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(monitor = %key, provider = %delivery.name, "alert not sent: {err}");
                return;
            }
        };
        outgoing.headers.extend(delivery.headers);
        match send_with_retries(&delivery.http, &outgoing, self.retry_base, &self.stats).await {
            Ok(attempts) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(monitor = %key, provider = %delivery.name, attempts, reason = %event.reason, "alert sent");
            }
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(monitor = %key, provider = %delivery.name, "alert not delivered: {err}");
            }
        }
    }
}

/// The event (Flux's JSON) an alert is sent as.
pub fn event_for(plan: &Plan, alert: &state::Alert, now: jiff::Timestamp) -> Event {
    let name = &plan.display_name;
    let endpoint = &plan.endpoint;
    let mut metadata = BTreeMap::from([("endpoint".to_string(), endpoint.clone())]);
    if let Some(group) = &plan.group {
        metadata.insert("group".into(), group.clone());
    }
    let (severity, reason, message) = match alert {
        state::Alert::Down { since, reason } => {
            metadata.insert("state".into(), "DOWN".into());
            metadata.insert("downSince".into(), since.to_string());
            (
                "error",
                MONITOR_DOWN_REASON,
                format!("{name} is DOWN ({endpoint}): {reason}"),
            )
        }
        state::Alert::StillDown { since, reason } => {
            let down_for = Duration::try_from(now.duration_since(*since)).unwrap_or_default();
            metadata.insert("state".into(), "DOWN".into());
            metadata.insert("downSince".into(), since.to_string());
            (
                "error",
                MONITOR_DOWN_REASON,
                format!(
                    "{name} is still DOWN after {} ({endpoint}): {reason}",
                    human(down_for)
                ),
            )
        }
        state::Alert::Recovered { outage } => {
            metadata.insert("state".into(), "UP".into());
            metadata.insert("outage".into(), human(*outage));
            metadata.insert("outageSeconds".into(), outage.as_secs().to_string());
            (
                "info",
                MONITOR_UP_REASON,
                format!(
                    "{name} is UP again ({endpoint}) after an outage of {}",
                    human(*outage)
                ),
            )
        }
        state::Alert::Slow { took } => {
            metadata.insert("state".into(), "UP".into());
            metadata.insert("responseTime".into(), format!("{}ms", took.as_millis()));
            (
                "info",
                MONITOR_SLOW_REASON,
                format!(
                    "{name} responds slowly ({endpoint}): {}ms, over the {}ms limit",
                    took.as_millis(),
                    plan.settings.slow.unwrap_or_default().as_millis()
                ),
            )
        }
    };
    Event {
        involved_object: InvolvedObject {
            kind: "Monitor".into(),
            namespace: plan.key.namespace.clone(),
            name: plan.key.name.clone(),
            uid: None,
            api_version: Some("uptime.gantry.dev/v1alpha1".into()),
            resource_version: None,
        },
        severity: severity.into(),
        timestamp: now.to_string(),
        message,
        reason: reason.into(),
        metadata,
        reporting_controller: CONTROLLER.into(),
        reporting_instance: None,
    }
}

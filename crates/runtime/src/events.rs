//! Kubernetes Events in Flux's shape, also handed to in-process subscribers.
//!
//! Every controller publishes through one [`Events`]; the alert dispatcher subscribes to the same
//! stream instead of watching the API server, so an alert costs no extra round trip.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use tokio::sync::broadcast;

/// `info` or `error`, as Flux's notification API names severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Error,
}

/// One event, as Flux's event JSON carries it to notification providers.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxEvent {
    pub involved_object: ObjectReference,
    pub severity: Severity,
    pub timestamp: jiff::Timestamp,
    pub message: String,
    pub reason: String,
    /// Keys are prefixed with the API group, e.g. `kustomize.toolkit.fluxcd.io/revision`.
    pub metadata: BTreeMap<String, String>,
    pub reporting_controller: String,
}

/// Publishes Events for one controller (`source-controller`, `kustomize-controller`, ...).
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
    controller: String,
    subscribers: broadcast::Sender<FluxEvent>,
}

impl Events {
    pub fn new(
        client: Client,
        controller: &str,
        subscribers: broadcast::Sender<FluxEvent>,
    ) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            client,
            reporter,
            controller: controller.to_string(),
            subscribers,
        }
    }

    /// Records the event on the object and hands it to subscribers. A failure to record is
    /// logged, never returned: an event must not fail a reconciliation.
    pub async fn publish(
        &self,
        object: ObjectReference,
        severity: Severity,
        reason: &str,
        message: &str,
        metadata: BTreeMap<String, String>,
    ) {
        let event = KubeEvent {
            type_: match severity {
                Severity::Info => EventType::Normal,
                Severity::Error => EventType::Warning,
            },
            reason: reason.to_string(),
            note: Some(truncate(message, 1024)),
            action: reason.to_string(),
            secondary: None,
        };
        // A fresh recorder per event: kube's recorder folds events with the same reason into one
        // series and keeps the first message, which would hide a second `NewArtifact` revision.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(err) = recorder.publish(&event, &object).await {
            tracing::warn!(%err, reason, "recording a Kubernetes event failed");
        }
        // No subscriber is fine (nobody alerts yet); a lagging one loses old events, not us.
        let _ = self.subscribers.send(FluxEvent {
            involved_object: object,
            severity,
            timestamp: jiff::Timestamp::now(),
            message: message.to_string(),
            reason: reason.to_string(),
            metadata,
            reporting_controller: self.controller.clone(),
        });
    }
}

fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

//! The Receiver controller: reads the token, publishes `status.webhookPath` and `Ready`.
//!
//! The webhook server finds Receivers by that path, so a Receiver whose token cannot be read is
//! `Ready=False` (reason `TokenNotFound`) and its calls are answered 503 until the Secret exists.
//! Flux re-reads the Secret every `spec.interval` (10m); so does Gantry, and a missing Secret is
//! retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use gantry_api::meta::{INVALID_SPEC_REASON, RECONCILE_REQUEST_ANNOTATION};
use gantry_api::notification::v1::{
    RECEIVER_SUCCEEDED_REASON, Receiver, ReceiverStatus, TOKEN_KEY, TOKEN_NOT_FOUND_REASON,
};
use gantry_core::notification::webhook;
use gantry_runtime::conditions;
use gantry_runtime::controller::{Controller, Cx, Reconciler, Shared};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::CONTROLLER;

/// The Receiver controller's domain steps; it runs on the shared harness ([`run_controller`]).
pub struct Receivers;

/// Why a Receiver is not Ready; each maps to Flux's reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unable to read token from secret '{namespace}/{name}': {reason}")]
    Token {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("Receiver has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Token { .. } => TOKEN_NOT_FOUND_REASON,
            Error::InvalidSpec(_) => INVALID_SPEC_REASON,
            _ => gantry_api::meta::FAILED_REASON,
        }
    }
}

/// Reads the Receiver's token (`token` key of `spec.secretRef`).
pub async fn token(client: &Client, receiver: &Receiver) -> Result<String, Error> {
    let namespace = receiver.namespace().ok_or(Error::NoNamespace)?;
    let Some(secret_ref) = &receiver.spec.secret_ref else {
        return Err(Error::InvalidSpec("spec.secretRef is required".into()));
    };
    let err = |reason: String| Error::Token {
        namespace: namespace.clone(),
        name: secret_ref.name.clone(),
        reason,
    };
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("secret not found".into()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(TOKEN_KEY))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| err(format!("the secret has no '{TOKEN_KEY}' key")))?;
    String::from_utf8(bytes).map_err(|_| err(format!("'{TOKEN_KEY}' is not UTF-8")))
}

impl Reconciler for Receivers {
    type Object = Receiver;
    type Error = Error;
    const CONTROLLER: &'static str = CONTROLLER;

    async fn reconcile(&self, receiver: Arc<Receiver>, cx: &Cx<Receiver>) -> Result<Action, Error> {
        let namespace = receiver.namespace().ok_or(Error::NoNamespace)?;
        let name = receiver.name_any();
        let result = if !webhook::is_supported(&receiver.spec.type_) {
            Err(Error::InvalidSpec(format!(
                "receiver type '{}' is not supported by Gantry (supported: {})",
                receiver.spec.type_,
                webhook::SUPPORTED_TYPES.join(", ")
            )))
        } else {
            token(cx.client(), &receiver).await
        };
        let outcome = result.map(|token| webhook::webhook_path(&token, &name, &namespace));
        let status = status_for(&receiver, &outcome);
        cx.write_status(&receiver, &status)
            .await
            .map_err(Error::Status)?;
        match outcome {
            Ok(_) => Ok(Action::requeue(
                gantry_api::meta::parse_duration(receiver.interval())
                    .unwrap_or(Duration::from_secs(600)),
            )),
            Err(err) => {
                tracing::warn!(%namespace, %name, reason = err.reason(), "{err}");
                Err(err)
            }
        }
    }

    async fn cleanup(&self, _receiver: Arc<Receiver>, _cx: &Cx<Receiver>) -> Result<(), Error> {
        // Nothing outside the object: the webhook server forgets it with the watch.
        Ok(())
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::InvalidSpec(_))
    }
}

/// The status a reconcile writes: the webhook path and `Ready=True`, or no path (calls must not
/// be accepted with a token that may be gone) and `Ready=False`, stalled for an invalid spec.
fn status_for(receiver: &Receiver, outcome: &Result<String, Error>) -> ReceiverStatus {
    let generation = receiver.metadata.generation;
    let mut status = receiver.status.clone().unwrap_or_default();
    status.last_handled_reconcile_at = receiver
        .annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .cloned();
    status.observed_generation = generation;
    match outcome {
        Ok(path) => {
            let message = format!("Receiver initialized for path: {path}");
            conditions::succeeded(
                &mut status.conditions,
                generation,
                RECEIVER_SUCCEEDED_REASON,
                &message,
            );
            status.webhook_path = Some(path.clone());
        }
        Err(err) => {
            conditions::failed(
                &mut status.conditions,
                generation,
                err.reason(),
                &err.to_string(),
                matches!(err, Error::InvalidSpec(_)),
            );
            status.webhook_path = None;
        }
    }
    status
}

/// Runs the Receiver controller on the harness until `shutdown`.
pub async fn run_controller(
    shared: Shared,
    namespace: Option<String>,
    shutdown: CancellationToken,
) {
    Controller::new(Receivers, shared)
        .namespace(namespace.as_deref())
        .run(async move { shutdown.cancelled().await })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::notification::v1::ReceiverSpec;

    fn receiver() -> Receiver {
        let mut r = Receiver::new("hook", ReceiverSpec::default());
        r.metadata.generation = Some(2);
        r.metadata.namespace = Some("ns".into());
        r
    }

    fn ready(status: &ReceiverStatus) -> (&str, &str) {
        let c = conditions::get(&status.conditions, "Ready").expect("Ready");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_token_gives_the_path_and_ready() {
        let status = status_for(&receiver(), &Ok("/hook/abc".into()));
        assert_eq!(status.webhook_path.as_deref(), Some("/hook/abc"));
        assert_eq!(ready(&status), ("True", RECEIVER_SUCCEEDED_REASON));
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn a_missing_token_withdraws_the_path_and_only_a_bad_spec_stalls() {
        let mut was = receiver();
        was.status = Some(status_for(&was, &Ok("/hook/abc".into())));
        let missing = Error::Token {
            namespace: "ns".into(),
            name: "token".into(),
            reason: "secret not found".into(),
        };
        let status = status_for(&was, &Err(missing));
        assert_eq!(
            status.webhook_path, None,
            "no call accepted with a token that may be gone"
        );
        assert_eq!(ready(&status), ("False", TOKEN_NOT_FOUND_REASON));
        assert!(!conditions::is_true(&status.conditions, "Stalled"));
        assert!(Receivers::retryable(&Error::Token {
            namespace: String::new(),
            name: String::new(),
            reason: String::new()
        }));

        let status = status_for(&was, &Err(Error::InvalidSpec("type".into())));
        assert_eq!(ready(&status), ("False", INVALID_SPEC_REASON));
        assert!(conditions::is_true(&status.conditions, "Stalled"));
        assert!(!Receivers::retryable(&Error::InvalidSpec(String::new())));
    }
}

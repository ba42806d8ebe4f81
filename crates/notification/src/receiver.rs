//! The Receiver controller: reads the token, publishes `status.webhookPath` and `Ready`.
//!
//! The webhook server finds Receivers by that path, so a Receiver whose token cannot be read is
//! `Ready=False` (reason `TokenNotFound`) and its calls are answered 503 until the Secret exists.
//! Flux re-reads the Secret every `spec.interval` (10m); so does Gantry, and a missing Secret is
//! retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gantry_api::meta::{INVALID_SPEC_REASON, RECONCILE_REQUEST_ANNOTATION};
use gantry_api::notification::v1::{
    RECEIVER_SUCCEEDED_REASON, Receiver, ReceiverStatus, TOKEN_KEY, TOKEN_NOT_FOUND_REASON,
};
use gantry_core::webhook;
use gantry_runtime::backoff::after_failures;
use gantry_runtime::conditions;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::CONTROLLER;

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

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

/// Reconciles one Receiver.
pub async fn reconcile(receiver: Arc<Receiver>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = receiver.namespace().ok_or(Error::NoNamespace)?;
    let name = receiver.name_any();
    if receiver.spec.suspend {
        return Ok(Action::await_change());
    }
    let generation = receiver.metadata.generation;
    let mut status = receiver.status.clone().unwrap_or_default();
    status.last_handled_reconcile_at = receiver
        .annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .cloned();
    let result = if !webhook::is_supported(&receiver.spec.type_) {
        Err(Error::InvalidSpec(format!(
            "receiver type '{}' is not supported by Gantry (supported: {})",
            receiver.spec.type_,
            webhook::SUPPORTED_TYPES.join(", ")
        )))
    } else {
        token(&ctx.client, &receiver).await
    };
    match result {
        Ok(token) => {
            let path = webhook::webhook_path(&token, &name, &namespace);
            let message = format!("Receiver initialized for path: {path}");
            conditions::succeeded(
                &mut status.conditions,
                generation,
                RECEIVER_SUCCEEDED_REASON,
                &message,
            );
            status.webhook_path = Some(path);
            status.observed_generation = generation;
            patch_status(&ctx.client, &namespace, &name, &status).await?;
            if let Ok(mut f) = ctx.failures.lock() {
                f.remove(&format!("{namespace}/{name}"));
            }
            let interval = gantry_api::meta::parse_duration(receiver.interval())
                .ok()
                .unwrap_or(Duration::from_secs(600));
            Ok(Action::requeue(interval))
        }
        Err(err) => {
            let terminal = matches!(err, Error::InvalidSpec(_));
            tracing::warn!(%namespace, %name, reason = err.reason(), "{err}");
            conditions::failed(
                &mut status.conditions,
                generation,
                err.reason(),
                &err.to_string(),
                terminal,
            );
            // Calls must not be accepted with a token that may be gone.
            status.webhook_path = None;
            status.observed_generation = generation;
            patch_status(&ctx.client, &namespace, &name, &status).await?;
            Err(err)
        }
    }
}

async fn patch_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &ReceiverStatus,
) -> Result<(), Error> {
    let api: Api<Receiver> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(CONTROLLER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Retries with Flux's backoff; an invalid spec waits for a change.
pub fn error_policy(receiver: Arc<Receiver>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::InvalidSpec(_)) {
        return Action::await_change();
    }
    let key = format!(
        "{}/{}",
        receiver.namespace().unwrap_or_default(),
        receiver.name_any()
    );
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    Action::requeue(after_failures(failures))
}

/// Runs the Receiver controller until `shutdown`.
pub async fn run_controller(
    client: Client,
    namespace: Option<String>,
    shutdown: CancellationToken,
) {
    let api: Api<Receiver> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ctx = Arc::new(Context {
        client,
        failures: Default::default(),
    });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("Receiver reconcile: {e}");
            }
        })
        .await;
}

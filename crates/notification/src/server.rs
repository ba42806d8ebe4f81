//! The webhook server: `POST /hook/<digest>`, answered as Flux's notification-controller does.
//!
//! | answer | when |
//! | --- | --- |
//! | 404 | no Receiver has this path |
//! | 503 | the Receiver is suspended or not Ready, or its token cannot be read (e.g. its Secret is missing) |
//! | 413 | the body is larger than [`Limits::max_body`] |
//! | 408 | the body did not arrive within [`Limits::body_timeout`] |
//! | 400 | bad signature, token, event type or payload |
//! | 200 | every matched object was annotated (or a ping) |
//! | 500 | annotating some matched object failed (the others were annotated) |
//! | 503 + `Retry-After` | the annotation did not finish within [`Limits::reconcile_deadline`] |
//!
//! Headers must arrive within [`Limits::header_timeout`] (hyper closes slow connections), so a
//! client that trickles bytes cannot hold connections open.
//!
//! The API server is only called for an authentic call: Receivers come from a watch, tokens from
//! [`crate::tokens`] (one watch per referenced Secret), and the signature is checked before the
//! annotation patches, which [`crate::coalesce`] merges per object.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use gantry_api::meta::READY_CONDITION;
use gantry_api::notification::v1::Receiver;
use gantry_core::notification::webhook::{self, Headers, Verdict};
use gantry_runtime::conditions;
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::coalesce::{Coalescer, Outcome, Target};
use crate::tokens::Tokens;

/// Limits against abusive or broken clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted body (GitHub caps payloads at 25 MB; real pushes are far smaller).
    pub max_body: usize,
    /// Time allowed for the request headers.
    pub header_timeout: Duration,
    /// Time allowed for the body once the headers are in.
    pub body_timeout: Duration,
    /// Time a verified call waits for its annotation patches before it is answered 503 with
    /// `Retry-After` (GitHub gives up on a delivery after 10 s).
    pub reconcile_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 3 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            reconcile_deadline: Duration::from_secs(5),
        }
    }
}

/// How long a call waits for the token of a Secret whose watch has just started.
const TOKEN_WAIT: Duration = Duration::from_secs(2);

struct AppState {
    receivers: Store<Receiver>,
    tokens: Tokens,
    patches: Coalescer,
    limits: Limits,
}

/// The router, for a listener of the caller's choice; `receivers` is a reflector store and
/// `tokens` follows the Secrets its Receivers name.
pub fn router(
    client: Client,
    receivers: Store<Receiver>,
    tokens: Tokens,
    limits: Limits,
) -> Router {
    Router::new()
        .route("/hook/{digest}", post(handle))
        .with_state(Arc::new(AppState {
            receivers,
            tokens,
            patches: Coalescer::new(client, limits.reconcile_deadline),
            limits,
        }))
}

/// Serves webhooks on `listener` until `shutdown`, with its own cache of Receivers.
pub async fn serve(
    listener: TcpListener,
    client: Client,
    namespace: Option<String>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let api: Api<Receiver> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let tokens = Tokens::new(client.clone(), shutdown.clone());
    let (follow, reader) = (tokens.clone(), store.clone());
    // After every change of a Receiver, follow exactly the Secrets the Receivers name.
    let watch = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |_| {
            follow.follow(reader.state().iter().map(|r| r.as_ref()));
            async {}
        });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watch => {}
            _ = stop.cancelled() => {}
        }
    });
    let header_timeout = limits.header_timeout;
    let app = router(client, store, tokens, limits);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "accepting a webhook connection");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, %err, "webhook connection");
                    }
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    (status, message).into_response()
}

async fn handle(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/hook/{digest}");
    let Some(receiver) = state
        .receivers
        .state()
        .into_iter()
        .find(|r| r.status.as_ref().and_then(|s| s.webhook_path.as_deref()) == Some(&path))
    else {
        return answer(StatusCode::NOT_FOUND, "no receiver for this path");
    };
    // Instrumented, never entered: a guard held across `.await` would leave this span entered on
    // a worker thread while other calls run there, nesting their spans under it.
    let span = tracing::info_span!(
        "webhook",
        namespace = %receiver.namespace().unwrap_or_default(),
        name = %receiver.name_any(),
        type_ = %receiver.spec.type_,
    );
    handle_call(&state, &receiver, &path, &headers, body)
        .instrument(span)
        .await
}

async fn handle_call(
    state: &AppState,
    receiver: &Receiver,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let namespace = receiver.namespace().unwrap_or_default();
    let name = receiver.name_any();
    if receiver.spec.suspend {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "receiver is suspended");
    }
    let ready = receiver
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, READY_CONDITION));
    let Some(secret_ref) = receiver.spec.secret_ref.as_ref().filter(|_| ready) else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "receiver is not ready");
    };

    let body = match tokio::time::timeout(
        state.limits.body_timeout,
        axum::body::to_bytes(body, state.limits.max_body),
    )
    .await
    {
        Err(_) => {
            tracing::warn!("webhook body did not arrive in time");
            return answer(StatusCode::REQUEST_TIMEOUT, "request body timed out");
        }
        Ok(Err(err)) => {
            // `to_bytes` fails with a length-limit error when the body is too large.
            let too_large = std::error::Error::source(&err)
                .is_some_and(|s| s.to_string().contains("length limit"))
                || err.to_string().contains("length limit");
            if too_large {
                tracing::warn!(limit = state.limits.max_body, "webhook body too large");
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {} bytes", state.limits.max_body),
                );
            }
            return answer(StatusCode::BAD_REQUEST, format!("reading the body: {err}"));
        }
        Ok(Ok(bytes)) => bytes,
    };

    // From memory: the watch keeps it current, so a rotated Secret takes effect at once and a
    // forged call costs the API server nothing.
    let token = match state
        .tokens
        .get(&namespace, &secret_ref.name, TOKEN_WAIT)
        .await
    {
        Ok(t) => t,
        Err(err) => {
            tracing::warn!(%err, "webhook refused: token unavailable");
            return answer(StatusCode::SERVICE_UNAVAILABLE, err);
        }
    };
    // A rotated token moves the path: calls to the old path must stop working.
    if webhook::webhook_path(&token, &name, &namespace) != path {
        return answer(StatusCode::NOT_FOUND, "no receiver for this path");
    }
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let verdict = webhook::verify(
        &receiver.spec.type_,
        &token,
        &receiver.spec.events,
        &Headers::new(pairs),
        &body,
    );
    match verdict {
        Err(rejection) => {
            tracing::warn!(%rejection, "webhook refused");
            return answer(StatusCode::BAD_REQUEST, rejection.to_string());
        }
        Ok(Verdict::Ping) => {
            tracing::info!("webhook ping");
            return answer(StatusCode::OK, "pong");
        }
        Ok(Verdict::Reconcile) => {}
    }

    // Authentic: now, and only now, the API server is asked for something.
    let targets: Vec<Target> = receiver
        .spec
        .resources
        .iter()
        .map(|r| Target {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone().unwrap_or_else(|| namespace.clone()),
            name: r.name.clone(),
            labels: r.match_labels.clone(),
        })
        .collect();
    let outcomes =
        futures::future::join_all(targets.iter().map(|t| state.patches.request(t))).await;
    let mut failures = Vec::new();
    let mut annotated = Vec::new();
    let mut late = false;
    for (target, outcome) in targets.iter().zip(outcomes) {
        match outcome {
            Outcome::Annotated(names) => annotated.extend(
                names
                    .into_iter()
                    .map(|n| format!("{}/{}/{n}", target.kind, target.namespace)),
            ),
            Outcome::Failed(err) => failures.push(err),
            Outcome::DeadlinePassed => late = true,
        }
    }
    if !failures.is_empty() {
        tracing::error!(?failures, objects = ?annotated, "webhook: some reconcile requests failed");
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to request reconcile: {}", failures.join("; ")),
        );
    }
    if late {
        let retry = state.limits.reconcile_deadline.as_secs().max(1);
        tracing::warn!(objects = ?annotated, "webhook: reconcile request passed its deadline");
        let mut response = answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "requesting the reconcile took longer than {:?}; retry",
                state.limits.reconcile_deadline
            ),
        );
        if let Ok(value) = retry.to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    tracing::info!(objects = ?annotated, "webhook: reconcile requested");
    answer(
        StatusCode::OK,
        format!("requested reconcile of {} object(s)", annotated.len()),
    )
}

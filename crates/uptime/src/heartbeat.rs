//! The heartbeat endpoint push monitors are called at: `GET` or `POST /heartbeat/<hash>`
//! (the hash of the Monitor's token, name and namespace; see
//! [`heartbeat_path`](crate::plan::heartbeat_path)). An unknown path is 404, and says nothing
//! about which Monitors exist.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::engine::Engine;

/// Routes for heartbeats.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/heartbeat/{id}", get(beat).post(beat))
        .with_state(engine)
}

async fn beat(State(engine): State<Engine>, Path(id): Path<String>) -> (StatusCode, &'static str) {
    if engine.beat(&format!("/heartbeat/{id}")) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::NOT_FOUND, "unknown heartbeat\n")
    }
}

/// Calls `url` every `every` until `shutdown`: how `gantry run` tells an outside
/// `gantry uptime serve` that the cluster is alive. Failures are logged, never fatal.
pub async fn send_heartbeats(
    url: String,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let options = gantry_runtime::http::ClientOptions {
        timeout: Some(std::time::Duration::from_secs(10)),
        ..Default::default()
    };
    let client = match gantry_runtime::http::client(&options) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(%err, "heartbeat client");
            return;
        }
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match client.post(&url).send().await {
            Ok(r) if r.status().is_success() => tracing::debug!(%url, "heartbeat sent"),
            Ok(r) => tracing::warn!(%url, status = %r.status(), "heartbeat refused"),
            Err(err) => tracing::warn!(%url, %err, "heartbeat not sent"),
        }
    }
}

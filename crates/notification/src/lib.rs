//! Flux's notification API in Gantry: webhooks in, alerts out.
//!
//! - [`receiver`]: the Receiver controller (`status.webhookPath`, `Ready`).
//! - [`server`]: the webhook server on its own port (Flux's `:9292`): a verified call annotates
//!   every matched object with `reconcile.fluxcd.io/requestedAt`, which the controllers' watches
//!   pick up within milliseconds. Tokens come from memory ([`tokens`]), concurrent calls for an
//!   object share one patch ([`coalesce`]).
//! - [`dispatch`]: the alert dispatcher: it reads the in-process event stream
//!   ([`gantry_runtime::events`]), selects events per Alert and delivers them to Providers with
//!   retries, never blocking a reconciliation.
//!
//! [`run`] starts all three.

pub mod coalesce;
pub mod dispatch;
pub mod receiver;
pub mod resources;
pub mod server;
pub mod tokens;

use std::net::SocketAddr;

use gantry_runtime::events::FluxEvent;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Field manager and event reporter, Flux's controller name so ownership carries over.
pub const CONTROLLER: &str = "notification-controller";

/// How `gantry run` configures notifications.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the webhook server listens (Flux: `:9292`).
    pub receiver_addr: SocketAddr,
    /// Watch only this namespace.
    pub namespace: Option<String>,
    pub limits: server::Limits,
}

/// Runs the Receiver controller, the webhook server and the alert dispatcher until `shutdown`.
pub async fn run(
    shared: gantry_runtime::controller::Shared,
    events: broadcast::Receiver<FluxEvent>,
    settings: Settings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.receiver_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving webhook receivers");
    let namespace = settings.namespace.clone();
    let client = shared.client.clone();
    let receivers = receiver::run_controller(shared, namespace.clone(), shutdown.clone());
    let server = server::serve(
        listener,
        client.clone(),
        namespace.clone(),
        settings.limits.clone(),
        shutdown.clone(),
    );
    let dispatcher = dispatch::run(client, events, namespace, shutdown);
    tokio::join!(receivers, server, dispatcher);
    Ok(())
}

//! `notification.toolkit.fluxcd.io`: webhooks in (`Receiver`, v1) and alerts out (`Alert`,
//! `Provider`, v1beta3, the versions Flux's notification-controller stores).

pub mod v1;
pub mod v1beta3;

/// The API group of every notification kind.
pub const GROUP: &str = "notification.toolkit.fluxcd.io";

/// Name of the Service in front of Gantry's webhook receiver server (Flux's name for it).
pub const WEBHOOK_SERVICE: &str = "webhook-receiver";

/// Annotation of that Service: the base URL (scheme, host, port) senders reach the receiver
/// server at, when the Service's own address is not it (an Ingress, or a local `gantry run`).
/// `gantry webhook-url` prefixes Receivers' paths with it; `cargo xtask sandbox` sets it.
pub const WEBHOOK_BASE_URL_ANNOTATION: &str = "gantry.dev/webhook-base-url";

//! `notification.toolkit.fluxcd.io`: webhooks in (`Receiver`, v1) and alerts out (`Alert`,
//! `Provider`, v1beta3, the versions Flux's notification-controller stores).

pub mod v1;
pub mod v1beta3;

/// The API group of every notification kind.
pub const GROUP: &str = "notification.toolkit.fluxcd.io";

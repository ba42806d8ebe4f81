//! `uptime.gantry.dev`: Gantry's own uptime monitoring kinds (`Monitor`, v1alpha1).

pub mod v1alpha1;

/// The API group of every uptime kind.
pub const GROUP: &str = "uptime.gantry.dev";

//! Uptime monitoring's pure logic: Gatus-style [`condition`]s, the Uptime-Kuma-style
//! [`state`] machine (which results alert), and [`maintenance`] windows in time zones.

pub mod condition;
pub mod maintenance;
pub mod state;

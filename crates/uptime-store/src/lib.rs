//! Uptime history and the status page served from it.
//!
//! - [`store`]: the history in SQLite (an embedded file, the default) or Postgres (shared by
//!   replicas): raw results for a retention (7 days by default), per-hour and per-day aggregates
//!   for a year, last state per monitor and incidents, with writes buffered in memory while the
//!   database is away, and the outbox of alerts not yet sent.
//! - [`status`]: the status page (server-rendered HTML with inline SVG, a JSON API, badges),
//!   rendered from cached aggregates.
//!
//! The record types ([`model`]) are the store's own: the checker maps its monitors onto them, so
//! this crate does not depend on the `Monitor` API.

pub mod model;
pub mod status;
pub mod store;
mod window;

pub use model::{
    Aggregate, AlertId, DayBar, Incident, LastState, Millis, MonitorInfo, MonitorKey,
    ResponsePoint, Sample, State, Summary, now_ms,
};
pub use status::{StatusOptions, StatusPage};
pub use store::{Error, Health, Location, Page, PageMonitor, RetentionReport, Store, StoreConfig};

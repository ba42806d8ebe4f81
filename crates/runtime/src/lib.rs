//! What every Gantry controller shares.
//!
//! - [`conditions`]: `Ready`/`Reconciling`/`Stalled` exactly as Flux writes them (kstatus).
//! - [`events`]: Kubernetes Events, fed to in-process subscribers (alerting) as well.
//! - [`metrics`]: Flux's `gotk_*` series and process metrics in the Prometheus text format.
//! - [`http`]: the outbound HTTP client (registries, alert providers) with system roots plus a
//!   per-object CA, a proxy and a timeout.
//! - [`secrets`]: reading a Secret by name, and the API's refusal as a message.
//! - [`finalizer`]: adding and removing a finalizer without dropping anyone else's.
//! - [`status`]: the status write every controller makes (server-side apply as its manager).
//! - [`backoff`]: Flux's retry timing: exponential on errors, jittered intervals on success.
//! - [`controller`]: the harness every controller runs on (watch, predicates, finalizer, backoff,
//!   status, events, metrics); a controller implements only [`controller::Reconciler`].
//! - [`trigger`]: in-process reconcile requests between controllers (no waiting for intervals).

pub mod backoff;
pub mod conditions;
pub mod controller;
pub mod events;
pub mod finalizer;
pub mod http;
pub mod metrics;
pub mod secrets;
pub mod status;
pub mod trigger;

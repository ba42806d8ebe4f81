//! Knative Serving's rules, decided without a cluster: what the serving controllers
//! (`gantry-serving`) and the router act on.
//!
//! - [`naming`]: Revision names (`<service>-00001`, or the template's own name) and the initial
//!   scale of a new Revision's Deployment.
//! - [`traffic`]: `spec.traffic` resolved to concrete Revisions, with tag URLs.
//! - [`domain`]: URLs from Knative's domain and tag templates.
//! - [`supported`]: which fields and annotations of a Service Gantry serves; everything else is
//!   named by path so it is reported, never ignored.
//! - [`gc`]: which Revisions without traffic Knative's `config-gc` rules delete.
//! - [`autoscale`]: the KPA's decisions (desired pods, idle, bounds) from the router's counts.

pub mod autoscale;
pub mod domain;
pub mod gc;
pub mod naming;
pub mod supported;
pub mod traffic;

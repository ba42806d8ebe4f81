//! The Kustomization's engine: from built manifests to objects in the cluster.
//!
//! - [`build`]: the manifests of a path (plain YAML natively, kustomize via its CLI) with the
//!   spec's transforms and postBuild substitution.
//! - `apply`: server-side apply in stages, dry-run first, drift detection, owner labels, Flux's
//!   per-object annotations, inventory and prune.
//! - `health`: kstatus health waits with Flux's messages (used by `apply`; it knows only
//!   [`discovery`], so the arrows run apply → health → discovery).
//! - [`decrypt`]: SOPS decryption of the build's files and objects (`spec.decryption`).
//! - [`cache`]: what the watches saw of the applied objects (health, drift fingerprints), read by
//!   `apply` and `health` instead of a request per object.
//! - [`controller`]: the Kustomization controller tying them together.

pub mod apply;
pub mod build;
pub mod cache;
pub mod controller;
pub mod decrypt;
pub mod discovery;
pub mod health;

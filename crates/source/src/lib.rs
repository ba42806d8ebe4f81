//! Gantry's sources: where manifests come from.
//!
//! - [`git`]: fetch a revision over smart HTTP(S) (basic auth, bearer token) or SSH (identity,
//!   strict known_hosts), by branch, tag, semver range, full ref name or commit, skipping the
//!   download when the remote has not moved; revisions in Flux's format.
//! - [`artifact`]: normalised tarballs with a sha256 digest, stored per object with retention,
//!   opened again by consumers in the same process ([`ArtifactStore::open`]).
//! - [`sourceignore`]: Flux's `.sourceignore` / `spec.ignore` rules and default exclusions.
//! - [`controller`]: the GitRepository controller (`Context`, `reconcile`, `error_policy`).

pub mod artifact;
pub mod controller;
pub mod duration;
pub mod git;
pub mod sourceignore;

pub use artifact::{ArtifactError, ArtifactStore};
pub use controller::{Context, error_policy, reconcile};

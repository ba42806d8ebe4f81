//! Gantry's sources: where manifests come from.
//!
//! - [`git`]: fetch a revision over smart HTTP(S) (basic auth, bearer token, a private CA from
//!   `ca.crt`) or SSH (identity with optional passphrase, strict known_hosts), by branch, tag,
//!   semver range, full ref name or commit; an `ls-remote` first, so an unchanged remote costs no
//!   download; revisions in Flux's format ([`gantry_core::source::revision`]).
//! - [`artifact`]: normalised tarballs with a sha256 digest, stored per object with retention,
//!   opened again by consumers in the same process ([`ArtifactStore::open`]).
//! - [`sourceignore`]: Flux's `.sourceignore` / `spec.ignore` rules and default exclusions,
//!   `spec.sparseCheckout`.
//! - [`registry`]: the OCI distribution client (tags, manifests, blobs, auth, dockerconfigjson),
//!   shared with image automation.
//! - [`oci`]: the OCIRepository controller and the `flux push artifact` layout.
//! - [`controller`]: the GitRepository controller's domain steps ([`GitRepositories`], run on
//!   the shared harness), with `spec.include`, status, conditions and events as Flux writes them.

pub mod artifact;
pub mod controller;
pub mod git;
pub mod oci;
pub mod registry;
pub mod sourceignore;

pub use artifact::{ArtifactError, ArtifactStore};
pub use controller::GitRepositories;
pub use oci::OCIRepositories;

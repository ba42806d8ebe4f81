//! Pure logic of the kustomize pipeline: from a built revision to objects applied and healthy.
//!
//! - [`transform`]: Flux's spec transforms (namespace, name prefix/suffix, images, patches,
//!   common labels/annotations) over built objects.
//! - [`substitute`]: `postBuild` variable substitution.
//! - [`inventory`]: object ids, the inventory diff that decides what to prune, apply ordering.
//! - [`kstatus`]: health of applied objects as kstatus computes it.
//! - [`depgraph`]: `dependsOn` cycles.
//! - [`sops`]: SOPS-encrypted files (`spec.decryption`): parsing, value decryption, the MAC.

pub mod depgraph;
pub mod inventory;
pub mod kstatus;
pub mod sops;
pub mod substitute;
pub mod transform;

//! The Kustomization's engine: from a source artifact's path to objects in the cluster.
//!
//! - [`build`]: the manifests of a path (plain YAML natively, kustomize via its CLI) with the
//!   spec's transforms and postBuild substitution.

pub mod build;

//! `kustomize.toolkit.fluxcd.io`: what gets applied, from which source, and how.

pub mod v1;

//! `source.toolkit.fluxcd.io`: where manifests come from.

pub mod v1;

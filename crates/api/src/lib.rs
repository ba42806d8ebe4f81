//! Gantry's Kubernetes API: the Flux custom resources it serves (same groups, versions, kinds,
//! fields, defaults and validation, so existing Flux configurations and the `flux` CLI work
//! unchanged) and, later, Gantry's own kinds.
//!
//! This crate holds types only: no I/O. CRD manifests are generated from these types by [`crds`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub mod kustomize;
pub mod meta;
mod schema;
pub mod source;

/// Every CRD Gantry serves, in the order they should be installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        source::v1::GitRepository::crd(),
        kustomize::v1::Kustomization::crd(),
    ]
}

//! Gantry's Kubernetes API: the Flux custom resources it serves (same groups, versions, kinds,
//! fields, defaults and validation, so existing Flux configurations and the `flux` CLI work
//! unchanged) and, later, Gantry's own kinds.
//!
//! This crate holds types only: no I/O. CRD manifests are generated from these types by [`crds`].
//!
//! - [`source::v1`]: `GitRepository`, `OCIRepository` (`source.toolkit.fluxcd.io/v1`).
//! - [`kustomize::v1`]: `Kustomization` (`kustomize.toolkit.fluxcd.io/v1`).
//! - [`image::v1`]: `ImageRepository`, `ImagePolicy`, `ImageUpdateAutomation`
//!   (`image.toolkit.fluxcd.io/v1`).
//! - [`notification::v1`]: `Receiver`; [`notification::v1beta3`]: `Alert`, `Provider`
//!   (`notification.toolkit.fluxcd.io`).
//! - [`serving::v1`]: Knative Serving's `Service` and `Revision` (`serving.knative.dev/v1`).
//! - [`uptime::v1alpha1`]: `Monitor` (`uptime.gantry.dev/v1alpha1`), Gantry's own kind.
//! - [`meta`]: references, condition types and reasons, annotations, labels and the finalizer
//!   every Flux kind shares.
//!
//! How fidelity to Flux is kept: `tests/fixtures/flux/*.yaml` record, node by node, what Flux's
//! CRDs declare (types, defaults, patterns, enums, limits, required fields, CEL rules, names,
//! printer columns); `tests/schema.rs` fails on any difference in either direction.
//! `tests/roundtrip.rs` pushes real-world Flux objects through the types and back. Optional string
//! fields are `Option<String>` and booleans follow Go's `omitempty`, so what Flux writes is what
//! Gantry writes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub mod image;
pub mod kustomize;
pub mod meta;
pub mod notification;
mod schema;
pub mod serving;
pub mod source;
pub mod uptime;

/// Every CRD Gantry serves, in the order they should be installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        source::v1::GitRepository::crd(),
        source::v1::OCIRepository::crd(),
        kustomize::v1::Kustomization::crd(),
        image::v1::ImageRepository::crd(),
        image::v1::ImagePolicy::crd(),
        image::v1::ImageUpdateAutomation::crd(),
        notification::v1::Receiver::crd(),
        notification::v1beta3::Alert::crd(),
        notification::v1beta3::Provider::crd(),
        serving::v1::Service::crd(),
        serving::v1::Revision::crd(),
        uptime::v1alpha1::Monitor::crd(),
    ]
}

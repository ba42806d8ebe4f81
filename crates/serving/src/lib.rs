//! Knative Serving's `serving.knative.dev/v1` API served by Gantry: the controllers that turn a
//! `Service` into immutable `Revision`s, each backed by a Deployment it owns, plus a Kubernetes
//! Service that sends `http://name.namespace.svc` to Gantry's router, with the status Knative
//! writes.
//!
//! - [`service`]: the Service controller (Revisions, traffic, routing state, GC, the Kubernetes
//!   Service, `status`).
//! - [`revision`]: the Revision controller (the Deployment, `Ready`/`Active` from it).
//! - [`resources`]: the objects both build, as Knative builds them.
//! - [`conditions`]: Knative's conditions (with `severity`).
//!
//! The data path (router, activator, autoscaler) is not here: it owns `replicas` through the
//! Deployments' `/scale` subresource. The controllers set `replicas` once, when they create a
//! Deployment, and never again.

use std::sync::Arc;

use gantry_api::serving::v1::Revision;
use gantry_core::serving::{domain, gc};
use gantry_runtime::controller::{Controller, Shared};
use k8s_openapi::api::core::v1::Service as KubeService;

pub mod conditions;
pub mod resources;
pub mod revision;
pub mod service;

/// Field manager and event reporter of the serving controllers.
pub const CONTROLLER: &str = "gantry-serving";

/// Field manager of the one write of `replicas` (at creation), kept apart so no later apply by
/// [`CONTROLLER`] ever owns, resets or removes it.
pub const INITIAL_SCALE_MANAGER: &str = "gantry-serving-initial-scale";

/// What `gantry run`'s flags decide for the serving controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Knative's `config-domain` and `config-network` templates.
    pub templates: domain::Templates,
    /// Host of the router's Service (`gantry-serving.<namespace>.svc.cluster.local`): what each
    /// Knative Service's Kubernetes Service (ExternalName) points at.
    pub router_host: String,
    /// Knative's `config-gc`.
    pub gc: gc::Config,
    /// Watch only this namespace (all when `None`).
    pub namespace: Option<String>,
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            templates: domain::Templates::default(),
            router_host: router_host("gantry-system"),
            gc: gc::Config::default(),
            namespace: None,
            concurrency: 4,
        }
    }
}

/// The router Service's host in Gantry's namespace.
pub fn router_host(gantry_namespace: &str) -> String {
    format!("gantry-serving.{gantry_namespace}.svc.cluster.local")
}

/// Runs the Service and Revision controllers until `shutdown` completes.
pub async fn run(
    shared: Shared,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let settings = Arc::new(settings);
    let namespace = settings.namespace.clone();
    let client = shared.client.clone();
    let services = Controller::new(service::Services::new(settings.clone()), shared.clone())
        .namespace(namespace.as_deref())
        .concurrency(settings.concurrency)
        .requested_by(service::labelled_changes::<Revision>(
            client.clone(),
            namespace.as_deref(),
        ))
        .requested_by(service::labelled_changes::<KubeService>(
            client.clone(),
            namespace.as_deref(),
        ));
    let revisions = Controller::new(revision::Revisions, shared)
        .namespace(namespace.as_deref())
        .concurrency(settings.concurrency)
        .requested_by(revision::deployment_changes(client, namespace.as_deref()));
    tokio::join!(services.run(shutdown.clone()), revisions.run(shutdown));
}

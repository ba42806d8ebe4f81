//! The image controllers, one module per kind, each a [`Reconciler`] run on the shared harness,
//! and [`ImageControllers`], the three wired together with their in-process hand-offs.
//!
//! The chain: a scan that changes a tag list wakes the ImagePolicies that use that repository,
//! a policy whose `latestRef` changes wakes the automations of its namespace, a push wakes the
//! GitRepositories that follow the pushed branch. Each hop is a typed [`Trigger`] mapped through
//! the next controller's cache; the API watch is only the fallback.

use std::future::Future;
use std::path::PathBuf;

use futures::FutureExt;
use gantry_api::image::v1::{ImagePolicy, ImageRepository};
use gantry_api::source::v1::GitRepository;
#[cfg(doc)]
use gantry_runtime::controller::Reconciler;
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::trigger::Trigger;

use crate::tags::TagStore;

pub mod automation;
pub mod policy;
pub mod repository;
mod secrets;

pub use automation::ImageUpdateAutomations;
pub use policy::ImagePolicies;
pub use repository::ImageRepositories;

/// Where the image controllers keep their data and whom they wake.
pub struct Settings {
    /// The tag lists of the ImageRepositories.
    pub tags: TagStore,
    /// The automations' work trees.
    pub workdirs: PathBuf,
    /// The GitRepository controller's trigger, requested after a push.
    pub sources: Option<Trigger<GitRepository>>,
    /// Watch only this namespace (all when `None`).
    pub namespace: Option<String>,
    /// Reconciles at once, per kind.
    pub concurrency: u16,
}

/// The three image controllers, wired as `gantry run` runs them.
pub struct ImageControllers {
    pub repositories: Controller<ImageRepositories>,
    pub policies: Controller<ImagePolicies>,
    pub automations: Controller<ImageUpdateAutomations>,
}

impl ImageControllers {
    /// The controllers, with scan → policies → automations → sources handed off in process.
    pub fn new(shared: Shared, settings: Settings) -> Self {
        let namespace = settings.namespace.as_deref();
        let (scanned, scans) = Trigger::<ImageRepository>::new();
        let (changed, changes) = Trigger::<ImagePolicy>::new();
        let mut automations = ImageUpdateAutomations::new(settings.workdirs);
        if let Some(sources) = settings.sources {
            automations = automations.notify_pushed(sources);
        }
        Self {
            repositories: Controller::new(
                ImageRepositories::new(settings.tags.clone()).notify_scanned(scanned),
                shared.clone(),
            )
            .namespace(namespace)
            .concurrency(settings.concurrency),
            policies: Controller::new(
                ImagePolicies::new(settings.tags).notify_changed(changed),
                shared.clone(),
            )
            .namespace(namespace)
            .concurrency(settings.concurrency)
            .requested_by_related(scans, |repo, store| {
                policy::using_repository(repo, &store.state())
            }),
            automations: Controller::new(automations, shared)
                .namespace(namespace)
                .concurrency(settings.concurrency)
                .requested_by_related(changes, |p, store| {
                    automation::in_namespace_of(p, &store.state())
                }),
        }
    }

    /// Runs the three until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown = shutdown.shared();
        tokio::join!(
            self.repositories.run(shutdown.clone()),
            self.policies.run(shutdown.clone()),
            self.automations.run(shutdown),
        );
    }
}

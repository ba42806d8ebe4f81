//! Which API resource serves a group/version/kind, cached.
//!
//! Kinds are looked up one group-version at a time (`/apis/<group>/<version>`), not with a full
//! discovery of the cluster: a Kustomization touches a handful of kinds, and an unknown kind is
//! simply looked up again on its next use, which is exactly what is needed right after a
//! CustomResourceDefinition of the same revision became established.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiResource, Scope};

/// A served kind: where its objects live and whether they are namespaced.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Cache of resolved kinds; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Resolver {
    cache: Arc<Mutex<HashMap<GroupVersionKind, Resolved>>>,
}

impl Resolver {
    pub fn new() -> Self {
        Resolver::default()
    }

    /// The resource serving `group/version` `kind`; `Ok(None)` when the API server does not
    /// serve it (no such group-version, or no such kind in it).
    pub async fn resolve(
        &self,
        client: &Client,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Option<Resolved>, kube::Error> {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Some(hit) = self.lock().get(&gvk) {
            return Ok(Some(hit.clone()));
        }
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, caps)) => {
                let resolved = Resolved {
                    resource,
                    namespaced: caps.scope == Scope::Namespaced,
                };
                self.lock().insert(gvk, resolved.clone());
                Ok(Some(resolved))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Forgets a kind, e.g. after its CustomResourceDefinition was deleted.
    pub fn forget(&self, group: &str, version: &str, kind: &str) {
        self.lock()
            .remove(&GroupVersionKind::gvk(group, version, kind));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupVersionKind, Resolved>> {
        // A poisoned cache is still a valid cache: entries are inserted whole.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

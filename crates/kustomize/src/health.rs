//! Health waits: until kstatus calls all objects `Current` (read from the watch cache of
//! [`crate::cache`] when there is one, else polled), bounded by a timeout,
//! failing fast when one is `Failed` (a rollout past its progress deadline, a stalled Flux
//! object, a failed Job). As in Flux, a Job counts only once it has completed
//! ([`gantry_core::kustomize::kstatus::compute_flux`]).
//!
//! Errors read like Flux's (`timeout waiting for: [Deployment/apps/web status: 'InProgress']`,
//! `failed early due to stalled resources: [...]`), each object followed by its kstatus message
//! (`...: Available: 0/1`) so the Ready condition says why, not only what.

use std::fmt;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use gantry_core::kustomize::inventory::{InventoryEntry, ObjectId};
use gantry_core::kustomize::kstatus::{self, Health, Status};
use kube::Client;
use kube::api::{Api, DynamicObject};
use tracing::debug;

use crate::cache::{Lookup, ObjectCache};
use crate::discovery::Resolver;

/// How many objects are read at the same time.
const CONCURRENCY: usize = 16;

/// With a watch cache, how often objects it cannot answer for are read from the API server.
pub const FALLBACK_READ: Duration = Duration::from_secs(2);

/// Bounds of a wait.
#[derive(Clone, Debug)]
pub struct WaitOptions {
    pub timeout: Duration,
    pub interval: Duration,
    /// Return as soon as one object is `Failed` instead of waiting for the timeout.
    pub fail_fast: bool,
}

impl WaitOptions {
    /// Fail-fast wait with a 2 s poll interval.
    pub fn new(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            interval: Duration::from_secs(2),
            fail_fast: true,
        }
    }
}

/// An object that is not `Current`, with kstatus' reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhealthy {
    pub id: ObjectId,
    pub status: Status,
    pub message: String,
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} status: '{}'", self.id.display(), self.status)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

fn list(unhealthy: &[Unhealthy]) -> String {
    unhealthy
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a wait ended unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The timeout passed with these objects not `Current`.
    #[error("timeout waiting for: [{}]", list(.unhealthy))]
    Timeout { unhealthy: Vec<Unhealthy> },

    /// These objects are `Failed` (fail fast).
    #[error("failed early due to stalled resources: [{}]", list(.unhealthy))]
    Failed { unhealthy: Vec<Unhealthy> },

    /// An object could not be read.
    #[error("{}: {source}", .id.display())]
    Kube {
        id: ObjectId,
        #[source]
        source: Box<kube::Error>,
    },
}

impl HealthError {
    /// The objects that were not healthy (empty for read errors).
    pub fn unhealthy(&self) -> &[Unhealthy] {
        match self {
            HealthError::Timeout { unhealthy } | HealthError::Failed { unhealthy } => unhealthy,
            HealthError::Kube { .. } => &[],
        }
    }
}

/// The current health of each target, in the given order. An object that does not exist, or
/// whose kind is not served, is `NotFound`.
pub async fn check(
    client: &Client,
    resolver: &Resolver,
    targets: &[InventoryEntry],
) -> Result<Vec<(ObjectId, Health)>, HealthError> {
    check_with(client, resolver, None, targets, true).await
}

/// [`check`], reading from `cache` what it knows; objects it cannot answer for are read from
/// the API server when `read` (else they count as in progress for now).
async fn check_with(
    client: &Client,
    resolver: &Resolver,
    cache: Option<&ObjectCache>,
    targets: &[InventoryEntry],
    read: bool,
) -> Result<Vec<(ObjectId, Health)>, HealthError> {
    let results: Vec<Result<(ObjectId, Health), HealthError>> =
        stream::iter((0..targets.len()).map(|i| {
            // By index, for the same reason as in `apply::evaluate_all` (rust-lang/rust#102211).
            let entry = &targets[i];
            async move {
                let health = match cached_health(client, resolver, cache, entry).await? {
                    Some(health) => health,
                    None if read => health_of(client, resolver, entry).await?,
                    None => Health {
                        status: Status::InProgress,
                        message: "waiting for the watch".into(),
                    },
                };
                Ok((entry.id.clone(), health))
            }
        }))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The health the watch cache knows, starting the kind's watch if need be; `None` when the
/// cache cannot say (kind not synced, object not labelled, a write not seen yet).
async fn cached_health(
    client: &Client,
    resolver: &Resolver,
    cache: Option<&ObjectCache>,
    entry: &InventoryEntry,
) -> Result<Option<Health>, HealthError> {
    let Some(cache) = cache else {
        return Ok(None);
    };
    let id = &entry.id;
    let resolved = resolver
        .resolve(client, &id.group, &entry.version, &id.kind)
        .await
        .map_err(|source| HealthError::Kube {
            id: id.clone(),
            source: Box::new(source),
        })?;
    let Some(resolved) = resolved else {
        return Ok(Some(Health::not_found()));
    };
    cache.watch_kind(&resolved);
    Ok(match cache.lookup(id) {
        Lookup::Present(cached) => Some(cached.health),
        Lookup::Unknown | Lookup::Absent | Lookup::Stale => None,
    })
}

async fn health_of(
    client: &Client,
    resolver: &Resolver,
    entry: &InventoryEntry,
) -> Result<Health, HealthError> {
    let id = &entry.id;
    let kube_err = |source| HealthError::Kube {
        id: id.clone(),
        source: Box::new(source),
    };
    let Some(resolved) = resolver
        .resolve(client, &id.group, &entry.version, &id.kind)
        .await
        .map_err(kube_err)?
    else {
        return Ok(Health::not_found());
    };
    let api: Api<DynamicObject> = if resolved.namespaced {
        Api::namespaced_with(client.clone(), &id.namespace, &resolved.resource)
    } else {
        Api::all_with(client.clone(), &resolved.resource)
    };
    match api.get_opt(&id.name).await.map_err(kube_err)? {
        Some(object) => {
            let value = serde_json::to_value(object).unwrap_or_default();
            Ok(kstatus::compute_flux(&value))
        }
        None => Ok(Health::not_found()),
    }
}

/// Waits until all `targets` are `Current`; errors on timeout, or as soon as one is `Failed`
/// when `fail_fast`.
///
/// With a `cache`, health comes from the watches: each change of a watched object wakes the
/// wait, and only objects the cache cannot answer for are read from the API server, at most
/// every [`FALLBACK_READ`] (or `interval`, if longer). Without one, every target is read every
/// `interval`.
pub async fn wait(
    client: &Client,
    resolver: &Resolver,
    cache: Option<&ObjectCache>,
    targets: &[InventoryEntry],
    opts: &WaitOptions,
) -> Result<(), HealthError> {
    if targets.is_empty() {
        return Ok(());
    }
    let started = tokio::time::Instant::now();
    let deadline = started + opts.timeout;
    let mut changes = cache.map(ObjectCache::subscribe);
    let fallback_every = opts.interval.max(FALLBACK_READ);
    // With a cache, objects it cannot answer for are first read after `fallback_every`: a
    // just-written object is usually delivered by the watch well before.
    let mut next_read = started + fallback_every;
    loop {
        if let Some(changes) = &mut changes {
            changes.borrow_and_update();
        }
        let now = tokio::time::Instant::now();
        // At the deadline, a last read gives the error the objects' real state.
        let read = cache.is_none() || now >= next_read || now >= deadline;
        if read {
            next_read = now + fallback_every;
        }
        let healths = check_with(client, resolver, cache, targets, read).await?;
        let unhealthy: Vec<Unhealthy> = healths
            .into_iter()
            .filter(|(_, h)| h.status != Status::Current)
            .map(|(id, h)| Unhealthy {
                id,
                status: h.status,
                message: h.message,
            })
            .collect();
        if unhealthy.is_empty() {
            return Ok(());
        }
        if opts.fail_fast && unhealthy.iter().any(|u| u.status == Status::Failed) {
            let failed = unhealthy
                .into_iter()
                .filter(|u| u.status == Status::Failed)
                .collect();
            return Err(HealthError::Failed { unhealthy: failed });
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            if read {
                return Err(HealthError::Timeout { unhealthy });
            }
            continue;
        }
        debug!(waiting_for = unhealthy.len(), "health check");
        let until = deadline.min(now + opts.interval);
        match &mut changes {
            // A closed channel (cache gone) ends in the interval sleep below next time round.
            Some(rx) => {
                if tokio::time::timeout_at(until, rx.changed())
                    .await
                    .is_ok_and(|r| r.is_err())
                {
                    changes = None;
                }
            }
            None => tokio::time::sleep_until(until).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_flux_shape() {
        let err = HealthError::Timeout {
            unhealthy: vec![
                Unhealthy {
                    id: ObjectId::new("apps", "web", "apps", "Deployment"),
                    status: Status::InProgress,
                    message: "Available: 0/1".into(),
                },
                Unhealthy {
                    id: ObjectId::new("", "apps", "", "Namespace"),
                    status: Status::NotFound,
                    message: String::new(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "timeout waiting for: [Deployment/apps/web status: 'InProgress': Available: 0/1, \
             Namespace/apps status: 'NotFound']"
        );
        let failed = HealthError::Failed {
            unhealthy: vec![Unhealthy {
                id: ObjectId::new("apps", "web", "apps", "Deployment"),
                status: Status::Failed,
                message: "Progress deadline exceeded".into(),
            }],
        };
        assert_eq!(
            failed.to_string(),
            "failed early due to stalled resources: [Deployment/apps/web status: 'Failed': \
             Progress deadline exceeded]"
        );
    }
}

//! Gantry's serving data path for Knative Services: router, activator and autoscaler in one.
//!
//! - [`table`]: the routing table's plain types (host → weighted Revisions; Revision → pods and
//!   settings), filled by the cluster side ([`cluster`]) or, in tests, by hand.
//! - [`proxy`]: the HTTP server: routes by Host, forwards straight to ready pod addresses
//!   (least in flight, `containerConcurrency` as a hard limit), holds requests while a Revision
//!   wakes from zero, passes upgrades (WebSocket), h2c and streams through.
//! - [`probe`]: active readiness probes of new pods, every 10 ms.
//! - [`autoscaler`]: the KPA ([`gantry_core::serving::autoscale`]) fed by exact in-flight
//!   counts, and the draining step before a scale to zero.
//! - [`peers`]: every replica reports its exact counts to the leader, which decides from the
//!   sum (replica Leases, a report endpoint on the serving listener, scrapes each tick).
//! - [`pool`]: each pod's kept-alive HTTP/1.1 connections (the warm path's client).
//! - [`dial`]: the loopback guard every backend connection (and peer scrape) goes through.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

pub mod autoscaler;
pub mod cluster;
pub mod dial;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod revision;
pub mod table;

use crate::dial::DialGuard;
use crate::metrics::{RevisionLabels, RouterMetrics};
use crate::revision::Revision;
use crate::table::{Endpoint, RevisionConfig, RevisionKey, Target, normalize_host};

/// Why the router asks for a replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleReason {
    /// A request found the Revision at zero: raise the replicas to at least this, never lower.
    Wake,
    /// The autoscaler's decision (leader only), from the counts of every replica.
    Autoscale,
    /// Idle for the stable window plus grace, drained: scale to zero (leader only).
    Sleep,
}

/// Sets a Revision's replica count (the cluster side patches the Deployment's `/scale`).
pub trait Scaler: Send + Sync + 'static {
    fn scale(
        &self,
        revision: &RevisionKey,
        replicas: u32,
        reason: ScaleReason,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// Process-wide settings of the data path.
#[derive(Clone, Debug)]
pub struct RouterSettings {
    /// Requests one Revision may hold while it has no free pod; more get 503.
    pub queue_limit: u64,
    /// How often a new pod is probed until it answers.
    pub probe_interval: Duration,
    /// Refuse (and count) backend connections outside 127.0.0.0/8 and ::1.
    pub loopback_only: bool,
    /// Idle HTTP/1.1 connections kept per pod; more are closed when their response ends.
    pub max_idle_per_pod: usize,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            queue_limit: 10_000,
            probe_interval: Duration::from_millis(10),
            loopback_only: false,
            max_idle_per_pod: 256,
        }
    }
}

/// A route: the Revisions one host sends to, by percent.
#[derive(Debug)]
pub struct Route {
    targets: Vec<(Arc<Revision>, u32)>,
    total: u64,
    counter: AtomicU64,
}

impl Route {
    /// Weighted choice spread by a stride coprime with the total: over any `total` consecutive
    /// requests the split is exact, and consecutive requests alternate between targets.
    fn pick(&self) -> Option<&Arc<Revision>> {
        if self.total == 0 {
            return None;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut x = n.wrapping_mul(STRIDE) % self.total;
        for (rev, percent) in &self.targets {
            let p = u64::from(*percent);
            if x < p {
                return Some(rev);
            }
            x -= p;
        }
        None
    }
}

/// A prime larger than any sum of percents.
const STRIDE: u64 = 7919;

pub(crate) struct Inner {
    pub base: Instant,
    pub settings: RouterSettings,
    routes: RwLock<HashMap<String, Arc<Route>>>,
    revisions: RwLock<HashMap<RevisionKey, Arc<Revision>>>,
    pub scaler: Arc<dyn Scaler>,
    pub guard: Arc<DialGuard>,
    pub metrics: RouterMetrics,
    pub clients: proxy::Clients,
    pub peers: peers::Peers,
}

/// The router: routing table, live Revision state and the HTTP clients. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

impl Router {
    pub fn new(settings: RouterSettings, scaler: Arc<dyn Scaler>, metrics: RouterMetrics) -> Self {
        let guard = Arc::new(DialGuard::new(settings.loopback_only));
        let clients = proxy::Clients::new(guard.clone());
        let peers = peers::Peers::new(guard.clone());
        Router {
            inner: Arc::new(Inner {
                base: Instant::now(),
                settings,
                routes: RwLock::default(),
                revisions: RwLock::default(),
                scaler,
                guard,
                metrics,
                clients,
                peers,
            }),
        }
    }

    pub fn dial_guard(&self) -> &DialGuard {
        &self.inner.guard
    }

    pub fn metrics(&self) -> &RouterMetrics {
        &self.inner.metrics
    }

    /// The Revision's live state, created (with default settings) if unknown.
    pub fn revision(&self, key: &RevisionKey) -> Arc<Revision> {
        if let Some(r) = self
            .inner
            .revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return r.clone();
        }
        let mut map = self
            .inner
            .revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Revision::new(
                    key.clone(),
                    RevisionConfig::default(),
                    self.inner.base,
                ))
            })
            .clone()
    }

    pub fn revisions(&self) -> Vec<Arc<Revision>> {
        self.inner
            .revisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub fn set_revision(&self, key: &RevisionKey, config: RevisionConfig) {
        let rev = self.revision(key);
        if *rev.config() != config {
            rev.set_config(config);
        }
    }

    pub fn remove_revision(&self, key: &RevisionKey) {
        let removed = self
            .inner
            .revisions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let Some(rev) = removed {
            rev.set_endpoints(&[]);
            let labels = RevisionLabels::from(key);
            self.inner.metrics.in_flight.remove(&labels);
            self.inner.metrics.desired_replicas.remove(&labels);
            self.inner.metrics.queue_depth.remove(&labels);
        }
    }

    /// The Deployment's replica count as the cluster reports it.
    pub fn set_replicas(&self, key: &RevisionKey, replicas: i64) {
        let rev = self.revision(key);
        rev.replicas.store(replicas, Ordering::SeqCst);
        // Waiters re-check: a Revision that went to zero must be woken again.
        rev.capacity.notify_waiters();
    }

    /// The Revision's pods (address and port); new ones are probed until they answer.
    pub fn set_endpoints(&self, key: &RevisionKey, endpoints: &[Endpoint]) {
        let rev = self.revision(key);
        for pod in rev.set_endpoints(endpoints) {
            probe::spawn(self.clone(), rev.clone(), pod);
        }
        rev.capacity.notify_waiters();
    }

    /// Routes `host` to weighted targets (replacing what it had).
    pub fn set_route(&self, host: &str, targets: &[Target]) {
        let targets: Vec<_> = targets
            .iter()
            .filter(|t| t.percent > 0)
            .map(|t| (self.revision(&t.revision), t.percent))
            .collect();
        let total = targets.iter().map(|(_, p)| u64::from(*p)).sum();
        let route = Arc::new(Route {
            targets,
            total,
            counter: AtomicU64::new(0),
        });
        self.inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(normalize_host(host), route);
    }

    /// Replaces the whole host table at once (the cluster side's full view).
    pub fn replace_routes(&self, routes: &HashMap<String, Vec<Target>>) {
        // A set: with 1000 ksvcs (5000 hosts) a list made every Service event cost 25 M compares.
        let keep: HashSet<String> = routes.keys().map(|h| normalize_host(h)).collect();
        for (host, targets) in routes {
            self.set_route(host, targets);
        }
        self.inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|h, _| keep.contains(h));
    }

    pub fn remove_route(&self, host: &str) {
        self.inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&normalize_host(host));
    }

    pub(crate) fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned()
    }

    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<_> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        h.sort();
        h
    }
}

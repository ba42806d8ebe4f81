//! What the watches saw of the objects Gantry applied: one shared, watch-backed cache that
//! health waits and the apply engine read instead of asking the API server per object.
//!
//! - **Which objects**: one watch per kind, started the first time the engine applies or waits
//!   for an object of that kind, across all namespaces, filtered by the owner label
//!   (`kustomize.toolkit.fluxcd.io/name` exists), so only objects some Kustomization applied.
//!   An object without the label (hand-made, or of a kind whose watch is not allowed) is simply
//!   not in the cache; readers then ask the API server as before.
//! - **What is kept** (memory bounded by the number of applied objects, not their size): per
//!   object only its kstatus [`Health`] computed when the event arrives, its resourceVersion,
//!   and a fingerprint of this engine's own server-side-apply entry in `managedFields`
//!   ([`crate::apply::meta::applied_fingerprint`]). The objects themselves are dropped.
//! - **Waking**: every event bumps a counter that waiting reconciles subscribe to
//!   ([`ObjectCache::subscribe`]), so a health wait re-checks when something changed instead of
//!   polling.
//! - **Freshness**: after a write the engine records the resourceVersion it got back
//!   ([`ObjectCache::note_written`]); until the watch has delivered that version (or a later
//!   one) the entry reads as [`Lookup::Stale`], so a wait never judges a changed object by its
//!   state before the change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use gantry_core::kustomize::inventory::ObjectId;
use gantry_core::kustomize::kstatus::{self, Health};
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::apply::meta::{self, OWNER_NAME_LABEL};
use crate::discovery::Resolved;

/// How long after a kind's watch started readers wait for its first list rather than asking
/// the API server per object (a list of a few thousand objects takes a second or two).
pub const FIRST_LIST_PATIENCE: Duration = Duration::from_secs(10);

/// What the cache knows of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    pub health: Health,
    /// Labelled or annotated `reconcile: disabled` or `ssa: Ignore` (set by hand on the live
    /// object): the engine must read it to skip it as Flux does.
    pub skip_flagged: bool,
    /// Fingerprint of the engine's own apply entry (`None`: it never applied the object).
    pub fingerprint: Option<u64>,
    pub resource_version: String,
}

/// The answer to [`ObjectCache::lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The kind is not watched yet, or its watch has not listed everything: ask the server.
    Unknown,
    /// The kind's watch is synced and has no such labelled object.
    Absent,
    /// Written by the engine at a version the watch has not delivered yet.
    Stale,
    Present(Cached),
}

type GroupKind = (String, String);
type Key = (String, String);

#[derive(Default)]
struct KindState {
    synced: bool,
    // The watch stopped for good (not allowed to list): it will never sync.
    given_up: bool,
    // When the watch started: readers wait for its first list until FIRST_LIST_PATIENCE later.
    started: Option<tokio::time::Instant>,
    objects: HashMap<Key, Cached>,
    // Objects of a relist (`Init` .. `InitDone`), swapped in whole at the end.
    relist: Option<HashMap<Key, Cached>>,
}

#[derive(Default)]
struct State {
    kinds: HashMap<GroupKind, KindState>,
    // resourceVersions the engine wrote and the watch has not delivered yet.
    written: HashMap<ObjectId, u64>,
    tasks: Vec<AbortHandle>,
}

struct Inner {
    client: Client,
    field_manager: String,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in state.tasks.drain(..) {
            task.abort();
        }
    }
}

/// The shared cache; cheap to clone. Its watches stop when the last clone is dropped.
#[derive(Clone)]
pub struct ObjectCache {
    inner: Arc<Inner>,
}

impl ObjectCache {
    /// A cache whose watches use `client` (the controller's own, not an impersonated one) and
    /// whose fingerprints read the apply entry of `field_manager`.
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        ObjectCache {
            inner: Arc::new(Inner {
                client,
                field_manager: field_manager.into(),
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Entries are replaced whole: a poisoned state is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching the kind of `resolved` (once; later calls do nothing). Must be called
    /// from within a Tokio runtime.
    pub fn watch_kind(&self, resolved: &Resolved) {
        let gk = (
            resolved.resource.group.clone(),
            resolved.resource.kind.clone(),
        );
        let mut state = self.lock();
        if state.kinds.contains_key(&gk) {
            return;
        }
        state.kinds.insert(
            gk.clone(),
            KindState {
                started: Some(tokio::time::Instant::now()),
                ..KindState::default()
            },
        );
        let api: Api<DynamicObject> = Api::all_with(self.inner.client.clone(), &resolved.resource);
        let config = watcher::Config::default().labels(OWNER_NAME_LABEL);
        // A weak reference: the task must not keep the cache alive.
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let Some(inner) = weak.upgrade() else { return };
                let cache = ObjectCache { inner };
                match event {
                    Ok(event) => cache.handle(&gk, event),
                    // Not allowed to list this kind (e.g. `gantry install --multi-tenant`, no
                    // cluster-admin): the kind stays unknown and readers ask the API server
                    // with their own (impersonated) client, as without a cache.
                    Err(err) if forbidden(&err) => {
                        debug!(kind = %gk.1, %err, "not watching applied objects of this kind");
                        cache.give_up(&gk);
                        return;
                    }
                    Err(err) => {
                        debug!(kind = %gk.1, %err, "watch of applied objects");
                    }
                }
            }
        });
        state.tasks.push(task.abort_handle());
    }

    fn handle(&self, gk: &GroupKind, event: watcher::Event<DynamicObject>) {
        let field_manager = &self.inner.field_manager;
        let project = |object: DynamicObject| -> Option<(Key, Cached)> {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let name = object.metadata.name.clone()?;
            let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
            let value = serde_json::to_value(object).unwrap_or(Value::Null);
            let cached = Cached {
                health: kstatus::compute_flux(&value),
                skip_flagged: meta::has_flag(&value, meta::RECONCILE_ANNOTATION, "disabled")
                    || meta::has_flag(&value, meta::SSA_ANNOTATION, "ignore"),
                fingerprint: meta::applied_fingerprint(&value, field_manager),
                resource_version,
            };
            Some(((namespace, name), cached))
        };
        {
            let mut state = self.lock();
            let State { kinds, written, .. } = &mut *state;
            let kind = kinds.entry(gk.clone()).or_default();
            match event {
                watcher::Event::Init => kind.relist = Some(HashMap::new()),
                watcher::Event::InitApply(object) => {
                    if let Some((key, cached)) = project(object) {
                        settle_written(written, gk, &key, &cached);
                        kind.relist
                            .get_or_insert_with(HashMap::new)
                            .insert(key, cached);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(relist) = kind.relist.take() {
                        kind.objects = relist;
                    }
                    kind.synced = true;
                }
                watcher::Event::Apply(object) => {
                    if let Some((key, cached)) = project(object) {
                        settle_written(written, gk, &key, &cached);
                        kind.objects.insert(key, cached);
                    }
                }
                watcher::Event::Delete(object) => {
                    let namespace = object.metadata.namespace.unwrap_or_default();
                    if let Some(name) = object.metadata.name {
                        let key = (namespace, name);
                        written.remove(&object_id(gk, &key));
                        kind.objects.remove(&key);
                    }
                }
            }
        }
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn give_up(&self, gk: &GroupKind) {
        self.lock().kinds.entry(gk.clone()).or_default().given_up = true;
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// [`ObjectCache::lookup`], but if the kind's watch is still making its initial list, waits
    /// for it (until [`FIRST_LIST_PATIENCE`] after the watch started) instead of answering
    /// [`Lookup::Unknown`]: the first reconciles after a start then need no GET per object.
    pub async fn lookup_synced(&self, id: &ObjectId) -> Lookup {
        let mut changed = self.subscribe();
        loop {
            let lookup = self.lookup(id);
            if lookup != Lookup::Unknown {
                return lookup;
            }
            let Some(deadline) = self.list_deadline(id) else {
                return lookup;
            };
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.lookup(id),
            }
        }
    }

    // Until when a reader may wait for the first list of the kind of `id` (None: no wait, as
    // the kind is not watched, its watch gave up, or it has had its chance).
    fn list_deadline(&self, id: &ObjectId) -> Option<tokio::time::Instant> {
        let state = self.lock();
        let kind = state.kinds.get(&(id.group.clone(), id.kind.clone()))?;
        if kind.synced || kind.given_up {
            return None;
        }
        let deadline = kind.started? + FIRST_LIST_PATIENCE;
        (tokio::time::Instant::now() < deadline).then_some(deadline)
    }

    /// What the cache knows of `id`.
    pub fn lookup(&self, id: &ObjectId) -> Lookup {
        let state = self.lock();
        let Some(kind) = state.kinds.get(&(id.group.clone(), id.kind.clone())) else {
            return Lookup::Unknown;
        };
        if !kind.synced {
            return Lookup::Unknown;
        }
        if state.written.contains_key(id) {
            return Lookup::Stale;
        }
        match kind.objects.get(&(id.namespace.clone(), id.name.clone())) {
            Some(cached) => Lookup::Present(cached.clone()),
            None => Lookup::Absent,
        }
    }

    /// Records that the engine wrote `id` and got back `resource_version`: until the watch
    /// delivers it, [`ObjectCache::lookup`] says [`Lookup::Stale`]. Versions that are not
    /// numbers (not etcd) cannot be ordered and are not tracked.
    pub fn note_written(&self, id: &ObjectId, resource_version: &str) {
        let Ok(version) = resource_version.parse::<u64>() else {
            return;
        };
        let mut state = self.lock();
        // Only kinds being watched: no event would ever settle the others.
        let Some(kind) = state.kinds.get(&(id.group.clone(), id.kind.clone())) else {
            return;
        };
        let seen = kind
            .objects
            .get(&(id.namespace.clone(), id.name.clone()))
            .and_then(|c| c.resource_version.parse::<u64>().ok());
        if seen.is_some_and(|seen| seen >= version) {
            return;
        }
        state.written.insert(id.clone(), version);
    }

    /// Forgets a pending write (the object was deleted, or the write failed).
    pub fn forget_written(&self, id: &ObjectId) {
        self.lock().written.remove(id);
    }

    /// A receiver that changes whenever any watched object does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// How many objects are cached (for the benchmark and tests).
    pub fn len(&self) -> usize {
        self.lock().kinds.values().map(|k| k.objects.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn forbidden(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => {
            matches!(status.code, 401 | 403)
        }
        watcher::Error::WatchError(status) => matches!(status.code, 401 | 403),
        _ => false,
    }
}

fn object_id(gk: &GroupKind, key: &Key) -> ObjectId {
    ObjectId::new(&key.0, &key.1, &gk.0, &gk.1)
}

/// Clears the pending write of an object once the watch delivered that version or a later one.
fn settle_written(
    written: &mut HashMap<ObjectId, u64>,
    gk: &GroupKind,
    key: &Key,
    cached: &Cached,
) {
    if written.is_empty() {
        return;
    }
    let id = object_id(gk, key);
    let Some(&wanted) = written.get(&id) else {
        return;
    };
    if cached
        .resource_version
        .parse::<u64>()
        .is_ok_and(|seen| seen >= wanted)
    {
        written.remove(&id);
    }
}

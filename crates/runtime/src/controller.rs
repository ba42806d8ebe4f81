//! The one controller harness: a controller is a [`Reconciler`] (its domain steps) and
//! [`Controller::run`] does the rest, the same way for every kind.
//!
//! What the harness owns, so no controller rebuilds it:
//! - **Watching and scheduling.** One watch per kind, filtered by kube-runtime predicates
//!   (generation, `reconcile.fluxcd.io/requestedAt`, deletion), so the controller's own status
//!   writes never wake it; the interval is the [`Action`] the reconciler returns; in-process
//!   requests arrive through a typed [`Trigger`]; other watches join as fallbacks
//!   ([`Controller::requested_by`]).
//! - **Finalizer.** Added before the first reconcile, so a deletion always reaches
//!   [`Reconciler::cleanup`]; then the object's metric series are dropped and the finalizer
//!   removed. Objects deleted without it (created before it existed) still lose their series.
//! - **Backoff.** Failures requeue after 750 ms doubling to 15 min, per object; errors the
//!   reconciler calls terminal wait for a change instead.
//! - **Status, events and metrics** through [`Cx`]: one server-side-apply status write as the
//!   controller's field manager, which also refreshes `gotk_resource_info` and
//!   `gotk_reconcile_condition`; Kubernetes Events that the alert dispatcher receives too; an RAII
//!   timer for `gotk_reconcile_duration_seconds` around every reconcile.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use gantry_api::meta::{FINALIZER, FluxObject, FluxStatus, READY_CONDITION, STALLED_CONDITION};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller as KubeController};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::events::{Events, FluxEvent, Severity};
use crate::metrics::{Metrics, ResourceInfo};
use crate::trigger::Trigger;
use crate::{backoff, finalizer, status};

/// What every controller of the process shares: the client, the metrics registry and the event
/// stream the alert dispatcher subscribes to.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub metrics: Metrics,
    pub events: broadcast::Sender<FluxEvent>,
}

impl Shared {
    /// A client with fresh metrics and an event stream nobody listens to yet.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            metrics: Metrics::new(),
            events: broadcast::channel(1024).0,
        }
    }
}

/// The objects a [`Reconciler`] reconciles: namespaced Flux-style objects.
pub trait Object:
    FluxObject
    + Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: FluxObject
        + Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// A controller's domain steps. Everything else is the harness's.
pub trait Reconciler: Send + Sync + 'static {
    type Object: Object;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Flux's controller name (`source-controller`, ...): field manager of status writes and
    /// reporter of events, so ownership carries over from Flux.
    const CONTROLLER: &'static str;

    /// The finalizer the harness adds before the first reconcile and removes after
    /// [`cleanup`](Self::cleanup); `None` for kinds whose children go with them through owner
    /// references (Knative's, which carry no Flux finalizer).
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    /// Brings the world in line with the object (never called while it is suspended or being
    /// deleted); reports through `cx`; says when to come back.
    fn reconcile(
        &self,
        obj: Arc<Self::Object>,
        cx: &Cx<Self::Object>,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// Releases what the object holds outside its own API object (stored artifacts, applied
    /// objects) before its finalizer is removed. An error keeps the finalizer and retries.
    fn cleanup(
        &self,
        obj: Arc<Self::Object>,
        cx: &Cx<Self::Object>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether retrying can help; `false` waits for the object to change (a stalled spec).
    fn retryable(_error: &Self::Error) -> bool {
        true
    }
}

/// The reconciler's handle on the world: the client, status writes, events and metrics.
pub struct Cx<K> {
    shared: Shared,
    events: Events,
    controller: &'static str,
    _kind: std::marker::PhantomData<fn(K)>,
}

impl<K> Clone for Cx<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            events: self.events.clone(),
            controller: self.controller,
            _kind: std::marker::PhantomData,
        }
    }
}

impl<K: Object> Cx<K> {
    /// A handle for `controller` (its field manager and event reporter).
    pub fn new(shared: Shared, controller: &'static str) -> Self {
        let events = Events::new(shared.client.clone(), controller, shared.events.clone());
        Self {
            shared,
            events,
            controller,
            _kind: std::marker::PhantomData,
        }
    }

    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// `Api` for the object's own namespace.
    pub fn api(&self, obj: &K) -> Api<K> {
        Api::namespaced(
            self.shared.client.clone(),
            &obj.namespace().unwrap_or_default(),
        )
    }

    /// Writes the whole status (server-side apply as the controller) and exports it as
    /// `gotk_resource_info` / `gotk_reconcile_condition`.
    pub async fn write_status(&self, obj: &K, status: &K::Status) -> Result<(), kube::Error> {
        status::apply(&self.api(obj), &obj.name_any(), self.controller, status).await?;
        self.record(obj, Some(status));
        Ok(())
    }

    /// Exports the object's state as metrics: `status`, or the object's own status when `None`.
    pub fn record(&self, obj: &K, status: Option<&K::Status>) {
        let status = status.or(obj.flux_status());
        let ready = status.and_then(|s| s.condition(READY_CONDITION));
        let stalled = status
            .and_then(|s| s.condition(STALLED_CONDITION))
            .is_some_and(|c| c.status == "True");
        let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        let kind = K::kind(&());
        self.shared
            .metrics
            .set_stalled(&kind, &namespace, &name, stalled);
        self.shared.metrics.set_resource(&ResourceInfo {
            group: K::group(&()).into_owned(),
            kind: kind.into_owned(),
            version: K::version(&()).into_owned(),
            namespace,
            name,
            ready: ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.to_owned()),
            reason: ready.map(|c| c.reason.to_owned()).unwrap_or_default(),
            suspended: obj.suspended(),
            revision: status
                .and_then(|s| s.revision_label())
                .unwrap_or_default()
                .into_owned(),
        });
    }

    /// Reports a failed reconcile: a warning in the log, the failed `status` written, and an
    /// Error event unless Ready already said the same (one event per change, not per retry).
    pub async fn report_failure(
        &self,
        obj: &K,
        status: &K::Status,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        tracing::warn!(
            kind = %K::kind(&()),
            namespace = obj.namespace().unwrap_or_default(),
            name = %obj.name_any(),
            reason,
            "{message}"
        );
        self.write_status(obj, status).await?;
        // One event per change of Ready, not per retry.
        let previous = obj.flux_status().and_then(|s| s.condition(READY_CONDITION));
        if previous.is_none_or(|c| c.status != "False" || c.message != message) {
            self.event(obj, Severity::Error, reason, message, None)
                .await;
        }
        Ok(())
    }

    /// Records a Kubernetes Event on the object and hands it to the alert dispatcher, with the
    /// revision as Flux's `<group>/revision` metadata.
    pub async fn event(
        &self,
        obj: &K,
        severity: Severity,
        reason: &str,
        message: &str,
        revision: Option<&str>,
    ) {
        let metadata: BTreeMap<String, String> = revision
            .map(|r| (format!("{}/revision", K::group(&())), r.to_owned()))
            .into_iter()
            .collect();
        self.events
            .publish(obj.object_ref(&()), severity, reason, message, metadata)
            .await;
    }
}

/// Why the harness could not finish a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    #[error(transparent)]
    Reconcile(E),
    #[error("cleaning up before deletion: {0}")]
    Cleanup(#[source] E),
    #[error("updating the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
}

/// A [`Reconciler`] and how to run it.
pub struct Controller<R: Reconciler> {
    inner: Arc<Inner<R>>,
    namespace: Option<String>,
    concurrency: u16,
    requests: Vec<BoxStream<'static, ObjectRef<R::Object>>>,
    store: Store<R::Object>,
    writer: reflector::store::Writer<R::Object>,
}

struct Inner<R: Reconciler> {
    reconciler: R,
    cx: Cx<R::Object>,
    failures: Mutex<HashMap<ObjectRef<R::Object>, u32>>,
}

impl<R: Reconciler> Controller<R> {
    pub fn new(reconciler: R, shared: Shared) -> Self {
        let (store, writer) = reflector::store();
        Self::assemble(reconciler, shared, store, writer)
    }

    /// [`new`](Self::new) for a reconciler that reads the cache of its own kind or wakes objects
    /// of its own kind (a Kustomization becoming Ready wakes those that depend on it): `make`
    /// gets this controller's [`store`](Self::store) and a [`trigger`](Self::trigger).
    pub fn new_with(
        shared: Shared,
        make: impl FnOnce(Store<R::Object>, Trigger<R::Object>) -> R,
    ) -> Self {
        let (store, writer) = reflector::store();
        let (trigger, requests) = Trigger::new();
        let mut controller = Self::assemble(make(store.clone(), trigger), shared, store, writer);
        controller.requests.push(requests.boxed());
        controller
    }

    fn assemble(
        reconciler: R,
        shared: Shared,
        store: Store<R::Object>,
        writer: reflector::store::Writer<R::Object>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                reconciler,
                cx: Cx::new(shared, R::CONTROLLER),
                failures: Mutex::default(),
            }),
            namespace: None,
            concurrency: 4,
            requests: Vec::new(),
            store,
            writer,
        }
    }

    /// Watch only `namespace` (all namespaces when `None`).
    pub fn namespace(mut self, namespace: Option<&str>) -> Self {
        self.namespace = namespace.map(str::to_owned);
        self
    }

    /// At most this many reconciles at once.
    pub fn concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// A trigger other parts of the process use to have an object reconciled now.
    pub fn trigger(&mut self) -> Trigger<R::Object> {
        let (trigger, requests) = Trigger::new();
        self.requests.push(requests.boxed());
        trigger
    }

    /// Reconcile the objects this stream names (a watch on another kind mapped to ours).
    pub fn requested_by(
        mut self,
        requests: impl Stream<Item = ObjectRef<R::Object>> + Send + 'static,
    ) -> Self {
        self.requests.push(requests.boxed());
        self
    }

    /// Reconcile, for every request on `related`, the objects `map` picks from the cache of
    /// this controller's objects (e.g. "artifact of GitRepository x stored" → the
    /// Kustomizations that use x).
    pub fn requested_by_related<O: 'static>(
        self,
        related: impl Stream<Item = O> + Send + 'static,
        map: impl Fn(&O, &Store<R::Object>) -> Vec<ObjectRef<R::Object>> + Send + 'static,
    ) -> Self {
        let store = self.store.clone();
        let requests = related
            .map(move |o| futures::stream::iter(map(&o, &store)))
            .flatten();
        self.requested_by(requests)
    }

    /// The cache of this controller's objects, filled once [`run`](Self::run) runs.
    pub fn store(&self) -> Store<R::Object> {
        self.store.clone()
    }

    /// Runs until `shutdown` completes, then lets reconciles in flight finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
        let client = self.inner.cx.shared.client.clone();
        let api: Api<R::Object> = match &self.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let metrics = self.inner.cx.shared.metrics.clone();
        let objects = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(slim::<R::Object>)
            .reflect(self.writer)
            .inspect_ok(move |event| {
                // Deleted without our finalizer (or it was removed by hand): its series go anyway.
                if let watcher::Event::Delete(obj) = event {
                    let kind = R::Object::kind(&());
                    metrics.remove_resource(
                        &kind,
                        &obj.namespace().unwrap_or_default(),
                        &obj.name_any(),
                    );
                }
            })
            .applied_objects()
            .predicate_filter(wakes_reconcile::<R::Object>, Default::default());
        let kind = R::Object::kind(&()).into_owned();
        let mut controller = KubeController::for_stream(objects, self.store)
            .with_config(ControllerConfig::default().concurrency(self.concurrency));
        for requests in self.requests {
            controller = controller.reconcile_on(requests);
        }
        controller
            .graceful_shutdown_on(shutdown)
            .run(reconcile::<R>, error_policy::<R>, self.inner)
            .for_each(|result| {
                if let Err(err) = result {
                    tracing::debug!(kind = %kind, %err, "reconcile");
                }
                futures::future::ready(())
            })
            .await;
    }
}

/// Drops what no reconciler reads before an object enters the cache: `managedFields` (often
/// larger than the rest of the object) and kubectl's last-applied annotation (a second copy of
/// it). The cache holds every object of the kind for as long as the process runs.
fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// kubectl's client-side apply record.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What wakes a reconcile: a new generation, a new reconcile request, a deletion. Status writes
/// (ours included) and label edits do not.
fn wakes_reconcile<K: Resource>(obj: &K) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(obj).hash(&mut hasher);
    obj.annotations()
        .get(gantry_api::meta::RECONCILE_REQUEST_ANNOTATION)
        .hash(&mut hasher);
    obj.meta().deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

async fn reconcile<R: Reconciler>(
    obj: Arc<R::Object>,
    inner: Arc<Inner<R>>,
) -> Result<Action, Error<R::Error>> {
    let cx = &inner.cx;
    let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let kind = R::Object::kind(&());
    let _timer = cx.metrics().reconcile_timer(&kind, &namespace, &name);
    let api = cx.api(&obj);
    if obj.meta().deletion_timestamp.is_some() {
        if let Some(finalizer) = R::FINALIZER
            && obj.finalizers().iter().any(|f| f == finalizer)
        {
            inner
                .reconciler
                .cleanup(obj.clone(), cx)
                .await
                .map_err(Error::Cleanup)?;
            // Before the finalizer goes: once the object is gone from the API, so are its
            // series (whoever saw the deletion complete must not still scrape them).
            cx.metrics().remove_resource(&kind, &namespace, &name);
            finalizer::remove(&api, obj.as_ref(), finalizer)
                .await
                .map_err(Error::Finalizer)?;
        }
        cx.metrics().remove_resource(&kind, &namespace, &name);
        inner.forget(&obj);
        return Ok(Action::await_change());
    }
    // Before any work, so whatever the reconcile leaves behind is cleaned up on deletion.
    if let Some(finalizer) = R::FINALIZER {
        finalizer::add(&api, obj.as_ref(), finalizer)
            .await
            .map_err(Error::Finalizer)?;
    }
    if obj.suspended() {
        // Flux writes nothing for a suspended object; only the metric says so.
        cx.record(&obj, None);
        return Ok(Action::await_change());
    }
    let action = inner
        .reconciler
        .reconcile(obj.clone(), cx)
        .await
        .map_err(Error::Reconcile)?;
    inner.forget(&obj);
    Ok(action)
}

fn error_policy<R: Reconciler>(
    obj: Arc<R::Object>,
    err: &Error<R::Error>,
    inner: Arc<Inner<R>>,
) -> Action {
    match err {
        // The guarded finalizer patch lost a race with a newer version of the object: the watch
        // brings that version; just run again.
        Error::Finalizer(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
            return Action::requeue(Duration::from_millis(200));
        }
        Error::Reconcile(e) if !R::retryable(e) => return Action::await_change(),
        _ => {}
    }
    let failures = {
        let mut all = inner
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = all.entry(ObjectRef::from_obj(obj.as_ref())).or_default();
        *n = n.saturating_add(1);
        *n
    };
    tracing::debug!(
        kind = %R::Object::kind(&()),
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        failures,
        %err,
        "reconcile failed; backing off"
    );
    Action::requeue(backoff::after_failures(failures))
}

impl<R: Reconciler> Inner<R> {
    // A success (or deletion) resets the backoff.
    fn forget(&self, obj: &R::Object) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ObjectRef::from_obj(obj));
    }
}

/// `interval` with Flux's ±5% jitter, seeded per object and per run, so objects created together
/// do not reconcile in lockstep.
pub fn jittered<K: Resource>(obj: &K, interval: Duration) -> Duration {
    use std::hash::BuildHasher;
    let seed = std::hash::RandomState::new().hash_one(obj.meta().uid.as_deref());
    backoff::jittered(interval, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn only_spec_requests_and_deletion_wake_a_reconcile() {
        let mut cm = ConfigMap::default();
        cm.metadata.generation = Some(1);
        let base = wakes_reconcile(&cm);
        let mut status_only = cm.clone();
        status_only
            .metadata
            .labels
            .get_or_insert_default()
            .insert("x".into(), "y".into());
        status_only.metadata.resource_version = Some("42".into());
        assert_eq!(
            wakes_reconcile(&status_only),
            base,
            "labels, resourceVersion"
        );
        let mut newer = cm.clone();
        newer.metadata.generation = Some(2);
        assert_ne!(wakes_reconcile(&newer), base, "generation");
        let mut requested = cm.clone();
        requested
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(
                gantry_api::meta::RECONCILE_REQUEST_ANNOTATION.into(),
                "now".into(),
            );
        assert_ne!(wakes_reconcile(&requested), base, "requestedAt");
        let mut deleting = cm;
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_ne!(wakes_reconcile(&deleting), base, "deletion");
    }

    #[test]
    fn cached_objects_lose_managed_fields_and_last_applied_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut cm = ConfigMap::default();
        cm.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        cm.metadata.annotations = Some(
            [
                (LAST_APPLIED_ANNOTATION.to_string(), "{}".to_string()),
                ("kept".to_string(), "yes".to_string()),
            ]
            .into(),
        );
        cm.metadata.generation = Some(3);
        slim(&mut cm);
        assert_eq!(cm.metadata.managed_fields, None);
        assert_eq!(
            cm.metadata.annotations,
            Some([("kept".to_string(), "yes".to_string())].into())
        );
        assert_eq!(cm.metadata.generation, Some(3));
    }
}

//! The sources (GitRepositories, OCIRepositories) as the controller's watches last saw them, so
//! a reconciliation reads its source's artifact without a GET.
//!
//! The watches that wake Kustomizations on a new artifact feed these stores too (one watch per
//! kind, not two). Trust rule: a synced store that holds the source with an artifact is the
//! answer. An in-process hand-off from the source controller can arrive before the watch
//! delivers the new artifact; the run then sees the previous one (already applied: it sends
//! nothing), and the watch event that follows runs the Kustomization again with the new one.
//! A source the store has no artifact for is read from the API server as before, after a short
//! wait for a first fetch still in progress (so the Kustomizations created with their source do
//! not each write a "not ready" status first).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_api::meta::READY_CONDITION;
use gantry_api::source::v1::{Artifact, GitRepository, OCIRepository};
use kube::Resource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::watch;

/// How long a run waits for a source whose first fetch is in progress before asking the API
/// server (and reporting it not ready). Short: the run holds one of the controller's workers.
pub const FIRST_ARTIFACT_PATIENCE: Duration = Duration::from_secs(5);

/// What the store says of one source.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// No synced store (the watch is off, still listing, or not allowed): ask the server.
    Unknown,
    Artifact(Artifact),
    /// In the store without an artifact; `failed`: its Ready condition is False.
    NoArtifact {
        failed: bool,
    },
    /// The synced store has no such source.
    Absent,
}

struct Kind<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    synced: AtomicBool,
}

/// The stores of both source kinds and a signal that changes with every event.
pub struct Sources {
    git: Option<Arc<Kind<GitRepository>>>,
    oci: Option<Arc<Kind<OCIRepository>>>,
    changed: watch::Sender<u64>,
}

impl Default for Sources {
    /// No stores: every read goes to the API server.
    fn default() -> Self {
        Sources {
            git: None,
            oci: None,
            changed: watch::channel(0).0,
        }
    }
}

impl Sources {
    /// Feeds the GitRepository `events` into a store; returns them unchanged for the triggers.
    pub fn git_stream<S>(&mut self, events: S) -> impl Stream<Item = S::Item> + Send + use<S>
    where
        S: Stream<Item = watcher::Result<watcher::Event<GitRepository>>> + Send + 'static,
    {
        let (store, writer) = reflector::store();
        let kind = Arc::new(Kind {
            store,
            synced: AtomicBool::new(false),
        });
        self.git = Some(kind.clone());
        feed(events, writer, kind, self.changed.clone())
    }

    /// Feeds the OCIRepository `events` into a store; returns them unchanged for the triggers.
    pub fn oci_stream<S>(&mut self, events: S) -> impl Stream<Item = S::Item> + Send + use<S>
    where
        S: Stream<Item = watcher::Result<watcher::Event<OCIRepository>>> + Send + 'static,
    {
        let (store, writer) = reflector::store();
        let kind = Arc::new(Kind {
            store,
            synced: AtomicBool::new(false),
        });
        self.oci = Some(kind.clone());
        feed(events, writer, kind, self.changed.clone())
    }

    pub fn git(&self, namespace: &str, name: &str) -> Seen {
        seen(self.git.as_deref(), namespace, name, |r: &GitRepository| {
            let status = r.status.as_ref();
            (
                status.and_then(|s| s.artifact.clone()),
                status.is_some_and(|s| ready_false(&s.conditions)),
            )
        })
    }

    pub fn oci(&self, namespace: &str, name: &str) -> Seen {
        seen(self.oci.as_deref(), namespace, name, |r: &OCIRepository| {
            let status = r.status.as_ref();
            (
                status.and_then(|s| s.artifact.clone()),
                status.is_some_and(|s| ready_false(&s.conditions)),
            )
        })
    }

    /// Waits until `look` finds an artifact, at most `patience`; the last answer either way.
    pub async fn wait_for_artifact(
        &self,
        patience: Duration,
        look: impl Fn(&Self) -> Seen,
    ) -> Seen {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let seen = look(self);
            if !matches!(seen, Seen::NoArtifact { failed: false }) {
                return seen;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the watches are gone.
                _ => return look(self),
            }
        }
    }
}

fn ready_false(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == READY_CONDITION && c.status == "False")
}

fn seen<K>(
    kind: Option<&Kind<K>>,
    namespace: &str,
    name: &str,
    artifact: impl Fn(&K) -> (Option<Artifact>, bool),
) -> Seen
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let Some(kind) = kind else {
        return Seen::Unknown;
    };
    if !kind.synced.load(Ordering::Acquire) {
        return Seen::Unknown;
    }
    match kind.store.get(&ObjectRef::new(name).within(namespace)) {
        None => Seen::Absent,
        Some(object) => match artifact(&object) {
            (Some(artifact), _) => Seen::Artifact(artifact),
            (None, failed) => Seen::NoArtifact { failed },
        },
    }
}

fn feed<K, S>(
    events: S,
    writer: reflector::store::Writer<K>,
    kind: Arc<Kind<K>>,
    changed: watch::Sender<u64>,
) -> impl Stream<Item = S::Item> + Send + use<K, S>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    // Managed fields are the bulk of a source object and nothing here reads them.
    let events = events.map(|event| {
        event.map(|event| event.modify(|object| object.meta_mut().managed_fields = None))
    });
    reflector::reflector(writer, events).inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            kind.synced.store(true, Ordering::Release);
        }
        changed.send_modify(|n| *n = n.wrapping_add(1));
    })
}

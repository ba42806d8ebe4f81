//! One `reconcile.fluxcd.io/requestedAt` patch for many webhook calls.
//!
//! Fifty calls at once for one object used to be fifty patches of that object, which the API
//! server serialises (and, under load, answers 504). Here at most one patch per target is in
//! flight. A call that arrives while one is in flight cannot be covered by it (its timestamp was
//! taken before the call arrived), so it joins the *next* patch, which starts when the current
//! one ends and takes its timestamp then: every call is answered by a patch whose `requestedAt`
//! is later than the call's arrival, so the reconcile it asked for happens after it, and however
//! many calls arrive meanwhile, they cost one patch.
//!
//! A patch is bounded by [`Coalescer::deadline`]; a call whose patch has not finished by then
//! (counted from its own arrival) is answered [`Outcome::DeadlinePassed`] (503 with
//! `Retry-After`), while the patch itself goes on for the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::resources;

/// What a Receiver's resource entry names: one object, or (name `*`) those matching labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub api_version: Option<String>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// How one call's request for a target ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These objects were annotated with a timestamp later than the call's arrival.
    Annotated(Vec<String>),
    /// The patch failed (the message says why).
    Failed(String),
    /// The patch did not finish within the deadline.
    DeadlinePassed,
}

/// One patch and the calls waiting for it.
type Batch = watch::Sender<Option<Outcome>>;

#[derive(Default)]
struct Slot {
    /// The patch after the one in flight, with the calls that joined it.
    next: Option<Batch>,
}

/// Patches per target, at most one in flight each; cheap to clone.
#[derive(Clone)]
pub struct Coalescer {
    client: kube::Client,
    /// How long a call waits for its patch.
    pub deadline: Duration,
    /// Targets with a patch in flight.
    slots: Arc<Mutex<HashMap<Target, Slot>>>,
}

impl Coalescer {
    pub fn new(client: kube::Client, deadline: Duration) -> Self {
        Coalescer {
            client,
            deadline,
            slots: Default::default(),
        }
    }

    /// Asks for a reconcile of `target` on behalf of a call that has just arrived.
    pub async fn request(&self, target: &Target) -> Outcome {
        let mut outcome = {
            let Ok(mut slots) = self.slots.lock() else {
                return Outcome::Failed("the request table is poisoned".into());
            };
            match slots.get_mut(target) {
                // A patch is in flight: join the next one, opening it if need be.
                Some(slot) => slot
                    .next
                    .get_or_insert_with(|| watch::channel(None).0)
                    .subscribe(),
                None => {
                    let (batch, outcome) = watch::channel(None);
                    slots.insert(target.clone(), Slot::default());
                    tokio::spawn(self.clone().drive(target.clone(), batch));
                    outcome
                }
            }
        };
        match tokio::time::timeout(self.deadline, outcome.wait_for(Option::is_some)).await {
            Ok(Ok(done)) => done
                .clone()
                .unwrap_or_else(|| Outcome::Failed("the patch was abandoned".into())),
            Ok(Err(_)) => Outcome::Failed("the patch was abandoned".into()),
            Err(_) => Outcome::DeadlinePassed,
        }
    }

    /// Runs `batch`, then each batch that calls opened meanwhile, until none is waiting.
    async fn drive(self, target: Target, mut batch: Batch) {
        loop {
            // Taken now, after every call of this batch arrived.
            let requested_at = jiff::Timestamp::now().to_string();
            let patched = tokio::time::timeout(
                self.deadline,
                resources::request_reconcile(
                    &self.client,
                    target.api_version.as_deref(),
                    &target.kind,
                    &target.namespace,
                    &target.name,
                    &target.labels,
                    &requested_at,
                ),
            )
            .await;
            let outcome = match patched {
                Ok(Ok(names)) => Outcome::Annotated(names),
                Ok(Err(err)) => Outcome::Failed(err.to_string()),
                Err(_) => Outcome::DeadlinePassed,
            };
            batch.send_replace(Some(outcome));
            let next = match self.slots.lock() {
                Ok(mut slots) => match slots.get_mut(&target).and_then(|s| s.next.take()) {
                    Some(next) => next,
                    None => {
                        slots.remove(&target);
                        return;
                    }
                },
                Err(_) => return,
            };
            batch = next;
        }
    }
}

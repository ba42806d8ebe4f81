//! Server-side apply of a revision's objects, the way Flux's kustomize-controller does it.
//!
//! [`Applier::apply`]:
//! 1. Every object gets the owner labels and loses server-owned metadata and the client-side
//!    `last-applied-configuration` annotation.
//! 2. Objects are sorted into stages (CRDs/Namespaces/ClusterRoles, then `*Class` kinds, then the
//!    rest, each in fluxcd/pkg `ssa` kind order; see [`gantry_core::kustomize::inventory`]).
//! 3. **Dry-run first**: every object is read live and server-side dry-run applied before
//!    anything is written. Objects whose kind or namespace is created by this very revision
//!    cannot be dry-run yet; they are dry-run right after the first stage is written and
//!    established. Any rejection fails the revision, naming the object and quoting the server.
//! 4. **Drift**: the dry-run result is compared with the live object (server-owned fields and
//!    status ignored). Only objects that differ are written, so an unchanged object keeps its
//!    `resourceVersion`.
//! 5. Writes go stage by stage; after the first stage the engine waits until the CRDs are
//!    established and the Namespaces exist.
//!
//! [`Applier::diff`] runs steps 1-4 and writes nothing (`gantry diff`); [`Applier::prune_dry_run`]
//! says what a prune would delete.
//!
//! Flux's per-object annotations are honoured, values compared case-insensitively:
//! `kustomize.toolkit.fluxcd.io/reconcile: disabled` and `ssa: Ignore` skip the object,
//! `ssa: IfNotPresent` creates it but never updates it, `ssa: Merge` leaves other managers'
//! fields alone (no managed-fields takeover), `force: enabled` recreates it on immutable-field
//! changes, `prune: disabled` keeps it when it leaves the revision.
//!
//! Managed-fields cleanup (as Flux, skipped with `ssa: Merge`): on live objects, the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation is removed, and the field sets
//! of `kubectl*` managers (Apply and Update operations) and `before-first-apply` are merged
//! into the `kustomize-controller` Apply entry, so fields that were removed from git are really
//! removed instead of staying owned by a stale kubectl entry.

pub(crate) mod meta;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use gantry_core::kustomize::inventory::{Inventory, InventoryEntry, ObjectId, Stage, apply_order};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::cache::{Lookup, ObjectCache};
pub use crate::discovery::{Resolved, Resolver};
use crate::health::{self, HealthError, WaitOptions};
pub use meta::{
    FORCE_ANNOTATION, LAST_APPLIED_ANNOTATION, OWNER_NAME_LABEL, OWNER_NAMESPACE_LABEL,
    PRUNE_ANNOTATION, RECONCILE_ANNOTATION, SSA_ANNOTATION, comparable,
};

/// Field manager Flux uses; keeping it lets Gantry and Flux hand objects over to each other.
pub const FIELD_MANAGER: &str = "kustomize-controller";

/// How many objects are read and dry-run at the same time.
const CONCURRENCY: usize = 8;

/// The Kustomization that owns the applied objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
}

impl Owner {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Owner {
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// Options of one [`Applier::apply`].
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub owner: Owner,
    /// Recreate objects whose immutable fields changed (`spec.force`).
    pub force: bool,
    /// How long to wait for the first stage (CRDs established, Namespaces active) and for
    /// objects deleted for recreation to be gone.
    pub wait_timeout: Duration,
    /// Poll interval of those waits.
    pub wait_interval: Duration,
}

impl ApplyOptions {
    pub fn new(owner: Owner) -> Self {
        ApplyOptions {
            owner,
            force: false,
            wait_timeout: Duration::from_secs(60),
            wait_interval: Duration::from_millis(500),
        }
    }
}

/// What happened to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    Skipped,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
            Action::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSetEntry {
    pub id: ObjectId,
    /// API version (`v1`, `v1beta1`) the object was applied with.
    pub version: String,
    pub action: Action,
}

/// `Deployment/apps/web configured`: Flux's event line.
impl fmt::Display for ChangeSetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.id.display(), self.action)
    }
}

/// The outcome of an apply or prune, in apply (or deletion) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub entries: Vec<ChangeSetEntry>,
    /// Objects health checks must not wait for: Jobs with `ttlSecondsAfterFinished`, which
    /// delete themselves once done (Flux leaves them out too).
    pub unwaited: Vec<ObjectId>,
}

impl ChangeSet {
    /// Entries that changed the cluster (created, configured, deleted).
    pub fn changes(&self) -> impl Iterator<Item = &ChangeSetEntry> {
        self.entries.iter().filter(|e| {
            matches!(
                e.action,
                Action::Created | Action::Configured | Action::Deleted
            )
        })
    }

    pub fn has_changes(&self) -> bool {
        self.changes().next().is_some()
    }

    /// Entries with `action`.
    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &ChangeSetEntry> {
        self.entries.iter().filter(move |e| e.action == action)
    }

    /// The inventory of an apply's change set: every object of the revision (skipped ones
    /// included, as Flux records them), sorted in apply order.
    pub fn to_inventory(&self) -> Inventory {
        let mut inventory = Inventory::default();
        for entry in self.entries.iter().filter(|e| e.action != Action::Deleted) {
            inventory.insert(entry.id.clone(), entry.version.clone());
        }
        inventory.sort();
        inventory
    }

    /// What a `wait: true` health check should watch: every applied object except those
    /// skipped by annotation (which may legitimately not exist), deleted ones and
    /// [`ChangeSet::unwaited`].
    pub fn health_targets(&self) -> Vec<InventoryEntry> {
        self.entries
            .iter()
            .filter(|e| !matches!(e.action, Action::Skipped | Action::Deleted))
            .filter(|e| !self.unwaited.contains(&e.id))
            .map(|e| InventoryEntry {
                id: e.id.clone(),
                version: e.version.clone(),
            })
            .collect()
    }

    /// One line per change, as the controller's event message.
    pub fn summary(&self) -> String {
        self.changes()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What [`Applier::diff`] found for one object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectDiff {
    pub id: ObjectId,
    /// API version (`v1`, `v1beta1`) the object would be applied with.
    pub version: String,
    /// `Created`, `Configured`, `Unchanged` or `Skipped`.
    pub action: Action,
    /// The live object (configured objects only).
    pub live: Option<Value>,
    /// What the object would look like: the dry-run result, else (kind or namespace not there
    /// yet, or recreated for an immutable field) the desired object. `None` when unchanged or
    /// skipped.
    pub dry_run: Option<Value>,
}

/// Why an apply, prune or delete failed. Every variant names the object (Flux's
/// `Kind/namespace/name`) and, where the API server said why, quotes it.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{what}: {reason}")]
    InvalidObject { what: String, reason: String },

    #[error(
        "{}: no matches for kind \"{}\" in version \"{api_version}\" (is its CustomResourceDefinition installed?)",
        .id.display(), .id.kind
    )]
    UnknownKind {
        id: Box<ObjectId>,
        api_version: String,
    },

    #[error("{} dry-run failed ({reason}): {message}", .id.display())]
    DryRun {
        id: Box<ObjectId>,
        reason: String,
        message: String,
    },

    #[error(
        "{} dry-run failed (immutable field; enable force or annotate with {FORCE_ANNOTATION}: Enabled to recreate it): {message}",
        .id.display()
    )]
    Immutable { id: Box<ObjectId>, message: String },

    #[error("{} apply failed: {message}", .id.display())]
    Apply { id: Box<ObjectId>, message: String },

    #[error("{} delete failed: {message}", .id.display())]
    Delete { id: Box<ObjectId>, message: String },

    #[error("{message}")]
    Wait { message: String },

    #[error("{}: {}", .id.display(), api_message(source))]
    Kube {
        id: Box<ObjectId>,
        #[source]
        source: Box<kube::Error>,
    },
}

/// The API server's reason and message (`Forbidden: configmaps "x" is forbidden: User ...`),
/// not kube's debug dump of the whole Status, which would bury them in a Ready condition.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{}: {}", status.reason, status.message),
        other => other.to_string(),
    }
}

impl ApplyError {
    /// The object the error is about, if it is about one.
    pub fn id(&self) -> Option<&ObjectId> {
        match self {
            ApplyError::UnknownKind { id, .. }
            | ApplyError::DryRun { id, .. }
            | ApplyError::Immutable { id, .. }
            | ApplyError::Apply { id, .. }
            | ApplyError::Delete { id, .. }
            | ApplyError::Kube { id, .. } => Some(id.as_ref()),
            ApplyError::InvalidObject { .. } | ApplyError::Wait { .. } => None,
        }
    }

    fn kube(id: &ObjectId, source: kube::Error) -> Self {
        ApplyError::Kube {
            id: Box::new(id.clone()),
            source: Box::new(source),
        }
    }
}

/// One object of the revision, prepared for applying.
#[derive(Clone, Debug)]
struct Desired {
    id: ObjectId,
    api_version: String,
    version: String,
    object: Value,
    resolved: Option<Resolved>,
}

/// What evaluating an object decided.
#[derive(Debug)]
enum Plan {
    Skip,
    Unchanged,
    Write {
        create: bool,
        cleanup: Option<Value>,
        recreate: bool,
        /// The live object and the dry-run result, for [`Applier::diff`].
        live: Option<Value>,
        dry_run: Option<Value>,
    },
    /// Its kind or namespace comes with this revision: evaluate after the first stage.
    Defer,
}

/// What the engine last sent for an object, and what the object looked like then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LastApplied {
    /// [`meta::desired_hash`] of the object as sent (or found equal to the live one).
    desired: u64,
    /// [`meta::applied_fingerprint`] of the live object right after.
    fingerprint: u64,
}

/// What the watch cache says about an object before any request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Nothing useful: read it and dry-run it.
    Nothing,
    /// No labelled object: dry-run without reading first.
    Absent,
    /// Unchanged since this applier's last apply: nothing to send.
    Unchanged,
    /// There, and `ssa: IfNotPresent`: never updated.
    Skip,
}

/// The apply engine. Cheap to clone; clones share the discovery cache, the watch cache and
/// the record of what was applied.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    field_manager: String,
    resolver: Resolver,
    cache: Option<ObjectCache>,
    applied: Arc<Mutex<HashMap<ObjectId, LastApplied>>>,
}

impl Applier {
    /// An applier writing as `field_manager` (Flux: [`FIELD_MANAGER`]).
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        Applier {
            client,
            field_manager: field_manager.into(),
            resolver: Resolver::new(),
            cache: None,
            applied: Arc::default(),
        }
    }

    /// The same applier acting through another client (e.g. impersonating a Kustomization's
    /// `serviceAccountName`), sharing the discovery cache.
    pub fn with_client(&self, client: Client) -> Self {
        Applier {
            client,
            field_manager: self.field_manager.clone(),
            resolver: self.resolver.clone(),
            cache: self.cache.clone(),
            applied: self.applied.clone(),
        }
    }

    /// The same applier reading a shared watch cache of the applied objects (its watches use
    /// this applier's client): health waits read it instead of polling, and an object whose
    /// desired state is byte-identical to what this applier last applied and whose live state
    /// shows no drift in the cache is neither dry-run nor applied again (see
    /// [`meta::applied_fingerprint`] for the exact rule). Objects the cache does not know are
    /// handled as without it.
    pub fn with_watch_cache(mut self) -> Self {
        self.cache = Some(ObjectCache::new(
            self.client.clone(),
            self.field_manager.clone(),
        ));
        self
    }

    /// The watch cache, if [`Applier::with_watch_cache`] made one.
    pub fn cache(&self) -> Option<&ObjectCache> {
        self.cache.as_ref()
    }

    fn applied_lock(&self) -> MutexGuard<'_, HashMap<ObjectId, LastApplied>> {
        // Entries are inserted whole: a poisoned map is still consistent.
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `d` was applied (or found unchanged) and `live` is the object after it.
    fn remember(&self, d: &Desired, live: &Value) {
        let Some(cache) = &self.cache else {
            return;
        };
        if let Some(version) = live
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            cache.note_written(&d.id, version);
        }
        let Some(fingerprint) = meta::applied_fingerprint(live, &self.field_manager) else {
            self.applied_lock().remove(&d.id);
            return;
        };
        let last = LastApplied {
            desired: meta::desired_hash(&d.object),
            fingerprint,
        };
        self.applied_lock().insert(d.id.clone(), last);
    }

    /// What the watch cache says about `d` without asking the API server (waiting for the
    /// kind's watch to list if it is still at it, as just after a start).
    async fn known(&self, d: &Desired) -> Known {
        let Some(cache) = &self.cache else {
            return Known::Nothing;
        };
        match cache.lookup_synced(&d.id).await {
            Lookup::Absent => Known::Absent,
            Lookup::Present(cached) => {
                if cached.skip_flagged {
                    return Known::Nothing;
                }
                if meta::has_flag(&d.object, SSA_ANNOTATION, "ifnotpresent") {
                    return Known::Skip;
                }
                let last = self.applied_lock().get(&d.id).copied();
                let unchanged = last.is_some_and(|last| {
                    cached.fingerprint == Some(last.fingerprint)
                        && last.desired == meta::desired_hash(&d.object)
                });
                if unchanged {
                    Known::Unchanged
                } else {
                    Known::Nothing
                }
            }
            Lookup::Unknown | Lookup::Stale => Known::Nothing,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// [`health::wait`] with this applier's client and discovery cache.
    pub async fn wait(
        &self,
        targets: &[InventoryEntry],
        opts: &WaitOptions,
    ) -> Result<(), HealthError> {
        health::wait(
            &self.client,
            &self.resolver,
            self.cache.as_ref(),
            targets,
            opts,
        )
        .await
    }

    /// Applies a revision's objects; see the module docs for the steps. On error nothing of
    /// the stages after the failing object's is written, and a dry-run rejection found before
    /// the first write means nothing at all was written.
    pub async fn apply(
        &self,
        objects: Vec<Value>,
        opts: &ApplyOptions,
    ) -> Result<ChangeSet, ApplyError> {
        let (mut desired, new_namespaces) = self.prepare_revision(objects, &opts.owner).await?;

        // Dry-run everything that can be dry-run now, before writing anything.
        let mut plans: Vec<Option<Plan>> = self
            .evaluate_all(&desired, opts, &new_namespaces, true)
            .await?
            .into_iter()
            .map(Some)
            .collect();

        let mut changes = Vec::with_capacity(desired.len());
        for stage in [Stage::Definitions, Stage::Classes, Stage::Resources] {
            // Objects deferred until the definitions exist: resolve and dry-run all of them
            // once the definitions are written, before anything of a later stage is.
            let deferred: Vec<usize> = (0..desired.len())
                .filter(|&i| {
                    stage != Stage::Definitions
                        && desired[i].id.stage() >= stage
                        && matches!(plans[i], Some(Plan::Defer))
                })
                .collect();
            if !deferred.is_empty() {
                for &i in &deferred {
                    self.resolve_after_definitions(&mut desired[i], opts)
                        .await?;
                }
                let late: Vec<Desired> = deferred.iter().map(|&i| desired[i].clone()).collect();
                let late_plans = self
                    .evaluate_all(&late, opts, &new_namespaces, false)
                    .await?;
                for (i, plan) in deferred.into_iter().zip(late_plans) {
                    plans[i] = Some(plan);
                }
            }

            let mut written = Vec::new();
            for i in (0..desired.len()).filter(|&i| desired[i].id.stage() == stage) {
                let d = &desired[i];
                let plan = plans[i].take().unwrap_or(Plan::Skip);
                let action = self.write(d, plan, opts).await?;
                if matches!(action, Action::Created | Action::Configured) {
                    info!(object = %d.id.display(), %action, "applied");
                    written.push(i);
                }
                changes.push(ChangeSetEntry {
                    id: d.id.clone(),
                    version: d.version.clone(),
                    action,
                });
            }

            if stage == Stage::Definitions && !written.is_empty() {
                let targets: Vec<InventoryEntry> = written
                    .iter()
                    .map(|&i| InventoryEntry {
                        id: desired[i].id.clone(),
                        version: desired[i].version.clone(),
                    })
                    .collect();
                let wait = WaitOptions {
                    timeout: opts.wait_timeout,
                    interval: opts.wait_interval,
                    fail_fast: true,
                };
                health::wait(
                    &self.client,
                    &self.resolver,
                    self.cache.as_ref(),
                    &targets,
                    &wait,
                )
                .await
                .map_err(|e| ApplyError::Wait {
                    message: format!("cluster definitions not ready: {e}"),
                })?;
            }
        }
        let unwaited = desired
            .iter()
            .filter(|d| {
                d.id.group == "batch"
                    && d.id.kind == "Job"
                    && d.object.pointer("/spec/ttlSecondsAfterFinished").is_some()
            })
            .map(|d| d.id.clone())
            .collect();
        Ok(ChangeSet {
            entries: changes,
            unwaited,
        })
    }

    /// What [`Applier::apply`] would do to each object, in apply order, writing nothing: the
    /// same preparation, annotations and server-side dry-run, with the live object and the
    /// dry-run result of every object that would be configured. Objects that cannot be dry-run
    /// yet (their kind or namespace comes with this revision) are reported as created with the
    /// desired object. A managedFields cleanup alone is no change here: the content is equal.
    pub async fn diff(
        &self,
        objects: Vec<Value>,
        opts: &ApplyOptions,
    ) -> Result<Vec<ObjectDiff>, ApplyError> {
        let (desired, new_namespaces) = self.prepare_revision(objects, &opts.owner).await?;
        let plans = self
            .evaluate_all(&desired, opts, &new_namespaces, true)
            .await?;
        Ok(desired.into_iter().zip(plans).map(object_diff).collect())
    }

    /// Prepares, orders and resolves a revision's objects; returns them with the Namespaces
    /// the revision creates.
    async fn prepare_revision(
        &self,
        objects: Vec<Value>,
        owner: &Owner,
    ) -> Result<(Vec<Desired>, HashSet<String>), ApplyError> {
        let mut desired = objects
            .into_iter()
            .map(|object| prepare(object, owner))
            .collect::<Result<Vec<_>, _>>()?;
        desired.sort_by(|a, b| apply_order(&a.id, &b.id));
        reject_duplicates(&desired)?;

        // What this revision brings that others may depend on.
        let new_kinds: HashSet<(String, String)> = desired
            .iter()
            .filter_map(|d| crd_group_kind(&d.object))
            .collect();
        let new_namespaces: HashSet<String> = desired
            .iter()
            .filter(|d| d.id.group.is_empty() && d.id.kind == "Namespace")
            .map(|d| d.id.name.clone())
            .collect();

        // Resolve kinds; unknown ones must be defined by a CRD of this revision.
        for d in &mut desired {
            self.resolve(d, &new_kinds).await?;
        }
        Ok((desired, new_namespaces))
    }

    /// Deletes the objects of `previous` missing from `current` that still carry both owner
    /// labels of `owner`, except those labelled or annotated `prune: disabled` or
    /// `reconcile: disabled` ([`meta::kept_from_prune`], Flux's rule); in reverse apply order
    /// (custom resources before their CRDs, Namespaces last). Objects already gone are not
    /// reported; objects kept are reported as skipped.
    pub async fn prune(
        &self,
        previous: &Inventory,
        current: &Inventory,
        owner: &Owner,
    ) -> Result<ChangeSet, ApplyError> {
        self.prune_or_plan(previous, current, owner, false).await
    }

    /// What [`Applier::prune`] would delete or keep, deleting nothing.
    pub async fn prune_dry_run(
        &self,
        previous: &Inventory,
        current: &Inventory,
        owner: &Owner,
    ) -> Result<ChangeSet, ApplyError> {
        self.prune_or_plan(previous, current, owner, true).await
    }

    async fn prune_or_plan(
        &self,
        previous: &Inventory,
        current: &Inventory,
        owner: &Owner,
        dry_run: bool,
    ) -> Result<ChangeSet, ApplyError> {
        let mut changes = Vec::new();
        for entry in previous.stale(current) {
            if let Some(action) = self.delete_owned(&entry, owner, dry_run).await? {
                changes.push(ChangeSetEntry {
                    id: entry.id,
                    version: entry.version,
                    action,
                });
            }
        }
        Ok(ChangeSet {
            entries: changes,
            unwaited: Vec::new(),
        })
    }

    /// Deletes every object of `inventory` owned by `owner` (deletionPolicy `Delete`), with the
    /// same rules as [`Applier::prune`].
    pub async fn delete_all(
        &self,
        inventory: &Inventory,
        owner: &Owner,
    ) -> Result<ChangeSet, ApplyError> {
        self.prune(inventory, &Inventory::default(), owner).await
    }

    /// Waits until the objects of `entries` are gone (deletionPolicy `WaitForTermination`).
    pub async fn wait_for_termination(
        &self,
        entries: &[InventoryEntry],
        timeout: Duration,
        interval: Duration,
    ) -> Result<(), ApplyError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for entry in entries {
            loop {
                if self.get_entry(entry).await?.is_none() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApplyError::Wait {
                        message: format!("{} termination timeout", entry.id.display()),
                    });
                }
                tokio::time::sleep(interval).await;
            }
        }
        Ok(())
    }

    async fn resolve(
        &self,
        d: &mut Desired,
        new_kinds: &HashSet<(String, String)>,
    ) -> Result<(), ApplyError> {
        let resolved = self
            .resolver
            .resolve(&self.client, &d.id.group, &d.version, &d.id.kind)
            .await
            .map_err(|e| ApplyError::kube(&d.id, e))?;
        match resolved {
            Some(resolved) => {
                scope_object(d, resolved.namespaced)?;
                if let Some(cache) = &self.cache {
                    cache.watch_kind(&resolved);
                }
                d.resolved = Some(resolved);
                Ok(())
            }
            // Skipped objects are never sent, so their kind need not exist (as in Flux).
            None if skipped_in_git(&d.object) => Ok(()),
            None if new_kinds.contains(&(d.id.group.clone(), d.id.kind.clone())) => Ok(()),
            None => Err(unknown_kind(d)),
        }
    }

    /// Resolves a kind whose CRD was just established; discovery can lag a moment behind.
    async fn resolve_after_definitions(
        &self,
        d: &mut Desired,
        opts: &ApplyOptions,
    ) -> Result<(), ApplyError> {
        if d.resolved.is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + opts.wait_timeout;
        loop {
            let resolved = self
                .resolver
                .resolve(&self.client, &d.id.group, &d.version, &d.id.kind)
                .await
                .map_err(|e| ApplyError::kube(&d.id, e))?;
            if let Some(resolved) = resolved {
                scope_object(d, resolved.namespaced)?;
                d.resolved = Some(resolved);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unknown_kind(d));
            }
            tokio::time::sleep(opts.wait_interval).await;
        }
    }

    async fn evaluate_all(
        &self,
        desired: &[Desired],
        opts: &ApplyOptions,
        new_namespaces: &HashSet<String>,
        may_defer: bool,
    ) -> Result<Vec<Plan>, ApplyError> {
        stream::iter((0..desired.len()).map(|i| {
            // By index: a closure over `&Desired` trips rustc's higher-ranked Send inference
            // (rust-lang/rust#102211) and makes the future unusable in a spawned controller.
            let d = &desired[i];
            async move {
                if d.resolved.is_none() {
                    if skipped_in_git(&d.object) {
                        return Ok(Plan::Skip);
                    }
                    // A kind defined by a CRD of this revision (resolve() rejected all others).
                    return Ok(Plan::Defer);
                }
                let namespace_comes_later = may_defer && new_namespaces.contains(&d.id.namespace);
                let absent = match self.known(d).await {
                    Known::Unchanged => return Ok(Plan::Unchanged),
                    Known::Skip => return Ok(Plan::Skip),
                    Known::Absent => true,
                    Known::Nothing => false,
                };
                match self
                    .evaluate(d, opts, namespace_comes_later, absent)
                    .await?
                {
                    Some(plan) => Ok(plan),
                    // The cache had no labelled object, but the server has one: read it.
                    None => self
                        .evaluate(d, opts, namespace_comes_later, false)
                        .await?
                        .ok_or_else(|| ApplyError::InvalidObject {
                            what: d.id.display(),
                            reason: "could not be evaluated".into(),
                        }),
                }
            }
        }))
        .buffered(CONCURRENCY)
        .try_collect()
        .await
    }

    /// Reads the live object (unless the watch cache says there is none: `absent`), dry-runs
    /// the desired one and decides what to do. `None` when `absent` turned out wrong (the
    /// dry-run found an object): evaluate again with a read.
    async fn evaluate(
        &self,
        d: &Desired,
        opts: &ApplyOptions,
        namespace_comes_later: bool,
        absent: bool,
    ) -> Result<Option<Plan>, ApplyError> {
        let api = self.api(d);
        let live = if absent {
            None
        } else {
            match api.get_opt(&d.id.name).await {
                Ok(live) => live.map(to_value),
                Err(err) => return Err(ApplyError::kube(&d.id, err)),
            }
        };
        let desired = &d.object;
        let flagged = |key: &str, value: &str| {
            meta::has_flag(desired, key, value)
                || live.as_ref().is_some_and(|l| meta::has_flag(l, key, value))
        };
        if flagged(RECONCILE_ANNOTATION, "disabled") || flagged(SSA_ANNOTATION, "ignore") {
            debug!(object = %d.id.display(), "skipped by annotation");
            return Ok(Some(Plan::Skip));
        }
        if live.is_some() && meta::has_flag(desired, SSA_ANNOTATION, "ifnotpresent") {
            return Ok(Some(Plan::Skip));
        }

        let params = PatchParams::apply(&self.field_manager).force().dry_run();
        let dry_run = match api.patch(&d.id.name, &params, &Patch::Apply(desired)).await {
            // A dry-run of a create has no resourceVersion (Flux's test for "created").
            Ok(dry_run) if absent && dry_run.metadata.resource_version.is_some() => {
                return Ok(None);
            }
            Ok(dry_run) => to_value(dry_run),
            Err(kube::Error::Api(status)) => {
                if status.code == 404 && namespace_comes_later && live.is_none() {
                    return Ok(Some(Plan::Defer));
                }
                if is_immutable(status.code, &status.message) {
                    // Only an existing object has immutable fields.
                    if absent {
                        return Ok(None);
                    }
                    if live.is_some() && (opts.force || flagged(FORCE_ANNOTATION, "enabled")) {
                        return Ok(Some(Plan::Write {
                            create: false,
                            cleanup: None,
                            recreate: true,
                            live,
                            dry_run: None,
                        }));
                    }
                    return Err(ApplyError::Immutable {
                        id: Box::new(d.id.clone()),
                        message: status.message,
                    });
                }
                return Err(ApplyError::DryRun {
                    id: Box::new(d.id.clone()),
                    reason: if status.reason.is_empty() {
                        status.code.to_string()
                    } else {
                        status.reason
                    },
                    message: status.message,
                });
            }
            Err(err) => return Err(ApplyError::kube(&d.id, err)),
        };

        let merge = flagged(SSA_ANNOTATION, "merge");
        let Some(live) = live else {
            return Ok(Some(Plan::Write {
                create: true,
                cleanup: None,
                recreate: false,
                live: None,
                dry_run: Some(dry_run),
            }));
        };
        let cleanup = if merge {
            None
        } else {
            meta::cleanup_patch(&live, &self.field_manager)
        };
        if cleanup.is_none() && !meta::has_drifted(&live, &dry_run) {
            self.remember(d, &live);
            return Ok(Some(Plan::Unchanged));
        }
        Ok(Some(Plan::Write {
            create: false,
            cleanup,
            recreate: false,
            live: Some(live),
            dry_run: Some(dry_run),
        }))
    }

    async fn write(
        &self,
        d: &Desired,
        plan: Plan,
        opts: &ApplyOptions,
    ) -> Result<Action, ApplyError> {
        let (create, cleanup, recreate) = match plan {
            Plan::Skip => return Ok(Action::Skipped),
            Plan::Unchanged => return Ok(Action::Unchanged),
            // Deferred objects are evaluated before their stage; never reached, but an error
            // beats a panic in a controller.
            Plan::Defer => {
                return Err(ApplyError::InvalidObject {
                    what: d.id.display(),
                    reason: "could not be dry-run before its stage".into(),
                });
            }
            Plan::Write {
                create,
                cleanup,
                recreate,
                ..
            } => (create, cleanup, recreate),
        };
        let api = self.api(d);
        if recreate {
            warn!(object = %d.id.display(), "immutable field changed: recreating");
            self.delete_and_wait(&api, d, opts).await?;
        }
        if let Some(patch) = cleanup {
            let params = PatchParams {
                field_manager: Some(self.field_manager.clone()),
                ..PatchParams::default()
            };
            api.patch(&d.id.name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| ApplyError::Apply {
                    id: Box::new(d.id.clone()),
                    message: format!("metadata.managedFields cleanup failed: {}", message_of(e)),
                })?;
        }
        let params = PatchParams::apply(&self.field_manager).force();
        let applied = api
            .patch(&d.id.name, &params, &Patch::Apply(&d.object))
            .await
            .map_err(|e| ApplyError::Apply {
                id: Box::new(d.id.clone()),
                message: message_of(e),
            })?;
        self.remember(d, &to_value(applied));
        Ok(if create || recreate {
            Action::Created
        } else {
            Action::Configured
        })
    }

    async fn delete_and_wait(
        &self,
        api: &Api<DynamicObject>,
        d: &Desired,
        opts: &ApplyOptions,
    ) -> Result<(), ApplyError> {
        match api.delete(&d.id.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(ApplyError::Delete {
                    id: Box::new(d.id.clone()),
                    message: message_of(e),
                });
            }
        }
        let deadline = tokio::time::Instant::now() + opts.wait_timeout;
        loop {
            match api.get_opt(&d.id.name).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(e) => return Err(ApplyError::kube(&d.id, e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApplyError::Wait {
                    message: format!(
                        "{} immutable field detected, failed to wait for object to be deleted",
                        d.id.display()
                    ),
                });
            }
            tokio::time::sleep(opts.wait_interval).await;
        }
    }

    /// Deletes one stale object if it is still ours (with `dry_run`, only says it would);
    /// `None` when it no longer exists.
    async fn delete_owned(
        &self,
        entry: &InventoryEntry,
        owner: &Owner,
        dry_run: bool,
    ) -> Result<Option<Action>, ApplyError> {
        let Some((api, live)) = self.get_entry_with_api(entry).await? else {
            return Ok(None);
        };
        if let Some(why) = meta::kept_from_prune(&live, &owner.name, &owner.namespace) {
            debug!(object = %entry.id.display(), why, "not pruned");
            return Ok(Some(Action::Skipped));
        }
        if dry_run || live.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Some(Action::Deleted));
        }
        match api
            .delete(&entry.id.name, &DeleteParams::background())
            .await
        {
            Ok(_) => {
                self.applied_lock().remove(&entry.id);
                if let Some(cache) = &self.cache {
                    cache.forget_written(&entry.id);
                }
                info!(object = %entry.id.display(), "deleted");
                Ok(Some(Action::Deleted))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(ApplyError::Delete {
                id: Box::new(entry.id.clone()),
                message: message_of(e),
            }),
        }
    }

    async fn get_entry(&self, entry: &InventoryEntry) -> Result<Option<Value>, ApplyError> {
        Ok(self.get_entry_with_api(entry).await?.map(|(_, live)| live))
    }

    async fn get_entry_with_api(
        &self,
        entry: &InventoryEntry,
    ) -> Result<Option<(Api<DynamicObject>, Value)>, ApplyError> {
        let id = &entry.id;
        let resolved = self
            .resolver
            .resolve(&self.client, &id.group, &entry.version, &id.kind)
            .await
            .map_err(|e| ApplyError::kube(id, e))?;
        // A kind no longer served (its CRD is gone) has no objects left.
        let Some(resolved) = resolved else {
            return Ok(None);
        };
        let api = api_for(&self.client, &resolved, &id.namespace);
        match api.get_opt(&id.name).await {
            Ok(Some(live)) => Ok(Some((api, to_value(live)))),
            Ok(None) => Ok(None),
            Err(e) => Err(ApplyError::kube(id, e)),
        }
    }

    fn api(&self, d: &Desired) -> Api<DynamicObject> {
        let resolved = d.resolved.as_ref().expect("resolved before use");
        api_for(&self.client, resolved, &d.id.namespace)
    }
}

fn object_diff((d, plan): (Desired, Plan)) -> ObjectDiff {
    let (action, live, dry_run) = match plan {
        Plan::Skip => (Action::Skipped, None, None),
        Plan::Unchanged => (Action::Unchanged, None, None),
        Plan::Defer => (Action::Created, None, Some(d.object)),
        Plan::Write {
            create: true,
            dry_run,
            ..
        } => (Action::Created, None, Some(dry_run.unwrap_or(d.object))),
        Plan::Write {
            live: Some(live),
            dry_run: Some(dry_run),
            ..
        } if !meta::has_drifted(&live, &dry_run) => (Action::Unchanged, None, None),
        Plan::Write { live, dry_run, .. } => {
            (Action::Configured, live, Some(dry_run.unwrap_or(d.object)))
        }
    };
    ObjectDiff {
        id: d.id,
        version: d.version,
        action,
        live,
        dry_run,
    }
}

fn api_for(client: &Client, resolved: &Resolved, namespace: &str) -> Api<DynamicObject> {
    if resolved.namespaced {
        Api::namespaced_with(client.clone(), namespace, &resolved.resource)
    } else {
        Api::all_with(client.clone(), &resolved.resource)
    }
}

fn to_value(object: DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// The API server's message for an error, or the error itself.
fn message_of(err: kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    }
}

/// Immutable-field rejections, as the API server words them for Jobs, Deployments' selectors,
/// Services' cluster IPs, StatefulSets, PVCs, ...
fn is_immutable(code: u16, message: &str) -> bool {
    code == 422
        && (message.contains("field is immutable")
            || message.contains("is immutable")
            || message.contains("may not change once set")
            || message.contains("updates to statefulset spec for fields other than"))
}

/// Whether the manifest itself says never to apply the object.
fn skipped_in_git(object: &Value) -> bool {
    meta::has_flag(object, RECONCILE_ANNOTATION, "disabled")
        || meta::has_flag(object, SSA_ANNOTATION, "ignore")
}

fn unknown_kind(d: &Desired) -> ApplyError {
    ApplyError::UnknownKind {
        id: Box::new(d.id.clone()),
        api_version: d.api_version.clone(),
    }
}

/// Checks the object's identity, sets the owner labels and removes server-owned metadata.
fn prepare(mut object: Value, owner: &Owner) -> Result<Desired, ApplyError> {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let api_version = text("/apiVersion");
    let kind = text("/kind");
    let name = text("/metadata/name");
    let namespace = text("/metadata/namespace");
    if api_version.is_empty() || kind.is_empty() || name.is_empty() {
        let what = format!(
            "{}/{}",
            if kind.is_empty() { "<no kind>" } else { &kind },
            if name.is_empty() { "<no name>" } else { &name }
        );
        return Err(ApplyError::InvalidObject {
            what,
            reason: "apiVersion, kind and metadata.name are required".into(),
        });
    }
    let version = api_version
        .rsplit_once('/')
        .map_or(api_version.as_str(), |(_, v)| v)
        .to_string();
    let id = ObjectId::from_api_version(&api_version, &kind, &namespace, &name);
    meta::sanitize_desired(&mut object);
    meta::set_owner_labels(&mut object, &owner.name, &owner.namespace);
    Ok(Desired {
        id,
        api_version,
        version,
        object,
        resolved: None,
    })
}

/// Cluster-scoped objects lose a stray namespace (as kubectl does); namespaced ones need one.
fn scope_object(d: &mut Desired, namespaced: bool) -> Result<(), ApplyError> {
    if namespaced && d.id.namespace.is_empty() {
        return Err(ApplyError::InvalidObject {
            what: d.id.display(),
            reason: "namespace not specified (set it in the manifest or with targetNamespace)"
                .into(),
        });
    }
    if !namespaced && !d.id.namespace.is_empty() {
        d.id.namespace.clear();
        if let Some(metadata) = d.object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("namespace");
        }
    }
    Ok(())
}

fn reject_duplicates(desired: &[Desired]) -> Result<(), ApplyError> {
    let mut seen = BTreeSet::new();
    for d in desired {
        if !seen.insert(&d.id) {
            return Err(ApplyError::InvalidObject {
                what: d.id.display(),
                reason: "the object appears more than once in the revision".into(),
            });
        }
    }
    Ok(())
}

/// `(group, kind)` a CustomResourceDefinition defines.
fn crd_group_kind(object: &Value) -> Option<(String, String)> {
    let api_version = object.get("apiVersion")?.as_str()?;
    if object.get("kind")?.as_str()? != "CustomResourceDefinition"
        || !api_version.starts_with("apiextensions.k8s.io/")
    {
        return None;
    }
    let group = object.pointer("/spec/group")?.as_str()?;
    let kind = object.pointer("/spec/names/kind")?.as_str()?;
    Some((group.to_string(), kind.to_string()))
}

/// The inventory stored in a Kustomization's status, parsed.
pub fn inventory_from_status(
    status: &gantry_api::kustomize::v1::ResourceInventory,
) -> Result<Inventory, gantry_core::kustomize::inventory::ParseIdError> {
    Inventory::parse(status.entries.iter().map(|e| (e.id.as_str(), e.v.as_str())))
}

/// An inventory in the shape of a Kustomization's `status.inventory`.
pub fn inventory_to_status(inventory: &Inventory) -> gantry_api::kustomize::v1::ResourceInventory {
    gantry_api::kustomize::v1::ResourceInventory {
        entries: inventory
            .to_pairs()
            .into_iter()
            .map(|(id, v)| gantry_api::kustomize::v1::ResourceRef { id, v })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_labels_and_identifies() {
        let owner = Owner::new("apps", "flux-system");
        let d = prepare(
            json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": { "name": "web", "namespace": "prod", "resourceVersion": "5" } }),
            &owner,
        )
        .unwrap();
        assert_eq!(d.id, ObjectId::new("prod", "web", "apps", "Deployment"));
        assert_eq!(d.version, "v1");
        assert!(meta::is_owned_by(&d.object, "apps", "flux-system"));
        assert!(d.object.pointer("/metadata/resourceVersion").is_none());

        let err = prepare(
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": {} }),
            &owner,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("metadata.name are required"),
            "{err}"
        );
    }

    #[test]
    fn plans_become_diffs() {
        let owner = Owner::new("apps", "flux-system");
        let desired = || {
            prepare(
                json!({ "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": { "name": "a", "namespace": "ns" }, "data": { "k": "v" } }),
                &owner,
            )
            .unwrap()
        };
        let live = json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "a", "namespace": "ns", "resourceVersion": "1" },
            "data": { "k": "old" } });
        let mut dry = live.clone();
        dry["data"]["k"] = json!("v");
        dry["metadata"]["resourceVersion"] = json!("2");
        let write = |live: Option<Value>, dry_run: Option<Value>| Plan::Write {
            create: live.is_none(),
            cleanup: None,
            recreate: false,
            live,
            dry_run,
        };

        let configured = object_diff((desired(), write(Some(live.clone()), Some(dry.clone()))));
        assert_eq!(configured.action, Action::Configured);
        assert_eq!(configured.live.as_ref(), Some(&live));
        assert_eq!(configured.dry_run.as_ref(), Some(&dry));

        // Only a managedFields cleanup pending: same content, no change to show.
        let cleanup_only = object_diff((desired(), write(Some(live.clone()), Some(live.clone()))));
        assert_eq!(cleanup_only.action, Action::Unchanged);

        let created = object_diff((desired(), write(None, Some(dry.clone()))));
        assert_eq!(
            (created.action, created.dry_run),
            (Action::Created, Some(dry))
        );

        let deferred = object_diff((desired(), Plan::Defer));
        assert_eq!(deferred.action, Action::Created);
        assert_eq!(deferred.dry_run.unwrap()["data"]["k"], "v");

        assert_eq!(object_diff((desired(), Plan::Skip)).action, Action::Skipped);
        assert_eq!(
            object_diff((desired(), Plan::Unchanged)).action,
            Action::Unchanged
        );
    }

    #[test]
    fn immutable_messages_are_recognised() {
        assert!(is_immutable(
            422,
            "Job.batch \"migrate\" is invalid: spec.template: Invalid value: ...: field is immutable"
        ));
        assert!(is_immutable(
            422,
            "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.9\"}: may not change once set"
        ));
        assert!(!is_immutable(
            422,
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535"
        ));
        assert!(!is_immutable(409, "field is immutable"));
    }

    #[test]
    fn change_set_lines_and_inventory() {
        let mut set = ChangeSet {
            entries: vec![
                ChangeSetEntry {
                    id: ObjectId::new("apps", "web", "apps", "Deployment"),
                    version: "v1".into(),
                    action: Action::Configured,
                },
                ChangeSetEntry {
                    id: ObjectId::new("apps", "sa", "", "ServiceAccount"),
                    version: "v1".into(),
                    action: Action::Unchanged,
                },
            ],
            unwaited: Vec::new(),
        };
        assert_eq!(set.summary(), "Deployment/apps/web configured");
        assert_eq!(set.health_targets().len(), 2);
        set.unwaited
            .push(ObjectId::new("apps", "web", "apps", "Deployment"));
        assert_eq!(set.health_targets().len(), 1);
        let inventory = set.to_inventory();
        assert_eq!(
            inventory
                .to_pairs()
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            ["apps_sa__ServiceAccount", "apps_web_apps_Deployment"]
        );
    }

    #[test]
    fn crds_define_group_kinds() {
        let crd = json!({ "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": { "name": "widgets.example.com" },
            "spec": { "group": "example.com", "names": { "kind": "Widget" } } });
        assert_eq!(
            crd_group_kind(&crd),
            Some(("example.com".to_string(), "Widget".to_string()))
        );
        assert_eq!(crd_group_kind(&json!({ "kind": "ConfigMap" })), None);
    }
}

//! The steps of a Kustomization run that talk to the cluster: source, dependencies, build,
//! apply, prune, health; and the deletion of what it applied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_api::kustomize::v1::{
    ARTIFACT_FAILED_REASON, BUILD_FAILED_REASON, DeletionPolicy, HEALTH_CHECK_FAILED_REASON,
    Kustomization, KustomizationStatus, PRUNE_FAILED_REASON, RECONCILIATION_FAILED_REASON,
    RECONCILIATION_SUCCEEDED_REASON, SourceKind, SubstituteKind,
};
use gantry_api::meta::{DEPENDENCY_NOT_READY_REASON, HEALTHY_CONDITION, KUSTOMIZE_FIELD_MANAGER};
use gantry_api::source::v1::{Artifact, GitRepository, OCIRepository};
use gantry_core::kustomize::inventory::{Inventory, InventoryEntry};
use gantry_runtime::conditions::{self, Status};
use gantry_runtime::controller::Cx;
use gantry_runtime::events::Severity;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::decide::{self, Failure};
use super::sources::{FIRST_ARTIFACT_PATIENCE, Seen};
use super::{Error, Kustomizations};
use crate::apply::{self, Applier, ApplyOptions, Owner};
use crate::build::{self, SourceData, SubstituteSource};
use crate::decrypt::{self, DecryptError, Keys};
use crate::health::WaitOptions;

/// How long a reconciliation waits for this process to store an artifact its source names
/// (just after a start or a leader handover, the source's status outlives the store).
const ARTIFACT_PATIENCE: Duration = Duration::from_secs(30);

/// How long a run of a new revision may take before it writes `Reconciling` (Flux's tools
/// then see it in progress); quicker runs write their status once, at the end.
const PROGRESS_DELAY: Duration = Duration::from_secs(2);

impl Kustomizations {
    /// The reconciliation proper; returns the applied revision. Writes progress into `status`.
    pub(super) async fn run(
        &self,
        ks: &Kustomization,
        cx: &Cx<Kustomization>,
        status: &mut KustomizationStatus,
        progress_written: &mut bool,
    ) -> Result<String, Failure> {
        let namespace = ks.namespace().unwrap_or_default();
        let name = ks.name_any();
        // Read once: the dependency check needs the source's revision too.
        let source = self.source_artifact(ks, cx.client()).await;
        let source_revision = source.as_ref().ok().map(|(a, _)| a.revision.as_str());
        self.check_dependencies(ks, cx.client(), source_revision)
            .await?;
        let (artifact, source_id) = source?;
        let revision = artifact.revision.clone();
        status.last_attempted_revision = Some(revision.clone());
        let timeout = ks.timeout().unwrap_or(Duration::from_secs(60));

        // A new revision or spec: say so (`Reconciling`, `Ready=Unknown`) if building, applying
        // and waiting take longer than PROGRESS_DELAY, so `Ready` never vouches for the old
        // revision meanwhile while a quick run writes its status once. Drift-correction runs
        // of an applied revision write nothing here.
        let mut progress = None;
        if !decide::already_applied(ks, &revision) {
            let message = decide::progress_message(&revision, timeout);
            conditions::progressing(&mut status.conditions, ks.metadata.generation, &message);
            progress = Some(status.clone());
        }
        let work = self.apply_revision(ks, cx, status, artifact, &source_id, revision, timeout);
        tokio::pin!(work);
        let delay = tokio::time::sleep(PROGRESS_DELAY);
        tokio::pin!(delay);
        loop {
            tokio::select! {
                outcome = &mut work => return outcome,
                () = &mut delay, if progress.is_some() => {
                    let Some(progress) = progress.take() else { continue };
                    match cx.write_status(ks, &progress).await {
                        Ok(()) => *progress_written = true,
                        // Progress is informative; the final status write reports real problems.
                        Err(err) => {
                            tracing::debug!(kustomization = %name, %namespace, "writing progress: {err}");
                        }
                    }
                }
            }
        }
    }

    /// Build, apply, prune and health of `revision`.
    #[allow(clippy::too_many_arguments)]
    async fn apply_revision(
        &self,
        ks: &Kustomization,
        cx: &Cx<Kustomization>,
        status: &mut KustomizationStatus,
        artifact: Artifact,
        source_id: &str,
        revision: String,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let namespace = ks.namespace().unwrap_or_default();
        let name = ks.name_any();
        let built = self
            .build(ks, cx.client(), artifact, source_id, timeout)
            .await?;
        let applier = self
            .applier_for(ks, cx)
            .map_err(|m| Failure::new(RECONCILIATION_FAILED_REASON, m))?;
        let owner = Owner::new(&name, &namespace);
        let mut options = ApplyOptions::new(owner.clone());
        options.force = ks.spec.force;
        options.wait_timeout = timeout;
        let changes = applier
            .apply(built, &options)
            .await
            .map_err(|e| Failure::new(RECONCILIATION_FAILED_REASON, e.to_string()))?;
        let current = changes.to_inventory();
        let old = status
            .inventory
            .as_ref()
            .map(apply::inventory_from_status)
            .transpose()
            .unwrap_or_default()
            .unwrap_or_default();
        let mut summary = changes.summary();
        if ks.spec.prune {
            let pruned = applier
                .prune(&old, &current, &owner)
                .await
                .map_err(|e| Failure::new(PRUNE_FAILED_REASON, e.to_string()))?;
            summary = [summary, pruned.summary()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
        }
        status.inventory = Some(apply::inventory_to_status(&current));

        let targets = if ks.spec.wait {
            changes.health_targets()
        } else {
            decide::health_check_targets(ks)
        };
        if !targets.is_empty() {
            let mut wait = WaitOptions::new(timeout);
            wait.interval = self.settings.health_interval;
            let waited = Instant::now();
            if let Err(err) = applier.wait(&targets, &wait).await {
                let mut failure = Failure::new(HEALTH_CHECK_FAILED_REASON, err.to_string());
                failure.healthy = Some(false);
                return Err(failure);
            }
            // A drift-correction run of an applied revision that was healthy keeps the message
            // of the run that applied it (a new duration alone is no news worth a write).
            let still_healthy = decide::already_applied(ks, &revision)
                && conditions::is_true(&status.conditions, HEALTHY_CONDITION);
            if !still_healthy {
                conditions::set(
                    &mut status.conditions,
                    HEALTHY_CONDITION,
                    Status::True,
                    "Succeeded",
                    &format!("Health check passed in {:.1?}", waited.elapsed()),
                    ks.metadata.generation,
                );
            }
        }

        if !summary.is_empty() {
            let reason = RECONCILIATION_SUCCEEDED_REASON;
            cx.event(ks, Severity::Info, reason, &summary, Some(&revision))
                .await;
        }
        Ok(revision)
    }

    /// The manifests of the revision: its artifact (waiting for this process's source controller
    /// to store it, if need be), built at `spec.path` with the spec's transforms and substitutions.
    async fn build(
        &self,
        ks: &Kustomization,
        client: &Client,
        artifact: Artifact,
        source_id: &str,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, Failure> {
        let store = self.settings.artifacts.clone();
        let spec = ks.spec.clone();
        let vars = substitute_from(ks, client).await?;
        let keys = decryption_keys(ks, client).await?;
        let mut kustomize = self.settings.kustomize.clone();
        kustomize.timeout = timeout;
        let path = ks.spec.path.clone();
        // The source controller's store wakes this at once (no polling).
        store
            .wait_for(&artifact, timeout.min(ARTIFACT_PATIENCE))
            .await;
        let source_id = source_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let dir = store.open(&artifact).map_err(|e| {
                Failure::new(
                    ARTIFACT_FAILED_REASON,
                    format!("artifact of '{source_id}': {e}"),
                )
            })?;
            let root = build::resolve_path(dir.path(), path.as_deref());
            if !root.is_dir() {
                return Err(Failure::new(
                    ARTIFACT_FAILED_REASON,
                    format!(
                        "kustomization path not found: {} is not a directory in revision {}",
                        path.as_deref().unwrap_or("./"),
                        artifact.revision
                    ),
                ));
            }
            // Name files as they are in the repository, not in the scratch directory.
            let scratch = format!("{}/", dir.path().display());
            let decrypt_failure = |e: decrypt::DecryptError| {
                let failure =
                    Failure::new(BUILD_FAILED_REASON, e.to_string().replace(&scratch, ""));
                if e.is_terminal() {
                    failure.terminal()
                } else {
                    failure
                }
            };
            // Decrypted files stay in this private copy, removed with it.
            if let Some(keys) = &keys {
                decrypt::decrypt_sources(dir.path(), &root, keys).map_err(decrypt_failure)?;
            }
            let mut objects = build::build(&root, &spec, &vars, &kustomize, true).map_err(|e| {
                Failure::new(BUILD_FAILED_REASON, e.to_string().replace(&scratch, ""))
            })?;
            if let Some(keys) = &keys {
                decrypt::decrypt_objects(&mut objects, keys).map_err(decrypt_failure)?;
            }
            Ok(objects)
        })
        .await
        .map_err(|e| Failure::new(BUILD_FAILED_REASON, format!("build task failed: {e}")))?
    }

    /// Every dependency must be ready ([`decide::dependency_blocks`]), read from the harness's
    /// cache; a cycle can never become ready: it is a terminal failure.
    async fn check_dependencies(
        &self,
        ks: &Kustomization,
        client: &Client,
        source_revision: Option<&str>,
    ) -> Result<(), Failure> {
        if ks.spec.depends_on.is_empty() {
            return Ok(());
        }
        let cached = |ns: &str, name: &str| self.cache.get(&ObjectRef::new(name).within(ns));
        if let Some(cycle) = decide::dependency_cycle(ks, cached) {
            return Err(Failure::new(
                DEPENDENCY_NOT_READY_REASON,
                format!("dependency cycle detected: {}", cycle.join(" -> ")),
            )
            .terminal());
        }
        let namespace = ks.namespace().unwrap_or_default();
        for dep in &ks.spec.depends_on {
            let dep_ns = dep.namespace.as_deref().unwrap_or(&namespace);
            let found = cached(dep_ns, &dep.name);
            if decide::dependency_blocks(ks, found.as_deref(), source_revision).is_none() {
                continue;
            }
            // A dependency wakes us right after its status write, which the cache may not have
            // seen yet: ask the API server before waiting for the retry interval.
            let live = Api::<Kustomization>::namespaced(client.clone(), dep_ns)
                .get_opt(&dep.name)
                .await
                .map_err(|err| {
                    Failure::dependency(dep_ns, &dep.name, &format!("could not be read: {err}"))
                })?;
            if let Some(why) = decide::dependency_blocks(ks, live.as_ref(), source_revision) {
                return Err(Failure::dependency(dep_ns, &dep.name, why));
            }
        }
        Ok(())
    }

    /// `spec.serviceAccountName`, else the default account: apply as that account of the
    /// Kustomization's namespace (impersonation), as Flux does for tenants.
    fn applier_for(&self, ks: &Kustomization, cx: &Cx<Kustomization>) -> Result<Applier, String> {
        let applier = self.applier.get_or_init(|| {
            Applier::new(cx.client().clone(), KUSTOMIZE_FIELD_MANAGER).with_watch_cache()
        });
        let account = ks
            .spec
            .service_account_name
            .as_ref()
            .filter(|a| !a.is_empty())
            .or(self.settings.default_service_account.as_ref());
        let Some(account) = account else {
            return Ok(applier.clone());
        };
        let Some(config) = &self.settings.config else {
            return Err(
                "spec.serviceAccountName needs the controller's client configuration".into(),
            );
        };
        let mut config = config.clone();
        config.auth_info.impersonate = Some(format!(
            "system:serviceaccount:{}:{account}",
            ks.namespace().unwrap_or_default()
        ));
        let client =
            Client::try_from(config).map_err(|e| format!("impersonating {account}: {e}"))?;
        Ok(applier.with_client(client))
    }

    /// Deletes what the Kustomization applied, as its `deletionPolicy` says (nothing while it is
    /// suspended), waiting for termination under `WaitForTermination`.
    pub(super) async fn delete_applied(
        &self,
        ks: &Kustomization,
        cx: &Cx<Kustomization>,
    ) -> Result<(), Error> {
        if ks.spec.suspend || !ks.deletes_on_removal() {
            return Ok(());
        }
        let inventory: Inventory = ks
            .status
            .as_ref()
            .and_then(|s| s.inventory.as_ref())
            .map(apply::inventory_from_status)
            .transpose()
            .map_err(|e| Error::Invalid(format!("status.inventory: {e}")))?
            .unwrap_or_default();
        if inventory.is_empty() {
            return Ok(());
        }
        let owner = Owner::new(ks.name_any(), ks.namespace().unwrap_or_default());
        let applier = self.applier_for(ks, cx).map_err(Error::Invalid)?;
        let deleted = applier
            .delete_all(&inventory, &owner)
            .await
            .map_err(Error::Cleanup)?;
        if ks.deletion_policy() == DeletionPolicy::WaitForTermination {
            let entries: Vec<InventoryEntry> = inventory.deletion_order();
            let timeout = ks.timeout().unwrap_or(Duration::from_secs(60));
            applier
                .wait_for_termination(&entries, timeout, self.settings.health_interval)
                .await
                .map_err(Error::Cleanup)?;
        }
        let summary = deleted.summary();
        if !summary.is_empty() {
            cx.event(ks, Severity::Info, "Pruned", &summary, None).await;
        }
        Ok(())
    }
}

impl Kustomizations {
    /// The artifact of the Kustomization's source, and the source's id for messages: from the
    /// source watch's store when it has one (see [`super::sources`]), else read from the server.
    async fn source_artifact(
        &self,
        ks: &Kustomization,
        client: &Client,
    ) -> Result<(Artifact, String), Failure> {
        let source = &ks.spec.source_ref;
        let source_namespace = decide::source_namespace(ks);
        let kind = match source.kind {
            SourceKind::GitRepository => "GitRepository",
            SourceKind::OciRepository => "OCIRepository",
            _ => {
                return Err(Failure::new(
                ARTIFACT_FAILED_REASON,
                format!(
                    "source kind {:?} is not supported by Gantry yet (only GitRepository and OCIRepository)",
                    source.kind
                ),
            )
            .terminal());
            }
        };
        let source_id = format!("{kind}/{source_namespace}/{}", source.name);
        let patience = FIRST_ARTIFACT_PATIENCE;
        let seen = match source.kind {
            SourceKind::OciRepository => {
                self.sources
                    .wait_for_artifact(patience, |s| s.oci(&source_namespace, &source.name))
                    .await
            }
            _ => {
                self.sources
                    .wait_for_artifact(patience, |s| s.git(&source_namespace, &source.name))
                    .await
            }
        };
        if let Seen::Artifact(artifact) = seen {
            return Ok((artifact, source_id));
        }
        let found = match source.kind {
            SourceKind::OciRepository => {
                Api::<OCIRepository>::namespaced(client.clone(), &source_namespace)
                    .get_opt(&source.name)
                    .await
                    .map(|r| r.map(|r| r.status.and_then(|s| s.artifact)))
            }
            _ => Api::<GitRepository>::namespaced(client.clone(), &source_namespace)
                .get_opt(&source.name)
                .await
                .map(|r| r.map(|r| r.status.and_then(|s| s.artifact))),
        };
        let artifact = match found {
            Ok(Some(artifact)) => artifact,
            Ok(None) => {
                let message = format!("Source '{source_id}' not found");
                return Err(Failure::new(ARTIFACT_FAILED_REASON, message).waiting(None));
            }
            Err(err) => {
                let message = format!("reading {source_id}: {err}");
                return Err(Failure::new(ARTIFACT_FAILED_REASON, message));
            }
        };
        match artifact {
            Some(artifact) => Ok((artifact, source_id)),
            None => Err(Failure::new(
                ARTIFACT_FAILED_REASON,
                format!("Source '{source_id}' is not ready, artifact not found"),
            )
            .waiting(None)),
        }
    }
}

/// `postBuild.substituteFrom`: ConfigMaps and Secrets of the Kustomization's namespace, in order.
async fn substitute_from(
    ks: &Kustomization,
    client: &Client,
) -> Result<BTreeMap<String, String>, Failure> {
    let Some(post_build) = &ks.spec.post_build else {
        return Ok(BTreeMap::new());
    };
    let namespace = ks.namespace().unwrap_or_default();
    let mut sources = Vec::new();
    for reference in &post_build.substitute_from {
        let data = match reference.kind {
            SubstituteKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                .get_opt(&reference.name)
                .await
                .map(|cm| cm.map(|cm| SourceData::Plain(cm.data.unwrap_or_default()))),
            SubstituteKind::Secret => Api::<Secret>::namespaced(client.clone(), &namespace)
                .get_opt(&reference.name)
                .await
                .map(|s| {
                    let data = s.map(|s| s.data.unwrap_or_default().into_iter());
                    data.map(|d| SourceData::Bytes(d.map(|(k, v)| (k, v.0)).collect()))
                }),
        }
        .map_err(|e| {
            let message = format!(
                "substituteFrom {:?} {}: {e}",
                reference.kind, reference.name
            );
            Failure::new(BUILD_FAILED_REASON, message)
        })?;
        sources.push(SubstituteSource {
            kind: reference.kind,
            name: reference.name.clone(),
            optional: reference.optional,
            data,
        });
    }
    build::merge_substitute_from(&sources)
        .map_err(|e| Failure::new(BUILD_FAILED_REASON, e.to_string()))
}

/// The keys of `spec.decryption.secretRef` (a Secret of the Kustomization's namespace), or
/// `None` without `spec.decryption`. A missing Secret is retried (it may be created later); a key
/// type Gantry cannot use stalls the Kustomization.
async fn decryption_keys(ks: &Kustomization, client: &Client) -> Result<Option<Keys>, Failure> {
    let Some(decryption) = &ks.spec.decryption else {
        return Ok(None);
    };
    let Some(reference) = &decryption.secret_ref else {
        return Ok(Some(Keys::default()));
    };
    let namespace = ks.namespace().unwrap_or_default();
    let id = format!("{namespace}/{}", reference.name);
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|e| {
            let message = format!("cannot get sops decryption Secret '{id}': {e}");
            Failure::new(BUILD_FAILED_REASON, message)
        })?;
    let Some(secret) = secret else {
        let err = DecryptError::SecretNotFound { secret: id };
        return Err(Failure::new(BUILD_FAILED_REASON, err.to_string()));
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Keys::from_secret(&id, &data).map(Some).map_err(|e| {
        let failure = Failure::new(BUILD_FAILED_REASON, e.to_string());
        if e.is_terminal() {
            failure.terminal()
        } else {
            failure
        }
    })
}

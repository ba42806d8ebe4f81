//! `gantry diff kustomization`: what applying a local directory would change in the cluster,
//! like `flux diff kustomization`.
//!
//! The manifests are built as `gantry build kustomization` builds them (same flags), with the
//! spec of `--kustomization-file`, else of the Kustomization in the cluster, else an empty one;
//! `postBuild.substituteFrom` is read from the cluster. They then go through the apply engine's
//! server-side dry-run as field manager `kustomize-controller`, so defaults, admission and other
//! managers' fields show exactly as the controller would see them; nothing is written. Objects
//! of the Kustomization's `status.inventory` missing from the build (and still owned, not
//! `prune: disabled`) are listed as deleted when `spec.prune` is on.
//!
//! Exit code (flux's convention): 0 no differences, 1 differences, 2 error.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gantry_api::kustomize::v1::{Kustomization, SubstituteKind};
use gantry_core::kustomize::inventory::Inventory;
use gantry_kustomize::apply::{
    self, Action, Applier, ApplyOptions, FIELD_MANAGER, LAST_APPLIED_ANNOTATION, Owner,
};
use gantry_kustomize::build::{self as kbuild, SourceData, SubstituteSource};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use super::build::{BuildInput, build_objects, file_spec};

/// What a masked Secret value is shown as.
const MASK: &str = "***";

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(subcommand)]
    pub what: DiffWhat,
}

#[derive(Debug, Subcommand)]
pub enum DiffWhat {
    /// Show what applying a Kustomization's manifests would change in the cluster (server-side
    /// dry-run; nothing is written). Exit code: 0 no differences, 1 differences, 2 error.
    Kustomization(DiffKustomizationArgs),
}

#[derive(Debug, Args)]
pub struct DiffKustomizationArgs {
    #[command(flatten)]
    pub input: BuildInput,
}

/// Runs the command; errors are printed here because they exit 2, not 1 (1 means "differs").
pub fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let DiffWhat::Kustomization(args) = &args.what;
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(diff(&args.input)));
    match outcome {
        Ok((text, changed)) => {
            print!("{text}");
            Ok(ExitCode::from(u8::from(changed)))
        }
        Err(err) => {
            eprintln!("gantry: {err:#}");
            Ok(ExitCode::from(2))
        }
    }
}

/// The report and whether anything would change.
async fn diff(args: &BuildInput) -> anyhow::Result<(String, bool)> {
    let (file, namespace) = file_spec(args)?;
    let client = Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster config)")?;
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &namespace);
    // Without the CRD the GET is a 404 too: then there is simply no Kustomization yet.
    // (kube's `get_opt` only maps a 404 carrying a Status to `None`; the API server answers a
    // plain-text 404 for a resource type it does not serve.)
    let live = match kustomizations.get_opt(&args.name).await {
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        other => {
            other.with_context(|| format!("reading Kustomization {namespace}/{}", args.name))?
        }
    };
    let spec = file
        .or_else(|| live.as_ref().map(|ks| ks.spec.clone()))
        .unwrap_or_default();
    let vars = substitute_from(&client, &namespace, &spec).await?;
    let (force, prune) = (spec.force, spec.prune);
    let objects = build_objects(args, spec, &namespace, Some(vars))?;

    let applier = Applier::new(client, FIELD_MANAGER);
    let owner = Owner::new(&args.name, &namespace);
    let mut opts = ApplyOptions::new(owner.clone());
    opts.force = force;
    let diffs = applier.diff(objects, &opts).await?;

    let mut out = String::new();
    let mut changed = false;
    let mut current = Inventory::default();
    for d in &diffs {
        current.insert(d.id.clone(), d.version.clone());
        match d.action {
            Action::Created => {
                changed = true;
                out.push_str(&format!("► {} created\n", d.id.display()));
            }
            Action::Configured => {
                changed = true;
                out.push_str(&format!("► {} drifted\n", d.id.display()));
                out.push_str(&unified_diff(d.live.as_ref(), d.dry_run.as_ref())?);
            }
            _ => {}
        }
    }

    let inventory = live
        .as_ref()
        .and_then(|ks| ks.status.as_ref())
        .and_then(|status| status.inventory.as_ref());
    if let (true, Some(inventory)) = (prune, inventory) {
        let previous = apply::inventory_from_status(inventory)
            .context("reading the Kustomization's status.inventory")?;
        let pruned = applier.prune_dry_run(&previous, &current, &owner).await?;
        for entry in pruned.with_action(Action::Deleted) {
            changed = true;
            out.push_str(&format!("► {} deleted\n", entry.id.display()));
        }
    }
    Ok((out, changed))
}

/// The variables of `postBuild.substituteFrom`, read from the cluster as the controller reads
/// them.
async fn substitute_from(
    client: &Client,
    namespace: &str,
    spec: &gantry_api::kustomize::v1::KustomizationSpec,
) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(post_build) = &spec.post_build else {
        return Ok(BTreeMap::new());
    };
    let mut sources = Vec::new();
    for reference in &post_build.substitute_from {
        let data = match reference.kind {
            SubstituteKind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                api.get_opt(&reference.name)
                    .await
                    .with_context(|| format!("reading ConfigMap {namespace}/{}", reference.name))?
                    .map(|cm| SourceData::Plain(cm.data.unwrap_or_default()))
            }
            SubstituteKind::Secret => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                api.get_opt(&reference.name)
                    .await
                    .with_context(|| format!("reading Secret {namespace}/{}", reference.name))?
                    .map(|secret| {
                        SourceData::Bytes(
                            secret
                                .data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect(),
                        )
                    })
            }
        };
        sources.push(SubstituteSource {
            kind: reference.kind,
            name: reference.name.clone(),
            optional: reference.optional,
            data,
        });
    }
    Ok(kbuild::merge_substitute_from(&sources)?)
}

/// The unified diff of the live object and the dry-run result, both cleaned and with Secret
/// values masked.
fn unified_diff(live: Option<&Value>, after: Option<&Value>) -> anyhow::Result<String> {
    let mut live = live.map(clean).unwrap_or(Value::Null);
    let mut after = after.map(clean).unwrap_or(Value::Null);
    if is_secret(&live) || is_secret(&after) {
        mask_secrets(&mut live, &mut after);
    }
    let (before, after) = (to_yaml(&live)?, to_yaml(&after)?);
    let diff = similar::TextDiff::from_lines(&before, &after);
    let mut text = diff
        .unified_diff()
        .context_radius(3)
        .header("live", "dry-run")
        .to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// YAML in kubectl's order: `apiVersion`, `kind`, `metadata`, then the rest (sorted).
fn to_yaml(object: &Value) -> anyhow::Result<String> {
    let Some(map) = object.as_object() else {
        return Ok(String::new());
    };
    let first = ["apiVersion", "kind", "metadata"];
    let keys = first.iter().copied().chain(
        map.keys()
            .map(String::as_str)
            .filter(|k| !first.contains(k)),
    );
    let mut out = String::new();
    for key in keys {
        if let Some(value) = map.get(key) {
            let one = json!({ key: value });
            out.push_str(&serde_saphyr::to_string(&one).context("rendering YAML")?);
        }
    }
    Ok(out)
}

/// The object without what the server owns or changes on every write, and without the
/// client-side apply annotation (which would also hold a Secret's values in clear).
fn clean(object: &Value) -> Value {
    let mut object = gantry_kustomize::apply::comparable(object);
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let empty = match metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            Some(annotations) => {
                annotations.remove(LAST_APPLIED_ANNOTATION);
                annotations.is_empty()
            }
            None => false,
        };
        if empty {
            metadata.remove("annotations");
        }
    }
    object
}

fn is_secret(object: &Value) -> bool {
    object.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && object.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// Replaces every value of `data` and `stringData` by `***`; a key whose value differs between
/// the two sides reads `*** (before)` and `*** (after)`, so a change shows without its content.
fn mask_secrets(before: &mut Value, after: &mut Value) {
    for field in ["data", "stringData"] {
        let old = before.get(field).and_then(Value::as_object).cloned();
        let new = after.get(field).and_then(Value::as_object).cloned();
        let (old, new) = (old.unwrap_or_default(), new.unwrap_or_default());
        let mask = |own: &Map<String, Value>, other: &Map<String, Value>, label: &str| {
            own.iter()
                .map(|(key, value)| {
                    let masked = match other.get(key) {
                        Some(theirs) if theirs != value => format!("{MASK} ({label})"),
                        _ => MASK.to_string(),
                    };
                    (key.clone(), json!(masked))
                })
                .collect::<Map<String, Value>>()
        };
        if let Some(map) = before.as_object_mut()
            && map.contains_key(field)
        {
            map.insert(field.into(), Value::Object(mask(&old, &new, "before")));
        }
        if let Some(map) = after.as_object_mut()
            && map.contains_key(field)
        {
            map.insert(field.into(), Value::Object(mask(&new, &old, "after")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: Value) -> Value {
        json!({ "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "s", "namespace": "ns" }, "data": data })
    }

    #[test]
    fn secret_values_are_masked_and_changes_marked() {
        let mut before = secret(json!({ "same": "c2FtZQ==", "changed": "b2xk", "gone": "eA==" }));
        let mut after = secret(json!({ "same": "c2FtZQ==", "changed": "bmV3", "added": "eQ==" }));
        after["stringData"] = json!({ "plain": "hunter2" });
        mask_secrets(&mut before, &mut after);
        assert_eq!(
            before["data"],
            json!({ "same": "***", "changed": "*** (before)", "gone": "***" })
        );
        assert_eq!(
            after["data"],
            json!({ "same": "***", "changed": "*** (after)", "added": "***" })
        );
        assert_eq!(after["stringData"], json!({ "plain": "***" }));
        assert!(before.get("stringData").is_none());
    }

    #[test]
    fn secret_diff_never_shows_values() {
        let mut live = secret(json!({ "password": "b2xkLXNlY3JldA==" }));
        live["metadata"]["annotations"] = json!({
            LAST_APPLIED_ANNOTATION: r#"{"data":{"password":"b2xkLXNlY3JldA=="}}"#
        });
        let after = secret(json!({ "password": "bmV3LXNlY3JldA==" }));
        let text = unified_diff(Some(&live), Some(&after)).unwrap();
        assert!(!text.contains("b2xk") && !text.contains("bmV3"), "{text}");
        assert!(text.contains("*** (before)"), "{text}");
        assert!(text.contains("*** (after)"), "{text}");
        assert!(!text.contains("last-applied"), "{text}");
    }

    #[test]
    fn cleaning_drops_server_fields_status_and_last_applied() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "ns", "resourceVersion": "7", "uid": "u",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{ "manager": "kustomize-controller" }],
                "annotations": { LAST_APPLIED_ANNOTATION: "{}" },
                "labels": { "app": "web" } },
            "spec": { "replicas": 2 },
            "status": { "readyReplicas": 2 }
        });
        assert_eq!(
            clean(&live),
            json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "web", "namespace": "ns", "labels": { "app": "web" } },
                "spec": { "replicas": 2 } })
        );
        let mut kept = live.clone();
        kept["metadata"]["annotations"]["keep"] = json!("me");
        assert_eq!(
            clean(&kept)["metadata"]["annotations"],
            json!({ "keep": "me" })
        );
    }

    #[test]
    fn yaml_is_in_kubectl_order() {
        let object = json!({ "spec": { "a": 1 }, "metadata": { "name": "web" },
            "kind": "Deployment", "apiVersion": "apps/v1", "data": {} });
        assert_eq!(
            to_yaml(&object).unwrap(),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\ndata: {}\nspec:\n  a: 1\n"
        );
    }

    #[test]
    fn unified_diff_shows_the_change() {
        let live = json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "resourceVersion": "1" }, "spec": { "replicas": 1 } });
        let mut after = live.clone();
        after["spec"]["replicas"] = json!(3);
        after["metadata"]["resourceVersion"] = json!("2");
        let text = unified_diff(Some(&live), Some(&after)).unwrap();
        assert!(text.starts_with("--- live\n+++ dry-run\n"), "{text}");
        assert!(text.contains("-  replicas: 1\n"), "{text}");
        assert!(text.contains("+  replicas: 3\n"), "{text}");
        assert!(!text.contains("resourceVersion"), "{text}");
    }
}

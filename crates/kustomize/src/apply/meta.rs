//! Pure helpers on object metadata: Flux's annotations, owner labels, drift comparison and the
//! cleanup of what `kubectl` left behind.

use serde_json::{Map, Value, json};

/// Owner label: the Kustomization's name.
pub const OWNER_NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
/// Owner label: the Kustomization's namespace.
pub const OWNER_NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";
/// `Override` (default), `Merge`, `IfNotPresent` or `Ignore`.
pub const SSA_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/ssa";
/// `disabled`: never prune the object.
pub const PRUNE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/prune";
/// `disabled`: never apply the object.
pub const RECONCILE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/reconcile";
/// `enabled`: recreate the object when an immutable field changes.
pub const FORCE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/force";
/// Written by client-side `kubectl apply`; stale the moment anyone else applies.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Field managers whose fields Flux takes over (prefix of the manager name, operation):
/// `kubectl apply --server-side`, client-side `kubectl apply`/`edit`/`patch`/..., the
/// `before-first-apply` manager the API server creates when an object first gets applied, and
/// `Update` entries of our own manager (written by old versions).
const TAKEOVER: &[(&str, &str)] = &[
    ("kubectl", "Apply"),
    ("kubectl", "Update"),
    ("before-first-apply", "Update"),
];

/// Whether `object` has label or annotation `key` equal to `value`, ignoring the case of the
/// value (Flux lower-cases values before comparing: `Disabled` and `disabled` both work).
pub fn has_flag(object: &Value, key: &str, value: &str) -> bool {
    ["labels", "annotations"].iter().any(|field| {
        object
            .pointer(&format!("/metadata/{field}"))
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    })
}

/// Sets the owner labels on `object`.
pub fn set_owner_labels(object: &mut Value, name: &str, namespace: &str) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(OWNER_NAME_LABEL.into(), json!(name));
        labels.insert(OWNER_NAMESPACE_LABEL.into(), json!(namespace));
    }
}

/// Why a stale object is kept instead of pruned, if it is; `None` when prune may delete it.
///
/// Flux's rule (kustomize-controller's `prune` with fluxcd/pkg `ssa.DeleteOptions`): the live
/// object must match the owner labels as a label selector (`matchLabels` with both
/// `kustomize.toolkit.fluxcd.io/name` and `/namespace`, so *both* must carry this
/// Kustomization's values; one alone is another owner's or a hand-made object), and it is
/// excluded when any label or annotation says `kustomize.toolkit.fluxcd.io/prune: disabled` or
/// `kustomize.toolkit.fluxcd.io/reconcile: disabled` (values compared case-insensitively).
pub fn kept_from_prune(live: &Value, name: &str, namespace: &str) -> Option<&'static str> {
    if !is_owned_by(live, name, namespace) {
        return Some("owner labels do not match");
    }
    if has_flag(live, PRUNE_ANNOTATION, "disabled") {
        return Some("prune disabled");
    }
    if has_flag(live, RECONCILE_ANNOTATION, "disabled") {
        return Some("reconcile disabled");
    }
    None
}

/// Whether `object` carries both owner labels pointing at `name`/`namespace`.
pub fn is_owned_by(object: &Value, name: &str, namespace: &str) -> bool {
    let label = |key: &str| {
        object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
    };
    label(OWNER_NAME_LABEL) == Some(name) && label(OWNER_NAMESPACE_LABEL) == Some(namespace)
}

/// A fingerprint of `manager`'s server-side-apply entry of the object (the main resource,
/// not a subresource) and of the object's uid; `None` when it has no such entry.
///
/// This is how drift is seen without asking the API server: every change another writer makes
/// to a field this manager applied moves that field out of the entry (an `Update` takes over
/// what it changes; a forced apply by another manager too), and a delete and recreate changes
/// the uid, so the fingerprint changes. Writes that leave the entry alone are not drift in
/// server-side apply's terms: fields nobody applied (status, an annotation a controller adds),
/// and fields shared with another manager that set the same value. The limit: a writer that
/// applies as the same field manager (`kustomize-controller`, e.g. Flux itself) with the same
/// set of fields changes only the entry's `time`, which is part of the fingerprint, so it is
/// seen too, unless it lands within the same second as Gantry's own apply.
pub fn applied_fingerprint(live: &Value, manager: &str) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let entry = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)?
        .iter()
        .find(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
                && e.get("subresource")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
        })?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    live.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .hash(&mut hasher);
    for key in ["apiVersion", "time", "fieldsV1"] {
        entry.get(key).map(Value::to_string).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// A hash of the desired object exactly as it would be sent.
pub fn desired_hash(object: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    object.to_string().hash(&mut hasher);
    hasher.finish()
}

/// Removes what must never be sent in an apply: server-owned metadata and the stale
/// client-side apply annotation.
pub fn sanitize_desired(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            metadata.remove(key);
        }
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.remove(LAST_APPLIED_ANNOTATION);
        }
    }
}

/// The object without what the API server changes on every write or owns itself, so that a
/// dry-run result and the live object compare equal exactly when applying would change nothing.
pub fn comparable(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in [
                "managedFields",
                "resourceVersion",
                "generation",
                "uid",
                "creationTimestamp",
                "selfLink",
            ] {
                metadata.remove(key);
            }
        }
    }
    object
}

/// Whether the server-side dry-run result differs from the live object.
pub fn has_drifted(live: &Value, dry_run: &Value) -> bool {
    comparable(live) != comparable(dry_run)
}

/// A merge patch that removes the client-side apply annotation and hands the fields of
/// `kubectl` and `before-first-apply` managers to `manager`; `None` when there is nothing to
/// clean. The managed fields are replaced as a whole (a merge patch replaces lists), which the
/// API server accepts as an explicit managedFields update.
pub fn cleanup_patch(live: &Value, manager: &str) -> Option<Value> {
    let mut metadata = Map::new();
    let has_last_applied = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        .is_some();
    if has_last_applied {
        metadata.insert(
            "annotations".into(),
            json!({ LAST_APPLIED_ANNOTATION: Value::Null }),
        );
    }
    let entries = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(replaced) = take_over_managed_fields(entries, manager) {
        metadata.insert("managedFields".into(), Value::Array(replaced));
    }
    if metadata.is_empty() {
        None
    } else {
        Some(json!({ "metadata": metadata }))
    }
}

/// The managed fields with every entry of a [`TAKEOVER`] manager merged into `manager`'s
/// `Apply` entry (created from the first match when there is none); `None` when no entry
/// matches. Subresource entries (status) are left alone, as Flux does.
pub fn take_over_managed_fields(entries: &[Value], manager: &str) -> Option<Vec<Value>> {
    fn field<'a>(entry: &'a Value, key: &str) -> &'a str {
        entry.get(key).and_then(Value::as_str).unwrap_or("")
    }
    let is_ours =
        |entry: &Value| field(entry, "manager") == manager && field(entry, "operation") == "Apply";
    let matches = |entry: &Value| {
        field(entry, "subresource").is_empty()
            && !is_ours(entry)
            && (TAKEOVER.iter().any(|(prefix, op)| {
                field(entry, "manager").starts_with(prefix) && field(entry, "operation") == *op
            }) || (field(entry, "manager") == manager && field(entry, "operation") == "Update"))
    };
    if !entries.iter().any(matches) {
        return None;
    }
    let mut ours: Option<Value> = entries.iter().find(|e| is_ours(e)).cloned();
    let mut kept = Vec::with_capacity(entries.len());
    for entry in entries {
        if is_ours(entry) {
            continue;
        }
        if !matches(entry) {
            kept.push(entry.clone());
            continue;
        }
        match ours.as_mut() {
            None => {
                let mut renamed = entry.clone();
                renamed["manager"] = json!(manager);
                renamed["operation"] = json!("Apply");
                ours = Some(renamed);
            }
            Some(ours) => {
                let theirs = entry.get("fieldsV1").cloned().unwrap_or(Value::Null);
                let merged = match ours.get_mut("fieldsV1") {
                    Some(mine) => {
                        merge_field_sets(mine, &theirs);
                        None
                    }
                    None => Some(theirs),
                };
                if let Some(fields) = merged {
                    ours["fieldsV1"] = fields;
                }
            }
        }
    }
    kept.extend(ours);
    Some(kept)
}

/// Union of two `fieldsV1` tries (`{"f:spec": {"f:replicas": {}}, ...}`): a deep merge.
fn merge_field_sets(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(existing) => merge_field_sets(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into @ Value::Null, from) => *into = from.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_ignore_value_case_and_read_labels_too() {
        let object = json!({ "metadata": {
            "annotations": { SSA_ANNOTATION: "ifnotpresent", PRUNE_ANNOTATION: "Disabled" },
            "labels": { RECONCILE_ANNOTATION: "DISABLED" }
        }});
        assert!(has_flag(&object, SSA_ANNOTATION, "IfNotPresent"));
        assert!(has_flag(&object, PRUNE_ANNOTATION, "disabled"));
        assert!(has_flag(&object, RECONCILE_ANNOTATION, "disabled"));
        assert!(!has_flag(&object, FORCE_ANNOTATION, "enabled"));
        assert!(!has_flag(&json!({}), FORCE_ANNOTATION, "enabled"));
    }

    #[test]
    fn owner_labels_are_set_and_recognised() {
        let mut object = json!({ "metadata": { "name": "a", "labels": { "app": "web" } } });
        set_owner_labels(&mut object, "apps", "flux-system");
        assert_eq!(object["metadata"]["labels"]["app"], "web");
        assert!(is_owned_by(&object, "apps", "flux-system"));
        assert!(!is_owned_by(&object, "apps", "other"));
        let mut bare = json!({ "metadata": { "name": "a" } });
        set_owner_labels(&mut bare, "x", "y");
        assert!(is_owned_by(&bare, "x", "y"));
    }

    #[test]
    fn prune_follows_flux_selector_and_exclusions() {
        let labelled = |labels: Value, annotations: Value| json!({ "metadata": { "name": "a", "labels": labels, "annotations": annotations } });
        let ours = json!({ OWNER_NAME_LABEL: "apps", OWNER_NAMESPACE_LABEL: "flux-system" });
        assert_eq!(
            kept_from_prune(&labelled(ours.clone(), json!({})), "apps", "flux-system"),
            None
        );
        // One owner label alone does not match Flux's selector: another owner's or hand-made.
        for partial in [
            json!({ OWNER_NAME_LABEL: "apps" }),
            json!({ OWNER_NAMESPACE_LABEL: "flux-system" }),
            json!({ OWNER_NAME_LABEL: "apps", OWNER_NAMESPACE_LABEL: "other" }),
        ] {
            assert_eq!(
                kept_from_prune(&labelled(partial, json!({})), "apps", "flux-system"),
                Some("owner labels do not match")
            );
        }
        let annotated = |key: &str, value: &str| {
            let mut annotations = serde_json::Map::new();
            annotations.insert(key.into(), json!(value));
            labelled(ours.clone(), Value::Object(annotations))
        };
        assert_eq!(
            kept_from_prune(
                &annotated(PRUNE_ANNOTATION, "Disabled"),
                "apps",
                "flux-system"
            ),
            Some("prune disabled")
        );
        assert_eq!(
            kept_from_prune(
                &annotated(RECONCILE_ANNOTATION, "disabled"),
                "apps",
                "flux-system"
            ),
            Some("reconcile disabled")
        );
        assert_eq!(
            kept_from_prune(
                &annotated(PRUNE_ANNOTATION, "enabled"),
                "apps",
                "flux-system"
            ),
            None
        );
        // Exclusions as labels count too.
        let mut label_excluded = ours.clone();
        label_excluded[RECONCILE_ANNOTATION] = json!("DISABLED");
        assert_eq!(
            kept_from_prune(&labelled(label_excluded, json!({})), "apps", "flux-system"),
            Some("reconcile disabled")
        );
    }

    #[test]
    fn fingerprint_follows_our_apply_entry_and_uid() {
        let object = |uid: &str, fields: Value, time: &str| {
            json!({ "metadata": { "name": "a", "uid": uid, "managedFields": [
                { "manager": "kube-controller-manager", "operation": "Update",
                  "subresource": "status", "fieldsV1": { "f:status": {} } },
                { "manager": "kustomize-controller", "operation": "Apply", "apiVersion": "v1",
                  "time": time, "fieldsV1": fields },
            ] } })
        };
        let fields = json!({ "f:data": { "f:a": {} } });
        let base = applied_fingerprint(&object("u1", fields.clone(), "t1"), "kustomize-controller");
        assert!(base.is_some());
        assert_eq!(
            base,
            applied_fingerprint(&object("u1", fields.clone(), "t1"), "kustomize-controller")
        );
        // A field taken over by another writer, a recreated object, a newer apply: all differ.
        let taken = json!({ "f:data": {} });
        for other in [
            object("u1", taken, "t1"),
            object("u2", fields.clone(), "t1"),
            object("u1", fields.clone(), "t2"),
        ] {
            assert_ne!(base, applied_fingerprint(&other, "kustomize-controller"));
        }
        assert_eq!(
            applied_fingerprint(&object("u1", fields, "t1"), "someone-else"),
            None
        );
        assert_eq!(
            applied_fingerprint(&json!({ "metadata": {} }), "kustomize-controller"),
            None
        );
    }

    #[test]
    fn drift_ignores_server_owned_fields() {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "a", "resourceVersion": "10", "uid": "u", "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{ "manager": "kustomize-controller" }] },
            "data": { "k": "v" }
        });
        let mut dry = live.clone();
        dry["metadata"]["managedFields"] =
            json!([{ "manager": "kustomize-controller", "time": "later" }]);
        dry["metadata"]["resourceVersion"] = json!("11");
        assert!(!has_drifted(&live, &dry));
        dry["data"]["k"] = json!("changed");
        assert!(has_drifted(&live, &dry));
    }

    #[test]
    fn sanitize_removes_server_fields_and_last_applied() {
        let mut object = json!({ "metadata": { "name": "a", "resourceVersion": "3", "uid": "x",
            "annotations": { LAST_APPLIED_ANNOTATION: "{}", "keep": "me" } } });
        sanitize_desired(&mut object);
        assert_eq!(
            object,
            json!({ "metadata": { "name": "a", "annotations": { "keep": "me" } } })
        );
    }

    #[test]
    fn kubectl_managers_are_taken_over() {
        let entries = vec![
            json!({ "manager": "kubectl-client-side-apply", "operation": "Update",
                    "fieldsV1": { "f:data": { "f:a": {} } } }),
            json!({ "manager": "kube-controller-manager", "operation": "Update",
                    "fieldsV1": { "f:status": {} } }),
            json!({ "manager": "kubectl", "operation": "Apply",
                    "fieldsV1": { "f:data": { "f:b": {} } } }),
            json!({ "manager": "kubectl-edit", "operation": "Update", "subresource": "status",
                    "fieldsV1": { "f:status": {} } }),
        ];
        let out = take_over_managed_fields(&entries, "kustomize-controller").unwrap();
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0]["manager"], "kube-controller-manager");
        assert_eq!(out[1]["subresource"], "status");
        assert_eq!(out[2]["manager"], "kustomize-controller");
        assert_eq!(out[2]["operation"], "Apply");
        assert_eq!(
            out[2]["fieldsV1"],
            json!({ "f:data": { "f:a": {}, "f:b": {} } })
        );

        let clean = vec![json!({ "manager": "kustomize-controller", "operation": "Apply" })];
        assert!(take_over_managed_fields(&clean, "kustomize-controller").is_none());
    }

    #[test]
    fn cleanup_patch_removes_last_applied() {
        let live = json!({ "metadata": { "annotations": { LAST_APPLIED_ANNOTATION: "{}" },
            "managedFields": [{ "manager": "kustomize-controller", "operation": "Apply" }] } });
        assert_eq!(
            cleanup_patch(&live, "kustomize-controller"),
            Some(json!({ "metadata": { "annotations": { LAST_APPLIED_ANNOTATION: null } } }))
        );
        assert_eq!(
            cleanup_patch(&json!({ "metadata": {} }), "kustomize-controller"),
            None
        );
    }
}

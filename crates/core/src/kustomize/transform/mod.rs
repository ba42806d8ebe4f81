//! The transforms a Flux Kustomization applies to its build: `patches`, `targetNamespace`,
//! `namePrefix`/`nameSuffix`, `commonMetadata` and `images`, on manifests as `serde_json::Value`.
//!
//! [`apply`] runs them in kustomize's transformer order, which is the order Flux gets by writing
//! them into the kustomization it builds: patches first (so targets match the names in git), then
//! namespace, prefix/suffix, metadata and images.

mod images;
mod names;
mod namespace;
mod patch;
mod selector;
mod smp;

pub use images::{ImageOverride, set_images, split_image};
pub use names::add_name_affixes;
pub use namespace::set_namespace;
pub use patch::{Patch, PatchError, PatchKind, apply_patch, apply_patches};
pub use selector::{LabelSelector, Selector, SelectorError};
pub use smp::strategic_merge;

use std::collections::BTreeMap;

use serde_json::Value;

/// Everything [`apply`] can do; `None`/empty fields are skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transforms {
    /// Patches, applied in order.
    pub patches: Vec<Patch>,
    /// `metadata.namespace` of every namespaced object.
    pub target_namespace: Option<String>,
    /// Prepended to every name (see [`add_name_affixes`] for exceptions).
    pub name_prefix: Option<String>,
    /// Appended to every name.
    pub name_suffix: Option<String>,
    /// Labels set on every object's metadata (not on selectors or templates).
    pub labels: BTreeMap<String, String>,
    /// Annotations set on every object's metadata.
    pub annotations: BTreeMap<String, String>,
    /// Image overrides.
    pub images: Vec<ImageOverride>,
}

/// Runs `transforms` over `objects` (see the module docs for the order).
pub fn apply(mut objects: Vec<Value>, transforms: &Transforms) -> Result<Vec<Value>, PatchError> {
    objects = apply_patches(objects, &transforms.patches)?;
    if let Some(ns) = &transforms.target_namespace {
        set_namespace(&mut objects, ns);
    }
    add_name_affixes(
        &mut objects,
        transforms.name_prefix.as_deref().unwrap_or(""),
        transforms.name_suffix.as_deref().unwrap_or(""),
    );
    set_metadata(&mut objects, &transforms.labels, &transforms.annotations);
    set_images(&mut objects, &transforms.images);
    Ok(objects)
}

/// Sets labels and annotations on each object's `metadata`, overriding equal keys. Selectors and
/// pod templates are left alone (unlike kustomize's `commonLabels`), as Flux's `commonMetadata` does.
pub fn set_metadata(
    objects: &mut [Value],
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) {
    for obj in objects.iter_mut() {
        for (field, values) in [("labels", labels), ("annotations", annotations)] {
            if values.is_empty() {
                continue;
            }
            let Some(map) = ensure_map(obj, &["metadata", field]) else {
                continue;
            };
            for (k, v) in values {
                map.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
}

/// The object at `path`, created as empty maps where missing (or replacing a `null`).
/// `None` when something on the way is not a map.
pub(crate) fn ensure_map<'a>(
    value: &'a mut Value,
    path: &[&str],
) -> Option<&'a mut serde_json::Map<String, Value>> {
    let mut cur = value;
    for key in path {
        let map = cur.as_object_mut()?;
        let entry = map
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
        if entry.is_null() {
            *entry = Value::Object(Default::default());
        }
        cur = entry;
    }
    cur.as_object_mut()
}

/// `(group, version)` of an `apiVersion`.
pub fn group_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// `(group, version, kind)` of a manifest.
pub fn gvk(object: &Value) -> (&str, &str, &str) {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (g, v) = group_version(api_version);
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    (g, v, kind)
}

/// `metadata.name`, or `""`.
pub fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace`, or `""`.
pub fn namespace_of(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Built-in kinds that are cluster-scoped, as `(group, kind)`. Custom resources are assumed
/// namespaced unless they are listed here: without a cluster there is no discovery, and kustomize
/// makes the same assumption.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("node.k8s.io", "RuntimeClass"),
    ("policy", "PodSecurityPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    ("authentication.k8s.io", "TokenReview"),
    ("authentication.k8s.io", "SelfSubjectReview"),
    ("authorization.k8s.io", "SubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectRulesReview"),
];

/// Whether `group`/`kind` is a cluster-scoped built-in kind (see [`CLUSTER_SCOPED`]).
pub fn is_cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&(group, kind))
}

/// API groups served by Kubernetes itself, whose schemas kustomize knows: only these get
/// strategic-merge list semantics.
pub fn is_builtin_group(group: &str) -> bool {
    group.is_empty()
        || !group.contains('.')
        || group.ends_with(".k8s.io") && !group.ends_with(".x-k8s.io")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_goes_on_metadata_only() {
        let mut objs = vec![
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "app", "labels": {"app": "a", "team": "old"}},
                "spec": {"selector": {"matchLabels": {"app": "a"}},
                         "template": {"metadata": {"labels": {"app": "a"}}}}
            }),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        ];
        let labels = BTreeMap::from([("team".to_string(), "new".to_string())]);
        let annotations = BTreeMap::from([("owner".to_string(), "me".to_string())]);
        set_metadata(&mut objs, &labels, &annotations);
        assert_eq!(
            objs[0]["metadata"]["labels"],
            json!({"app": "a", "team": "new"})
        );
        assert_eq!(objs[0]["metadata"]["annotations"], json!({"owner": "me"}));
        assert_eq!(
            objs[0]["spec"]["selector"]["matchLabels"],
            json!({"app": "a"})
        );
        assert_eq!(
            objs[0]["spec"]["template"]["metadata"]["labels"],
            json!({"app": "a"})
        );
        assert_eq!(objs[1]["metadata"]["labels"], json!({"team": "new"}));
    }

    #[test]
    fn scopes_and_groups() {
        let cases = [
            ("", "Namespace", true),
            ("rbac.authorization.k8s.io", "ClusterRole", true),
            ("apiextensions.k8s.io", "CustomResourceDefinition", true),
            ("", "ConfigMap", false),
            ("apps", "Deployment", false),
            ("rbac.authorization.k8s.io", "RoleBinding", false),
            ("example.com", "Namespace", false),
        ];
        for (g, k, want) in cases {
            assert_eq!(is_cluster_scoped(g, k), want, "{g}/{k}");
        }
        assert!(is_builtin_group(""));
        assert!(is_builtin_group("apps"));
        assert!(is_builtin_group("networking.k8s.io"));
        assert!(!is_builtin_group("cluster.x-k8s.io"));
        assert!(!is_builtin_group("kustomize.toolkit.fluxcd.io"));
    }

    #[test]
    fn apply_runs_patches_before_renaming() {
        let objs = vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg"}, "data": {"a": "1"}})];
        let transforms = Transforms {
            patches: vec![Patch {
                patch: json!([{"op": "replace", "path": "/data/a", "value": "2"}]),
                target: Some(Selector {
                    kind: Some("ConfigMap".into()),
                    name: Some("cfg".into()),
                    ..Default::default()
                }),
            }],
            target_namespace: Some("prod".into()),
            name_prefix: Some("p-".into()),
            ..Default::default()
        };
        let out = apply(objs, &transforms).unwrap();
        assert_eq!(
            out[0]["metadata"],
            json!({"name": "p-cfg", "namespace": "prod"})
        );
        assert_eq!(out[0]["data"]["a"], "2");
    }
}

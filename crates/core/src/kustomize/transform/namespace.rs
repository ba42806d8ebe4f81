//! `targetNamespace`.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{ensure_map, gvk, is_cluster_scoped, name_of, namespace_of};

/// Sets `metadata.namespace` on every namespaced object; cluster-scoped kinds keep none.
///
/// In RoleBindings and ClusterRoleBindings, subjects get the namespace as kustomize gives it:
/// a subject named `default` (kustomize's default-subjects rule), and a `ServiceAccount` subject
/// naming a ServiceAccount of this build that was in the subject's namespace (kustomize's name
/// reference rule). Subjects pointing elsewhere are left alone.
pub fn set_namespace(objects: &mut [Value], namespace: &str) {
    // ServiceAccounts of the build by (original namespace, name).
    let accounts: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| gvk(o) == ("", "v1", "ServiceAccount"))
        .map(|o| (namespace_of(o).to_string(), name_of(o).to_string()))
        .collect();
    let in_build = |subject_ns: &str, name: &str| {
        accounts.iter().any(|(ns, n)| {
            n == name
                && (ns == subject_ns
                    || (subject_ns.is_empty() || subject_ns == "default")
                        && (ns.is_empty() || ns == "default"))
        })
    };

    for obj in objects.iter_mut() {
        let (group, _, kind) = gvk(obj);
        let is_binding = group == "rbac.authorization.k8s.io"
            && matches!(kind, "RoleBinding" | "ClusterRoleBinding");
        if !is_cluster_scoped(group, kind)
            && let Some(meta) = ensure_map(obj, &["metadata"])
        {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
        if !is_binding {
            continue;
        }
        let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) else {
            continue;
        };
        for subject in subjects.iter_mut().filter_map(Value::as_object_mut) {
            let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
            let kind = subject.get("kind").and_then(Value::as_str).unwrap_or("");
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            if name == "default" || (kind == "ServiceAccount" && in_build(ns, name)) {
                subject.insert("namespace".into(), Value::String(namespace.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaced_objects_only() {
        // (apiVersion, kind, gets the namespace)
        let cases = [
            ("v1", "ConfigMap", true),
            ("apps/v1", "Deployment", true),
            ("example.com/v1", "Widget", true),
            ("v1", "Namespace", false),
            ("v1", "PersistentVolume", false),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", false),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", false),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition", false),
            ("storage.k8s.io/v1", "StorageClass", false),
            ("scheduling.k8s.io/v1", "PriorityClass", false),
            ("networking.k8s.io/v1", "IngressClass", false),
            (
                "admissionregistration.k8s.io/v1",
                "ValidatingWebhookConfiguration",
                false,
            ),
            (
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfiguration",
                false,
            ),
            ("apiregistration.k8s.io/v1", "APIService", false),
        ];
        for (api_version, kind, namespaced) in cases {
            let mut objs = vec![json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"name": "x", "namespace": "old"}})];
            if !namespaced {
                objs[0]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("namespace");
            }
            set_namespace(&mut objs, "new");
            let got = objs[0].pointer("/metadata/namespace").cloned();
            let want = namespaced.then(|| json!("new"));
            assert_eq!(got, want, "{kind}");
        }
    }

    #[test]
    fn binding_subjects() {
        let mut objs = vec![
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "r"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "app", "namespace": "default"},
                {"kind": "ServiceAccount", "name": "default", "namespace": "elsewhere"},
                {"kind": "ServiceAccount", "name": "other", "namespace": "kube-system"},
                {"kind": "User", "name": "jane"},
            ]}),
        ];
        set_namespace(&mut objs, "prod");
        let subjects = &objs[1]["subjects"];
        assert_eq!(subjects[0]["namespace"], "prod");
        assert_eq!(subjects[1]["namespace"], "prod");
        assert_eq!(subjects[2]["namespace"], "kube-system");
        assert!(subjects[3].get("namespace").is_none());
        assert!(objs[1]["metadata"].get("namespace").is_none());
    }
}

//! `namePrefix` / `nameSuffix`, with the reference fix-ups kustomize makes.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{gvk, name_of};

/// Kinds kustomize never renames.
fn keeps_name(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("apiregistration.k8s.io", "APIService")
            | ("", "Namespace")
    )
}

/// Renames every object to `prefix + name + suffix` (except CustomResourceDefinitions,
/// APIServices and Namespaces, as kustomize) and rewrites references to renamed objects.
///
/// The references that follow a renamed object, as kustomize's name-reference rules do for the
/// common kinds. A reference is rewritten only when the object it names is part of the build.
///
/// | referenced kind | where |
/// | --- | --- |
/// | ConfigMap | pod `volumes[].configMap.name`, `volumes[].projected.sources[].configMap.name`, containers' `env[].valueFrom.configMapKeyRef.name`, `envFrom[].configMapRef.name` |
/// | Secret | pod `volumes[].secret.secretName`, `volumes[].projected.sources[].secret.name`, `imagePullSecrets[].name`, containers' `env[].valueFrom.secretKeyRef.name`, `envFrom[].secretRef.name`; Ingress `spec.tls[].secretName` |
/// | ServiceAccount | pod `serviceAccountName` (and the deprecated `serviceAccount`); (Cluster)RoleBinding `subjects[kind=ServiceAccount].name` |
/// | PersistentVolumeClaim | pod `volumes[].persistentVolumeClaim.claimName` |
/// | Role, ClusterRole | (Cluster)RoleBinding `roleRef.name` (by `roleRef.kind`) |
/// | Service | StatefulSet `spec.serviceName`; Ingress `spec.defaultBackend.service.name`, `spec.rules[].http.paths[].backend.service.name` |
/// | any | HorizontalPodAutoscaler `spec.scaleTargetRef.name` (by `scaleTargetRef.kind`) |
///
/// Pod specs are found in Pods, in `spec.template.spec` of Deployments, StatefulSets,
/// DaemonSets, ReplicaSets, ReplicationControllers and Jobs, and in CronJobs'
/// `spec.jobTemplate.spec.template.spec`.
pub fn add_name_affixes(objects: &mut [Value], prefix: &str, suffix: &str) {
    if prefix.is_empty() && suffix.is_empty() {
        return;
    }
    // (kind, name) of everything renamed; every rename is the same, so namespaces do not matter.
    let renamed: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| {
            let (g, _, k) = gvk(o);
            !keeps_name(g, k)
        })
        .map(|o| (gvk(o).2.to_string(), name_of(o).to_string()))
        .collect();
    let rename = |kind: &str, value: &mut Value| {
        if let Some(name) = value.as_str()
            && renamed.contains(&(kind.to_string(), name.to_string()))
        {
            *value = Value::String(format!("{prefix}{name}{suffix}"));
        }
    };

    for obj in objects.iter_mut() {
        let (group, _, kind) = gvk(obj);
        let (group, kind) = (group.to_string(), kind.to_string());
        if !keeps_name(&group, &kind)
            && let Some(name) = obj.pointer_mut("/metadata/name")
            && let Some(n) = name.as_str()
        {
            *name = Value::String(format!("{prefix}{n}{suffix}"));
        }
        for spec in pod_specs(obj, &kind) {
            fix_pod_spec(spec, &rename);
        }
        match kind.as_str() {
            "RoleBinding" | "ClusterRoleBinding" if group == "rbac.authorization.k8s.io" => {
                if let Some(role_ref) = obj.get_mut("roleRef") {
                    let ref_kind = role_ref
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if let Some(n) = role_ref.get_mut("name") {
                        rename(&ref_kind, n);
                    }
                }
                for subject in array(obj.get_mut("subjects")) {
                    if subject.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                        && let Some(n) = subject.get_mut("name")
                    {
                        rename("ServiceAccount", n);
                    }
                }
            }
            "StatefulSet" => {
                if let Some(n) = obj.pointer_mut("/spec/serviceName") {
                    rename("Service", n);
                }
            }
            "Ingress" => {
                if let Some(n) = obj.pointer_mut("/spec/defaultBackend/service/name") {
                    rename("Service", n);
                }
                for rule in array(obj.pointer_mut("/spec/rules")) {
                    for path in array(rule.pointer_mut("/http/paths")) {
                        if let Some(n) = path.pointer_mut("/backend/service/name") {
                            rename("Service", n);
                        }
                    }
                }
                for tls in array(obj.pointer_mut("/spec/tls")) {
                    if let Some(n) = tls.get_mut("secretName") {
                        rename("Secret", n);
                    }
                }
            }
            "HorizontalPodAutoscaler" => {
                if let Some(target) = obj.pointer_mut("/spec/scaleTargetRef") {
                    let ref_kind = target
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if let Some(n) = target.get_mut("name") {
                        rename(&ref_kind, n);
                    }
                }
            }
            _ => {}
        }
    }
}

fn array(value: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    value
        .and_then(Value::as_array_mut)
        .into_iter()
        .flat_map(|a| a.iter_mut())
}

/// The pod specs of a workload.
pub(crate) fn pod_specs<'a>(obj: &'a mut Value, kind: &str) -> Vec<&'a mut Value> {
    let pointer = match kind {
        "Pod" => "/spec",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        | "PodTemplate" => "/spec/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => return Vec::new(),
    };
    let pointer = if kind == "PodTemplate" {
        "/template/spec"
    } else {
        pointer
    };
    obj.pointer_mut(pointer).into_iter().collect()
}

fn fix_pod_spec(spec: &mut Value, rename: &impl Fn(&str, &mut Value)) {
    for field in ["serviceAccountName", "serviceAccount"] {
        if let Some(n) = spec.get_mut(field) {
            rename("ServiceAccount", n);
        }
    }
    for secret in array(spec.get_mut("imagePullSecrets")) {
        if let Some(n) = secret.get_mut("name") {
            rename("Secret", n);
        }
    }
    for volume in array(spec.get_mut("volumes")) {
        for (pointer, kind) in [
            ("/configMap/name", "ConfigMap"),
            ("/secret/secretName", "Secret"),
            ("/persistentVolumeClaim/claimName", "PersistentVolumeClaim"),
        ] {
            if let Some(n) = volume.pointer_mut(pointer) {
                rename(kind, n);
            }
        }
        for source in array(volume.pointer_mut("/projected/sources")) {
            for (pointer, kind) in [("/configMap/name", "ConfigMap"), ("/secret/name", "Secret")] {
                if let Some(n) = source.pointer_mut(pointer) {
                    rename(kind, n);
                }
            }
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for container in array(spec.get_mut(list)) {
            for env in array(container.get_mut("env")) {
                for (pointer, kind) in [
                    ("/valueFrom/configMapKeyRef/name", "ConfigMap"),
                    ("/valueFrom/secretKeyRef/name", "Secret"),
                ] {
                    if let Some(n) = env.pointer_mut(pointer) {
                        rename(kind, n);
                    }
                }
            }
            for from in array(container.get_mut("envFrom")) {
                for (pointer, kind) in [
                    ("/configMapRef/name", "ConfigMap"),
                    ("/secretRef/name", "Secret"),
                ] {
                    if let Some(n) = from.pointer_mut(pointer) {
                        rename(kind, n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn renamed(objs: Vec<Value>) -> Vec<Value> {
        let mut objs = objs;
        add_name_affixes(&mut objs, "p-", "-s");
        objs
    }

    #[test]
    fn names_get_affixes_except_kustomize_exceptions() {
        // (apiVersion, kind, renamed)
        let cases = [
            ("v1", "ConfigMap", true),
            ("apps/v1", "Deployment", true),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", true),
            ("v1", "Namespace", false),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition", false),
            ("apiregistration.k8s.io/v1", "APIService", false),
        ];
        for (api_version, kind, want) in cases {
            let out = renamed(vec![
                json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}),
            ]);
            let expected = if want { "p-x-s" } else { "x" };
            assert_eq!(out[0]["metadata"]["name"], expected, "{kind}");
        }
    }

    #[test]
    fn pod_spec_references_follow_objects_in_the_build() {
        let pod_spec = json!({
            "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}, {"name": "external"}],
            "volumes": [
                {"name": "a", "configMap": {"name": "cm"}},
                {"name": "b", "secret": {"secretName": "sec"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"configMap": {"name": "cm"}}, {"secret": {"name": "sec"}}]}},
                {"name": "e", "configMap": {"name": "not-in-build"}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "cm"}}]}],
            "containers": [{"name": "c",
                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "sec"}}]}],
        });
        let build = |workload: Value| {
            vec![
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}}),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull"}}),
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}}),
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}}),
                workload,
            ]
        };
        let workloads = [
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"}, "spec": pod_spec.clone()}),
                "/spec",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
                "spec": {"template": {"spec": pod_spec.clone()}}}),
                "/spec/template/spec",
            ),
            (
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "w"},
                "spec": {"jobTemplate": {"spec": {"template": {"spec": pod_spec.clone()}}}}}),
                "/spec/jobTemplate/spec/template/spec",
            ),
        ];
        for (workload, at) in workloads {
            let out = renamed(build(workload));
            let spec = out[5].pointer(at).unwrap();
            assert_eq!(spec["serviceAccountName"], "p-sa-s");
            assert_eq!(
                spec["imagePullSecrets"],
                json!([{"name": "p-pull-s"}, {"name": "external"}])
            );
            assert_eq!(spec["volumes"][0]["configMap"]["name"], "p-cm-s");
            assert_eq!(spec["volumes"][1]["secret"]["secretName"], "p-sec-s");
            assert_eq!(
                spec["volumes"][2]["persistentVolumeClaim"]["claimName"],
                "p-data-s"
            );
            assert_eq!(
                spec["volumes"][3]["projected"]["sources"][0]["configMap"]["name"],
                "p-cm-s"
            );
            assert_eq!(
                spec["volumes"][3]["projected"]["sources"][1]["secret"]["name"],
                "p-sec-s"
            );
            assert_eq!(spec["volumes"][4]["configMap"]["name"], "not-in-build");
            assert_eq!(
                spec["initContainers"][0]["envFrom"][0]["configMapRef"]["name"],
                "p-cm-s"
            );
            let c = &spec["containers"][0];
            assert_eq!(
                c["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
                "p-cm-s"
            );
            assert_eq!(c["env"][1]["valueFrom"]["secretKeyRef"]["name"], "p-sec-s");
            assert_eq!(c["envFrom"][0]["secretRef"]["name"], "p-sec-s");
        }
    }

    #[test]
    fn rbac_service_ingress_and_hpa_references() {
        let out = renamed(vec![
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb"},
                "roleRef": {"kind": "Role", "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "User", "name": "sa"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "crb"},
                "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"serviceName": "svc"}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "in"},
                "spec": {"defaultBackend": {"service": {"name": "svc"}}, "tls": [{"secretName": "tls"}],
                    "rules": [{"http": {"paths": [{"backend": {"service": {"name": "svc"}}}]}}]}}),
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
                "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}}}),
        ]);
        assert_eq!(out[2]["roleRef"]["name"], "p-r-s");
        assert_eq!(out[2]["subjects"][0]["name"], "p-sa-s");
        assert_eq!(out[2]["subjects"][1]["name"], "sa");
        assert_eq!(out[3]["roleRef"]["name"], "view");
        assert_eq!(out[3]["subjects"][0]["name"], "p-sa-s");
        assert_eq!(out[6]["spec"]["serviceName"], "p-svc-s");
        assert_eq!(
            out[7]["spec"]["defaultBackend"]["service"]["name"],
            "p-svc-s"
        );
        assert_eq!(
            out[7]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
            "p-svc-s"
        );
        assert_eq!(out[7]["spec"]["tls"][0]["secretName"], "p-tls-s");
        assert_eq!(out[8]["spec"]["scaleTargetRef"]["name"], "p-db-s");
    }

    #[test]
    fn nothing_to_add_changes_nothing() {
        let mut objs =
            vec![json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})];
        let before = objs.clone();
        add_name_affixes(&mut objs, "", "");
        assert_eq!(objs, before);
    }
}

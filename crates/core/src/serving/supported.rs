//! Which parts of a Knative Service Gantry serves. Anything else is named by its path so the
//! controller reports it (Ready=False, an Event, a log line) instead of ignoring it: a manifest
//! that asks for a second container, an HPA class or a field Gantry does not implement must not
//! look as if it ran as written.
//!
//! The check reads the object's JSON, so it sees every field the API server kept.

use serde_json::Value;

/// Fields of `spec`.
const SPEC: &[&str] = &["template", "traffic"];
/// Fields of `spec.template`.
const TEMPLATE: &[&str] = &["metadata", "spec"];
/// Fields of `spec.template.metadata` (`creationTimestamp: null` is what serialisers emit).
const TEMPLATE_METADATA: &[&str] = &["name", "labels", "annotations", "creationTimestamp"];
/// Fields of `spec.template.spec`.
const REVISION_SPEC: &[&str] = &[
    "containers",
    "volumes",
    "serviceAccountName",
    "imagePullSecrets",
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
];
/// Fields of the serving container.
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "ports",
    "env",
    "envFrom",
    "resources",
    "readinessProbe",
    "volumeMounts",
];
/// Fields of its port.
const PORT: &[&str] = &["name", "containerPort", "protocol"];
/// Fields of a traffic target.
const TRAFFIC: &[&str] = &["tag", "revisionName", "latestRevision", "percent"];

/// The `autoscaling.knative.dev/` annotations Gantry implements.
pub const AUTOSCALING: &[&str] = &[
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/max-scale",
    "autoscaling.knative.dev/initial-scale",
    "autoscaling.knative.dev/target",
    "autoscaling.knative.dev/target-utilization-percentage",
    "autoscaling.knative.dev/metric",
    "autoscaling.knative.dev/window",
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
    "autoscaling.knative.dev/activation-scale",
];

/// Knative annotations that carry no behaviour Gantry would have to implement: who created the
/// object (set by Knative's webhook), and GC opt-out (honoured).
const HARMLESS_KNATIVE_ANNOTATIONS: &[&str] = &[
    "serving.knative.dev/creator",
    "serving.knative.dev/lastModifier",
    "serving.knative.dev/no-gc",
    "autoscaling.knative.dev/class",
];

/// Something in the Service that Gantry does not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where, as `spec.template.spec.containers[1]` or
    /// `spec.template.metadata.annotations[autoscaling.knative.dev/class]`.
    pub path: String,
    /// Why, in a few words.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// Everything in Service `object` (its JSON: `metadata`, `spec`) that Gantry does not serve, in
/// document order. Empty means Gantry runs it as Knative would.
pub fn findings(object: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(annotations) = object.pointer("/metadata/annotations") {
        knative_annotations("metadata.annotations", annotations, false, &mut out);
    }
    let Some(spec) = object.get("spec") else {
        return out;
    };
    unknown_keys("spec", spec, SPEC, &mut out);
    if let Some(template) = spec.get("template") {
        unknown_keys("spec.template", template, TEMPLATE, &mut out);
        if let Some(meta) = template.get("metadata") {
            unknown_keys("spec.template.metadata", meta, TEMPLATE_METADATA, &mut out);
            if let Some(annotations) = meta.get("annotations") {
                knative_annotations(
                    "spec.template.metadata.annotations",
                    annotations,
                    true,
                    &mut out,
                );
            }
        }
        if let Some(rev) = template.get("spec") {
            revision_spec(rev, &mut out);
        }
    }
    if let Some(Value::Array(traffic)) = spec.get("traffic") {
        for (i, target) in traffic.iter().enumerate() {
            let path = format!("spec.traffic[{i}]");
            unknown_keys(&path, target, TRAFFIC, &mut out);
        }
    }
    out
}

fn revision_spec(rev: &Value, out: &mut Vec<Finding>) {
    let base = "spec.template.spec";
    unknown_keys(base, rev, REVISION_SPEC, out);
    let containers = rev.get("containers").and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        out.push(Finding {
            path: format!("{base}.containers"),
            problem: "one serving container is required".into(),
        });
        return;
    };
    for i in 1..containers.len() {
        out.push(Finding {
            path: format!("{base}.containers[{i}]"),
            problem: "only one container is supported".into(),
        });
    }
    let container = &containers[0];
    let path = format!("{base}.containers[0]");
    unknown_keys(&path, container, CONTAINER, out);
    if container
        .get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        out.push(Finding {
            path: format!("{path}.image"),
            problem: "an image is required".into(),
        });
    }
    if let Some(Value::Array(ports)) = container.get("ports") {
        for i in 1..ports.len() {
            out.push(Finding {
                path: format!("{path}.ports[{i}]"),
                problem: "only one port is supported".into(),
            });
        }
        if let Some(port) = ports.first() {
            let port_path = format!("{path}.ports[0]");
            unknown_keys(&port_path, port, PORT, out);
            if let Some(protocol) = port.get("protocol").and_then(Value::as_str)
                && protocol != "TCP"
            {
                out.push(Finding {
                    path: format!("{port_path}.protocol"),
                    problem: format!("'{protocol}' is not supported (only TCP)"),
                });
            }
        }
    }
}

/// Keys of `value` (an object) outside `allowed`, ignoring `null`s.
fn unknown_keys(path: &str, value: &Value, allowed: &[&str], out: &mut Vec<Finding>) {
    let Some(object) = value.as_object() else {
        return;
    };
    for (key, v) in object {
        if !v.is_null() && !allowed.contains(&key.as_str()) {
            out.push(Finding {
                path: format!("{path}.{key}"),
                problem: "field is not supported".into(),
            });
        }
    }
}

/// Knative's own annotations (`*.knative.dev/…`): on the template, the supported autoscaling
/// keys with valid values; elsewhere, only the harmless ones.
fn knative_annotations(path: &str, annotations: &Value, template: bool, out: &mut Vec<Finding>) {
    let Some(object) = annotations.as_object() else {
        return;
    };
    for (key, value) in object {
        let domain = key.split_once('/').map_or("", |(d, _)| d);
        if !(domain == "knative.dev" || domain.ends_with(".knative.dev")) {
            continue;
        }
        let at = format!("{path}[{key}]");
        let value = value.as_str().unwrap_or_default();
        if key == "autoscaling.knative.dev/class" {
            if value != "kpa.autoscaling.knative.dev" {
                out.push(Finding {
                    path: at,
                    problem: format!("autoscaler class '{value}' is not supported (only kpa.autoscaling.knative.dev)"),
                });
            }
            continue;
        }
        if HARMLESS_KNATIVE_ANNOTATIONS.contains(&key.as_str()) {
            continue;
        }
        if !template || !AUTOSCALING.contains(&key.as_str()) {
            out.push(Finding {
                path: at,
                problem: "annotation is not supported".into(),
            });
            continue;
        }
        if let Some(problem) = invalid_autoscaling_value(key, value) {
            out.push(Finding { path: at, problem });
        }
    }
}

/// The value rules Knative's webhook applies to the supported autoscaling annotations.
fn invalid_autoscaling_value(key: &str, value: &str) -> Option<String> {
    let name = key.trim_start_matches("autoscaling.knative.dev/");
    let int = |min: i64| value.trim().parse::<i64>().ok().filter(|v| *v >= min);
    let float = |min: f64| value.trim().parse::<f64>().ok().filter(|v| *v >= min);
    let ok = match name {
        "min-scale" | "max-scale" | "initial-scale" => int(0).is_some(),
        "activation-scale" => int(1).is_some(),
        "target" => float(0.01).is_some(),
        "target-utilization-percentage" => float(1.0).is_some_and(|v| v <= 100.0),
        "metric" => {
            return (!matches!(value, "concurrency" | "rps"))
                .then(|| format!("metric '{value}' is not supported (concurrency or rps)"));
        }
        "window" => go_duration(value).is_some_and(|s| (6.0..=3600.0).contains(&s)),
        "scale-to-zero-pod-retention-period" => go_duration(value).is_some(),
        _ => true,
    };
    (!ok).then(|| format!("invalid value '{value}'"))
}

/// Seconds in a Go duration made of `h`, `m`, `s`, `ms` parts (`0` allowed).
fn go_duration(text: &str) -> Option<f64> {
    if text == "0" {
        return Some(0.0);
    }
    let re = regex::Regex::new(r"^(?:(\d+(?:\.\d+)?)(ms|h|m|s))+$").ok()?;
    if !re.is_match(text) {
        return None;
    }
    let part = regex::Regex::new(r"(\d+(?:\.\d+)?)(ms|h|m|s)").ok()?;
    let mut seconds = 0.0;
    for c in part.captures_iter(text) {
        let n: f64 = c[1].parse().ok()?;
        seconds += n * match &c[2] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            _ => 0.001,
        };
    }
    Some(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(object: &Value) -> Vec<String> {
        findings(object).into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn every_supported_field_passes() {
        let svc = json!({
            "metadata": { "name": "a", "annotations": { "serving.knative.dev/creator": "x", "team": "y" } },
            "spec": {
                "template": {
                    "metadata": {
                        "name": "a-v1",
                        "creationTimestamp": null,
                        "labels": { "app": "a" },
                        "annotations": {
                            "autoscaling.knative.dev/min-scale": "0",
                            "autoscaling.knative.dev/max-scale": "10",
                            "autoscaling.knative.dev/initial-scale": "1",
                            "autoscaling.knative.dev/target": "50",
                            "autoscaling.knative.dev/target-utilization-percentage": "70",
                            "autoscaling.knative.dev/metric": "rps",
                            "autoscaling.knative.dev/window": "60s",
                            "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "1m5s",
                            "autoscaling.knative.dev/activation-scale": "2",
                            "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
                            "example.com/other": "kept"
                        }
                    },
                    "spec": {
                        "containerConcurrency": 1,
                        "timeoutSeconds": 30,
                        "responseStartTimeoutSeconds": 10,
                        "idleTimeoutSeconds": 10,
                        "serviceAccountName": "sa",
                        "imagePullSecrets": [{ "name": "pull" }],
                        "volumes": [{ "name": "v", "configMap": { "name": "c" } }],
                        "containers": [{
                            "name": "app",
                            "image": "img",
                            "command": ["/app"],
                            "args": ["-v"],
                            "ports": [{ "name": "h2c", "containerPort": 8081, "protocol": "TCP" }],
                            "env": [{ "name": "A", "value": "1" }],
                            "envFrom": [{ "configMapRef": { "name": "c" } }],
                            "resources": { "limits": { "cpu": "1" } },
                            "readinessProbe": { "httpGet": { "path": "/" } },
                            "volumeMounts": [{ "name": "v", "mountPath": "/v" }]
                        }]
                    }
                },
                "traffic": [
                    { "latestRevision": true, "percent": 90 },
                    { "revisionName": "a-v0", "percent": 10, "tag": "old" }
                ]
            }
        });
        assert_eq!(findings(&svc), []);
    }

    #[test]
    fn unsupported_fields_are_named_by_path() {
        let svc = json!({
            "metadata": { "annotations": { "serving.knative.dev/rollout-duration": "60s" } },
            "spec": {
                "template": {
                    "metadata": {
                        "annotations": {
                            "autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev",
                            "autoscaling.knative.dev/panic-window-percentage": "10",
                            "autoscaling.knative.dev/metric": "cpu",
                            "autoscaling.knative.dev/min-scale": "-1",
                            "features.knative.dev/queueproxy-podinfo": "enabled"
                        }
                    },
                    "spec": {
                        "nodeSelector": { "a": "b" },
                        "containers": [
                            { "image": "a", "livenessProbe": {}, "ports": [
                                { "containerPort": 1, "protocol": "UDP" }, { "containerPort": 2 }
                            ] },
                            { "image": "sidecar" }
                        ]
                    }
                },
                "traffic": [{ "configurationName": "a", "percent": 100 }]
            }
        });
        let mut got = paths(&svc);
        got.sort();
        let mut want = vec![
            "metadata.annotations[serving.knative.dev/rollout-duration]",
            "spec.template.metadata.annotations[autoscaling.knative.dev/class]",
            "spec.template.metadata.annotations[autoscaling.knative.dev/panic-window-percentage]",
            "spec.template.metadata.annotations[autoscaling.knative.dev/metric]",
            "spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]",
            "spec.template.metadata.annotations[features.knative.dev/queueproxy-podinfo]",
            "spec.template.spec.nodeSelector",
            "spec.template.spec.containers[1]",
            "spec.template.spec.containers[0].livenessProbe",
            "spec.template.spec.containers[0].ports[1]",
            "spec.template.spec.containers[0].ports[0].protocol",
            "spec.traffic[0].configurationName",
        ];
        want.sort();
        assert_eq!(got, want);
        let class = findings(&svc)
            .into_iter()
            .find(|f| f.path.contains("class"))
            .unwrap();
        assert!(
            class.to_string().contains("hpa.autoscaling.knative.dev"),
            "{class}"
        );
    }

    #[test]
    fn a_service_without_a_container_or_image_is_refused() {
        let svc = json!({ "spec": { "template": { "spec": { "containers": [] } } } });
        assert_eq!(paths(&svc), ["spec.template.spec.containers"]);
        let svc = json!({ "spec": { "template": { "spec": { "containers": [{}] } } } });
        assert_eq!(paths(&svc), ["spec.template.spec.containers[0].image"]);
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration("1m5s"), Some(65.0));
        assert_eq!(go_duration("500ms"), Some(0.5));
        assert_eq!(go_duration("0"), Some(0.0));
        assert_eq!(go_duration("5"), None);
        assert!(invalid_autoscaling_value("autoscaling.knative.dev/window", "2s").is_some());
    }
}

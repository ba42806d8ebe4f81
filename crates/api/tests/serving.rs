//! Knative `Service`/`Revision` types: Knative's manifests decode, unknown fields are kept for
//! the controller to report, and the CRDs carry Knative's names and printer columns.

use gantry_api::serving::v1::{Revision, Service};
use kube::CustomResourceExt;
use serde_json::json;

#[test]
fn a_knative_service_round_trips_and_keeps_unsupported_fields() {
    let manifest = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": "hello", "namespace": "default" },
        "spec": {
            "template": {
                "metadata": {
                    "name": "hello-v1",
                    "annotations": { "autoscaling.knative.dev/min-scale": "1" }
                },
                "spec": {
                    "containerConcurrency": 10,
                    "containers": [{
                        "image": "example.invalid/hello:1",
                        "ports": [{ "name": "h2c", "containerPort": 9000 }],
                        "env": [{ "name": "TARGET", "value": "World" }],
                        "readinessProbe": { "httpGet": { "path": "/healthz" } },
                        "livenessProbe": { "tcpSocket": {} }
                    }],
                    "nodeSelector": { "disk": "ssd" }
                }
            },
            "traffic": [
                { "latestRevision": true, "percent": 80 },
                { "revisionName": "hello-v0", "percent": 20, "tag": "old" }
            ]
        }
    });
    let svc: Service = serde_json::from_value(manifest.clone()).unwrap();
    let spec = &svc.spec.template.spec;
    let container = spec.container().unwrap();
    assert_eq!(container.user_port(), 9000);
    assert!(container.h2c());
    assert_eq!(spec.container_concurrency, Some(10));
    assert!(container.unsupported.contains_key("livenessProbe"));
    assert!(spec.unsupported.contains_key("nodeSelector"));
    assert_eq!(svc.spec.traffic[1].tag.as_deref(), Some("old"));
    assert_eq!(serde_json::to_value(&svc).unwrap(), manifest);
}

#[test]
fn crds_have_knatives_names_and_printer_columns() {
    let ksvc = Service::crd();
    assert_eq!(
        ksvc.metadata.name.as_deref(),
        Some("services.serving.knative.dev")
    );
    assert_eq!(
        ksvc.spec.names.short_names,
        Some(vec!["kservice".to_owned(), "ksvc".to_owned()])
    );
    let columns: Vec<_> = ksvc.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("URL", ".status.url"),
            ("LatestCreated", ".status.latestCreatedRevisionName"),
            ("LatestReady", ".status.latestReadyRevisionName"),
            ("Ready", ".status.conditions[?(@.type=='Ready')].status"),
            ("Reason", ".status.conditions[?(@.type=='Ready')].reason"),
        ]
    );
    let rev = Revision::crd();
    assert_eq!(rev.spec.names.short_names, Some(vec!["rev".to_owned()]));
    let schema = serde_json::to_value(&rev.spec.versions[0].schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], json!(true));
    assert!(spec["properties"]["containers"].is_object());
    assert!(schema.to_string().find("nullable").is_none());
}

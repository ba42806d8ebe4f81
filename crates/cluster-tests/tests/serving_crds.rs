//! Gantry's Knative CRDs against Knative's own: the `Service`/`Revision` CRDs Knative publishes
//! (Go module `knative.dev/serving`, `config/core/300-resources/`, fetched from the Go module
//! proxy into `~/.cache/gantry` as the control plane's sources are) and Gantry's must agree on
//! names and printer columns, and every manifest Knative's CRD accepts for the supported
//! fields (Knative's own sample and test manifests, plus one using every supported field) must
//! be accepted by Gantry's, kept whole, on the real API server (server-side dry-run).
//!
//! Both CRDs cannot share a cluster under one name, so Knative's is installed under the group
//! `serving.knative.test`: the schema is Knative's, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_api::serving::v1::{Revision, Service};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};

/// The Knative Serving release the CRDs are compared with.
const KNATIVE_SERVING: &str = "knative.dev/serving@v0.51.0";
const TEST_GROUP: &str = "serving.knative.test";

/// The module's directory, downloaded through the Go module proxy on first use.
fn knative_module() -> PathBuf {
    let cache = std::env::var_os("GANTRY_CACHE_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/gantry"),
        PathBuf::from,
    );
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("go")
        .args(["mod", "download", "-json", KNATIVE_SERVING])
        .current_dir(work.path())
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        .env("GOTOOLCHAIN", "local")
        .env_remove("GOPATH")
        .env_remove("GOFLAGS")
        .output()
        .expect("the `go` command is needed to fetch knative.dev/serving");
    assert!(
        out.status.success(),
        "go mod download {KNATIVE_SERVING}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(
        info["Dir"]
            .as_str()
            .expect("go mod download printed no Dir"),
    )
}

fn knative_crd(module: &Path, file: &str) -> CustomResourceDefinition {
    let path = module.join("config/core/300-resources").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Printer columns as (name, type, jsonPath).
fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect()
}

#[test]
fn names_and_printer_columns_match_knatives() {
    let module = knative_module();
    for (gantry, file) in [
        (Service::crd(), "service.yaml"),
        (Revision::crd(), "revision.yaml"),
    ] {
        let knative = knative_crd(&module, file);
        assert_eq!(gantry.metadata.name, knative.metadata.name);
        assert_eq!(gantry.spec.group, knative.spec.group);
        assert_eq!(gantry.spec.scope, knative.spec.scope);
        let (g, k) = (&gantry.spec.names, &knative.spec.names);
        assert_eq!(
            (&g.kind, &g.plural, &g.singular),
            (&k.kind, &k.plural, &k.singular)
        );
        let sorted = |v: &Option<Vec<String>>| {
            let mut v = v.clone().unwrap_or_default();
            v.sort();
            v
        };
        assert_eq!(sorted(&g.short_names), sorted(&k.short_names), "{file}");
        assert_eq!(sorted(&g.categories), sorted(&k.categories), "{file}");
        assert_eq!(columns(&gantry), columns(&knative), "{file}");
        assert_eq!(
            gantry.spec.versions[0].subresources.is_some(),
            knative.spec.versions[0].subresources.is_some()
        );
    }
}

/// Every `serving.knative.dev/v1` Service manifest in the module's samples and tests.
fn knative_manifests(module: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![module.join("test"), module.join("docs")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.contains("serving.knative.dev/v1") {
                continue;
            }
            let Ok(docs) = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text) else {
                continue;
            };
            for doc in docs {
                if doc["apiVersion"] == "serving.knative.dev/v1" && doc["kind"] == "Service" {
                    let name = path.strip_prefix(module).unwrap().display().to_string();
                    out.push((name, doc));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One manifest with every field Gantry supports.
fn every_supported_field() -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": "every-field" },
        "spec": {
            "template": {
                "metadata": {
                    "name": "every-field-v1",
                    "labels": { "tier": "web" },
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": "0",
                        "autoscaling.knative.dev/max-scale": "10",
                        "autoscaling.knative.dev/initial-scale": "1",
                        "autoscaling.knative.dev/target": "50",
                        "autoscaling.knative.dev/target-utilization-percentage": "70",
                        "autoscaling.knative.dev/metric": "rps",
                        "autoscaling.knative.dev/window": "60s",
                        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "1m5s",
                        "autoscaling.knative.dev/activation-scale": "2"
                    }
                },
                "spec": {
                    "containerConcurrency": 1,
                    "timeoutSeconds": 30,
                    "responseStartTimeoutSeconds": 10,
                    "idleTimeoutSeconds": 10,
                    "serviceAccountName": "default",
                    "imagePullSecrets": [{ "name": "pull" }],
                    "volumes": [{ "name": "config", "configMap": { "name": "app" } }],
                    "containers": [{
                        "name": "app",
                        "image": "registry.invalid/app:1",
                        "command": ["/app"],
                        "args": ["--verbose"],
                        "ports": [{ "name": "h2c", "containerPort": 8081, "protocol": "TCP" }],
                        "env": [{ "name": "TARGET", "value": "World" }],
                        "envFrom": [{ "configMapRef": { "name": "app" } }],
                        "resources": { "limits": { "cpu": "1", "memory": "128Mi" } },
                        "readinessProbe": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1 },
                        "volumeMounts": [{ "name": "config", "mountPath": "/config", "readOnly": true }]
                    }]
                }
            },
            "traffic": [
                { "latestRevision": true, "percent": 80, "tag": "latest" },
                { "revisionName": "every-field-v0", "percent": 20, "tag": "previous" }
            ]
        }
    })
}

async fn install_knative_crd_as_test_group(client: &Client, module: &Path) {
    let mut crd = knative_crd(module, "service.yaml");
    crd.spec.group = TEST_GROUP.into();
    crd.metadata = kube::api::ObjectMeta {
        name: Some(format!("services.{TEST_GROUP}")),
        ..Default::default()
    };
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("gantry-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_for(&api, &name, Duration::from_secs(30), |crd| {
        crd.and_then(|c| c.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
}

/// Server-side dry-run create of `manifest` in `ns` under `group`; the object the server would
/// store, or its refusal.
async fn dry_run(
    client: &Client,
    ns: &str,
    group: &str,
    manifest: &Value,
) -> Result<Value, String> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, "v1", "Service"),
        "services",
    );
    let mut obj = manifest.clone();
    obj["apiVersion"] = json!(format!("{group}/v1"));
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.insert("namespace".into(), json!(ns));
    }
    let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    api.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &obj,
    )
    .await
    .map(|o| serde_json::to_value(o).unwrap_or_default())
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_manifest_knatives_crd_accepts_gantrys_accepts_and_keeps() {
    let module = knative_module();
    let mut manifests = knative_manifests(&module);
    assert!(
        manifests.len() >= 10,
        "Knative's samples were not found: {:?}",
        manifests.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    manifests.push(("every supported field".into(), every_supported_field()));
    with_namespace("ksvc-crd", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        install_knative_crd_as_test_group(&client, &module).await;
        let mut checked = 0;
        for (source, manifest) in &manifests {
            // Only manifests Knative's own CRD accepts are in scope.
            if let Err(err) = dry_run(&client, &ns, TEST_GROUP, manifest).await {
                panic!("{source}: Knative's CRD refuses it ({err}): the sample set changed");
            }
            let stored = dry_run(&client, &ns, "serving.knative.dev", manifest)
                .await
                .unwrap_or_else(|err| panic!("{source}: Gantry's CRD refuses it: {err}"));
            assert_eq!(
                stored["spec"], manifest["spec"],
                "{source}: Gantry's CRD changed the spec"
            );
            checked += 1;
        }
        assert_eq!(checked, manifests.len());
    })
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(gantry_testkit::client().await);
    let _ = crds
        .delete(&format!("services.{TEST_GROUP}"), &Default::default())
        .await;
}

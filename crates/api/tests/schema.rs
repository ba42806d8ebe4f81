//! The generated CRDs must match Flux's, fact by fact.
//!
//! `tests/fixtures/flux/*.yaml` hold what Flux's v1 CRD YAMLs say (names, printer columns and,
//! for every schema node, type/format/default/pattern/enum/limits/required/CEL rules), written
//! down by hand from Flux's files. Any drift, in either direction, fails with the exact path.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// Schema keywords that change what the API server accepts, stores or defaults.
const FACTS: &[&str] = &[
    "type",
    "format",
    "default",
    "pattern",
    "enum",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "required",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
];

/// Keywords that may appear without being a fact; anything else is reported.
const IGNORED: &[&str] = &[
    "description",
    "title",
    "properties",
    "items",
    "additionalProperties",
];

fn flatten(path: &str, node: &Value, out: &mut BTreeMap<String, Value>) {
    let object = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema is not an object"));
    let mut facts = serde_json::Map::new();
    for (key, value) in object {
        if FACTS.contains(&key.as_str()) {
            let value = if key == "required" {
                let mut names: Vec<_> = value.as_array().unwrap().to_vec();
                names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                Value::Array(names)
            } else {
                normalize_numbers(value.clone())
            };
            facts.insert(key.clone(), value);
        } else if !IGNORED.contains(&key.as_str()) {
            panic!("{path}: unexpected schema keyword {key:?}: {value}");
        }
    }
    out.insert(path.to_string(), Value::Object(facts));
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            flatten(&join(name), child, out);
        }
    }
    if let Some(items) = object.get("items") {
        flatten(&format!("{path}[]"), items, out);
    }
    if let Some(values) = object.get("additionalProperties") {
        flatten(&format!("{path}{{}}"), values, out);
    }
}

/// `JSONSchemaProps` holds limits as `f64`; `0.0` and `0` mean the same to the API server.
fn normalize_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && n.is_f64() => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(normalize_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/flux/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_matches_flux(crd: &CustomResourceDefinition, flux: &Value) {
    let spec = &crd.spec;
    assert_eq!(spec.group, flux["group"], "group");
    assert_eq!(spec.scope, flux["scope"], "scope");
    let names = serde_json::to_value(&spec.names).unwrap();
    for key in ["kind", "plural", "singular", "shortNames", "categories"] {
        assert_eq!(names[key], flux["names"][key], "names.{key}");
    }
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some(
            format!(
                "{}.{}",
                flux["names"]["plural"].as_str().unwrap(),
                spec.group
            )
            .as_str()
        )
    );
    assert_eq!(spec.versions.len(), 1, "only v1 is served");
    let version = &spec.versions[0];
    assert_eq!(version.name, flux["version"], "version");
    assert_eq!(json!(version.served), flux["served"], "served");
    assert_eq!(json!(version.storage), flux["storage"], "storage");
    let status = version
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref());
    assert_eq!(
        json!(status.is_some()),
        flux["statusSubresource"],
        "status subresource"
    );
    assert_eq!(
        serde_json::to_value(&version.additional_printer_columns).unwrap(),
        flux["printerColumns"],
        "printer columns"
    );

    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap();
    let mut ours = BTreeMap::new();
    flatten("", &serde_json::to_value(schema).unwrap(), &mut ours);
    let theirs: BTreeMap<String, Value> =
        serde_json::from_value(flux["schema"].clone()).expect("schema is a map of paths");
    let theirs: BTreeMap<String, Value> = theirs
        .into_iter()
        .map(|(path, facts)| {
            let mut facts = facts.as_object().cloned().unwrap_or_default();
            if let Some(Value::Array(required)) = facts.get_mut("required") {
                required.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            (path, Value::Object(facts))
        })
        .collect();

    let mut problems = Vec::new();
    for (path, facts) in &theirs {
        match ours.get(path) {
            None => problems.push(format!("missing in Gantry: {path} {facts}")),
            Some(mine) if mine != facts => problems.push(format!(
                "differs at {path}:\n  flux:   {facts}\n  gantry: {mine}"
            )),
            Some(_) => {}
        }
    }
    for (path, facts) in &ours {
        if !theirs.contains_key(path) {
            problems.push(format!("not in Flux: {path} {facts}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences from Flux:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn git_repository_matches_flux() {
    let crd = gantry_api::source::v1::GitRepository::crd();
    assert_matches_flux(&crd, &fixture("gitrepository.v1.yaml"));
}

#[test]
fn oci_repository_matches_flux() {
    let crd = gantry_api::source::v1::OCIRepository::crd();
    assert_matches_flux(&crd, &fixture("ocirepository.v1.yaml"));
}

#[test]
fn kustomization_matches_flux() {
    let crd = gantry_api::kustomize::v1::Kustomization::crd();
    assert_matches_flux(&crd, &fixture("kustomization.v1.yaml"));
}

#[test]
fn image_repository_matches_flux() {
    let crd = gantry_api::image::v1::ImageRepository::crd();
    assert_matches_flux(&crd, &fixture("imagerepository.v1.yaml"));
}

#[test]
fn image_policy_matches_flux() {
    let crd = gantry_api::image::v1::ImagePolicy::crd();
    assert_matches_flux(&crd, &fixture("imagepolicy.v1.yaml"));
}

#[test]
fn image_update_automation_matches_flux() {
    let crd = gantry_api::image::v1::ImageUpdateAutomation::crd();
    assert_matches_flux(&crd, &fixture("imageupdateautomation.v1.yaml"));
}

#[test]
fn receiver_matches_flux() {
    let crd = gantry_api::notification::v1::Receiver::crd();
    assert_matches_flux(&crd, &fixture("receiver.v1.yaml"));
}

#[test]
fn alert_matches_flux() {
    let crd = gantry_api::notification::v1beta3::Alert::crd();
    assert_matches_flux(&crd, &fixture("alert.v1beta3.yaml"));
}

#[test]
fn provider_matches_flux() {
    let crd = gantry_api::notification::v1beta3::Provider::crd();
    assert_matches_flux(&crd, &fixture("provider.v1beta3.yaml"));
}

#[test]
fn crds_lists_every_kind_once() {
    let names: Vec<_> = gantry_api::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(
        names,
        [
            "gitrepositories.source.toolkit.fluxcd.io",
            "ocirepositories.source.toolkit.fluxcd.io",
            "kustomizations.kustomize.toolkit.fluxcd.io",
            "imagerepositories.image.toolkit.fluxcd.io",
            "imagepolicies.image.toolkit.fluxcd.io",
            "imageupdateautomations.image.toolkit.fluxcd.io",
            "receivers.notification.toolkit.fluxcd.io",
            "alerts.notification.toolkit.fluxcd.io",
            "providers.notification.toolkit.fluxcd.io",
            "services.serving.knative.dev",
            "revisions.serving.knative.dev",
            "monitors.uptime.gantry.dev",
        ]
    );
}

/// The comparison itself must notice drift, or a green run proves nothing.
#[test]
fn comparison_detects_drift() {
    let crd = gantry_api::source::v1::GitRepository::crd();
    let mut flux = fixture("gitrepository.v1.yaml");
    flux["schema"]["spec.timeout"]["default"] = json!("30s");
    let result = std::panic::catch_unwind(|| assert_matches_flux(&crd, &flux));
    assert!(result.is_err(), "a changed default went unnoticed");
    let mut flux = fixture("gitrepository.v1.yaml");
    flux["schema"]
        .as_object_mut()
        .unwrap()
        .remove("spec.sparseCheckout[]");
    let result = std::panic::catch_unwind(|| assert_matches_flux(&crd, &flux));
    assert!(result.is_err(), "an extra field went unnoticed");
}

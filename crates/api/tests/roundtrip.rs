//! Real-world Flux objects must survive a trip through Gantry's types unchanged, so that Gantry
//! never drops a field a user (or Flux's controllers) wrote.
//!
//! The one allowed difference is Flux's own: a field whose value equals its CRD default may be
//! omitted (Go's `omitempty` does the same), because the API server puts it back on write.

use gantry_api::image::v1::{ImagePolicy, ImageRepository, ImageUpdateAutomation};
use gantry_api::kustomize::v1::Kustomization;
use gantry_api::source::v1::GitRepository;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use kube::CustomResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn examples(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/fixtures/examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Removes every value equal to its schema default, so both sides compare without them.
fn strip_defaults(value: &mut Value, schema: &JSONSchemaProps) {
    match value {
        Value::Object(object) => {
            let Some(properties) = &schema.properties else { return };
            object.retain(|key, child| {
                let Some(child_schema) = properties.get(key) else { return true };
                strip_defaults(child, child_schema);
                child_schema.default.as_ref().map(|d| &d.0) != Some(child)
            });
        }
        Value::Array(items) => {
            if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(item)) =
                &schema.items
            {
                items.iter_mut().for_each(|i| strip_defaults(i, item));
            }
        }
        _ => {}
    }
}

fn assert_round_trips<T: DeserializeOwned + Serialize + CustomResourceExt>(file: &str) {
    let crd = T::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let documents = examples(file);
    assert!(!documents.is_empty(), "{file} has no documents");
    for (index, original) in documents.into_iter().enumerate() {
        let typed: T = serde_json::from_value(original.clone())
            .unwrap_or_else(|e| panic!("{file} document {index}: {e}"));
        let mut back = serde_json::to_value(&typed).unwrap();
        let mut original = original;
        strip_defaults(&mut original, schema);
        strip_defaults(&mut back, schema);
        assert_eq!(
            back, original,
            "{file} document {index} changed in the round trip"
        );
    }
}

#[test]
fn git_repositories_round_trip() {
    assert_round_trips::<GitRepository>("gitrepositories.yaml");
}

#[test]
fn kustomizations_round_trip() {
    assert_round_trips::<Kustomization>("kustomizations.yaml");
}

#[test]
fn image_repositories_round_trip() {
    assert_round_trips::<ImageRepository>("imagerepositories.yaml");
}

#[test]
fn image_policies_round_trip() {
    assert_round_trips::<ImagePolicy>("imagepolicies.yaml");
}

#[test]
fn image_update_automations_round_trip() {
    assert_round_trips::<ImageUpdateAutomation>("imageupdateautomations.yaml");
}

#[test]
fn unknown_enum_values_are_rejected_like_the_api_server_does() {
    let bad = serde_json::json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": { "name": "x" },
        "spec": { "interval": "1m", "prune": true, "sourceRef": { "kind": "HelmRepository", "name": "x" } }
    });
    assert!(serde_json::from_value::<Kustomization>(bad).is_err());
}

#[test]
fn helpers_apply_flux_defaults() {
    use gantry_api::kustomize::v1::DeletionPolicy;
    use std::time::Duration;

    let docs = examples("kustomizations.yaml");
    let podinfo: Kustomization = serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(podinfo.deletion_policy(), DeletionPolicy::MirrorPrune);
    assert!(
        podinfo.deletes_on_removal(),
        "MirrorPrune follows prune: true"
    );
    // explicit timeout below 30s is raised to 30s; here 1m stays.
    assert_eq!(podinfo.timeout().unwrap(), Duration::from_secs(60));
    assert_eq!(podinfo.retry_interval().unwrap(), Duration::from_secs(600));
    assert_eq!(podinfo.source_namespace(), Some("default"));

    let mut no_timeout = podinfo.clone();
    no_timeout.spec.timeout = None;
    assert_eq!(
        no_timeout.timeout().unwrap(),
        Duration::from_secs(570),
        "interval - 30s"
    );
    no_timeout.spec.interval = "45s".into();
    assert_eq!(
        no_timeout.timeout().unwrap(),
        Duration::from_secs(30),
        "never below 30s"
    );

    let apps: Kustomization = serde_json::from_value(docs[1].clone()).unwrap();
    assert_eq!(apps.deletion_policy(), DeletionPolicy::WaitForTermination);
    assert!(apps.deletes_on_removal());
    assert_eq!(apps.retry_interval().unwrap(), Duration::from_secs(120));
    assert_eq!(apps.source_namespace(), Some("flux-system"));

    let repos = examples("gitrepositories.yaml");
    let podinfo: GitRepository = serde_json::from_value(repos[0].clone()).unwrap();
    assert_eq!(podinfo.branch(), "master");
    assert_eq!(podinfo.timeout(), "60s");
    let azure: GitRepository = serde_json::from_value(repos[2].clone()).unwrap();
    assert_eq!(azure.branch(), "master", "no branch given: Flux's default");
}

/// The shape the cluster smoke tests build by hand keeps compiling and serialising minimally.
#[test]
fn git_repository_builds_with_defaults() {
    use gantry_api::source::v1::{GitRepositoryRef, GitRepositorySpec};
    let repo = GitRepository::new(
        "demo",
        GitRepositorySpec {
            url: "http://127.0.0.1:8080/demo.git".into(),
            interval: "1m".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    assert_eq!(
        serde_json::to_value(&repo).unwrap()["spec"],
        serde_json::json!({ "url": "http://127.0.0.1:8080/demo.git", "interval": "1m", "ref": { "branch": "main" } })
    );
}

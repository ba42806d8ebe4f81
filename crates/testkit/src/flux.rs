//! Flux objects as tests write them: a GitRepository on a branch and a Kustomization applying a
//! path from it, created in one call, and `gantry install`'s documents applied as an operator
//! would (`kubectl apply --server-side`).

use std::time::Duration;

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, discovery};

/// Creates GitRepository `name` (branch `main` of `url`) and Kustomization `name` applying
/// `path` from it with prune on, both at a 10 minute interval so only the test's own triggers
/// (or the first reconcile) run them.
pub async fn create_git_kustomization(
    client: &Client,
    namespace: &str,
    name: &str,
    url: &str,
    path: &str,
) {
    let repository = GitRepository::new(
        name,
        GitRepositorySpec {
            url: url.into(),
            interval: "10m".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    Api::<GitRepository>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &repository)
        .await
        .expect("creating the GitRepository");
    let kustomization = Kustomization::new(
        name,
        KustomizationSpec {
            interval: "10m".into(),
            path: Some(path.into()),
            prune: true,
            timeout: Some("30s".into()),
            source_ref: CrossNamespaceSourceReference {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    Api::<Kustomization>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &kustomization)
        .await
        .expect("creating the Kustomization");
}

/// Renames cluster-scoped RBAC objects of `gantry install`'s output with `suffix` (roleRefs
/// follow), so tests installing at once do not share them.
pub fn suffix_cluster_objects(docs: &mut [serde_json::Value], suffix: &str) {
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "ClusterRole" && kind != "ClusterRoleBinding" {
            continue;
        }
        if let Some(name) = doc["metadata"]["name"].as_str() {
            doc["metadata"]["name"] = format!("{name}{suffix}").into();
        }
        if doc["roleRef"]["name"] == "gantry" {
            doc["roleRef"]["name"] = format!("gantry{suffix}").into();
        }
    }
}

/// Applies every document server-side as `manager`, without force: a conflict with another
/// manager's field would be a real upgrade problem. CRDs, shared by every test, are applied
/// with the tests' own manager and force. Any refusal panics naming the object.
pub async fn apply_documents(client: &Client, docs: &[serde_json::Value], manager: &str) {
    for doc in docs {
        let object: DynamicObject =
            serde_json::from_value(doc.clone()).expect("a Kubernetes object");
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("a valid apiVersion");
        let (resource, caps) = discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|err| panic!("discovering {}: {err}", gvk.kind));
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(ns) if caps.scope == discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        let params = if gvk.kind == "CustomResourceDefinition" {
            PatchParams::apply("gantry-tests").force()
        } else {
            PatchParams::apply(manager)
        };
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|err| panic!("the API server refused {} {name}: {err}", gvk.kind));
        if gvk.kind == "Namespace" {
            // Let the namespace settle before objects are created in it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

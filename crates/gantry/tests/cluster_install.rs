//! `gantry install` against a real API server (needs the test cluster: `cargo xtask test`).
//! Everything it prints must be accepted as is, and the Deployment must roll out.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery;

#[tokio::test]
async fn installs_into_a_real_cluster_and_the_deployment_rolls_out() {
    let client = gantry_testkit::client().await;
    // Install into a namespace of its own; `gantry install` creates it.
    let suffix = std::process::id();
    let namespace = format!("gt-install-{suffix:x}");
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "install",
            "--namespace",
            &namespace,
            "--image",
            "registry.invalid/gantry:test",
        ])
        .output()
        .expect("running gantry install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();

    let mut applied = Vec::new();
    for doc in &docs {
        let object: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let (resource, caps) = discovery::pinned_kind(&client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(ns) if caps.scope == discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let name = object.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("gantry-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|err| panic!("the API server refused {} {name}: {err}", gvk.kind));
        applied.push((gvk.kind, name));
        // The namespace must exist before anything is created in it.
        if applied.last().unwrap().0 == "Namespace" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let kinds: Vec<&str> = applied.iter().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    ] {
        assert!(
            kinds.contains(&kind),
            "gantry install prints a {kind}: {kinds:?}"
        );
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let name = applied
        .iter()
        .find(|(k, _)| k == "Deployment")
        .unwrap()
        .1
        .clone();
    gantry_testkit::wait_for(&deployments, &name, Duration::from_secs(60), |d| {
        d.and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.available_replicas.unwrap_or(0) >= 1)
    })
    .await;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let deployment = deployments.get(&name).await.unwrap();
    let sa_name = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .service_account_name
        .unwrap();
    assert!(
        sa.get_opt(&sa_name).await.unwrap().is_some(),
        "the Deployment's ServiceAccount exists"
    );

    // Clean up the cluster-scoped objects too; the CRDs stay (other tests share them).
    for (kind, name) in &applied {
        let dp = DeleteParams::background();
        let _ = match kind.as_str() {
            "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                .delete(name, &dp)
                .await
                .map(|_| ()),
            "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client.clone())
                .delete(name, &dp)
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
    }
    Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::background())
        .await
        .unwrap();
}

//! The API server dies in the middle of an apply and comes back: the next run of the
//! Kustomization must finish the job, with nothing lost. Uses a cluster of its own (the shared
//! one must not be restarted under other tests) with `gantry run` started by `xtask sandbox`.

use std::time::Duration;

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};

mod common;
use common::{Cluster, xtask_ok};

const OBJECTS: usize = 150;

#[tokio::test]
async fn an_api_server_restart_mid_apply_is_recovered_on_the_next_run() {
    let state = tempfile::tempdir().unwrap();
    xtask_ok(state.path(), &["sandbox"]);
    let _cluster = Cluster(state.path());
    let client = gantry_testkit::connect(&state.path().join("admin.kubeconfig")).await;

    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "many");
    let mut manifests = String::new();
    for i in 0..OBJECTS {
        manifests.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  i: \"{i}\"\n"
        ));
    }
    repo.write("deploy/many.yaml", &manifests);
    let sha = repo.commit("many objects");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);

    let ns = "restart";
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    let source = GitRepositorySpec {
        url: server.url("many.git"),
        interval: "10m".into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    repos
        .create(&PostParams::default(), &GitRepository::new("many", source))
        .await
        .unwrap();
    gantry_testkit::wait_for(&repos, "many", Duration::from_secs(60), |r| {
        r.and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.artifact.is_some())
    })
    .await;

    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let spec = KustomizationSpec {
        interval: "10m".into(),
        retry_interval: Some("2s".into()),
        path: Some("./deploy".into()),
        prune: true,
        target_namespace: Some(ns.into()),
        source_ref: CrossNamespaceSourceReference {
            name: "many".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    kustomizations
        .create(&PostParams::default(), &Kustomization::new("many", spec))
        .await
        .unwrap();
    // Wait until the apply has visibly begun, then pull the API server out from under it.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let written = config_maps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if written > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the apply never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    xtask_ok(state.path(), &["cluster", "restart-apiserver"]);

    let client = gantry_testkit::connect(&state.path().join("admin.kubeconfig")).await;
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let revision = format!("main@sha1:{sha}");
    let ks = gantry_testkit::wait_for(&kustomizations, "many", Duration::from_secs(120), |k| {
        k.and_then(|k| k.status.as_ref()).is_some_and(|s| {
            s.last_applied_revision.as_deref() == Some(revision.as_str())
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await
    .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client, ns);
    let names: Vec<String> = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with("cm-"))
        .collect();
    assert_eq!(
        names.len(),
        OBJECTS,
        "every object is there after the restart"
    );
    let inventory = ks.status.unwrap().inventory.unwrap().entries.len();
    assert_eq!(inventory, OBJECTS, "and in the inventory");
}

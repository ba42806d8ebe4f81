//! The in-process hand-offs between controllers, against the real API server: a new artifact
//! reaches the Kustomizations that use it through the source controller's trigger, not through
//! a watch of the GitRepository's status.

use std::time::Duration;

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::trigger::Trigger;
use gantry_source::{ArtifactStore, GitRepositories};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

const WAIT: Duration = Duration::from_secs(60);

fn config_map(value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  value: {value}\n")
}

#[tokio::test]
async fn a_new_artifact_reaches_its_kustomization_in_process_without_a_source_watch() {
    with_namespace("handoff", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/app.yaml", &config_map("one"))
            .commit("one");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);

        let storage = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(storage.path(), "http://gantry.test/");
        let shared = Shared::new(client.clone());
        let (stored, stored_requests) = Trigger::<GitRepository>::new();
        let mut source = Controller::new(
            GitRepositories::new(store.clone()).notify_stored(stored),
            shared.clone(),
        )
        .namespace(Some(&ns));
        let fetch_now = source.trigger();
        // No GitRepository watch: only the in-process hand-off can tell it about a new artifact.
        let kustomize = gantry_kustomize::controller::controller(
            gantry_kustomize::controller::Settings::new(store).without_source_watch(),
            shared,
            stored_requests,
            Some(&ns),
        )
        .concurrency(2);
        let tasks = [
            tokio::spawn(source.run(std::future::pending())),
            tokio::spawn(kustomize.run(std::future::pending())),
        ];

        // Long intervals: nothing but a hand-off explains a second apply within the test.
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        repos
            .create(
                &PostParams::default(),
                &GitRepository::new(
                    "app",
                    GitRepositorySpec {
                        url: server.url("app.git"),
                        interval: "1h".into(),
                        r#ref: Some(GitRepositoryRef {
                            branch: Some("main".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        kustomizations
            .create(
                &PostParams::default(),
                &Kustomization::new(
                    "app",
                    KustomizationSpec {
                        interval: "1h".into(),
                        path: Some("deploy".into()),
                        prune: true,
                        target_namespace: Some(ns.clone()),
                        source_ref: CrossNamespaceSourceReference {
                            kind: gantry_api::kustomize::v1::SourceKind::GitRepository,
                            name: "app".into(),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let holds = |value: &'static str| {
            move |cm: Option<&ConfigMap>| {
                cm.and_then(|c| c.data.as_ref())
                    .and_then(|d| d.get("value"))
                    .is_some_and(|v| v == value)
            }
        };
        wait_for(&config_maps, "app", WAIT, holds("one")).await;

        repo.write("deploy/app.yaml", &config_map("two"))
            .commit("two");
        repo.push("HEAD:refs/heads/main");
        let revision = format!("main@sha1:{}", repo.head());
        fetch_now.request("app", &ns);
        wait_for(&config_maps, "app", Duration::from_secs(20), holds("two")).await;
        let applied = wait_for(&kustomizations, "app", WAIT, |ks| {
            ks.and_then(|k| k.status.as_ref())
                .is_some_and(|s| s.last_applied_revision.as_deref() == Some(revision.as_str()))
        })
        .await;
        assert!(applied.is_some());
        for task in tasks {
            task.abort();
        }
    })
    .await;
}

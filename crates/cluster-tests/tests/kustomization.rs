//! The Kustomization controller on the harness, against the real API server: what deleting a
//! Kustomization leaves behind (issue 14 item 5).

use std::time::Duration;

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::trigger::Trigger;
use gantry_source::{ArtifactStore, GitRepositories};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

fn ready_is(status: &'static str) -> impl Fn(Option<&Kustomization>) -> bool {
    move |ks| {
        ks.and_then(|k| k.status.as_ref())
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == status)
    }
}

#[tokio::test]
async fn a_deleted_kustomization_leaves_no_metrics_and_no_objects() {
    with_namespace("ks-delete", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write(
            "deploy/app.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  a: '1'\n",
        )
        .commit("one");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);

        let storage = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(storage.path(), "http://gantry.test/");
        let shared = Shared::new(client.clone());
        let metrics = shared.metrics.clone();
        let (stored, stored_requests) = Trigger::<GitRepository>::new();
        let source = Controller::new(
            GitRepositories::new(store.clone()).notify_stored(stored),
            shared.clone(),
        )
        .namespace(Some(&ns));
        let kustomize = gantry_kustomize::controller::controller(
            gantry_kustomize::controller::Settings::new(store),
            shared,
            stored_requests,
            Some(&ns),
        );
        let tasks = [
            tokio::spawn(source.run(std::future::pending())),
            tokio::spawn(kustomize.run(std::future::pending())),
        ];

        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let git = GitRepositorySpec {
            url: server.url("app.git"),
            interval: "1h".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        repos
            .create(&PostParams::default(), &GitRepository::new("app", git))
            .await
            .unwrap();
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let spec = KustomizationSpec {
            interval: "1h".into(),
            retry_interval: Some("1s".into()),
            path: Some("deploy".into()),
            prune: true,
            target_namespace: Some(ns.clone()),
            source_ref: CrossNamespaceSourceReference {
                kind: gantry_api::kustomize::v1::SourceKind::GitRepository,
                name: "app".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        kustomizations
            .create(&PostParams::default(), &Kustomization::new("doomed", spec))
            .await
            .unwrap();
        let ready = wait_for(&kustomizations, "doomed", WAIT, ready_is("True"))
            .await
            .unwrap();
        assert!(
            ready
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == "finalizers.fluxcd.io")),
            "{:?}",
            ready.metadata.finalizers
        );
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        assert!(config_maps.get_opt("app").await.unwrap().is_some());

        // Then it fails (Ready=False exported), so the alert rule would fire for it.
        kustomizations
            .patch(
                "doomed",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"path": "missing"}})),
            )
            .await
            .unwrap();
        wait_for(&kustomizations, "doomed", WAIT, ready_is("False")).await;
        let series = |exported: &str| {
            exported
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("name=\"doomed\""))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let exported_failure = |exported: &str| {
            series(exported).iter().any(|l| {
                l.starts_with("gotk_reconcile_condition{") && l.contains("status=\"False\"")
            })
        };
        // Exported right after the status write the wait above saw: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !exported_failure(&metrics.encode()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = metrics.encode();
        assert!(exported_failure(&before), "{before}");
        assert!(
            series(&before)
                .iter()
                .any(|l| l.starts_with("gotk_reconcile_duration_seconds")),
            "{before}"
        );

        kustomizations
            .delete("doomed", &Default::default())
            .await
            .unwrap();
        wait_for(&kustomizations, "doomed", WAIT, |k| k.is_none()).await;
        let after = metrics.encode();
        assert_eq!(series(&after), Vec::<String>::new(), "{after}");
        // prune: true (deletionPolicy MirrorPrune): its objects went with it.
        assert!(config_maps.get_opt("app").await.unwrap().is_none());
        for task in tasks {
            task.abort();
        }
    })
    .await;
}

//! The Kustomization controller on the harness, against the real API server: what deleting a
//! Kustomization leaves behind (its metric series, its objects as `deletionPolicy` says).

use std::time::Duration;

use gantry_api::kustomize::v1::{
    CrossNamespaceSourceReference, DeletionPolicy, Kustomization, KustomizationSpec, SourceKind,
};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::metrics::Metrics;
use gantry_runtime::trigger::Trigger;
use gantry_source::{ArtifactStore, GitRepositories};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

/// A git server with `deploy/app.yaml` (`manifest`), a GitRepository `app` for it and both
/// controllers running; aborted on drop.
struct Running {
    metrics: Metrics,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _server: GitHttpServer,
    _dirs: [tempfile::TempDir; 2],
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn start(client: &Client, ns: &str, manifest: &str) -> Running {
    gantry_testkit::install_crds(client).await;
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("deploy/app.yaml", manifest).commit("one");
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
    .namespace(Some(ns));
    let kustomize = gantry_kustomize::controller::controller(
        gantry_kustomize::controller::Settings::new(store),
        shared,
        stored_requests,
        Some(ns),
    );
    let tasks = vec![
        tokio::spawn(source.run(std::future::pending())),
        tokio::spawn(kustomize.run(std::future::pending())),
    ];
    let git = GitRepositorySpec {
        url: server.url("app.git"),
        interval: "1h".into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<GitRepository>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &GitRepository::new("app", git))
        .await
        .unwrap();
    Running {
        metrics,
        tasks,
        _server: server,
        _dirs: [root, storage],
    }
}

fn spec(ns: &str, prune: bool, policy: Option<DeletionPolicy>) -> KustomizationSpec {
    KustomizationSpec {
        interval: "1h".into(),
        retry_interval: Some("1s".into()),
        timeout: Some("30s".into()),
        path: Some("deploy".into()),
        prune,
        deletion_policy: policy,
        target_namespace: Some(ns.into()),
        source_ref: CrossNamespaceSourceReference {
            kind: SourceKind::GitRepository,
            name: "app".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ready_is(status: &'static str) -> impl Fn(Option<&Kustomization>) -> bool {
    move |ks| {
        ks.and_then(|k| k.status.as_ref())
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == status)
    }
}

const CONFIG_MAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  a: '1'\n";

#[tokio::test]
async fn a_deleted_kustomization_leaves_no_metrics_and_no_objects() {
    with_namespace("ks-delete", |client, ns| async move {
        let running = start(&client, &ns, CONFIG_MAP).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        kustomizations
            .create(
                &PostParams::default(),
                &Kustomization::new("doomed", spec(&ns, true, None)),
            )
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
        while !exported_failure(&running.metrics.encode()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = running.metrics.encode();
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
        let after = running.metrics.encode();
        assert_eq!(series(&after), Vec::<String>::new(), "{after}");
        // prune: true (deletionPolicy MirrorPrune): its objects went with it.
        assert!(config_maps.get_opt("app").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn orphan_leaves_the_objects_and_wait_for_termination_waits_until_they_are_gone() {
    // A finalizer only the test removes: the ConfigMap's deletion waits for it.
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  finalizers: [gantry.test/hold]\ndata:\n  a: '1'\n";
    with_namespace("ks-policy", |client, ns| async move {
        let _running = start(&client, &ns, held).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

        // Orphan, even with prune: true.
        let orphan = Kustomization::new("orphan", spec(&ns, true, Some(DeletionPolicy::Orphan)));
        kustomizations
            .create(&PostParams::default(), &orphan)
            .await
            .unwrap();
        wait_for(&kustomizations, "orphan", WAIT, ready_is("True")).await;
        kustomizations
            .delete("orphan", &Default::default())
            .await
            .unwrap();
        wait_for(&kustomizations, "orphan", WAIT, |k| k.is_none()).await;
        let left = config_maps.get_opt("app").await.unwrap();
        assert!(
            left.is_some_and(|cm| cm.metadata.deletion_timestamp.is_none()),
            "an orphaned object stays"
        );

        // WaitForTermination, even with prune: false: the Kustomization stays until its object
        // is gone.
        let waiting = Kustomization::new(
            "waiting",
            spec(&ns, false, Some(DeletionPolicy::WaitForTermination)),
        );
        kustomizations
            .create(&PostParams::default(), &waiting)
            .await
            .unwrap();
        wait_for(&kustomizations, "waiting", WAIT, ready_is("True")).await;
        kustomizations
            .delete("waiting", &Default::default())
            .await
            .unwrap();
        wait_for(&config_maps, "app", WAIT, |cm| {
            cm.is_some_and(|cm| cm.metadata.deletion_timestamp.is_some())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            kustomizations.get_opt("waiting").await.unwrap().is_some(),
            "still waiting for its ConfigMap to terminate"
        );
        config_maps
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        wait_for(&kustomizations, "waiting", WAIT, |k| k.is_none()).await;
        assert!(config_maps.get_opt("app").await.unwrap().is_none());
    })
    .await;
}

//! What the apply engine and the Kustomization controller send to the API server once a watch
//! cache knows the applied objects, counted exactly: every request of the client under test
//! goes through a counting layer (a real client against the real API server; the layer only
//! records method and URI). Counting on the client side, not in the API server's metrics, keeps
//! the other tests running on the same control plane out of the figures.
//!
//! The semantics that must survive skipping unchanged objects: an unchanged revision sends
//! nothing at all; drift made by hand is still seen and corrected; a changed revision is still
//! dry-run as a whole before anything is written.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_api::kustomize::v1::{
    CrossNamespaceSourceReference, Kustomization, KustomizationSpec, SourceKind,
};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_core::kustomize::inventory::ObjectId;
use gantry_kustomize::apply::{Action, Applier, ApplyError, ApplyOptions, FIELD_MANAGER, Owner};
use gantry_kustomize::cache::Lookup;
use gantry_kustomize::health::WaitOptions;
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::trigger::Trigger;
use gantry_source::{ArtifactStore, GitRepositories};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Method and URI (path and query) of every request sent through a [`counting_client`].
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<(String, String)>>>);

impl Requests {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Requests that change something: not GET, not a dry-run, not a watch or list.
    fn writes(list: &[(String, String)]) -> Vec<(String, String)> {
        list.iter()
            .filter(|(method, uri)| method != "GET" && !uri.contains("dryRun=All"))
            .cloned()
            .collect()
    }
}

async fn counting_client() -> (Client, Requests) {
    let raw = Kubeconfig::read_from(gantry_testkit::kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(raw, &KubeConfigOptions::default())
        .await
        .unwrap();
    let requests = Requests::default();
    let seen = requests.clone();
    let layer =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            seen.0
                .lock()
                .unwrap()
                .push((request.method().to_string(), request.uri().to_string()));
            request
        });
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build();
    (client, requests)
}

fn objects(ns: &str, mode: &str, port: i64) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": ns },
            "spec": {
                "replicas": 0,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] }
                }
            }
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": ns },
            "spec": { "selector": { "app": "web" }, "ports": [{ "port": port, "targetPort": 8080 }] }
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "settings", "namespace": ns },
            "data": { "mode": mode }
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "web", "namespace": ns }
        }),
    ]
}

fn ids(ns: &str) -> Vec<ObjectId> {
    vec![
        ObjectId::new(ns, "web", "apps", "Deployment"),
        ObjectId::new(ns, "web", "", "Service"),
        ObjectId::new(ns, "settings", "", "ConfigMap"),
        ObjectId::new(ns, "web", "", "ServiceAccount"),
    ]
}

/// Waits until the applier's watch cache has seen the current state of every object (its
/// own writes included), so the next apply can decide without asking.
async fn cache_caught_up(applier: &Applier, ns: &str) {
    let cache = applier.cache().expect("a watch cache");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lookups: Vec<Lookup> = ids(ns).iter().map(|id| cache.lookup(id)).collect();
        if lookups.iter().all(|l| matches!(l, Lookup::Present(_))) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch cache did not catch up: {lookups:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_unchanged_revision_sends_nothing_and_hand_made_drift_is_corrected() {
    with_namespace("unchanged", |admin, ns| async move {
        let (client, requests) = counting_client().await;
        let applier = Applier::new(client, FIELD_MANAGER).with_watch_cache();
        let opts = ApplyOptions::new(Owner::new("apps", &ns));
        let first = applier.apply(objects(&ns, "a", 80), &opts).await.unwrap();
        assert!(first.entries.iter().all(|e| e.action == Action::Created));
        applier
            .wait(
                &first.health_targets(),
                &WaitOptions::new(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        cache_caught_up(&applier, &ns).await;

        // The same revision again: not one request, not even a read or a dry-run.
        requests.take();
        let second = applier.apply(objects(&ns, "a", 80), &opts).await.unwrap();
        assert!(
            second.entries.iter().all(|e| e.action == Action::Unchanged),
            "{second:?}"
        );
        applier
            .wait(
                &second.health_targets(),
                &WaitOptions::new(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        let sent = requests.take();
        assert!(sent.is_empty(), "an unchanged revision sent {sent:?}");

        // Drift made by hand, with another field manager: the watch sees it, the next apply
        // corrects it and touches nothing else.
        let cms = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
        let before = applier.cache().unwrap().lookup(&ids(&ns)[2]);
        cms.patch(
            "settings",
            &PatchParams {
                field_manager: Some("hand-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "data": { "mode": "edited" } })),
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while applier.cache().unwrap().lookup(&ids(&ns)[2]) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch never saw the edit"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        requests.take();
        let third = applier.apply(objects(&ns, "a", 80), &opts).await.unwrap();
        let configured: Vec<String> = third
            .with_action(Action::Configured)
            .map(|e| e.id.display())
            .collect();
        assert_eq!(configured, [format!("ConfigMap/{ns}/settings")]);
        let cm = cms.get("settings").await.unwrap();
        assert_eq!(cm.data.unwrap()["mode"], "a", "drift corrected");
        let sent = requests.take();
        assert!(
            sent.iter()
                .all(|(_, uri)| uri.contains("/configmaps/settings")),
            "only the drifted object is read, dry-run and applied: {sent:?}"
        );
        assert_eq!(Requests::writes(&sent).len(), 1, "{sent:?}");
    })
    .await;
}

#[tokio::test]
async fn a_changed_revision_is_dry_run_whole_before_anything_is_written() {
    with_namespace("dryfirst", |admin, ns| async move {
        let (client, requests) = counting_client().await;
        let applier = Applier::new(client, FIELD_MANAGER).with_watch_cache();
        let opts = ApplyOptions::new(Owner::new("apps", &ns));
        let first = applier.apply(objects(&ns, "a", 80), &opts).await.unwrap();
        applier
            .wait(
                &first.health_targets(),
                &WaitOptions::new(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        cache_caught_up(&applier, &ns).await;

        // Two changes; the API server rejects the Service's port. The ConfigMap, applied before
        // the Service in Flux's order, must not be written either.
        requests.take();
        let err = applier
            .apply(objects(&ns, "b", 0), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::DryRun { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("Service/{ns}/web")),
            "{err}"
        );
        let sent = requests.take();
        assert!(
            Requests::writes(&sent).is_empty(),
            "nothing may be written before the whole set passed its dry-run: {sent:?}"
        );
        assert!(
            sent.iter()
                .any(|(_, uri)| uri.contains("/configmaps/settings") && uri.contains("dryRun=All")),
            "the changed ConfigMap is dry-run: {sent:?}"
        );
        let cm = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
            .get("settings")
            .await
            .unwrap();
        assert_eq!(cm.data.unwrap()["mode"], "a");

        // Fixed: both changes go through; the unchanged objects are not even read.
        let fixed = applier.apply(objects(&ns, "b", 81), &opts).await.unwrap();
        let mut configured: Vec<String> = fixed
            .with_action(Action::Configured)
            .map(|e| e.id.display())
            .collect();
        configured.sort();
        assert_eq!(
            configured,
            [
                format!("ConfigMap/{ns}/settings"),
                format!("Service/{ns}/web")
            ]
        );
        let sent = requests.take();
        assert!(
            sent.iter().all(
                |(_, uri)| !uri.contains("/deployments/") && !uri.contains("/serviceaccounts/")
            ),
            "{sent:?}"
        );
        let deployment = Api::<Deployment>::namespaced(admin, &ns)
            .get("web")
            .await
            .unwrap();
        assert!(
            deployment
                .labels()
                .contains_key("kustomize.toolkit.fluxcd.io/name")
        );
    })
    .await;
}

const MANIFEST: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  a: '1'\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n";

#[tokio::test]
async fn drift_correction_runs_of_an_unchanged_revision_write_nothing() {
    with_namespace("quiet", |admin, ns| async move {
        gantry_testkit::install_crds(&admin).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/app.yaml", MANIFEST).commit("one");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let storage = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(storage.path(), "http://gantry.test/");

        // The source controller on the plain client; the Kustomization controller, whose
        // requests are counted, on the counting one.
        let (client, requests) = counting_client().await;
        let (stored, stored_requests) = Trigger::<GitRepository>::new();
        let source = Controller::new(
            GitRepositories::new(store.clone()).notify_stored(stored),
            Shared::new(admin.clone()),
        )
        .namespace(Some(&ns));
        let kustomize = gantry_kustomize::controller::controller(
            gantry_kustomize::controller::Settings::new(store).without_source_watch(),
            Shared::new(client),
            stored_requests,
            Some(&ns),
        );
        let tasks = [
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
        Api::<GitRepository>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &GitRepository::new("app", git))
            .await
            .unwrap();
        // Every 2 s a drift-correction run (interval), as the interval firing in production.
        let spec = KustomizationSpec {
            interval: "2s".into(),
            timeout: Some("30s".into()),
            path: Some("deploy".into()),
            prune: true,
            wait: true,
            target_namespace: Some(ns.clone()),
            source_ref: CrossNamespaceSourceReference {
                kind: SourceKind::GitRepository,
                name: "app".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let kustomizations = Api::<Kustomization>::namespaced(admin.clone(), &ns);
        kustomizations
            .create(&PostParams::default(), &Kustomization::new("app", spec))
            .await
            .unwrap();
        wait_for(&kustomizations, "app", Duration::from_secs(60), |ks| {
            ks.and_then(|k| k.status.as_ref())
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True")
        })
        .await;
        // Let the first runs settle (the watch catching up with the first apply).
        tokio::time::sleep(Duration::from_secs(6)).await;
        requests.take();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let sent = requests.take();
        let runs = sent
            .iter()
            .filter(|(method, uri)| method == "GET" && uri.contains("/gitrepositories/app"))
            .count();
        assert!(
            runs >= 2,
            "the interval must have fired during the window: {sent:?}"
        );
        assert!(
            Requests::writes(&sent).is_empty(),
            "drift-correction runs of an unchanged revision wrote: {:?}",
            Requests::writes(&sent)
        );
        assert!(
            sent.iter().all(|(_, uri)| !uri.contains("dryRun")),
            "nor dry-ran anything: {sent:?}"
        );
        for task in tasks {
            task.abort();
        }
    })
    .await;
}

/// Whether a request is a single-object read of `resource/name` (not a list or a watch).
fn reads(request: &(String, String), resource_and_name: &str) -> bool {
    let (method, uri) = request;
    let path = uri.split('?').next().unwrap_or_default();
    method == "GET" && path.ends_with(resource_and_name)
}

#[tokio::test]
async fn a_first_reconcile_reads_nothing_the_watches_know_and_later_runs_write_nothing() {
    with_namespace("watched", |admin, ns| async move {
        gantry_testkit::install_crds(&admin).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/app.yaml", MANIFEST).commit("one");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let storage = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(storage.path(), "http://gantry.test/");

        // As `gantry run` wires them: the source watch on (it fills the source store).
        let (client, requests) = counting_client().await;
        let (stored, stored_requests) = Trigger::<GitRepository>::new();
        let source = Controller::new(
            GitRepositories::new(store.clone()).notify_stored(stored),
            Shared::new(admin.clone()),
        )
        .namespace(Some(&ns));
        let kustomize = gantry_kustomize::controller::controller(
            gantry_kustomize::controller::Settings::new(store),
            Shared::new(client),
            stored_requests,
            Some(&ns),
        );
        let tasks = [
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
        let repos = Api::<GitRepository>::namespaced(admin.clone(), &ns);
        repos
            .create(&PostParams::default(), &GitRepository::new("app", git))
            .await
            .unwrap();
        wait_for(&repos, "app", Duration::from_secs(60), |r| {
            r.and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.artifact.is_some())
        })
        .await;
        // The source watch has had time to list (it started with the controller).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let spec = KustomizationSpec {
            interval: "2s".into(),
            timeout: Some("30s".into()),
            path: Some("deploy".into()),
            prune: true,
            wait: true,
            target_namespace: Some(ns.clone()),
            source_ref: CrossNamespaceSourceReference {
                kind: SourceKind::GitRepository,
                name: "app".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let kustomizations = Api::<Kustomization>::namespaced(admin.clone(), &ns);
        kustomizations
            .create(&PostParams::default(), &Kustomization::new("app", spec))
            .await
            .unwrap();
        let ready = |ks: Option<&Kustomization>| {
            ks.and_then(|k| k.status.as_ref())
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True")
        };
        wait_for(&kustomizations, "app", Duration::from_secs(60), ready).await;

        // The first run: the source's artifact from the watch's store, the objects known absent
        // from their kinds' first lists; every object dry-run before the first write.
        let sent = requests.take();
        for read in [
            "/gitrepositories/app",
            "/configmaps/app",
            "/serviceaccounts/app",
        ] {
            assert!(
                !sent.iter().any(|r| reads(r, read)),
                "the first run read {read}: {sent:?}"
            );
        }
        let applies: Vec<usize> = sent
            .iter()
            .enumerate()
            .filter(|(_, (method, uri))| {
                method == "PATCH"
                    && (uri.contains("/configmaps/app") || uri.contains("/serviceaccounts/app"))
            })
            .map(|(i, _)| i)
            .collect();
        let is_dry_run = |i: &usize| sent[*i].1.contains("dryRun=All");
        let dry_runs: Vec<usize> = applies.iter().copied().filter(is_dry_run).collect();
        let writes: Vec<usize> = applies.iter().copied().filter(|i| !is_dry_run(i)).collect();
        assert_eq!((dry_runs.len(), writes.len()), (2, 2), "{sent:?}");
        assert!(
            dry_runs.iter().max() < writes.iter().min(),
            "every object is dry-run before the first write: {sent:?}"
        );

        // Runs every 2 s of an unchanged revision: nothing written, nothing dry-run.
        tokio::time::sleep(Duration::from_secs(6)).await;
        requests.take();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let sent = requests.take();
        assert!(
            Requests::writes(&sent).is_empty(),
            "runs of an unchanged revision wrote: {:?}",
            Requests::writes(&sent)
        );
        assert!(
            sent.iter().all(|(_, uri)| !uri.contains("dryRun")),
            "nor dry-ran anything: {sent:?}"
        );

        // Drift made by hand: the next interval run (the runs did happen) corrects it, and
        // writes only that object (and the event that says so).
        let cms = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
        cms.patch(
            "app",
            &PatchParams {
                field_manager: Some("hand-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "data": { "a": "edited" } })),
        )
        .await
        .unwrap();
        wait_for(&cms, "app", Duration::from_secs(60), |cm| {
            cm.and_then(|cm| cm.data.as_ref())
                .is_some_and(|d| d["a"] == "1")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = requests.take();
        let writes = Requests::writes(&sent);
        assert!(
            !writes.is_empty()
                && writes
                    .iter()
                    .all(|(_, uri)| uri.contains("/configmaps/app") || uri.contains("/events")),
            "only the drifted object (and an event) is written: {writes:?}"
        );
        for task in tasks {
            task.abort();
        }
    })
    .await;
}

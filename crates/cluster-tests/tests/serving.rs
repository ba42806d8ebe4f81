//! Knative Serving's API on the real control plane: the Service and Revision controllers
//! (in process, as `gantry run` wires them) turn Knative Services into Revisions, Deployments
//! and a Kubernetes Service, with Knative's status. kwok makes the pods Ready; nothing here
//! connects to a pod or Service address.

use std::time::Duration;

use gantry_api::kustomize::v1::{
    CrossNamespaceSourceReference, Kustomization, KustomizationSpec, SourceKind,
};
use gantry_api::serving::v1::{Revision, Service};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_core::serving::gc;
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::trigger::Trigger;
use gantry_source::{ArtifactStore, GitRepositories};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const ROUTER: &str = "gantry-serving.gantry-system.svc.cluster.local";

/// Tasks aborted on drop.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

fn settings(ns: &str) -> gantry_serving::Settings {
    gantry_serving::Settings {
        namespace: Some(ns.to_owned()),
        router_host: ROUTER.to_owned(),
        ..gantry_serving::Settings::default()
    }
}

async fn serving(client: &Client, settings: gantry_serving::Settings) -> Tasks {
    gantry_testkit::install_crds(client).await;
    let shared = Shared::new(client.clone());
    Tasks(vec![tokio::spawn(gantry_serving::run(
        shared,
        settings,
        std::future::pending::<()>(),
    ))])
}

fn ksvc(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

fn hello(image: &str) -> serde_json::Value {
    json!({ "template": { "spec": { "containers": [{
        "image": image,
        "env": [{ "name": "TARGET", "value": "Go Sample v1" }]
    }] } } })
}

fn condition<'a>(
    svc: Option<&'a Service>,
    type_: &str,
) -> Option<&'a gantry_api::serving::Condition> {
    svc?.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn ready_with(latest_ready: &'static str) -> impl Fn(Option<&Service>) -> bool {
    move |svc| {
        condition(svc, "Ready").is_some_and(|c| c.status == "True")
            && svc.and_then(|s| s.status.as_ref()).is_some_and(|s| {
                s.latest_ready_revision_name.as_deref() == Some(latest_ready)
                    && s.observed_generation == s_generation(svc)
            })
    }
}

fn s_generation(svc: Option<&Service>) -> Option<i64> {
    svc.and_then(|s| s.metadata.generation)
}

fn rev_condition<'a>(rev: Option<&'a Revision>, type_: &str) -> Option<(&'a str, &'a str)> {
    rev?.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

async fn patch_spec(api: &Api<Service>, name: &str, spec: serde_json::Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .unwrap();
}

/// Knative's helloworld sample (its `test/test_images/helloworld/service.yaml`, image and
/// namespace aside), applied from git by a Kustomization.
const HELLOWORLD: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: helloworld
spec:
  template:
    spec:
      containers:
      - image: registry.invalid/knative/helloworld:1
";

#[tokio::test]
async fn a_knative_example_applied_by_a_kustomization_becomes_ready_with_its_url_and_traffic() {
    with_namespace("ksvc-gitops", |client, ns| async move {
        let mut tasks = serving(&client, settings(&ns)).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/ksvc.yaml", HELLOWORLD).commit("one");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let storage = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(storage.path(), "http://gantry.test/");
        let shared = Shared::new(client.clone());
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
        tasks
            .0
            .push(tokio::spawn(source.run(std::future::pending())));
        tasks
            .0
            .push(tokio::spawn(kustomize.run(std::future::pending())));
        let git = GitRepositorySpec {
            url: server.url("app.git"),
            interval: "1h".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<GitRepository>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &GitRepository::new("app", git))
            .await
            .unwrap();
        let ks = KustomizationSpec {
            interval: "1h".into(),
            retry_interval: Some("1s".into()),
            timeout: Some("60s".into()),
            path: Some("deploy".into()),
            prune: true,
            target_namespace: Some(ns.clone()),
            source_ref: CrossNamespaceSourceReference {
                kind: SourceKind::GitRepository,
                name: "app".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Kustomization>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &Kustomization::new("app", ks))
            .await
            .unwrap();

        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let svc = wait_for(
            &services,
            "helloworld",
            WAIT,
            ready_with("helloworld-00001"),
        )
        .await
        .unwrap();
        let status = svc.status.unwrap();
        assert_eq!(
            status.url.as_deref(),
            Some(format!("http://helloworld.{ns}.svc.cluster.local").as_str())
        );
        assert_eq!(
            status.address.and_then(|a| a.url).as_deref(),
            Some(format!("http://helloworld.{ns}.svc.cluster.local").as_str())
        );
        assert_eq!(
            status.latest_created_revision_name.as_deref(),
            Some("helloworld-00001")
        );
        assert_eq!(status.traffic.len(), 1);
        let t = &status.traffic[0];
        assert_eq!(t.revision_name.as_deref(), Some("helloworld-00001"));
        assert_eq!((t.latest_revision, t.percent), (Some(true), Some(100)));
        for type_ in ["Ready", "ConfigurationsReady", "RoutesReady"] {
            let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
            assert_eq!(c.status, "True", "{type_}");
        }

        // The Revision's Deployment, as Knative labels it, and the Service to the router.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = deployments
            .get("helloworld-00001-deployment")
            .await
            .unwrap();
        let labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["serving.knative.dev/service"], "helloworld");
        assert_eq!(labels["serving.knative.dev/configuration"], "helloworld");
        assert_eq!(labels["serving.knative.dev/revision"], "helloworld-00001");
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        let rev = revisions.get("helloworld-00001").await.unwrap();
        assert_eq!(
            labels["serving.knative.dev/revisionUID"],
            rev.metadata.uid.clone().unwrap()
        );
        assert_eq!(rev_condition(Some(&rev), "Active"), Some(("True", "")));
        let kube_svc = Api::<KubeService>::namespaced(client.clone(), &ns)
            .get("helloworld")
            .await
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(kube_svc.type_.as_deref(), Some("ExternalName"));
        assert_eq!(kube_svc.external_name.as_deref(), Some(ROUTER));

        // Pointed elsewhere by hand: put back at once (its watch wakes the Service; the next
        // timed look is hours away).
        let kube_services = Api::<KubeService>::namespaced(client.clone(), &ns);
        kube_services
            .patch(
                "helloworld",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"externalName": "elsewhere.invalid"}})),
            )
            .await
            .unwrap();
        wait_for(&kube_services, "helloworld", WAIT, |s| {
            s.and_then(|s| s.spec.as_ref()?.external_name.as_deref()) == Some(ROUTER)
        })
        .await;

        // Applied again by the Kustomization (drift correction): still one Revision.
        Api::<Kustomization>::namespaced(client.clone(), &ns)
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "reconcile.fluxcd.io/requestedAt": "again"
                }}})),
            )
            .await
            .unwrap();
        wait_for(
            &Api::<Kustomization>::namespaced(client.clone(), &ns),
            "app",
            WAIT,
            |k| {
                k.and_then(|k| k.status.as_ref())
                    .and_then(|s| s.last_handled_reconcile_at.as_deref())
                    == Some("again")
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            revisions
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn a_template_change_creates_the_next_revision_and_moves_the_traffic() {
    with_namespace("ksvc-rollout", |client, ns| async move {
        let _tasks = serving(&client, settings(&ns)).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        services
            .create(
                &PostParams::default(),
                &ksvc("hello", hello("registry.invalid/hello:1")),
            )
            .await
            .unwrap();
        wait_for(&services, "hello", WAIT, ready_with("hello-00001")).await;
        // A traffic-only change is not a new Revision.
        patch_spec(
            &services,
            "hello",
            json!({ "traffic": [
            { "latestRevision": true, "percent": 100, "tag": "current" }
        ] }),
        )
        .await;
        let svc = wait_for(&services, "hello", WAIT, ready_with("hello-00001"))
            .await
            .unwrap();
        let status = svc.status.unwrap();
        assert_eq!(
            status.latest_created_revision_name.as_deref(),
            Some("hello-00001")
        );
        assert_eq!(
            status.traffic[0].url.as_deref(),
            Some(format!("http://current-hello.{ns}.svc.cluster.local").as_str())
        );

        patch_spec(&services, "hello", hello("registry.invalid/hello:2")).await;
        let svc = wait_for(&services, "hello", WAIT, ready_with("hello-00002"))
            .await
            .unwrap();
        let status = svc.status.unwrap();
        assert_eq!(
            status.latest_created_revision_name.as_deref(),
            Some("hello-00002")
        );
        assert_eq!(
            status.traffic[0].revision_name.as_deref(),
            Some("hello-00002")
        );
        assert_eq!(status.traffic[0].percent, Some(100));
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        let old = wait_for(&revisions, "hello-00001", WAIT, |r| {
            r.is_some_and(|r| {
                r.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("serving.knative.dev/routingState"))
                    == Some(&"reserve".to_owned())
            })
        })
        .await
        .unwrap();
        assert_eq!(
            old.metadata.labels.unwrap()["serving.knative.dev/configurationGeneration"],
            "1"
        );
        let new = revisions.get("hello-00002").await.unwrap();
        assert_eq!(
            new.spec.containers[0].image.as_deref(),
            Some("registry.invalid/hello:2")
        );
    })
    .await;
}

#[tokio::test]
async fn a_traffic_split_with_tags_and_chosen_revision_names_is_resolved_in_status() {
    with_namespace("ksvc-split", |client, ns| async move {
        let _tasks = serving(&client, settings(&ns)).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let mut blue = hello("registry.invalid/app:blue");
        blue["template"]["metadata"] = json!({ "name": "app-blue" });
        services
            .create(&PostParams::default(), &ksvc("app", blue))
            .await
            .unwrap();
        wait_for(&services, "app", WAIT, ready_with("app-blue")).await;
        let mut green = hello("registry.invalid/app:green");
        green["template"]["metadata"] = json!({ "name": "app-green" });
        green["traffic"] = json!([
            { "revisionName": "app-blue", "percent": 80, "tag": "blue" },
            { "latestRevision": true, "percent": 20, "tag": "latest" }
        ]);
        patch_spec(&services, "app", green).await;
        let svc = wait_for(&services, "app", WAIT, ready_with("app-green"))
            .await
            .unwrap();
        let traffic = svc.status.unwrap().traffic;
        let got: Vec<_> = traffic
            .iter()
            .map(|t| {
                (
                    t.revision_name.clone().unwrap(),
                    t.latest_revision,
                    t.percent,
                    t.tag.clone().unwrap(),
                    t.url.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "app-blue".to_owned(),
                    Some(false),
                    Some(80),
                    "blue".to_owned(),
                    format!("http://blue-app.{ns}.svc.cluster.local")
                ),
                (
                    "app-green".to_owned(),
                    Some(true),
                    Some(20),
                    "latest".to_owned(),
                    format!("http://latest-app.{ns}.svc.cluster.local")
                ),
            ]
        );
        // Both routed: neither is in reserve.
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        for name in ["app-blue", "app-green"] {
            let rev = revisions.get(name).await.unwrap();
            assert_eq!(
                rev.metadata.labels.unwrap()["serving.knative.dev/routingState"],
                "active"
            );
        }

        // Traffic to a Revision that does not exist: RoutesReady=False, the old routes stay.
        patch_spec(
            &services,
            "app",
            json!({ "traffic": [
            { "revisionName": "app-missing", "percent": 100 }
        ] }),
        )
        .await;
        let svc = wait_for(&services, "app", WAIT, |s| {
            condition(s, "RoutesReady").is_some_and(|c| c.status == "False")
        })
        .await
        .unwrap();
        let routes = condition(Some(&svc), "RoutesReady").unwrap();
        assert_eq!(routes.reason, "RevisionMissing");
        assert!(routes.message.contains("app-missing"), "{}", routes.message);
        assert_eq!(condition(Some(&svc), "Ready").unwrap().status, "False");
        assert_eq!(svc.status.unwrap().traffic.len(), 2, "old routes kept");
    })
    .await;
}

#[tokio::test]
async fn unsupported_fields_are_reported_by_name_and_nothing_is_created() {
    with_namespace("ksvc-unsupported", |client, ns| async move {
        let _tasks = serving(&client, settings(&ns)).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let spec = json!({ "template": {
            "metadata": { "annotations": {
                "autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev",
                "autoscaling.knative.dev/panic-threshold-percentage": "150"
            } },
            "spec": { "containers": [
                { "image": "registry.invalid/app:1" },
                { "image": "registry.invalid/sidecar:1" }
            ] }
        } });
        services
            .create(&PostParams::default(), &ksvc("odd", spec))
            .await
            .unwrap();
        let svc = wait_for(&services, "odd", WAIT, |s| {
            condition(s, "Ready").is_some_and(|c| c.status == "False")
        })
        .await
        .unwrap();
        let ready = condition(Some(&svc), "Ready").unwrap();
        assert_eq!(ready.reason, "UnsupportedField");
        for path in [
            "spec.template.spec.containers[1]",
            "spec.template.metadata.annotations[autoscaling.knative.dev/class]",
            "spec.template.metadata.annotations[autoscaling.knative.dev/panic-threshold-percentage]",
        ] {
            assert!(ready.message.contains(path), "{path} in {}", ready.message);
        }
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = events.list(&ListParams::default()).await.unwrap();
            let found = list.items.iter().any(|e| {
                e.reason.as_deref() == Some("UnsupportedField")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("odd")
                    && e.note.as_deref().is_some_and(|n| n.contains("containers[1]"))
            });
            if found {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no UnsupportedField event: {list:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        assert!(revisions.list(&ListParams::default()).await.unwrap().items.is_empty());

        // Fixed: it runs.
        services
            .patch(
                "odd",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "template": {
                    "metadata": { "annotations": {
                        "autoscaling.knative.dev/class": null,
                        "autoscaling.knative.dev/panic-threshold-percentage": null
                    } },
                    "spec": { "containers": [{ "image": "registry.invalid/app:1" }] }
                } } })),
            )
            .await
            .unwrap();
        wait_for(&services, "odd", WAIT, ready_with("odd-00001")).await;
    })
    .await;
}

#[tokio::test]
async fn replicas_the_autoscaler_set_are_never_reset() {
    with_namespace("ksvc-replicas", |client, ns| async move {
        let _tasks = serving(&client, settings(&ns)).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let mut spec = hello("registry.invalid/hello:1");
        spec["template"]["metadata"] = json!({ "annotations": {
            "autoscaling.knative.dev/initial-scale": "2"
        } });
        services
            .create(&PostParams::default(), &ksvc("hello", spec))
            .await
            .unwrap();
        wait_for(&services, "hello", WAIT, ready_with("hello-00001")).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = deployments.get("hello-00001-deployment").await.unwrap();
        assert_eq!(d.spec.unwrap().replicas, Some(2), "initial-scale");

        // The autoscaler (here: the test) scales to zero through /scale.
        deployments
            .patch_scale(
                "hello-00001-deployment",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": 0 } })),
            )
            .await
            .unwrap();
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        let rev = wait_for(&revisions, "hello-00001", WAIT, |r| {
            rev_condition(r, "Active") == Some(("False", "NoTraffic"))
        })
        .await
        .unwrap();
        assert_eq!(
            rev_condition(Some(&rev), "Ready").map(|c| c.0),
            Some("True")
        );
        assert_eq!(rev.status.as_ref().unwrap().desired_replicas, Some(0));

        // The next reconcile of the Service (a new generation) leaves the replicas alone.
        patch_spec(
            &services,
            "hello",
            json!({ "traffic": [
            { "latestRevision": true, "percent": 100, "tag": "now" }
        ] }),
        )
        .await;
        let svc = wait_for(&services, "hello", WAIT, ready_with("hello-00001"))
            .await
            .unwrap();
        assert!(svc.status.unwrap().traffic[0].tag.is_some());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let d = deployments.get("hello-00001-deployment").await.unwrap();
        assert_eq!(d.spec.unwrap().replicas, Some(0));
        // A Deployment deleted by hand comes back, with the initial scale.
        deployments
            .delete("hello-00001-deployment", &Default::default())
            .await
            .unwrap();
        let uid = d.metadata.uid.clone();
        let d = wait_for(&deployments, "hello-00001-deployment", WAIT, |d| {
            d.is_some_and(|d| d.metadata.uid != uid && d.metadata.deletion_timestamp.is_none())
        })
        .await
        .unwrap();
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
        let managers: Vec<_> = d
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
            })
            .filter_map(|m| m.manager)
            .collect();
        assert!(
            !managers.iter().any(|m| m == gantry_serving::CONTROLLER),
            "the controller owns no replicas: {managers:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn revisions_without_traffic_are_collected_beyond_the_configured_count() {
    with_namespace("ksvc-gc", |client, ns| async move {
        let settings = gantry_serving::Settings {
            gc: gc::Config {
                retain_since_create_time: None,
                retain_since_last_active_time: None,
                min_non_active_revisions: 1,
                max_non_active_revisions: Some(1),
            },
            ..settings(&ns)
        };
        let _tasks = serving(&client, settings).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        services
            .create(
                &PostParams::default(),
                &ksvc("hello", hello("registry.invalid/hello:1")),
            )
            .await
            .unwrap();
        wait_for(&services, "hello", WAIT, ready_with("hello-00001")).await;
        for (i, latest) in [(2, "hello-00002"), (3, "hello-00003"), (4, "hello-00004")] {
            patch_spec(
                &services,
                "hello",
                hello(&format!("registry.invalid/hello:{i}")),
            )
            .await;
            wait_for(&services, "hello", WAIT, ready_with(latest)).await;
        }
        // A Service reconcile after the last routing change collects: 1 and 2 go, 3 stays in
        // reserve (min/max 1), 4 serves.
        services
            .patch(
                "hello",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "reconcile.fluxcd.io/requestedAt": "gc"
                }}})),
            )
            .await
            .unwrap();
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut names: Vec<_> = revisions
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|r| r.metadata.deletion_timestamp.is_none())
                .filter_map(|r| r.metadata.name)
                .collect();
            names.sort();
            if names == ["hello-00003", "hello-00004"] {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "left: {names:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let svc = services.get("hello").await.unwrap();
        assert_eq!(
            svc.status.unwrap().latest_ready_revision_name.as_deref(),
            Some("hello-00004")
        );
    })
    .await;
}

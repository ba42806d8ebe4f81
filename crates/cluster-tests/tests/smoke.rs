//! Smoke tests of the control plane itself: if these fail, no other cluster test means anything.

use std::time::Duration;

use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::{create_namespace, delete_namespace, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1.0.0" }] }
            }
        }
    }))
    .expect("valid Deployment")
}

fn is_available(d: &Deployment, replicas: i32) -> bool {
    let status = d.status.clone().unwrap_or_default();
    let available = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    available
        && status.ready_replicas == Some(replicas)
        && status.updated_replicas == Some(replicas)
        && status.observed_generation == d.metadata.generation
}

#[tokio::test]
async fn a_deployment_with_three_replicas_becomes_available() {
    with_namespace("deploy", |client, ns| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &deployment("web", 3))
            .await
            .expect("create Deployment");

        wait_for(&deployments, "web", Duration::from_secs(60), |d| {
            d.is_some_and(|d| is_available(d, 3))
        })
        .await;

        // Available must mean real Pods, scheduled onto the kwok node and Ready.
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let pods = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        assert_eq!(pods.items.len(), 3, "three Pods exist");
        for pod in &pods.items {
            let spec = pod.spec.as_ref().unwrap();
            assert!(
                spec.node_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("kwok-node-")),
                "{} is bound to a kwok node: {:?}",
                pod.name_any(),
                spec.node_name
            );
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            assert!(ready, "{} is Ready", pod.name_any());
        }
    })
    .await;
}

#[tokio::test]
async fn a_crd_generated_from_the_rust_types_installs_and_objects_round_trip() {
    with_namespace("crd", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;

        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let spec = GitRepositorySpec {
            url: "https://git.example.com/team/app.git".into(),
            interval: "1m0s".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = repos
            .create(
                &PostParams::default(),
                &GitRepository::new("app", spec.clone()),
            )
            .await
            .expect("create GitRepository");
        assert!(created.metadata.uid.is_some(), "the server assigned a uid");

        let read = repos.get("app").await.expect("read GitRepository back");
        assert_eq!(read.spec.url, spec.url);
        assert_eq!(read.spec.interval, spec.interval);
        assert_eq!(read.spec.r#ref, spec.r#ref);

        // The schema is enforced by the API server, not only by our types: an scp-style URL
        // is refused, as Flux refuses it.
        let bad = GitRepository::new(
            "bad",
            GitRepositorySpec {
                url: "git@github.com:team/app.git".into(),
                ..spec
            },
        );
        let err = repos
            .create(&PostParams::default(), &bad)
            .await
            .expect_err("an scp-style URL must be rejected");
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.url")),
            "rejected with 422 naming spec.url, got: {err}"
        );
    })
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_objects() {
    let client = gantry_testkit::client().await;
    let ns = create_namespace(&client, "nsdel").await;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("settings".into());
    cm.data = Some([("mode".to_string(), "staging".to_string())].into());
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("worker", 2))
        .await
        .unwrap();
    wait_for(&deployments, "worker", Duration::from_secs(60), |d| {
        d.is_some_and(|d| is_available(d, 2))
    })
    .await;

    delete_namespace(&client, &ns).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // The namespace controller must empty it (Pods included, which kwok lets go) before it goes.
    wait_for(&namespaces, &ns, Duration::from_secs(90), |n| n.is_none()).await;

    for (kind, count) in [
        (
            "ConfigMap",
            config_maps
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
        ),
        (
            "Deployment",
            deployments
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
        ),
        (
            "Pod",
            Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
        ),
    ] {
        assert_eq!(count, 0, "no {kind} is left in the deleted namespace {ns}");
    }
    // Deleting again is harmless (the testkit relies on it).
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}

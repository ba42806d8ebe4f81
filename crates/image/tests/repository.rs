//! The ImageRepository controller against the local control plane and a real registry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gantry_api::image::v1::{ImageRepository, ImageRepositorySpec};
use gantry_image::controller::ImageRepositories;
use gantry_image::tags::TagStore;
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::metrics::Metrics;
use gantry_runtime::trigger::Trigger;
use gantry_testkit::registry::{Registry, RegistryAuth};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// A controller running in the background; stopped (and awaited) on [`Running::stop`].
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    // What the in-process "scan changed the list" hand-off announced, in order.
    scans: Arc<Mutex<Vec<(String, String)>>>,
    metrics: Metrics,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }
}

fn start(client: &Client, namespace: &str, store: &TagStore) -> Running {
    let scans = Arc::new(Mutex::new(Vec::new()));
    let seen = scans.clone();
    let (scanned, mut announced) = Trigger::<ImageRepository>::new();
    tokio::spawn(async move {
        while let Some(repo) = announced.next().await {
            let ns = repo.namespace.clone().unwrap_or_default();
            seen.lock().unwrap().push((ns, repo.name.clone()));
        }
    });
    let shared = Shared::new(client.clone());
    let metrics = shared.metrics.clone();
    let controller = Controller::new(
        ImageRepositories::new(store.clone()).notify_scanned(scanned),
        shared,
    )
    .namespace(Some(namespace))
    .concurrency(4);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    Running {
        stop: Some(stop),
        task,
        scans,
        metrics,
    }
}

fn repository(name: &str, image: &str) -> ImageRepository {
    ImageRepository::new(
        name,
        ImageRepositorySpec {
            image: image.into(),
            interval: "1h".into(),
            insecure: true,
            ..Default::default()
        },
    )
}

async fn wait_ready(
    api: &Api<ImageRepository>,
    name: &str,
    check: impl Fn(&ImageRepository) -> bool,
) -> ImageRepository {
    gantry_testkit::wait_for(api, name, Duration::from_secs(30), |o| {
        o.is_some_and(|o| {
            o.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }) && check(o)
        })
    })
    .await
    .expect("object")
}

fn ready(obj: &ImageRepository) -> (String, String, String) {
    let c = obj
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn has_condition(obj: &ImageRepository, type_: &str, status: &str, reason: &str) -> bool {
    obj.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
    })
}

// Objects keep a finalizer; delete them while the controller still runs, so the namespace can go.
async fn delete_all(api: &Api<ImageRepository>) {
    for obj in api.list(&Default::default()).await.unwrap() {
        let _ = api.delete(&obj.name_any(), &DeleteParams::default()).await;
    }
    for _ in 0..100 {
        if api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Last resort so the test namespace does not hang in Terminating.
    for obj in api.list(&Default::default()).await.unwrap() {
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        let _ = api
            .patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
    }
    panic!("ImageRepositories were not finalized by the controller");
}

#[tokio::test]
async fn scans_rescans_on_request_and_keeps_tags_across_restarts() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let mut pushed: Vec<String> = (1..=12).map(|i| format!("1.{i}.0")).collect();
    pushed.push("sha256-abc.sig".into());
    registry.push_tags("team/app", &pushed).await;
    let storage = tempfile::tempdir().unwrap();
    let store = TagStore::new(storage.path().join("images"));

    gantry_testkit::with_namespace("imgrepo", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let api: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        let image = registry.image("team/app");
        api.create(&PostParams::default(), &repository("app", &image))
            .await
            .unwrap();
        let running = start(&client, &ns, &store);

        let obj = wait_ready(&api, "app", |_| true).await;
        let status = obj.status.clone().unwrap();
        assert_eq!(ready(&obj), ("True".into(), "Succeeded".into(), "successful scan: found 12 tags".into()));
        assert_eq!(status.canonical_image_name.as_deref(), Some(image.as_str()));
        assert_eq!(status.observed_exclusion_list, [r"^.*\.sig$"]);
        assert_eq!(status.observed_generation, obj.metadata.generation);
        let scan = status.last_scan_result.clone().unwrap();
        assert_eq!(scan.tag_count, 12, "the .sig tag is excluded by default");
        assert_eq!(
            scan.latest_tags,
            ["1.9.0", "1.8.0", "1.7.0", "1.6.0", "1.5.0", "1.4.0", "1.3.0", "1.2.0", "1.12.0", "1.11.0"]
        );
        let revision = scan.revision.clone().unwrap();
        assert!(revision.parse::<u32>().is_ok(), "Flux's revision is a decimal Adler-32: {revision}");
        assert!(obj.finalizers().contains(&"finalizers.fluxcd.io".to_string()));
        let mut stored = Vec::new();
        assert!(store.for_each_tag(&ns, "app", |t| { stored.push(t.to_owned()); true }).unwrap());
        stored.sort();
        let mut expected: Vec<String> = pushed.iter().filter(|t| !t.ends_with(".sig")).cloned().collect();
        expected.sort();
        assert_eq!(stored, expected);
        assert_eq!(running.scans.lock().unwrap().as_slice(), [(ns.clone(), "app".to_string())]);

        // A pushed tag shows up on the next requested scan.
        registry.push("team/app", "2.0.0").await;
        let patch = serde_json::json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "first"}}});
        api.patch("app", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let obj = wait_ready(&api, "app", |o| {
            o.status.as_ref().is_some_and(|s| s.last_handled_reconcile_at.as_deref() == Some("first"))
        })
        .await;
        let scan = obj.status.clone().unwrap().last_scan_result.unwrap();
        assert_eq!(scan.tag_count, 13);
        assert_eq!(scan.latest_tags[0], "2.0.0");
        assert_ne!(scan.revision.as_deref(), Some(revision.as_str()));
        assert!(store.tags(&ns, "app").unwrap().unwrap().any(|t| t.unwrap() == "2.0.0"));
        assert_eq!(running.scans.lock().unwrap().len(), 2, "the hook fired for the new list");
        let scan_time = scan.scan_time.clone().unwrap();

        // A restarted controller keeps the stored list and does not rescan before the interval.
        running.stop().await;
        let running = start(&client, &ns, &store);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let obj = api.get("app").await.unwrap();
        let after = obj.status.clone().unwrap().last_scan_result.unwrap();
        assert_eq!(after.scan_time, Some(scan_time), "no rescan after the restart");
        assert!(running.scans.lock().unwrap().is_empty());
        assert_eq!(store.tags(&ns, "app").unwrap().unwrap().count(), 13);

        // Deleting the object removes its stored tags.
        delete_all(&api).await;
        assert!(!store.exists(&ns, "app"));
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn exclusion_list_filters_and_an_invalid_pattern_stalls() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let tags: Vec<String> = ["1.0.0", "1.1.0", "1.1.0-rc.1", "main-abc", "main-def"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    registry.push_tags("app", &tags).await;
    let storage = tempfile::tempdir().unwrap();
    let store = TagStore::new(storage.path());

    gantry_testkit::with_namespace("imgexcl", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let api: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        let mut filtered = repository("filtered", &registry.image("app"));
        filtered.spec.exclusion_list = vec!["^main-".into(), "-rc".into()];
        api.create(&PostParams::default(), &filtered).await.unwrap();
        let mut broken = repository("broken", &registry.image("app"));
        broken.spec.exclusion_list = vec!["([unclosed".into()];
        api.create(&PostParams::default(), &broken).await.unwrap();
        let running = start(&client, &ns, &store);

        let obj = wait_ready(&api, "filtered", |_| true).await;
        let status = obj.status.unwrap();
        assert_eq!(
            status.last_scan_result.unwrap().latest_tags,
            ["1.1.0", "1.0.0"]
        );
        assert_eq!(status.observed_exclusion_list, ["^main-", "-rc"]);

        let obj = gantry_testkit::wait_for(&api, "broken", Duration::from_secs(30), |o| {
            o.is_some_and(|o| has_condition(o, "Stalled", "True", "InvalidSpec"))
        })
        .await
        .unwrap();
        let (status, reason, message) = ready(&obj);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
        assert!(
            message.contains("invalid exclusionList pattern '([unclosed'"),
            "{message}"
        );
        assert!(
            !has_condition(&obj, "Reconciling", "True", "ProgressingWithRetry"),
            "not retried"
        );
        assert!(!store.exists(&ns, "broken"));

        // Fixing the pattern recovers it.
        let patch = serde_json::json!({"spec": {"exclusionList": ["^main-"]}});
        api.patch("broken", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let obj = wait_ready(&api, "broken", |_| true).await;
        assert_eq!(obj.status.unwrap().last_scan_result.unwrap().tag_count, 3);
        assert!(!has_condition(
            &api.get("broken").await.unwrap(),
            "Stalled",
            "True",
            "InvalidSpec"
        ));

        delete_all(&api).await;
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn credentials_come_from_the_secret_and_bad_ones_are_reported() {
    let registry = Registry::start(RegistryAuth::token("robot", "s3cret"));
    registry
        .push_tags("private/app", &["1.0.0".to_string(), "1.0.1".to_string()])
        .await;
    let storage = tempfile::tempdir().unwrap();
    let store = TagStore::new(storage.path());

    gantry_testkit::with_namespace("imgauth", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for (name, password) in [("good", "s3cret"), ("bad", "wrong")] {
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": registry.docker_config("robot", password)},
            }))
            .unwrap();
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
        let opaque: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "opaque"},
            "stringData": {"token": "x"},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &opaque)
            .await
            .unwrap();

        let api: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        let image = registry.image("private/app");
        for (name, secret) in [
            ("good", Some("good")),
            ("wrong", Some("bad")),
            ("missing", Some("nope")),
            ("notdocker", Some("opaque")),
            ("anonymous", None),
        ] {
            let mut obj = repository(name, &image);
            obj.spec.secret_ref =
                secret.map(|s| gantry_api::meta::LocalObjectReference { name: s.into() });
            api.create(&PostParams::default(), &obj).await.unwrap();
        }
        let running = start(&client, &ns, &store);

        let obj = wait_ready(&api, "good", |_| true).await;
        assert_eq!(obj.status.unwrap().last_scan_result.unwrap().tag_count, 2);

        let failed = |name: &'static str, reason: &'static str| {
            let api = api.clone();
            async move {
                gantry_testkit::wait_for(&api, name, Duration::from_secs(30), |o| {
                    o.is_some_and(|o| has_condition(o, "Ready", "False", reason))
                })
                .await
                .unwrap()
            }
        };
        let obj = failed("wrong", "ReadOperationFailed").await;
        let message = ready(&obj).2;
        assert!(
            message.starts_with("scan failed: authentication to 127.0.0.1:"),
            "{message}"
        );
        assert!(message.contains("refused the credentials"), "{message}");
        assert!(
            has_condition(&obj, "Reconciling", "True", "ProgressingWithRetry"),
            "retried"
        );

        let obj = failed("missing", "AuthenticationFailed").await;
        let message = ready(&obj).2;
        assert!(
            message.starts_with("failed to configure authentication options: failed to get secret"),
            "{message}"
        );
        let obj = failed("notdocker", "AuthenticationFailed").await;
        assert!(
            ready(&obj).2.contains("has no '.dockerconfigjson'"),
            "{}",
            ready(&obj).2
        );
        let obj = failed("anonymous", "ReadOperationFailed").await;
        assert!(
            ready(&obj).2.contains("refused the anonymous request"),
            "{}",
            ready(&obj).2
        );

        delete_all(&api).await;
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_registry_and_an_invalid_image_are_reported() {
    let port = gantry_testkit::git::free_port();
    let storage = tempfile::tempdir().unwrap();
    let store = TagStore::new(storage.path());
    gantry_testkit::with_namespace("imgdown", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let api: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        api.create(
            &PostParams::default(),
            &repository("down", &format!("127.0.0.1:{port}/app")),
        )
        .await
        .unwrap();
        api.create(
            &PostParams::default(),
            &repository("tagged", "ghcr.io/org/app:1.0"),
        )
        .await
        .unwrap();
        let running = start(&client, &ns, &store);
        let obj = gantry_testkit::wait_for(&api, "down", Duration::from_secs(30), |o| {
            o.is_some_and(|o| has_condition(o, "Ready", "False", "ReadOperationFailed"))
        })
        .await
        .unwrap();
        assert!(
            ready(&obj).2.contains("is unreachable"),
            "{}",
            ready(&obj).2
        );
        let obj = gantry_testkit::wait_for(&api, "tagged", Duration::from_secs(30), |o| {
            o.is_some_and(|o| has_condition(o, "Stalled", "True", "ImageURLInvalid"))
        })
        .await
        .unwrap();
        assert_eq!(
            ready(&obj).2,
            "image 'ghcr.io/org/app:1.0' should not contain a tag; remove ':1.0'"
        );
        delete_all(&api).await;
        running.stop().await;
    })
    .await;
}

// The lines of `exported` about objects named `name`.
fn series(exported: &str, name: &str) -> Vec<String> {
    let label = format!("name=\"{name}\"");
    exported
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_deleted_imagerepository_leaves_no_metrics_and_no_stored_tags() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    registry.push_tags("app", &["1.0.0".to_string()]).await;
    let port = gantry_testkit::git::free_port();
    let storage = tempfile::tempdir().unwrap();
    let store = TagStore::new(storage.path());
    gantry_testkit::with_namespace("imgrepo-delete", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let api: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        api.create(
            &PostParams::default(),
            &repository("doomed", &registry.image("app")),
        )
        .await
        .unwrap();
        let running = start(&client, &ns, &store);
        wait_ready(&api, "doomed", |_| true).await;
        assert!(store.exists(&ns, "doomed"), "the scan stored the list");

        // Then it fails (Ready=False exported); the list of the last good scan stays.
        let down = format!("127.0.0.1:{port}/app");
        let patch = serde_json::json!({"spec": {"image": down}});
        api.patch("doomed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        gantry_testkit::wait_for(&api, "doomed", Duration::from_secs(30), |o| {
            o.is_some_and(|o| has_condition(o, "Ready", "False", "ReadOperationFailed"))
        })
        .await
        .unwrap();
        let exported_failure = |exported: &str| {
            series(exported, "doomed").iter().any(|l| {
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
        assert!(store.exists(&ns, "doomed"));

        api.delete("doomed", &DeleteParams::default())
            .await
            .unwrap();
        gantry_testkit::wait_for(&api, "doomed", Duration::from_secs(30), |o| o.is_none()).await;
        assert!(
            !store.exists(&ns, "doomed"),
            "the stored list goes with the object"
        );
        let after = running.metrics.encode();
        assert_eq!(series(&after, "doomed"), Vec::<String>::new(), "{after}");
        running.stop().await;
    })
    .await;
}

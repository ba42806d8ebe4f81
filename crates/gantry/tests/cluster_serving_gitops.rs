//! Knative Services delivered by GitOps, end to end with the real `gantry run` binary: a real
//! git server holds the ksvc manifest, a Kustomization applies it, the serving controllers make
//! its Revisions and the router serves them from zero through stand-in servers bound to the
//! pods' 127.244.x addresses (kwok runs no containers; a watcher in the test plays the kubelet,
//! as in `cluster_serving_router.rs`; helpers in `common/serving.rs`).
//!
//! - A commit that changes the image makes a new Revision that comes up, becomes Ready, takes
//!   the traffic (answered by the new image's stand-in), while the old one goes to zero; the
//!   Kustomization, re-applying every few seconds, never fights the autoscaler.
//! - The image-automation flow (ImageRepository, ImagePolicy, ImageUpdateAutomation with a
//!   `$imagepolicy` setter on the ksvc's image) turns a tag pushed to a real registry into a
//!   commit, a new Revision that serves, and back to zero.
//!
//! Every address is loopback; the router runs with `--serving-loopback-only=true` and each test
//! asserts it refused nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serving::{GRACE, Served, WINDOW, get, kubelet, metric, routed, start_gantry};
use gantry_api::kustomize::v1::Kustomization;
use gantry_api::serving::v1::{Revision, Service};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::registry::{Registry, RegistryAuth};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const PORT: u16 = 8080;
const GIT_USER: &str = "apps";
const GIT_PASSWORD: &str = "apps-password";
const WAIT: Duration = Duration::from_secs(90);
/// `--stable-window` + `--scale-to-zero-grace-period` of the `gantry run` below, plus slack for a
/// loaded machine.
const SLEEP_WITHIN: Duration = WINDOW
    .saturating_add(GRACE)
    .saturating_add(Duration::from_secs(30));
/// The field manager of the autoscaler's `/scale` writes.
const AUTOSCALER: &str = "gantry-autoscaler";

/// The stand-in kubelet of these tests: a pod's server is up as soon as the pod has an IP.
fn stand_ins(client: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    kubelet(client, ns, PORT, Served::default(), Arc::new(true.into()))
}

/// The ksvc as a team keeps it in git (`initial_scale` `None` is Knative's default of 1 pod).
fn ksvc_manifest(image_line: &str, initial_scale: Option<&str>) -> String {
    let annotations = match initial_scale {
        Some(scale) => format!(
            "    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"{scale}\"\n"
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n\
         spec:\n  template:\n{annotations}    spec:\n      timeoutSeconds: 60\n      containers:\n        \
         - {image_line}\n          ports:\n            - containerPort: {PORT}\n"
    )
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Creates the objects (`apiVersion`, `kind`, plural, body) in `ns`.
async fn create(client: &Client, ns: &str, objects: Vec<(&str, &str, &str, Value)>) {
    for (api_version, kind, plural, mut body) in objects {
        body["apiVersion"] = json!(api_version);
        body["kind"] = json!(kind);
        let object: DynamicObject = serde_json::from_value(body).unwrap();
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &resource(api_version, kind, plural),
        )
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind}: {e}"));
    }
}

/// Removes the finalizers gantry put on the Flux objects of `ns`: gantry is gone by then, and
/// the namespace would otherwise stay Terminating.
async fn release_finalizers(client: &Client, ns: &str) {
    let kinds = [
        (
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            "kustomizations",
        ),
        (
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "gitrepositories",
        ),
        (
            "image.toolkit.fluxcd.io/v1",
            "ImageRepository",
            "imagerepositories",
        ),
        ("image.toolkit.fluxcd.io/v1", "ImagePolicy", "imagepolicies"),
        (
            "image.toolkit.fluxcd.io/v1",
            "ImageUpdateAutomation",
            "imageupdateautomations",
        ),
    ];
    let patch = json!({"metadata": {"finalizers": null}});
    for (api_version, kind, plural) in kinds {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resource(api_version, kind, plural));
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for object in list.items {
            let _ = api
                .patch(
                    &object.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
    }
}

/// A GitRepository for `url` and a Kustomization applying `./apps` from it into `ns`, both
/// polling every few seconds: the Kustomization's drift correction runs all along the test.
fn gitops_objects(url: &str, ns: &str) -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "gitrepositories",
            json!({"metadata": {"name": "apps"},
                "spec": {"url": url, "interval": "2s", "ref": {"branch": "main"}}}),
        ),
        (
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            "kustomizations",
            json!({"metadata": {"name": "apps"},
                "spec": {"interval": "3s", "path": "./apps", "prune": true, "targetNamespace": ns,
                    "wait": true, "timeout": "60s",
                    "sourceRef": {"kind": "GitRepository", "name": "apps"}}}),
        ),
    ]
}

/// Waits until the ksvc routes 100 % to `revision`, Ready, for its current generation.
async fn wait_serving(client: &Client, ns: &str, revision: &str) -> Service {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let url = format!("http://hello.{ns}.example.com");
    wait_for(&services, "hello", WAIT, |svc: Option<&Service>| {
        let Some(svc) = svc else { return false };
        let Some(status) = svc.status.as_ref() else {
            return false;
        };
        status.observed_generation == svc.metadata.generation
            && status.url.as_deref() == Some(url.as_str())
            && status.latest_ready_revision_name.as_deref() == Some(revision)
            && status.traffic.len() == 1
            && status.traffic[0].revision_name.as_deref() == Some(revision)
            && status.traffic[0].percent == Some(100)
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await
    .unwrap()
}

async fn deployment(client: &Client, ns: &str, revision: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{revision}-deployment"))
        .await
        .unwrap()
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1)
}

/// Waits until the Revision's Deployment is at `replicas` (the autoscaler's doing).
async fn wait_replicas(client: &Client, ns: &str, revision: &str, replicas: i32, within: Duration) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(&api, &format!("{revision}-deployment"), within, |d| {
        d.is_some_and(|d| replicas_of(d) == replicas)
    })
    .await;
}

/// Asserts that nobody but the autoscaler owns `spec.replicas` of the Deployment: a
/// Kustomization or the serving controllers owning it would be a fight. (Kubernetes does not
/// always record a manager for writes through `/scale`, so the list may be empty.)
fn assert_only_the_autoscaler_scales(d: &Deployment) {
    let owners = replicas_owners(d);
    assert!(
        owners.iter().all(|m| m == AUTOSCALER),
        "replicas of {:?} owned by {owners:?}",
        d.metadata.name
    );
}

/// Which field managers own `spec.replicas` of the Deployment.
fn replicas_owners(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec")?.get("f:replicas"))
                .is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

/// Asks for a Kustomization reconcile as `flux reconcile` does and waits until it is handled
/// with Ready=True (drift correction of everything it applies).
async fn resync(client: &Client, ns: &str) {
    let api: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let requested = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {
        gantry_api::meta::RECONCILE_REQUEST_ANNOTATION: requested}}});
    api.patch("apps", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for(&api, "apps", WAIT, |k| {
        k.and_then(|k| k.status.as_ref()).is_some_and(|s| {
            s.last_handled_reconcile_at.as_deref() == Some(requested.as_str())
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;
}

async fn revision_names(client: &Client, ns: &str) -> Vec<String> {
    let mut names: Vec<String> = Api::<Revision>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

/// Sends a request every 300 ms until stopped, keeping the routed Revision awake; returns the
/// answers (status, body).
fn keep_awake(
    http: reqwest::Client,
    serving: SocketAddr,
    host: String,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<Vec<(u16, String)>>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut answers = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            let answer = match http
                .get(format!("http://{serving}/"))
                .header("host", &host)
                .send()
                .await
            {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            answers.push(answer);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answers
    });
    (stop, task)
}

#[tokio::test]
async fn a_ksvc_from_git_serves_from_zero_and_a_new_image_takes_over_without_fighting_the_autoscaler()
 {
    with_namespace("ksvc-gitops", |client, ns| async move {
        install_crds(&client).await;
        let kubelet = stand_ins(client.clone(), &ns);
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "apps");
        repo.write(
            "apps/hello.yaml",
            &ksvc_manifest("image: example.invalid/hello:1", None),
        );
        repo.commit("hello, as Knative runs it");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        create(&client, &ns, gitops_objects(&server.url("apps.git"), &ns)).await;
        let gantry = start_gantry(&ns);
        let http = reqwest::Client::new();
        let host = format!("hello.{ns}.example.com");

        // Delivered by the Kustomization: Ready, URL, 100 % to the first Revision.
        let svc = wait_serving(&client, &ns, "hello-00001").await;
        assert_eq!(svc.metadata.generation, Some(1));
        routed(&http, &gantry).await;
        // Knative's initial scale (1 pod), then idle: the autoscaler puts it to sleep.
        wait_replicas(&client, &ns, "hello-00001", 0, WAIT).await;
        let asleep = deployment(&client, &ns, "hello-00001").await;
        assert_only_the_autoscaler_scales(&asleep);

        // A GitOps re-sync while asleep keeps it asleep, and the ksvc keeps its status.
        resync(&client, &ns).await;
        let d = deployment(&client, &ns, "hello-00001").await;
        assert_eq!(replicas_of(&d), 0, "drift correction woke the Revision");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        assert!(
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
        wait_serving(&client, &ns, "hello-00001").await;

        // Served from zero by the stand-in of the first image.
        let (status, body) = get(&http, &gantry, &host, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with("example.invalid/hello:1 from 127.244."),
            "{body}"
        );

        // Awake, kept busy: a re-sync leaves the autoscaler's replicas alone.
        let (stop, keeper) = keep_awake(http.clone(), gantry.serving, host.clone());
        wait_replicas(&client, &ns, "hello-00001", 1, WAIT).await;
        resync(&client, &ns).await;
        let awake = deployment(&client, &ns, "hello-00001").await;
        assert_eq!(replicas_of(&awake), 1, "drift correction reset replicas");
        assert_only_the_autoscaler_scales(&awake);

        // No re-apply loop: several Kustomization intervals later the ksvc is still at its
        // first generation, with one Revision and its status intact.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let svc = wait_serving(&client, &ns, "hello-00001").await;
        assert_eq!(svc.metadata.generation, Some(1), "the ksvc was re-applied");
        assert_eq!(revision_names(&client, &ns).await, ["hello-00001"]);

        // A commit changes the image: a new Revision comes up, becomes Ready, takes the traffic.
        repo.write(
            "apps/hello.yaml",
            &ksvc_manifest("image: example.invalid/hello:2", None),
        );
        repo.commit("hello 2");
        repo.push("HEAD:refs/heads/main");
        let svc = wait_serving(&client, &ns, "hello-00002").await;
        assert_eq!(svc.metadata.generation, Some(2));
        // The router follows the ksvc's status through its watch: a moment later the new
        // image answers.
        let switched = Instant::now();
        loop {
            let (status, body) = get(&http, &gantry, &host, None).await;
            assert_eq!(status, 200, "{body}");
            if body.starts_with("example.invalid/hello:2 from 127.244.") {
                break;
            }
            assert!(
                body.starts_with("example.invalid/hello:1 from 127.244."),
                "{body}"
            );
            assert!(
                switched.elapsed() < Duration::from_secs(30),
                "the router kept routing to the old Revision"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "the router routed to the new Revision {:?} after its status did",
            switched.elapsed()
        );
        // A few more of the keeper's requests, now routed to the new Revision.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let answers = keeper.await.unwrap();
        let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
        assert!(
            failed.is_empty(),
            "requests failed during the rollout: {failed:?}"
        );
        assert!(
            answers
                .iter()
                .any(|(_, b)| b.starts_with("example.invalid/hello:1 "))
                && answers
                    .last()
                    .is_some_and(|(_, b)| b.starts_with("example.invalid/hello:2 ")),
            "the traffic moved from the old image to the new one: {answers:?}"
        );

        // The old Revision goes to zero; so does the new one once idle.
        wait_replicas(&client, &ns, "hello-00001", 0, SLEEP_WITHIN).await;
        wait_replicas(&client, &ns, "hello-00002", 0, SLEEP_WITHIN).await;
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        wait_for(&revisions, "hello-00001", WAIT, |r| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Active" && c.status == "False" && c.reason == "NoTraffic")
            })
        })
        .await;
        // From zero again: the new image answers; the old Revision stays asleep.
        let (status, body) = get(&http, &gantry, &host, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with("example.invalid/hello:2 from 127.244."),
            "{body}"
        );
        assert_eq!(
            replicas_of(&deployment(&client, &ns, "hello-00001").await),
            0
        );
        for rev in ["hello-00001", "hello-00002"] {
            let d = deployment(&client, &ns, rev).await;
            assert_only_the_autoscaler_scales(&d);
        }
        assert_eq!(
            metric(&gantry, "gantry_serving_dial_refused_total").await,
            0.0
        );
        kubelet.abort();
        drop(gantry);
        release_finalizers(&client, &ns).await;
    })
    .await;
}

#[tokio::test]
async fn a_tag_pushed_to_the_registry_becomes_a_new_revision_that_serves_and_sleeps() {
    with_namespace("ksvc-images", |client, ns| async move {
        install_crds(&client).await;
        let kubelet = stand_ins(client.clone(), &ns);
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("hello");
        registry.push_variant("hello", "1.0.0", "1.0.0").await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "apps");
        let setter = format!("# {{\"$imagepolicy\": \"{ns}:hello\"}}");
        repo.write(
            "apps/hello.yaml",
            &ksvc_manifest(&format!("image: {image}:1.0.0 {setter}"), Some("0")),
        );
        repo.commit("hello, at zero until called");
        repo.push("HEAD:refs/heads/main");
        // Pushing needs a user (git's smart HTTP refuses anonymous receive-pack).
        let server = GitHttpServer::start(
            root.path(),
            HttpAuth::Basic {
                username: GIT_USER.into(),
                password: GIT_PASSWORD.into(),
            },
        );
        let mut objects = vec![(
            "v1",
            "Secret",
            "secrets",
            json!({"metadata": {"name": "git-auth"},
                "stringData": {"username": GIT_USER, "password": GIT_PASSWORD}}),
        )];
        objects.extend(gitops_objects(&server.url("apps.git"), &ns));
        objects[1].3["spec"]["secretRef"] = json!({"name": "git-auth"});
        objects.extend([
            (
                "image.toolkit.fluxcd.io/v1",
                "ImageRepository",
                "imagerepositories",
                json!({"metadata": {"name": "hello"},
                    "spec": {"image": image, "interval": "2s", "insecure": true}}),
            ),
            (
                "image.toolkit.fluxcd.io/v1",
                "ImagePolicy",
                "imagepolicies",
                json!({"metadata": {"name": "hello"},
                    "spec": {"imageRepositoryRef": {"name": "hello"},
                        "policy": {"semver": {"range": ">=1.0.0"}}}}),
            ),
            (
                "image.toolkit.fluxcd.io/v1",
                "ImageUpdateAutomation",
                "imageupdateautomations",
                json!({"metadata": {"name": "apps"},
                    "spec": {"interval": "2s",
                        "sourceRef": {"kind": "GitRepository", "name": "apps"},
                        "git": {"commit": {"author": {"name": "Gantry Bot",
                                    "email": "gantry@serving.invalid"}},
                            "push": {"branch": "main"}},
                        "update": {"path": "./apps", "strategy": "Setters"}}}),
            ),
        ]);
        create(&client, &ns, objects).await;
        let gantry = start_gantry(&ns);
        let http = reqwest::Client::new();
        let host = format!("hello.{ns}.example.com");

        // `initial-scale: "0"`: Ready at zero, woken by the first request.
        wait_serving(&client, &ns, "hello-00001").await;
        wait_replicas(&client, &ns, "hello-00001", 0, WAIT).await;
        routed(&http, &gantry).await;
        let (status, body) = get(&http, &gantry, &host, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with(&format!("{image}:1.0.0 from 127.244.")),
            "{body}"
        );

        // A new tag: the automation commits it, the Kustomization applies it, a new Revision.
        let before = repo.remote_head("main");
        registry.push_variant("hello", "1.1.0", "1.1.0").await;
        let svc = wait_serving(&client, &ns, "hello-00002").await;
        assert_eq!(
            svc.spec.template.spec.containers[0].image.as_deref(),
            Some(format!("{image}:1.1.0").as_str())
        );
        let head = repo.remote_head("main");
        assert_ne!(head, before, "the automation pushed a commit");
        let committed =
            gantry_testkit::git::git(&repo.bare, &["show", &format!("{head}:apps/hello.yaml")]);
        assert!(
            committed.contains(&format!("image: {image}:1.1.0 {setter}")),
            "the setter rewrote only the image: {committed}"
        );
        let author = gantry_testkit::git::git(&repo.bare, &["log", "-1", "--format=%an", &head]);
        assert_eq!(author, "Gantry Bot");

        // The new Revision serves (from zero: its initial scale is 0 too), then both sleep.
        let (status, body) = get(&http, &gantry, &host, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with(&format!("{image}:1.1.0 from 127.244.")),
            "{body}"
        );
        wait_replicas(&client, &ns, "hello-00002", 1, WAIT).await;
        wait_replicas(&client, &ns, "hello-00002", 0, SLEEP_WITHIN).await;
        wait_replicas(&client, &ns, "hello-00001", 0, SLEEP_WITHIN).await;
        assert_eq!(
            revision_names(&client, &ns).await,
            ["hello-00001", "hello-00002"]
        );
        assert_eq!(
            metric(&gantry, "gantry_serving_dial_refused_total").await,
            0.0
        );
        assert!(metric(&gantry, "gantry_serving_sleeps_total").await >= 1.0);
        kubelet.abort();
        drop(gantry);
        release_finalizers(&client, &ns).await;
    })
    .await;
}

/// The image of the Revision Deployment's serving container.
fn image_of(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .as_deref()
}

/// Changes the Deployment's image as `kubectl set image` does, and waits until the serving
/// controllers have put the Revision's image back; returns the corrected Deployment.
async fn tamper_and_wait_corrected(client: &Client, ns: &str, revision: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let name = format!("{revision}-deployment");
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "user-container", "image": "example.invalid/tampered:6"}]}}}});
    let params = PatchParams {
        field_manager: Some("kubectl-set".into()),
        ..PatchParams::default()
    };
    let tampered = api
        .patch(&name, &params, &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(image_of(&tampered), Some("example.invalid/tampered:6"));
    wait_for(&api, &name, WAIT, |d| {
        d.and_then(image_of) == Some("example.invalid/hello:1")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_hand_edited_revision_deployment_is_put_back_and_its_replicas_stay_the_autoscalers() {
    with_namespace("ksvc-drift", |client, ns| async move {
        install_crds(&client).await;
        let kubelet = stand_ins(client.clone(), &ns);
        let gantry = start_gantry(&ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let mut svc: Service =
            serde_saphyr::from_str(&ksvc_manifest("image: example.invalid/hello:1", Some("0")))
                .unwrap();
        svc.metadata.namespace = Some(ns.clone());
        services.create(&PostParams::default(), &svc).await.unwrap();
        wait_serving(&client, &ns, "hello-00001").await;
        let http = reqwest::Client::new();
        let host = format!("hello.{ns}.example.com");
        routed(&http, &gantry).await;

        // Asleep: put back, and still asleep (the correction wakes nothing).
        let corrected = tamper_and_wait_corrected(&client, &ns, "hello-00001").await;
        assert_eq!(
            replicas_of(&corrected),
            0,
            "the correction changed replicas"
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        assert!(
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // Awake and busy: put back, and the autoscaler's replica count stays.
        let (stop, keeper) = keep_awake(http.clone(), gantry.serving, host.clone());
        wait_replicas(&client, &ns, "hello-00001", 1, WAIT).await;
        let corrected = tamper_and_wait_corrected(&client, &ns, "hello-00001").await;
        assert_eq!(
            replicas_of(&corrected),
            1,
            "the correction changed replicas"
        );
        assert_only_the_autoscaler_scales(&corrected);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        keeper.await.unwrap();
        // The Revision itself never changed: one Revision, still Ready.
        assert_eq!(revision_names(&client, &ns).await, ["hello-00001"]);
        wait_serving(&client, &ns, "hello-00001").await;
        kubelet.abort();
    })
    .await;
}

#[tokio::test]
async fn a_ksvc_with_a_long_name_gets_knatives_shortened_revision_and_deployment_names() {
    with_namespace("ksvc-long", |client, ns| async move {
        install_crds(&client).await;
        let kubelet = stand_ins(client.clone(), &ns);
        let gantry = start_gantry(&ns);
        // 60 characters: `<name>-00001` would be 66, past a Kubernetes label's 63.
        let name = "a-very-long-service-name-that-a-team-chose-for-its-app-12345";
        let manifest = ksvc_manifest("image: example.invalid/hello:1", Some("0"))
            .replace("name: hello", &format!("name: {name}"));
        let mut svc: Service = serde_saphyr::from_str(&manifest).unwrap();
        svc.metadata.namespace = Some(ns.clone());
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        services.create(&PostParams::default(), &svc).await.unwrap();
        // Knative's `kmeta.ChildName`: head, MD5 of the whole name, suffix (63 characters).
        let revision = "a-very-long-service-name-390cdbbc373890ea3ad077a9917fbafb-00001";
        let svc = wait_for(&services, name, WAIT, |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
                st.latest_ready_revision_name.as_deref() == Some(revision)
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .await
        .unwrap();
        let deployment = "a-very-long-service-f8a2aba5fd2ef69e24545654e6b56426-deployment";
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = deployments.get(deployment).await.unwrap();
        assert_eq!(replicas_of(&d), 0);
        // The router finds the same Deployment: a request wakes it and is answered.
        let http = reqwest::Client::new();
        routed(&http, &gantry).await;
        let host = svc.status.unwrap().url.unwrap();
        let host = host.trim_start_matches("http://");
        assert_eq!(host, format!("{name}.{ns}.example.com"));
        let (status, body) = get(&http, &gantry, host, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with("example.invalid/hello:1 from 127.244."),
            "{body}"
        );
        assert_eq!(replicas_of(&deployments.get(deployment).await.unwrap()), 1);
        kubelet.abort();
    })
    .await;
}

#[tokio::test]
async fn a_revision_whose_pod_cannot_be_scheduled_says_why_as_knative_does() {
    with_namespace("ksvc-unschedulable", |client, ns| async move {
        install_crds(&client).await;
        let _gantry = start_gantry(&ns);
        // More CPU than kwok's node has: the scheduler refuses the pod.
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "greedy", "namespace": ns},
            "spec": {"template": {"spec": {"containers": [{
                "image": "example.invalid/greedy:1",
                "ports": [{"containerPort": PORT}],
                "resources": {"requests": {"cpu": "100000"}},
            }]}}},
        }))
        .unwrap();
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        services.create(&PostParams::default(), &svc).await.unwrap();
        let revisions: Api<Revision> = Api::namespaced(client.clone(), &ns);
        let condition = |r: &Revision, t: &str| {
            r.status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
        };
        let rev = wait_for(&revisions, "greedy-00001", WAIT, |r| {
            r.and_then(|r| condition(r, "ResourcesAvailable"))
                .is_some_and(|c| c.status == "False")
        })
        .await
        .unwrap();
        let available = condition(&rev, "ResourcesAvailable").unwrap();
        assert_eq!(available.reason, "Unschedulable", "{available:?}");
        assert!(
            available.message.contains("Insufficient cpu"),
            "{available:?}"
        );
        let ready = condition(&rev, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Unschedulable")
        );
        // The ksvc names the failed Revision, as Knative's does.
        let svc = wait_for(&services, "greedy", WAIT, |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
                st.conditions.iter().any(|c| {
                    c.type_ == "ConfigurationsReady"
                        && c.status == "False"
                        && c.reason == "RevisionFailed"
                })
            })
        })
        .await
        .unwrap();
        let status = svc.status.unwrap();
        let configurations = status
            .conditions
            .iter()
            .find(|c| c.type_ == "ConfigurationsReady")
            .unwrap();
        assert!(
            configurations.message.contains("greedy-00001")
                && configurations.message.contains("Insufficient cpu"),
            "{configurations:?}"
        );
    })
    .await;
}

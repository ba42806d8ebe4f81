//! The reference pipeline end to end with the real `gantry run` binary: one git repository with
//! `apps/base` and the `clusters/staging` and `clusters/production` overlays, a real
//! `docker-registry`, a git server with basic auth, webhooks from the registry (Docker Hub) and
//! from git (GitHub, signed), and an Alert to a generic Provider on loopback.
//!
//! Every interval is 10 minutes or more, so only the webhooks (and the in-process chain scan ->
//! policy -> automation -> fetch -> apply) can explain what happens within a test. Each test has
//! its own namespace for the Flux objects and two namespaces, `<ns>-staging` and
//! `<ns>-production`, that the overlays apply into.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::FutureExt;
use gantry_api::image::v1::{ImagePolicy, ImageUpdateAutomation};
use gantry_api::kustomize::v1::Kustomization;
use gantry_api::notification::v1::Receiver;
use gantry_core::notification::webhook::sign_sha256;
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port, git};
use gantry_testkit::http::{Seen, json_sink};
use gantry_testkit::registry::{Registry, RegistryAuth};
use gantry_testkit::{TEST_LABEL, delete_namespace, install_crds, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, Resource};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const GIT_USER: &str = "fleet";
const GIT_PASSWORD: &str = "fleet-password";
const TOKEN: &str = "pipeline-webhook-token";
/// The tags in the registry and in git before a test changes anything.
const STAGING_TAG: &str = "0000000-202601010000";
const PRODUCTION_TAG: &str = "1.0.0";
const AUTHOR: &str = "Gantry Bot <gantry@pipeline.invalid>";

/// A `gantry run` process for one namespace; killed when dropped.
struct Gantry(Child);

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything one test's pipeline runs on. Dropping it stops gantry and the servers.
struct Pipeline {
    // Fields drop in order: gantry first, then the servers it talks to.
    _gantry: Gantry,
    client: Client,
    /// Where the Flux objects live (the namespace gantry watches).
    ns: String,
    staging: String,
    production: String,
    registry: Registry,
    /// `127.0.0.1:<port>/web`
    image: String,
    repo: TestRepo,
    /// Alerts delivered to the generic Provider, in order.
    alerts: Seen,
    http: reqwest::Client,
    /// Full URLs of the two receivers.
    registry_hook: String,
    github_hook: String,
    _git: GitHttpServer,
    _root: tempfile::TempDir,
    _storage: tempfile::TempDir,
}

fn base_deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: {image}:latest
          ports:
            - containerPort: 8080
"
    )
}

const BASE_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
";

const BASE_KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml
  - service.yaml
";

/// An overlay: the base into `namespace`, with the tag set by the `policy` ImagePolicy.
fn overlay(namespace: &str, image: &str, tag: &str, flux_ns: &str, policy: &str) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {namespace}
resources:
  - ../../apps/base
images:
  - name: {image}
    newTag: {tag} # {{\"$imagepolicy\": \"{flux_ns}:{policy}:tag\"}}
"
    )
}

/// Runs `body` with a fresh pipeline; the staging and production namespaces are deleted
/// afterwards, also when `body` panics (the Flux namespace by `with_namespace`).
async fn with_pipeline<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Pipeline) -> Fut,
    Fut: Future<Output = ()>,
{
    with_namespace(prefix, |client, ns| async move {
        install_crds(&client).await;
        let staging = format!("{ns}-staging");
        let production = format!("{ns}-production");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for name in [&staging, &production] {
            let mut namespace = Namespace::default();
            namespace.meta_mut().name = Some(name.clone());
            namespace.meta_mut().labels = Some([(TEST_LABEL.into(), "true".into())].into());
            namespaces
                .create(&PostParams::default(), &namespace)
                .await
                .unwrap();
        }
        let outcome = AssertUnwindSafe(async {
            let pipeline = Pipeline::start(
                client.clone(),
                ns.clone(),
                staging.clone(),
                production.clone(),
            );
            body(pipeline.await).await
        })
        .catch_unwind()
        .await;
        release_finalizers(&client, &ns).await;
        delete_namespace(&client, &staging).await;
        delete_namespace(&client, &production).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    })
    .await;
}

impl Pipeline {
    /// Starts the servers and gantry, creates the Flux objects and waits until the first
    /// versions run in both environments.
    async fn start(client: Client, ns: String, staging: String, production: String) -> Self {
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("web");
        registry.push_variant("web", STAGING_TAG, STAGING_TAG).await;
        registry
            .push_variant("web", PRODUCTION_TAG, PRODUCTION_TAG)
            .await;

        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "fleet");
        repo.write("apps/base/kustomization.yaml", BASE_KUSTOMIZATION)
            .write("apps/base/deployment.yaml", &base_deployment(&image))
            .write("apps/base/service.yaml", BASE_SERVICE)
            .write(
                "clusters/staging/kustomization.yaml",
                &overlay(&staging, &image, STAGING_TAG, &ns, "staging"),
            )
            .write(
                "clusters/production/kustomization.yaml",
                &overlay(&production, &image, PRODUCTION_TAG, &ns, "production"),
            );
        repo.commit("the reference pipeline");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(
            root.path(),
            HttpAuth::Basic {
                username: GIT_USER.into(),
                password: GIT_PASSWORD.into(),
            },
        );

        let (alerts, provider_address) = json_sink("alerts").await;
        create_objects(
            &client,
            &ns,
            &server.url("fleet.git"),
            &image,
            &provider_address,
        )
        .await;

        let receiver_port = free_port();
        let storage = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "--leader-elect=false", "--watch-namespace", &ns])
            .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
            .arg("--serving-addr=127.0.0.1:0")
            .arg(format!("--receiver-addr=127.0.0.1:{receiver_port}"))
            .arg("--uptime-addr=127.0.0.1:0")
            .arg("--storage-addr=127.0.0.1:0")
            .arg("--storage-path")
            .arg(storage.path())
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry run");
        let gantry = Gantry(child);

        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        let mut hooks = Vec::new();
        for name in ["registry", "github"] {
            let r = wait_for(&receivers, name, WAIT, |r| {
                r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                    s.webhook_path.is_some()
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .await
            .unwrap();
            let path = r.status.unwrap().webhook_path.unwrap();
            hooks.push(format!("http://127.0.0.1:{receiver_port}{path}"));
        }
        let pipeline = Pipeline {
            client,
            ns,
            staging,
            production,
            registry,
            image,
            repo,
            alerts,
            http: reqwest::Client::new(),
            registry_hook: hooks[0].clone(),
            github_hook: hooks[1].clone(),
            _gantry: gantry,
            _git: server,
            _root: root,
            _storage: storage,
        };
        let first = pipeline.remote_revision();
        for name in ["staging", "production"] {
            wait_for(&pipeline.kustomizations(), name, WAIT, applied(&first)).await;
        }
        pipeline.wait_running(&pipeline.staging, STAGING_TAG).await;
        pipeline
            .wait_running(&pipeline.production, PRODUCTION_TAG)
            .await;
        pipeline
    }

    fn kustomizations(&self) -> Api<Kustomization> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn deployments(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Flux's revision of `main` in the served repository.
    fn remote_revision(&self) -> String {
        format!("main@sha1:{}", self.repo.remote_head("main"))
    }

    /// Author and full message of a commit in the served repository.
    fn commit_of(&self, sha: &str) -> (String, String) {
        let out = git(
            &self.repo.bare,
            &["log", "-1", "--format=%an <%ae>%n%B", sha],
        );
        let (author, message) = out.split_once('\n').unwrap_or((&out, ""));
        (author.to_owned(), message.trim().to_owned())
    }

    /// The files a commit of the served repository changed.
    fn files_of(&self, sha: &str) -> Vec<String> {
        git(&self.repo.bare, &["show", "--format=", "--name-only", sha])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Brings the work tree to what the server has (the automation pushes there too).
    fn sync(&self) {
        let bare = self.repo.bare.to_string_lossy().into_owned();
        self.repo.git(&["fetch", "--quiet", &bare, "main"]);
        self.repo.git(&["reset", "--quiet", "--hard", "FETCH_HEAD"]);
    }

    /// Pushes the work tree's HEAD to main and announces it with a push webhook signed as
    /// GitHub signs; returns the new revision.
    async fn push_and_announce(&self) -> String {
        let before = self.repo.remote_head("main");
        self.repo.push("HEAD:refs/heads/main");
        let after = self.repo.remote_head("main");
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": before, "after": after,
            "repository": {"name": "fleet", "full_name": "team/fleet"},
            "pusher": {"name": "dev"}, "commits": []
        }))
        .unwrap();
        let response = self
            .http
            .post(&self.github_hook)
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sign_sha256(TOKEN.as_bytes(), &body))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            200,
            "the github receiver accepts"
        );
        format!("main@sha1:{after}")
    }

    /// Pushes a new image tag to the registry and announces it as Docker Hub does.
    async fn push_image(&self, tag: &str) {
        self.registry.push_variant("web", tag, tag).await;
        let body = json!({
            "callback_url": "https://registry.hub.docker.com/u/team/web/hook/0/",
            "push_data": {"pushed_at": 1_767_225_600, "pusher": "ci", "tag": tag},
            "repository": {"name": "web", "namespace": "team", "repo_name": "team/web",
                "repo_url": "https://hub.docker.com/r/team/web"}
        });
        let response = self
            .http
            .post(&self.registry_hook)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            200,
            "the registry receiver accepts"
        );
    }

    /// Waits until `web` in `namespace` runs `<image>:<tag>`: the Deployment rolled out and a
    /// Pod with that image Ready (kwok plays the kubelet). Returns the Deployment.
    async fn wait_running(&self, namespace: &str, tag: &str) -> Deployment {
        let want = format!("{}:{tag}", self.image);
        let deployment = wait_for(&self.deployments(namespace), "web", WAIT, |d| {
            d.is_some_and(|d| rolled_out(d, &want))
        })
        .await
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let deadline = Instant::now() + WAIT;
        loop {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap();
            let ready = list.items.iter().any(|p| {
                let image_ok = p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .any(|c| c.image.as_deref() == Some(want.as_str()))
                });
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                image_ok && ready && p.metadata.deletion_timestamp.is_none()
            });
            if ready {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "no Ready pod runs {want} in {namespace}: {:#?}",
                list.items.iter().map(|p| &p.status).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a Warning Event with `reason` on the Kustomization `name`; returns it.
    async fn wait_warning(&self, name: &str, reason: &str) -> Event {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let deadline = Instant::now() + WAIT;
        loop {
            let list = events.list(&ListParams::default()).await.unwrap();
            let found = list.items.iter().find(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Kustomization") && r.name.as_deref() == Some(name)
                }) && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some(reason)
            });
            if let Some(event) = found {
                return event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no Warning event {reason} on {name}: {:#?}",
                list.items
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an alert about the Kustomization `name` that `matches`; returns it.
    async fn wait_alert(&self, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.alerts.lock().unwrap().clone();
            if let Some(event) = seen
                .iter()
                .find(|e| e["involvedObject"]["name"] == name && matches(e))
            {
                return event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no alert about {name} arrived: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The Flux objects of the reference pipeline in `ns`.
async fn create_objects(client: &Client, ns: &str, git_url: &str, image: &str, provider: &str) {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-auth"},
            "stringData": {"username": GIT_USER, "password": GIT_PASSWORD}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "webhook-token"},
            "stringData": {"token": TOKEN}}),
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "fleet"},
            "spec": {"url": git_url, "interval": "10m", "ref": {"branch": "main"},
                "secretRef": {"name": "git-auth"}}}),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "staging"},
            "spec": {"interval": "10m", "path": "./clusters/staging", "prune": true,
                "wait": true, "timeout": "40s",
                "sourceRef": {"kind": "GitRepository", "name": "fleet"}}}),
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "production"},
            "spec": {"interval": "10m", "path": "./clusters/production", "prune": true,
                "wait": true, "timeout": "40s",
                "sourceRef": {"kind": "GitRepository", "name": "fleet"}}}),
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
            "metadata": {"name": "web"},
            "spec": {"image": image, "interval": "1h", "insecure": true}}),
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": "staging"},
            "spec": {"imageRepositoryRef": {"name": "web"},
                "filterTags": {"pattern": "^[a-f0-9]+-(?P<ts>[0-9]{12})$", "extract": "$ts"},
                "policy": {"alphabetical": {"order": "asc"}}}}),
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": "production"},
            "spec": {"imageRepositoryRef": {"name": "web"},
                "policy": {"semver": {"range": ">=1.0.0"}}}}),
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageUpdateAutomation",
            "metadata": {"name": "fleet"},
            "spec": {"interval": "1h",
                "sourceRef": {"kind": "GitRepository", "name": "fleet"},
                "git": {
                    "commit": {
                        "author": {"name": "Gantry Bot", "email": "gantry@pipeline.invalid"},
                        "messageTemplate": "Update images\n\n{{ range .Changed.Changes }}{{ .OldValue }} -> {{ .NewValue }}\n{{ end }}"
                    },
                    "push": {"branch": "main"}},
                "update": {"path": "./clusters", "strategy": "Setters"}}}),
        json!({"apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
            "metadata": {"name": "registry"},
            "spec": {"type": "dockerhub", "secretRef": {"name": "webhook-token"},
                "resources": [{"apiVersion": "image.toolkit.fluxcd.io/v1",
                    "kind": "ImageRepository", "name": "web"}]}}),
        json!({"apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
            "metadata": {"name": "github"},
            "spec": {"type": "github", "events": ["push"], "secretRef": {"name": "webhook-token"},
                "resources": [{"apiVersion": "source.toolkit.fluxcd.io/v1",
                    "kind": "GitRepository", "name": "fleet"}]}}),
        json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Provider",
            "metadata": {"name": "webhook"},
            "spec": {"type": "generic", "address": provider}}),
        json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Alert",
            "metadata": {"name": "failures"},
            "spec": {"providerRef": {"name": "webhook"}, "eventSeverity": "error",
                "eventSources": [{"kind": "Kustomization", "name": "*"}]}}),
    ];
    for object in objects {
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        let types = object.types.clone().unwrap();
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &resource(&types.api_version, &types.kind),
        )
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {} {:?}: {e}", types.kind, object.metadata.name));
    }
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let lower = kind.to_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

/// Removes the finalizers gantry put on the objects of `ns`: gantry is gone, and the namespace
/// would otherwise stay Terminating for good.
async fn release_finalizers(client: &Client, ns: &str) {
    let kinds = [
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("image.toolkit.fluxcd.io/v1", "ImageRepository"),
        ("image.toolkit.fluxcd.io/v1", "ImagePolicy"),
        ("image.toolkit.fluxcd.io/v1", "ImageUpdateAutomation"),
    ];
    let patch = json!({"metadata": {"finalizers": null}});
    for (api_version, kind) in kinds {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resource(api_version, kind));
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for object in list.items {
            let name = object.metadata.name.unwrap_or_default();
            let _ = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
}

fn ready(ks: Option<&Kustomization>) -> Option<&Condition> {
    ks?.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Ready=True having applied `revision` at the current generation.
fn applied(revision: &str) -> impl FnMut(Option<&Kustomization>) -> bool + '_ {
    move |ks| {
        ready(ks).is_some_and(|c| {
            c.status == "True" && c.message == format!("Applied revision: {revision}")
        }) && ks
            .and_then(|k| k.status.as_ref())
            .is_some_and(|s| s.last_applied_revision.as_deref() == Some(revision))
    }
}

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

/// The Deployment runs `image`: spec updated, observed, every replica updated and available.
fn rolled_out(d: &Deployment, image: &str) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    image_of(d) == Some(image)
        && status.observed_generation >= d.metadata.generation
        && status.updated_replicas == Some(want)
        && status.available_replicas == Some(want)
        && status.replicas == Some(want)
}

#[tokio::test]
async fn a_staging_image_announced_by_the_registry_runs_in_staging_committed_by_the_automation() {
    with_pipeline("pipe-staging", |p| async move {
        let started = Instant::now();
        let before = p.repo.remote_head("main");
        let production_before = p.deployments(&p.production).get("web").await.unwrap();

        let tag = "c0ffee1-202602011230";
        p.push_image(tag).await;
        let running = p.wait_running(&p.staging, tag).await;
        let elapsed = started.elapsed();

        // The commit that put it there was made by the automation, on top of ours.
        let sha = p.repo.remote_head("main");
        assert_ne!(sha, before, "the automation pushed a commit");
        let (author, message) = p.commit_of(&sha);
        assert_eq!(author, AUTHOR);
        assert_eq!(
            message,
            format!("Update images\n\n{STAGING_TAG} -> {tag}"),
            "the messageTemplate rendered (a `:tag` setter changes the tag alone)"
        );
        assert_eq!(
            p.files_of(&sha),
            vec!["clusters/staging/kustomization.yaml"]
        );
        assert_eq!(
            git(&p.repo.bare, &["rev-parse", &format!("{sha}^")]),
            before,
            "one commit on top of main"
        );
        let overlay = git(
            &p.repo.bare,
            &[
                "show",
                &format!("{sha}:clusters/staging/kustomization.yaml"),
            ],
        );
        assert!(
            overlay.contains(&format!(
                "newTag: {tag} # {{\"$imagepolicy\": \"{}:staging:tag\"}}",
                p.ns
            )),
            "the setter marker survives: {overlay}"
        );
        let automation = Api::<ImageUpdateAutomation>::namespaced(p.client.clone(), &p.ns)
            .get("fleet")
            .await
            .unwrap();
        assert_eq!(
            automation.status.unwrap().last_push_commit.as_deref(),
            Some(sha.as_str())
        );

        // Staging applied exactly that commit; its Deployment is the one running.
        let revision = format!("main@sha1:{sha}");
        wait_for(&p.kustomizations(), "staging", WAIT, applied(&revision)).await;
        assert_eq!(
            image_of(&running),
            Some(format!("{}:{tag}", p.image).as_str())
        );

        // Production reconciled the same commit and was left alone.
        wait_for(&p.kustomizations(), "production", WAIT, applied(&revision)).await;
        let production = p.deployments(&p.production).get("web").await.unwrap();
        assert_eq!(
            image_of(&production),
            Some(format!("{}:{PRODUCTION_TAG}", p.image).as_str())
        );
        assert_eq!(
            production.metadata.generation, production_before.metadata.generation,
            "the production Deployment was not changed"
        );
        println!("image push + registry webhook to a Ready pod in staging: {elapsed:?}");
    })
    .await;
}

#[tokio::test]
async fn a_release_tag_reaches_production_and_not_staging() {
    with_pipeline("pipe-release", |p| async move {
        let staging_before = p.deployments(&p.staging).get("web").await.unwrap();

        p.push_image("1.1.0").await;
        p.wait_running(&p.production, "1.1.0").await;

        let sha = p.repo.remote_head("main");
        let (author, message) = p.commit_of(&sha);
        assert_eq!(author, AUTHOR);
        assert_eq!(
            message,
            format!("Update images\n\n{PRODUCTION_TAG} -> 1.1.0")
        );
        assert_eq!(
            p.files_of(&sha),
            vec!["clusters/production/kustomization.yaml"]
        );

        // Staging applied the release commit too and still runs its own tag: the release tag
        // does not match its filter.
        let revision = format!("main@sha1:{sha}");
        wait_for(&p.kustomizations(), "production", WAIT, applied(&revision)).await;
        wait_for(&p.kustomizations(), "staging", WAIT, applied(&revision)).await;
        let staging = p.deployments(&p.staging).get("web").await.unwrap();
        assert_eq!(
            image_of(&staging),
            Some(format!("{}:{STAGING_TAG}", p.image).as_str())
        );
        assert_eq!(
            staging.metadata.generation, staging_before.metadata.generation,
            "the staging Deployment was not changed"
        );
        let policy = Api::<ImagePolicy>::namespaced(p.client.clone(), &p.ns)
            .get("staging")
            .await
            .unwrap();
        assert_eq!(
            policy.status.unwrap().latest_ref.unwrap().tag,
            STAGING_TAG,
            "the staging policy still picks its own tag"
        );
    })
    .await;
}

#[tokio::test]
async fn a_bad_manifest_leaves_staging_running_reports_why_and_a_revert_recovers() {
    with_pipeline("pipe-broken", |p| async move {
        let good = p.remote_revision();
        let running = p.deployments(&p.staging).get("web").await.unwrap();

        // A patch with a value the API server refuses, and a replica count that would change
        // the running Deployment if anything of it got through.
        p.sync();
        let overlay = std::fs::read_to_string(p.repo.work().join("clusters/staging/kustomization.yaml")).unwrap();
        p.repo
            .write(
                "clusters/staging/kustomization.yaml",
                &format!("{overlay}patches:\n  - path: web-patch.yaml\n"),
            )
            .write(
                "clusters/staging/web-patch.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n        - name: web\n          imagePullPolicy: Sometimes\n",
            );
        p.repo.commit("staging: pull policy");
        let bad = p.push_and_announce().await;

        let ks = wait_for(&p.kustomizations(), "staging", WAIT, |ks| {
            ready(ks).is_some_and(|c| c.status == "False")
                && ks
                    .and_then(|k| k.status.as_ref())
                    .is_some_and(|s| s.last_attempted_revision.as_deref() == Some(bad.as_str()))
        })
        .await
        .unwrap();
        let condition = ready(Some(&ks)).unwrap().clone();
        assert_eq!(condition.reason, "ReconciliationFailed", "{condition:?}");
        assert!(
            condition.message.contains("Deployment/")
                && condition.message.contains("/web")
                && condition
                    .message
                    .contains("spec.template.spec.containers[0].imagePullPolicy")
                && condition.message.contains("Sometimes"),
            "the message names the object and the field: {}",
            condition.message
        );
        assert_eq!(
            ks.status.as_ref().unwrap().last_applied_revision.as_deref(),
            Some(good.as_str()),
            "the last applied revision is still the good one"
        );

        // What runs is untouched.
        let now = p.deployments(&p.staging).get("web").await.unwrap();
        assert_eq!(image_of(&now), image_of(&running));
        assert_eq!(now.metadata.generation, running.metadata.generation);
        assert_eq!(now.spec.as_ref().unwrap().replicas, Some(1));

        // Production, from the same commit, is fine.
        wait_for(&p.kustomizations(), "production", WAIT, applied(&bad)).await;

        // A Warning Event on the Kustomization says the same (published after the status).
        let warning = p.wait_warning("staging", "ReconciliationFailed").await;
        assert!(
            warning.note.as_deref().unwrap_or_default().contains("imagePullPolicy"),
            "{warning:?}"
        );

        // And the alert reached the generic provider, as Flux's event JSON.
        let alert = p
            .wait_alert("staging", |e| e["reason"] == "ReconciliationFailed")
            .await;
        assert_eq!(alert["involvedObject"]["kind"], "Kustomization", "{alert:#}");
        assert_eq!(alert["involvedObject"]["namespace"], p.ns.as_str(), "{alert:#}");
        assert_eq!(
            alert["involvedObject"]["apiVersion"], "kustomize.toolkit.fluxcd.io/v1",
            "{alert:#}"
        );
        assert_eq!(alert["severity"], "error", "{alert:#}");
        assert_eq!(alert["reportingController"], "kustomize-controller", "{alert:#}");
        assert!(
            alert["message"].as_str().unwrap_or_default().contains("imagePullPolicy"),
            "{alert:#}"
        );
        assert_eq!(alert["metadata"]["revision"], bad.as_str(), "{alert:#}");
        // Nothing else was worth an alert: not the start-up, when the Kustomizations wait for
        // the first artifact (Flux only logs that), and not production.
        let all = p.alerts.lock().unwrap().clone();
        assert!(
            all.iter().all(|e| e["severity"] == "error"
                && e["involvedObject"]["name"] == "staging"
                && e["reason"] == "ReconciliationFailed"),
            "only the failure is alerted: {all:#?}"
        );

        // Reverting the commit recovers.
        p.sync();
        p.repo.git(&["revert", "--no-edit", "HEAD"]);
        let reverted = p.push_and_announce().await;
        let ks = wait_for(&p.kustomizations(), "staging", WAIT, applied(&reverted)).await.unwrap();
        assert_eq!(
            ks.status.unwrap().last_attempted_revision.as_deref(),
            Some(reverted.as_str())
        );
        let now = p.wait_running(&p.staging, STAGING_TAG).await;
        assert_eq!(now.metadata.generation, running.metadata.generation);
    })
    .await;
}

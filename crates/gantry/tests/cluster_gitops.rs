//! `gantry run` end to end against the test cluster and a real git server: a git revision becomes
//! objects in the cluster, pruned, drift-corrected and health-checked, with Flux's status.
//!
//! Each test runs its own `gantry run` process watching only its namespace.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::meta::DependencyReference;
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

const WAIT: Duration = Duration::from_secs(60);
/// The leader-election Lease `gantry run` uses by default.
const LEASE: &str = "gantry-leader-election";

/// A `gantry run` process for one namespace; killed when dropped.
struct Gantry {
    child: Child,
    metrics_port: u16,
    health_port: u16,
    _storage: tempfile::TempDir,
}

impl Gantry {
    fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &["--leader-elect=false"], "gantry-test")
    }

    /// A replica taking part in leader election through a Lease in `namespace`.
    fn replica(namespace: &str, identity: &str) -> Self {
        let lease_ns = format!("--leader-election-namespace={namespace}");
        Self::start_with(namespace, &["--leader-elect=true", &lease_ns], identity)
    }

    fn start_with(namespace: &str, extra: &[&str], identity: &str) -> Self {
        let storage = tempfile::tempdir().unwrap();
        let (metrics_port, health_port) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "--watch-namespace", namespace])
            .args(extra)
            .env("POD_NAME", identity)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--health-addr=127.0.0.1:{health_port}"))
            .arg("--serving-addr=127.0.0.1:0")
            // Loopback and a port of its own: replicas of parallel tests must not collide.
            .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
            .arg("--uptime-addr=127.0.0.1:0")
            .arg("--storage-addr=127.0.0.1:0")
            .arg("--storage-path")
            .arg(storage.path())
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry run");
        Gantry {
            child,
            metrics_port,
            health_port,
            _storage: storage,
        }
    }

    fn get(&self, port: u16, path: &str) -> String {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                return out;
            }
            assert!(Instant::now() < deadline, "gantry serves 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git server with one repository `app.git` on branch `main`.
struct Source {
    repo: TestRepo,
    server: GitHttpServer,
    _root: tempfile::TempDir,
}

impl Source {
    fn new(files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        for (path, content) in files {
            repo.write(path, content);
        }
        repo.commit("initial");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        Source {
            repo,
            server,
            _root: root,
        }
    }

    /// Commits the changes and pushes; returns Flux's revision string.
    fn commit(&self, message: &str) -> String {
        let sha = self.repo.commit(message);
        self.repo.push("HEAD:refs/heads/main");
        format!("main@sha1:{sha}")
    }

    fn revision(&self) -> String {
        format!("main@sha1:{}", self.repo.head())
    }
}

const CONFIG: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: blue\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: registry.invalid/web:1.0.0\n";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - port: 80\n";

async fn create_source(client: &Client, ns: &str, url: &str, interval: &str) {
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    let spec = GitRepositorySpec {
        url: url.into(),
        interval: interval.into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    repos
        .create(&PostParams::default(), &GitRepository::new("app", spec))
        .await
        .unwrap();
}

fn kustomization_spec(path: &str, ns: &str) -> KustomizationSpec {
    KustomizationSpec {
        interval: "10m".into(),
        path: Some(path.into()),
        prune: true,
        wait: true,
        timeout: Some("40s".into()),
        target_namespace: Some(ns.into()),
        source_ref: CrossNamespaceSourceReference {
            name: "app".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn create_kustomization(client: &Client, ns: &str, name: &str, spec: KustomizationSpec) {
    let api: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &Kustomization::new(name, spec))
        .await
        .unwrap();
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
        }) && ks.and_then(|k| k.status.as_ref()).is_some_and(|s| {
            s.last_applied_revision.as_deref() == Some(revision)
                && s.observed_generation == ks.unwrap().metadata.generation
        })
    }
}

fn failed_with(reason: &'static str) -> impl FnMut(Option<&Kustomization>) -> bool {
    move |ks| ready(ks).is_some_and(|c| c.status == "False" && c.reason == reason)
}

async fn request_reconcile(api: &Api<Kustomization>, name: &str, token: &str) {
    let patch = serde_json::json!({
        "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } }
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_revision_is_applied_pruned_drift_corrected_and_reported_as_flux_does() {
    with_namespace("gitops", |client, ns| async move {
        install_crds(&client).await;
        let source = Source::new(&[
            ("deploy/config.yaml", CONFIG),
            ("deploy/deployment.yaml", DEPLOYMENT),
            ("deploy/service.yaml", SERVICE),
            ("README.md", "not a manifest\n"),
        ]);
        let gantry = Gantry::start(&ns);
        create_source(&client, &ns, &source.server.url("app.git"), "10m").await;
        create_kustomization(&client, &ns, "app", kustomization_spec("./deploy", &ns)).await;

        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let first = source.revision();
        let ks = wait_for(&kustomizations, "app", WAIT, applied(&first)).await.unwrap();
        let status = ks.status.clone().unwrap();
        let mut ids: Vec<String> = status.inventory.unwrap().entries.into_iter().map(|e| e.id).collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![
                format!("{ns}_settings__ConfigMap"),
                format!("{ns}_web__Service"),
                format!("{ns}_web_apps_Deployment"),
            ],
            "inventory in Flux's format"
        );
        assert!(
            status.conditions.iter().any(|c| c.type_ == "Healthy" && c.status == "True"),
            "wait: true checked health: {:?}",
            status.conditions
        );
        assert!(
            !status.conditions.iter().any(|c| c.type_ == "Reconciling" || c.type_ == "Stalled"),
            "kstatus: no Reconciling/Stalled once Ready"
        );
        assert!(ks.finalizers().iter().any(|f| f == "finalizers.fluxcd.io"));

        // Applied objects: in the target namespace, owned, and the Deployment rolled out.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let web = deployments.get("web").await.unwrap();
        assert_eq!(web.labels().get("kustomize.toolkit.fluxcd.io/name").map(String::as_str), Some("app"));
        assert_eq!(web.labels().get("kustomize.toolkit.fluxcd.io/namespace"), Some(&ns));
        assert_eq!(web.status.as_ref().and_then(|s| s.ready_replicas), Some(2), "healthy means rolled out");
        let events = event_reasons(&client, &ns, "app").await;
        assert!(
            events.iter().any(|(r, note)| r == "ReconciliationSucceeded" && note.contains("Deployment/") && note.contains("created")),
            "an event lists what was created: {events:?}"
        );

        // A new commit: the ConfigMap changes, the Service leaves git. Unchanged objects are not written.
        let web_version = web.resource_version();
        source.repo.write("deploy/config.yaml", &CONFIG.replace("blue", "green"));
        source.repo.remove("deploy/service.yaml");
        let second = source.commit("green, no service");
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        // The source polls every 10 minutes: ask it (as a webhook receiver will).
        let patch = serde_json::json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "new-commit"}}});
        let pushed = Instant::now();
        repos.patch("app", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        wait_for(&kustomizations, "app", WAIT, applied(&second)).await;
        eprintln!("new commit applied {:?} after the source was asked to fetch", pushed.elapsed());
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let settings = config_maps.get("settings").await.unwrap();
        assert_eq!(settings.data.unwrap()["mode"], "green");
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        assert!(services.get_opt("web").await.unwrap().is_none(), "pruned");
        assert_eq!(deployments.get("web").await.unwrap().resource_version(), web_version, "an unchanged object keeps its resourceVersion");

        // Drift: a hand edit is reverted on the next run; requestedAt is echoed back.
        let edit = serde_json::json!({"data": {"mode": "hand-edited"}});
        config_maps.patch("settings", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
        request_reconcile(&kustomizations, "app", "drift-1").await;
        wait_for(&kustomizations, "app", WAIT, |ks| {
            ks.and_then(|k| k.status.as_ref())
                .is_some_and(|s| s.last_handled_reconcile_at.as_deref() == Some("drift-1"))
        })
        .await;
        assert_eq!(config_maps.get("settings").await.unwrap().data.unwrap()["mode"], "green", "drift corrected");

        // Suspended: nothing is reconciled, not even an explicit request; resuming catches up.
        let suspend = |on: bool| serde_json::json!({"spec": {"suspend": on}});
        kustomizations.patch("app", &PatchParams::default(), &Patch::Merge(&suspend(true))).await.unwrap();
        config_maps.patch("settings", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
        request_reconcile(&kustomizations, "app", "while-suspended").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ks = kustomizations.get("app").await.unwrap();
        assert_eq!(
            ks.status.unwrap().last_handled_reconcile_at.as_deref(),
            Some("drift-1"),
            "a suspended Kustomization is left alone"
        );
        assert_eq!(config_maps.get("settings").await.unwrap().data.unwrap()["mode"], "hand-edited");
        kustomizations.patch("app", &PatchParams::default(), &Patch::Merge(&suspend(false))).await.unwrap();
        wait_for(&config_maps, "settings", WAIT, |cm| {
            cm.and_then(|c| c.data.as_ref()).is_some_and(|d| d["mode"] == "green")
        })
        .await;

        // Metrics and health endpoints of the process.
        let metrics = gantry.get(gantry.metrics_port, "/metrics");
        assert!(metrics.contains("gotk_reconcile_duration_seconds_bucket"), "{metrics}");
        assert!(
            metrics.contains(&format!("customresource_kind=\"Kustomization\",customresource_version=\"v1\",exported_namespace=\"{ns}\",name=\"app\",ready=\"True\"")),
            "{metrics}"
        );
        assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");
        assert!(gantry.get(gantry.health_port, "/healthz").ends_with("ok"));
        assert!(gantry.get(gantry.health_port, "/readyz").ends_with("ok"));

        // Deleting the Kustomization deletes what it applied (prune: true, MirrorPrune).
        kustomizations.delete("app", &DeleteParams::default()).await.unwrap();
        wait_for(&kustomizations, "app", WAIT, |ks| ks.is_none()).await;
        wait_for(&deployments, "web", WAIT, |d| d.is_none()).await;
        assert!(config_maps.get_opt("settings").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn bad_revisions_leave_the_running_state_untouched_and_say_why() {
    with_namespace("gitops-bad", |client, ns| async move {
        install_crds(&client).await;
        let source = Source::new(&[
            ("deploy/config.yaml", CONFIG),
            ("deploy/deployment.yaml", DEPLOYMENT),
        ]);
        let _gantry = Gantry::start(&ns);
        // A short source interval stands in for the push webhook here.
        create_source(&client, &ns, &source.server.url("app.git"), "1s").await;
        create_kustomization(&client, &ns, "app", kustomization_spec("./deploy", &ns)).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let good = source.revision();
        wait_for(&kustomizations, "app", WAIT, applied(&good)).await;
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

        // Malformed YAML: BuildFailed naming the file and line; nothing applied.
        source
            .repo
            .write("deploy/config.yaml", &CONFIG.replace("blue", "red"));
        source.repo.write(
            "deploy/broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
        );
        let broken = source.commit("broken yaml");
        let ks = wait_for(&kustomizations, "app", WAIT, failed_with("BuildFailed"))
            .await
            .unwrap();
        let message = ready(Some(&ks)).unwrap().message.clone();
        assert!(
            message.contains("deploy/broken.yaml:4") && !message.contains("/tmp/"),
            "names the file in the repository and the line: {message}"
        );
        let status = ks.status.unwrap();
        assert_eq!(
            status.last_applied_revision.as_deref(),
            Some(good.as_str()),
            "still the good revision"
        );
        assert_eq!(
            status.last_attempted_revision.as_deref(),
            Some(broken.as_str())
        );
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Reconciling" && c.reason == "ProgressingWithRetry")
        );
        assert_eq!(
            config_maps.get("settings").await.unwrap().data.unwrap()["mode"],
            "blue",
            "nothing half-applied"
        );
        let events = event_reasons(&client, &ns, "app").await;
        assert!(
            events
                .iter()
                .any(|(r, n)| r == "BuildFailed" && n.contains("broken.yaml")),
            "{events:?}"
        );

        // An object the API server rejects: the whole revision is refused, the rest not written.
        source.repo.remove("deploy/broken.yaml");
        source.repo.write(
            "deploy/service.yaml",
            &SERVICE.replace("port: 80", "port: 0"),
        );
        source.commit("invalid service");
        let ks = wait_for(
            &kustomizations,
            "app",
            WAIT,
            failed_with("ReconciliationFailed"),
        )
        .await
        .unwrap();
        let message = ready(Some(&ks)).unwrap().message.clone();
        assert!(
            message.contains("Service/") && message.contains("web"),
            "names the object: {message}"
        );
        assert_eq!(
            config_maps.get("settings").await.unwrap().data.unwrap()["mode"],
            "blue",
            "dry-run first: nothing written"
        );

        // Fixing it recovers.
        source.repo.remove("deploy/service.yaml");
        let fixed = source.commit("fix");
        wait_for(&kustomizations, "app", WAIT, applied(&fixed)).await;
        assert_eq!(
            config_maps.get("settings").await.unwrap().data.unwrap()["mode"],
            "red"
        );

        // A path that is not in the revision, and a source that does not exist.
        let mut spec = kustomization_spec("./missing", &ns);
        create_kustomization(&client, &ns, "nopath", spec.clone()).await;
        let ks = wait_for(
            &kustomizations,
            "nopath",
            WAIT,
            failed_with("ArtifactFailed"),
        )
        .await
        .unwrap();
        assert!(ready(Some(&ks)).unwrap().message.contains("./missing"));
        spec.path = Some("./deploy".into());
        spec.source_ref.name = "nosuchrepo".into();
        create_kustomization(&client, &ns, "nosource", spec).await;
        let ks = wait_for(
            &kustomizations,
            "nosource",
            WAIT,
            failed_with("ArtifactFailed"),
        )
        .await
        .unwrap();
        assert!(
            ready(Some(&ks)).unwrap().message.contains("GitRepository/"),
            "{:?}",
            ready(Some(&ks))
        );
    })
    .await;
}

#[tokio::test]
async fn a_new_revision_is_reconciling_not_ready_while_its_health_check_waits() {
    with_namespace("gitops-progress", |client, ns| async move {
        install_crds(&client).await;
        let source = Source::new(&[("deploy/config.yaml", CONFIG)]);
        let _gantry = Gantry::start(&ns);
        create_source(&client, &ns, &source.server.url("app.git"), "1s").await;
        let mut spec = kustomization_spec("./deploy", &ns);
        spec.timeout = Some("30s".into());
        create_kustomization(&client, &ns, "app", spec).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let good = source.revision();
        wait_for(&kustomizations, "app", WAIT, applied(&good)).await;

        // A Deployment no node can run: the health check waits the whole timeout. Meanwhile the
        // Kustomization must not keep vouching for the previous revision.
        source.repo.write(
            "deploy/deployment.yaml",
            &DEPLOYMENT.replace(
                "      containers:",
                "      nodeSelector: {gantry.test/none: \"true\"}\n      containers:",
            ),
        );
        let pending = source.commit("unschedulable");
        let ks = wait_for(&kustomizations, "app", WAIT, |ks| {
            ready(ks).is_some_and(|c| c.status == "Unknown")
        })
        .await
        .unwrap();
        let status = ks.status.unwrap();
        let ready_now = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready_now.reason, "Progressing");
        assert_eq!(
            ready_now.message,
            format!("Fetching manifests for revision {pending} with a timeout of 30s")
        );
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Reconciling" && c.status == "True"),
            "{:?}",
            status.conditions
        );
        assert_eq!(status.last_applied_revision.as_deref(), Some(good.as_str()));
        let ks = wait_for(
            &kustomizations,
            "app",
            WAIT,
            failed_with("HealthCheckFailed"),
        )
        .await
        .unwrap();
        assert!(
            ready(Some(&ks)).unwrap().message.contains("Deployment/"),
            "{:?}",
            ready(Some(&ks))
        );
    })
    .await;
}

#[tokio::test]
async fn dependents_start_the_moment_their_dependency_is_ready_and_cycles_are_reported() {
    with_namespace("gitops-deps", |client, ns| async move {
        install_crds(&client).await;
        let source = Source::new(&[
            ("infra/config.yaml", CONFIG),
            ("apps/deployment.yaml", DEPLOYMENT),
        ]);
        let _gantry = Gantry::start(&ns);
        create_source(&client, &ns, &source.server.url("app.git"), "10m").await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);

        // `apps` exists first and waits for `infra`, which does not exist yet. Its retry
        // interval is an hour: only the in-process trigger can start it promptly.
        let mut apps = kustomization_spec("./apps", &ns);
        apps.retry_interval = Some("1h".into());
        apps.depends_on = vec![DependencyReference {
            name: "infra".into(),
            ..Default::default()
        }];
        create_kustomization(&client, &ns, "apps", apps).await;
        let ks = wait_for(
            &kustomizations,
            "apps",
            WAIT,
            failed_with("DependencyNotReady"),
        )
        .await
        .unwrap();
        assert!(
            ready(Some(&ks))
                .unwrap()
                .message
                .contains(&format!("'{ns}/infra'"))
        );

        create_kustomization(&client, &ns, "infra", kustomization_spec("./infra", &ns)).await;
        let revision = source.revision();
        wait_for(&kustomizations, "infra", WAIT, applied(&revision)).await;
        let infra_ready = Instant::now();
        wait_for(
            &kustomizations,
            "apps",
            Duration::from_secs(20),
            applied(&revision),
        )
        .await;
        eprintln!(
            "dependent applied {:?} after its dependency became ready",
            infra_ready.elapsed()
        );

        // A cycle is detected and reported as Stalled, not waited on.
        for (name, dep) in [("a", "b"), ("b", "a")] {
            let mut spec = kustomization_spec("./infra", &ns);
            spec.depends_on = vec![DependencyReference {
                name: dep.into(),
                ..Default::default()
            }];
            create_kustomization(&client, &ns, name, spec).await;
        }
        // `b` is created last, so both are known when it runs.
        let ks = wait_for(&kustomizations, "b", WAIT, |ks| {
            ks.and_then(|k| k.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.status == "True")
            })
        })
        .await
        .unwrap();
        let message = ready(Some(&ks)).unwrap().message.clone();
        assert!(
            message.contains("dependency cycle")
                && message.contains(&format!("{ns}/b -> {ns}/a -> {ns}/b")),
            "{message}"
        );
    })
    .await;
}

/// The Lease's holder, "" when none.
fn holder(lease: Option<&Lease>) -> String {
    lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// Whether a replica's `/metrics` shows any reconciliation at all.
fn reconciled_anything(metrics: &str) -> bool {
    metrics.contains("gotk_reconcile_duration_seconds_count{")
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    with_namespace("gitops-lease", |client, ns| async move {
        install_crds(&client).await;
        let source = Source::new(&[("deploy/config.yaml", CONFIG)]);
        let mut first = Gantry::replica(&ns, "replica-a");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        wait_for(&leases, LEASE, WAIT, |l| holder(l) == "replica-a").await;
        let second = Gantry::replica(&ns, "replica-b");
        // The standby is healthy and ready too, so a rollout is not blocked by it.
        assert!(second.get(second.health_port, "/readyz").ends_with("ok"));

        // Every holder the Lease has during the test, in order: one at a time by construction
        // of a Lease, so what matters is that it never flaps back.
        let holders = std::sync::Arc::new(std::sync::Mutex::new(vec!["replica-a".to_string()]));
        let watching = {
            let (leases, holders) = (leases.clone(), holders.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(lease) = leases.get_opt(LEASE).await {
                        let now = holder(lease.as_ref());
                        let mut seen = holders.lock().unwrap();
                        if !now.is_empty() && seen.last() != Some(&now) {
                            seen.push(now);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        create_source(&client, &ns, &source.server.url("app.git"), "10m").await;
        create_kustomization(&client, &ns, "app", kustomization_spec("./deploy", &ns)).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let revision = source.revision();
        wait_for(&kustomizations, "app", WAIT, applied(&revision)).await;
        request_reconcile(&kustomizations, "app", "while-a-leads").await;
        wait_for(&kustomizations, "app", WAIT, |ks| {
            ks.and_then(|k| k.status.as_ref())
                .is_some_and(|s| s.last_handled_reconcile_at.as_deref() == Some("while-a-leads"))
        })
        .await;
        // Only the leader reconciles: the standby has not even started its controllers.
        assert!(reconciled_anything(
            &first.get(first.metrics_port, "/metrics")
        ));
        let standby = second.get(second.metrics_port, "/metrics");
        assert!(
            !reconciled_anything(&standby),
            "the standby reconciled something:\n{standby}"
        );

        // The leader dies without releasing the lease (SIGKILL); the standby takes over once it
        // expires.
        first.child.kill().unwrap();
        first.child.wait().unwrap();
        let died = Instant::now();
        // Asked while nobody leads: must not be lost.
        request_reconcile(&kustomizations, "app", "during-handover").await;
        let handed_over = wait_for(&leases, LEASE, Duration::from_secs(30), |l| {
            holder(l) == "replica-b"
        })
        .await;
        let handover = died.elapsed();
        eprintln!("leadership handed over {handover:?} after the leader was killed");
        assert!(
            handover < Duration::from_secs(15),
            "handover took {handover:?}"
        );
        let renewed = handed_over
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.acquire_time.as_ref());
        assert!(renewed.is_some(), "the new holder acquired the lease");
        // The request made while nobody led is handled by the new leader, successfully: its
        // source controller stores the artifact again first (the status outlived the old one).
        let mut handled = applied(&revision);
        wait_for(&kustomizations, "app", Duration::from_secs(30), |ks| {
            ks.and_then(|k| k.status.as_ref())
                .is_some_and(|s| s.last_handled_reconcile_at.as_deref() == Some("during-handover"))
                && handled(ks)
        })
        .await;
        eprintln!(
            "the request made while nobody led was applied {:?} after the leader was killed",
            died.elapsed()
        );
        assert!(reconciled_anything(
            &second.get(second.metrics_port, "/metrics")
        ));
        // Let the watcher see the last holder before stopping it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        watching.abort();
        assert_eq!(
            *holders.lock().unwrap(),
            ["replica-a", "replica-b"],
            "one leader at a time, no flapping"
        );
        drop(second);
    })
    .await;
}

impl Gantry {
    /// Sends SIGTERM (as Kubernetes does on a rollout or drain) and waits up to 30 s for the
    /// process to exit: how long it took and whether it exited successfully.
    fn terminate(&mut self) -> (Duration, bool) {
        let sent = Instant::now();
        // The shell's builtin `kill`: `sh` is on every Debian machine, procps' `kill` need not be.
        let killed = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .expect("running kill");
        assert!(killed.success());
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for gantry run") {
                return (sent.elapsed(), status.success());
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "gantry run still runs 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn sigterm_during_an_apply_exits_promptly_and_the_standby_finishes_the_work() {
    with_namespace("gitops-sigterm", |client, ns| async move {
        install_crds(&client).await;
        // 500 objects: long enough an apply to be interrupted.
        let many: String = (0..500)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  n: \"{i}\"\n"
                )
            })
            .collect();
        let source = Source::new(&[("deploy/many.yaml", &many)]);
        let mut first = Gantry::replica(&ns, "replica-a");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        wait_for(&leases, LEASE, WAIT, |l| holder(l) == "replica-a").await;
        let second = Gantry::replica(&ns, "replica-b");

        create_source(&client, &ns, &source.server.url("app.git"), "10m").await;
        let mut spec = kustomization_spec("./deploy", &ns);
        spec.wait = false;
        create_kustomization(&client, &ns, "app", spec).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        // SIGTERM once the apply has begun (the first objects exist), before it is done.
        let deadline = Instant::now() + WAIT;
        loop {
            let n = config_maps.list(&ListParams::default()).await.unwrap().items.len();
            if n > 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the apply never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (took, success) = first.terminate();
        let exited = Instant::now();
        eprintln!("gantry run exited {took:?} after SIGTERM during the apply");
        assert!(success, "a graceful exit is a successful one");
        assert!(took < Duration::from_secs(10), "exit took {took:?}");

        // The Lease was released on the way out: the standby takes it at once, not at expiry.
        wait_for(&leases, LEASE, Duration::from_secs(15), |l| {
            holder(l) == "replica-b"
        })
        .await;
        let handover = exited.elapsed();
        eprintln!("the standby led {handover:?} after the graceful exit");
        assert!(handover < Duration::from_secs(2), "handover took {handover:?}");

        // Nothing half-written: the new leader applies the whole revision.
        let revision = source.revision();
        wait_for(&kustomizations, "app", WAIT, applied(&revision)).await;
        let applied_maps = config_maps.list(&ListParams::default()).await.unwrap().items;
        let ours = applied_maps
            .iter()
            .filter(|cm| cm.name_any().starts_with("cm-"))
            .count();
        assert_eq!(ours, 500);
        drop(second);
    })
    .await;
}

#[tokio::test]
async fn sigterm_after_an_idle_period_exits_promptly_and_releases_the_lease() {
    with_namespace("gitops-idle-exit", |client, ns| async move {
        install_crds(&client).await;
        let source = Source::new(&[("deploy/config.yaml", CONFIG)]);
        let mut gantry = Gantry::replica(&ns, "only");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        wait_for(&leases, LEASE, WAIT, |l| holder(l) == "only").await;
        create_source(&client, &ns, &source.server.url("app.git"), "10m").await;
        create_kustomization(&client, &ns, "app", kustomization_spec("./deploy", &ns)).await;
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        wait_for(&kustomizations, "app", WAIT, applied(&source.revision())).await;
        tokio::time::sleep(Duration::from_secs(3)).await;

        let (took, success) = gantry.terminate();
        eprintln!("gantry run exited {took:?} after SIGTERM when idle");
        assert!(success);
        assert!(took < Duration::from_secs(10), "exit took {took:?}");
        let lease = leases.get(LEASE).await.unwrap();
        assert_eq!(
            holder(Some(&lease)),
            "",
            "released on the way out: {lease:?}"
        );
    })
    .await;
}

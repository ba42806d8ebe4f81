//! The GitRepository controller against the real API server and real git servers (smart HTTP
//! through `git-http-backend`, SSH through `sshd`): status, conditions and events as Flux writes
//! them, and the failures a user meets (wrong password, server down, wrong host key, missing
//! secret).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gantry_api::meta::LocalObjectReference;
use gantry_api::source::v1::{
    Artifact, GitRepository, GitRepositoryInclude, GitRepositoryRef, GitRepositorySpec,
};
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::metrics::Metrics;
use gantry_runtime::trigger::Trigger;
use gantry_source::GitRepositories;
use gantry_source::artifact::ArtifactStore;
use gantry_testkit::git::{GitHttpServer, HttpAuth, SshKeyPair, SshServer, TestRepo, free_port};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

// The controller, watching one namespace, for as long as this value lives.
struct Running {
    task: tokio::task::JoinHandle<()>,
    store: ArtifactStore,
    metrics: Metrics,
    // What the in-process "artifact stored" hand-off announced, in order.
    hooked: Arc<Mutex<Vec<(String, String)>>>,
    _storage: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_controller(client: &Client, ns: &str) -> Running {
    let storage = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(storage.path(), "http://gantry.test/");
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let seen = hooked.clone();
    let (stored, mut announced) = Trigger::<GitRepository>::new();
    tokio::spawn(async move {
        while let Some(repo) = announced.next().await {
            let ns = repo.namespace.clone().unwrap_or_default();
            seen.lock().unwrap().push((ns, repo.name.clone()));
        }
    });
    let shared = Shared::new(client.clone());
    let metrics = shared.metrics.clone();
    let controller = Controller::new(
        GitRepositories::new(store.clone()).notify_stored(stored),
        shared,
    )
    .namespace(Some(ns));
    let task = tokio::spawn(controller.run(std::future::pending()));
    Running {
        task,
        store,
        metrics,
        hooked,
        _storage: storage,
    }
}

fn spec(url: &str, secret: Option<&str>, branch: &str) -> GitRepositorySpec {
    GitRepositorySpec {
        url: url.into(),
        interval: "10m".into(),
        timeout: Some("20s".into()),
        secret_ref: secret.map(|s| LocalObjectReference { name: s.into() }),
        r#ref: Some(GitRepositoryRef {
            branch: Some(branch.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": data.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("gantry-tests").force(),
        &Patch::Apply(&secret),
    )
    .await
    .unwrap_or_else(|e| panic!("secret {name}: {e}"));
}

fn condition<'a>(repo: &'a GitRepository, type_: &str) -> Option<&'a Condition> {
    repo.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn is_ready(repo: Option<&GitRepository>) -> bool {
    repo.and_then(|r| condition(r, "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn failed_with(reason: &'static str) -> impl FnMut(Option<&GitRepository>) -> bool {
    move |repo| {
        repo.and_then(|r| condition(r, "Ready"))
            .is_some_and(|c| c.status == "False" && c.reason == reason)
    }
}

async fn events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

async fn wait_for_event(client: &Client, ns: &str, name: &str, reason: &str) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = events(client, ns, name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason));
        if let Some(e) = found {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event for {name}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn request_reconcile(api: &Api<GitRepository>, name: &str, token: &str) {
    let patch = serde_json::json!({
        "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } }
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_gitrepository_over_http_gets_an_artifact_and_flux_status() {
    with_namespace("gitrepo-http", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/app.yaml", "kind: ConfigMap\n")
            .commit("first commit");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(
            root.path(),
            HttpAuth::Basic {
                username: "flux".into(),
                password: "pw".into(),
            },
        );
        create_secret(
            &client,
            &ns,
            "git-auth",
            &[("username", "flux"), ("password", "pw")],
        )
        .await;
        let running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        api.create(
            &PostParams::default(),
            &GitRepository::new(
                "app",
                spec(&server.url("app.git"), Some("git-auth"), "main"),
            ),
        )
        .await
        .unwrap();

        let repo_obj = wait_for(&api, "app", WAIT, is_ready).await.unwrap();
        let head = repo.head();
        let revision = format!("main@sha1:{head}");
        let status = repo_obj.status.clone().unwrap();
        let artifact: Artifact = status.artifact.clone().expect("an artifact");
        assert_eq!(artifact.revision, revision);
        assert!(artifact.digest.starts_with("sha256:") && artifact.digest.len() == 71);
        assert_eq!(
            artifact.path,
            format!("gitrepository/{ns}/app/{}.tar.gz", &artifact.digest[7..])
        );
        assert_eq!(
            artifact.url,
            format!("http://gantry.test/{}", artifact.path)
        );
        assert!(artifact.size.is_some_and(|s| s > 0));
        assert_eq!(status.observed_generation, repo_obj.metadata.generation);

        let message = format!("stored artifact for revision '{revision}'");
        let ready = condition(&repo_obj, "Ready").unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("Succeeded", message.as_str())
        );
        let stored = condition(&repo_obj, "ArtifactInStorage").unwrap();
        assert_eq!(
            (stored.status.as_str(), stored.reason.as_str()),
            ("True", "Succeeded")
        );
        for absent in ["Reconciling", "Stalled", "FetchFailed"] {
            assert!(
                condition(&repo_obj, absent).is_none(),
                "{absent} is absent when ready"
            );
        }

        let event = wait_for_event(&client, &ns, "app", "NewArtifact").await;
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(
            event.note.as_deref(),
            Some("stored artifact for commit 'first commit'")
        );
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("source-controller")
        );
        assert_eq!(
            *running.hooked.lock().unwrap(),
            [(ns.clone(), "app".to_owned())]
        );

        let exported = running.metrics.encode();
        assert!(
            exported.contains(&format!(
                "gotk_reconcile_duration_seconds_count{{kind=\"GitRepository\",name=\"app\",namespace=\"{ns}\"}}"
            )),
            "{exported}"
        );
        let info = exported
            .lines()
            .find(|l| l.starts_with("gotk_resource_info{") && l.contains("name=\"app\""))
            .unwrap_or_else(|| panic!("gotk_resource_info for app: {exported}"));
        assert!(info.contains("ready=\"True\"") && info.contains(&revision), "{info}");

        // The Kustomization controller's view: the artifact unpacked.
        let tree = running.store.open(&artifact).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.path().join("deploy/app.yaml")).unwrap(),
            "kind: ConfigMap\n"
        );

        // `flux reconcile` with nothing new: echoed, and no pack fetched.
        let packs = server.upload_pack_requests();
        request_reconcile(&api, "app", "first").await;
        let handled = wait_for(&api, "app", WAIT, |r| {
            r.and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.last_handled_reconcile_at.as_deref() == Some("first"))
        })
        .await
        .unwrap();
        assert_eq!(handled.status.unwrap().artifact.unwrap().revision, revision);
        assert_eq!(
            server.upload_pack_requests(),
            packs,
            "unchanged remote: nothing fetched"
        );
        assert_eq!(
            running.hooked.lock().unwrap().len(),
            1,
            "no new artifact, no hook"
        );

        // A new commit, then a request: a new artifact.
        repo.write("deploy/app.yaml", "kind: Secret\n")
            .commit("second commit");
        repo.push("HEAD:refs/heads/main");
        request_reconcile(&api, "app", "second").await;
        let next = format!("main@sha1:{}", repo.head());
        let updated = wait_for(&api, "app", WAIT, |r| {
            r.and_then(|r| r.status.as_ref())
                .and_then(|s| s.artifact.as_ref())
                .is_some_and(|a| a.revision == next)
        })
        .await
        .unwrap();
        assert_eq!(
            updated
                .status
                .as_ref()
                .unwrap()
                .last_handled_reconcile_at
                .as_deref(),
            Some("second")
        );
        assert_ne!(
            updated.status.unwrap().artifact.unwrap().digest,
            artifact.digest
        );
        // The hook runs right after the status write the wait above saw: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while running.hooked.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(running.hooked.lock().unwrap().len(), 2);
        let mut notes: Vec<String> = events(&client, &ns, "app")
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("NewArtifact"))
            .filter_map(|e| e.note)
            .collect();
        notes.sort();
        assert_eq!(
            notes,
            [
                "stored artifact for commit 'first commit'",
                "stored artifact for commit 'second commit'"
            ],
            "one event per new artifact"
        );
    })
    .await;
}

#[tokio::test]
async fn failures_give_ready_false_with_flux_reasons_and_recover() {
    with_namespace("gitrepo-fail", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("app.yaml", "a: 1\n").commit("first");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(
            root.path(),
            HttpAuth::Basic {
                username: "flux".into(),
                password: "right".into(),
            },
        );
        create_secret(
            &client,
            &ns,
            "wrong",
            &[("username", "flux"), ("password", "wrong")],
        )
        .await;
        let _running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let url = server.url("app.git");
        let down_url = format!("http://127.0.0.1:{}/app.git", free_port());
        for (name, spec) in [
            ("wrong-password", spec(&url, Some("wrong"), "main")),
            ("server-down", spec(&down_url, None, "main")),
            ("missing-secret", spec(&url, Some("nope"), "main")),
            ("missing-branch", spec(&url, Some("wrong"), "main")),
        ] {
            api.create(&PostParams::default(), &GitRepository::new(name, spec))
                .await
                .unwrap();
        }

        let obj = wait_for(
            &api,
            "wrong-password",
            WAIT,
            failed_with("AuthenticationFailed"),
        )
        .await
        .unwrap();
        let ready = condition(&obj, "Ready").unwrap();
        assert!(
            ready.message.contains(&url) && ready.message.contains("401"),
            "{}",
            ready.message
        );
        let fetch = condition(&obj, "FetchFailed").unwrap();
        assert_eq!(
            (fetch.status.as_str(), fetch.reason.as_str()),
            ("True", "AuthenticationFailed")
        );
        let reconciling = condition(&obj, "Reconciling").unwrap();
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", "ProgressingWithRetry")
        );
        assert!(condition(&obj, "Stalled").is_none());
        assert!(obj.status.as_ref().unwrap().artifact.is_none());
        let warning = wait_for_event(&client, &ns, "wrong-password", "AuthenticationFailed").await;
        assert_eq!(warning.type_.as_deref(), Some("Warning"));

        let obj = wait_for(&api, "server-down", WAIT, failed_with("GitOperationFailed"))
            .await
            .unwrap();
        let msg = &condition(&obj, "Ready").unwrap().message;
        assert!(msg.contains(&down_url), "{msg}");

        let obj = wait_for(
            &api,
            "missing-secret",
            WAIT,
            failed_with("AuthenticationFailed"),
        )
        .await
        .unwrap();
        let msg = &condition(&obj, "Ready").unwrap().message;
        assert_eq!(
            msg,
            &format!("failed to get secret '{ns}/nope': secrets \"nope\" not found")
        );

        // Retried with backoff: fixing the secret heals the object without touching it.
        create_secret(
            &client,
            &ns,
            "wrong",
            &[("username", "flux"), ("password", "right")],
        )
        .await;
        let healed = wait_for(&api, "wrong-password", WAIT, is_ready)
            .await
            .unwrap();
        for gone in ["FetchFailed", "Reconciling"] {
            assert!(
                condition(&healed, gone).is_none(),
                "{gone} removed after recovery"
            );
        }
        assert_eq!(
            healed.status.unwrap().artifact.unwrap().revision,
            format!("main@sha1:{}", repo.head())
        );

        // A branch that does not exist.
        let patch = serde_json::json!({ "spec": { "ref": { "branch": "nope" } } });
        api.patch(
            "missing-branch",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
        let obj = wait_for(&api, "missing-branch", WAIT, |r| {
            r.and_then(|r| condition(r, "Ready")).is_some_and(|c| {
                c.status == "False" && c.message.contains("branch 'nope' not found")
            })
        })
        .await
        .unwrap();
        assert_eq!(
            condition(&obj, "Ready").unwrap().reason,
            "GitOperationFailed"
        );
    })
    .await;
}

#[tokio::test]
async fn ssh_with_known_hosts_and_a_wrong_host_key() {
    with_namespace("gitrepo-ssh", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("app.yaml", "over: ssh\n").commit("first");
        repo.push("HEAD:refs/heads/main");
        let server = SshServer::start();
        let keys = tempfile::tempdir().unwrap();
        let impostor = SshKeyPair::generate(keys.path(), "impostor");
        let identity = server.client_key.private.clone();
        let good_hosts = server.known_hosts_line();
        let bad_hosts = format!("[127.0.0.1]:{} {}", server.port(), impostor.public_key());
        create_secret(
            &client,
            &ns,
            "ssh-good",
            &[("identity", &identity), ("known_hosts", &good_hosts)],
        )
        .await;
        create_secret(
            &client,
            &ns,
            "ssh-bad",
            &[("identity", &identity), ("known_hosts", &bad_hosts)],
        )
        .await;
        let _running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let url = server.url(&repo.bare);
        api.create(
            &PostParams::default(),
            &GitRepository::new("good", spec(&url, Some("ssh-good"), "main")),
        )
        .await
        .unwrap();
        api.create(
            &PostParams::default(),
            &GitRepository::new("bad", spec(&url, Some("ssh-bad"), "main")),
        )
        .await
        .unwrap();

        let good = wait_for(&api, "good", WAIT, is_ready).await.unwrap();
        assert_eq!(
            good.status.unwrap().artifact.unwrap().revision,
            format!("main@sha1:{}", repo.head())
        );
        let bad = wait_for(&api, "bad", WAIT, failed_with("GitOperationFailed"))
            .await
            .unwrap();
        let msg = &condition(&bad, "Ready").unwrap().message;
        assert!(msg.contains("host key mismatch"), "{msg}");
    })
    .await;
}

#[tokio::test]
async fn a_suspended_gitrepository_is_left_alone() {
    with_namespace("gitrepo-suspend", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let _running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let mut s = spec("http://127.0.0.1:1/app.git", None, "main");
        s.suspend = true;
        api.create(&PostParams::default(), &GitRepository::new("paused", s))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let obj = api.get("paused").await.unwrap();
        assert!(
            obj.status.is_none_or(|s| s.conditions.is_empty()),
            "no status written"
        );
        assert!(events(&client, &ns, "paused").await.is_empty(), "no events");
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_per_spec_timeout() {
    with_namespace("gitrepo-timeout", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        // Accepts connections (the kernel does, from the backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/app.git",
            silent.local_addr().unwrap().port()
        );
        let _running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let mut s = spec(&url, None, "main");
        s.timeout = Some("1s".into());
        api.create(&PostParams::default(), &GitRepository::new("silent", s))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let obj = wait_for(&api, "silent", WAIT, failed_with("GitOperationFailed"))
            .await
            .unwrap();
        let msg = &condition(&obj, "Ready").unwrap().message;
        assert!(msg.contains("timeout") && msg.contains(&url), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bounded by spec.timeout"
        );
        // The stuck fetch thread is not joined by more: retries report it instead.
        wait_for(&api, "silent", WAIT, |r| {
            r.and_then(|r| condition(r, "Ready"))
                .is_some_and(|c| c.message.contains("previous fetch has not finished"))
        })
        .await;
        drop(silent);
    })
    .await;
}

#[tokio::test]
async fn include_and_sparse_checkout_shape_the_artifact() {
    with_namespace("gitrepo-include", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let lib = TestRepo::new(root.path(), "lib");
        lib.write("base/common.yaml", "common: true\n")
            .write("other.txt", "not wanted\n");
        lib.commit("lib");
        lib.push("HEAD:refs/heads/main");
        let app = TestRepo::new(root.path(), "app");
        app.write("apps/a.yaml", "a: 1\n")
            .write("docs/x.md", "docs\n");
        app.commit("app");
        app.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);

        // The including repository first: it waits until `lib` exists and has an artifact.
        let mut app_spec = spec(&server.url("app.git"), None, "main");
        app_spec.sparse_checkout = vec!["apps".into()];
        app_spec.include = vec![GitRepositoryInclude {
            repository: LocalObjectReference { name: "lib".into() },
            from_path: Some("base".into()),
            to_path: Some("vendor/lib".into()),
        }];
        api.create(&PostParams::default(), &GitRepository::new("app", app_spec))
            .await
            .unwrap();
        let waiting = wait_for(&api, "app", WAIT, failed_with("NotFound"))
            .await
            .unwrap();
        let unavailable = condition(&waiting, "IncludeUnavailable").unwrap();
        assert_eq!(unavailable.status, "True");
        assert_eq!(
            unavailable.message,
            "could not get resource for include 'lib': \
             gitrepositories.source.toolkit.fluxcd.io \"lib\" not found"
        );

        api.create(
            &PostParams::default(),
            &GitRepository::new("lib", spec(&server.url("lib.git"), None, "main")),
        )
        .await
        .unwrap();
        wait_for(&api, "lib", WAIT, is_ready).await;
        // Retried with backoff, the including repository picks the artifact up.
        let ready = wait_for(&api, "app", WAIT, is_ready).await.unwrap();
        let status = ready.status.unwrap();
        assert!(condition_absent(&status.conditions, "IncludeUnavailable"));
        assert_eq!(status.observed_sparse_checkout, ["apps"]);
        assert_eq!(status.observed_include.len(), 1);
        assert_eq!(status.included_artifacts.len(), 1);
        assert_eq!(
            status.included_artifacts[0].revision,
            format!("main@sha1:{}", lib.head())
        );
        let tree = running.store.open(&status.artifact.unwrap()).unwrap();
        let p = tree.path();
        assert!(p.join("apps/a.yaml").is_file());
        assert!(!p.join("docs").exists(), "outside the sparse checkout");
        assert_eq!(
            std::fs::read_to_string(p.join("vendor/lib/common.yaml")).unwrap(),
            "common: true\n"
        );
        assert!(
            !p.join("vendor/lib/other.txt").exists(),
            "only fromPath is included"
        );
    })
    .await;
}

fn condition_absent(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().all(|c| c.type_ != type_)
}

#[tokio::test]
async fn a_trigger_request_fetches_at_once_without_waiting_for_the_interval() {
    with_namespace("gitrepo-trigger", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/app.yaml", "kind: ConfigMap\n")
            .commit("first");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let storage = tempfile::tempdir().unwrap();
        let mut controller = Controller::new(
            GitRepositories::new(ArtifactStore::new(storage.path(), "http://gantry.test/")),
            Shared::new(client.clone()),
        )
        .namespace(Some(&ns))
        .concurrency(2);
        let trigger = controller.trigger();
        let task = tokio::spawn(controller.run(std::future::pending()));
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        // An interval long enough that only the trigger can explain a second fetch.
        api.create(
            &PostParams::default(),
            &GitRepository::new("app", spec(&server.url("app.git"), None, "main")),
        )
        .await
        .unwrap();
        let revision = |r: Option<&GitRepository>| {
            r.and_then(|r| r.status.as_ref()?.artifact.as_ref())
                .map(|a| a.revision.clone())
        };
        let first = format!("main@sha1:{}", repo.head());
        wait_for(&api, "app", WAIT, |r| revision(r).as_ref() == Some(&first)).await;

        let second_id = repo
            .write("deploy/app.yaml", "kind: Secret\n")
            .commit("second");
        repo.push("HEAD:refs/heads/main");
        let second = format!("main@sha1:{second_id}");
        // Without a request nothing happens (the interval is 10 minutes).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(revision(api.get("app").await.ok().as_ref()), Some(first));

        let asked = std::time::Instant::now();
        trigger.request("app", &ns);
        wait_for(&api, "app", Duration::from_secs(10), |r| {
            revision(r).as_ref() == Some(&second)
        })
        .await;
        let took = asked.elapsed();
        eprintln!("trigger to new artifact in status: {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // A request for an object that does not exist is harmless.
        trigger.request("missing", &ns);
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn a_deleted_gitrepository_leaves_no_metrics_and_no_artifacts() {
    with_namespace("gitrepo-delete", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("app.yaml", "a: 1\n").commit("first");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let running = start_controller(&client, &ns);
        let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        api.create(
            &PostParams::default(),
            &GitRepository::new("doomed", spec(&server.url("app.git"), None, "main")),
        )
        .await
        .unwrap();
        let ready = wait_for(&api, "doomed", WAIT, is_ready).await.unwrap();
        assert!(
            ready
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == "finalizers.fluxcd.io")),
            "the finalizer guards the artifacts: {:?}",
            ready.metadata.finalizers
        );
        let dir =
            running
                .store
                .object_dir(gantry_source::artifact::GIT_REPOSITORY_KIND, &ns, "doomed");
        assert!(dir.is_dir(), "artifacts stored in {}", dir.display());

        // Then it fails (Ready=False exported), as the object in the report did.
        api.patch(
            "doomed",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"url": server.url("missing.git")}})),
        )
        .await
        .unwrap();
        wait_for(&api, "doomed", WAIT, |r| {
            r.and_then(|r| condition(r, "Ready"))
                .is_some_and(|c| c.status == "False")
        })
        .await;
        let series = |exported: &str| {
            exported
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("name=\"doomed\""))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        // Exported right after the status write the wait above saw: give it a moment.
        let exported_failure = |exported: &str| {
            series(exported).iter().any(|l| {
                l.starts_with("gotk_reconcile_condition{") && l.contains("status=\"False\"")
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !exported_failure(&running.metrics.encode()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = running.metrics.encode();
        assert!(exported_failure(&before), "{before}");

        api.delete("doomed", &Default::default()).await.unwrap();
        wait_for(&api, "doomed", WAIT, |r| r.is_none()).await;
        assert!(!dir.exists(), "{} removed with the object", dir.display());
        let after = running.metrics.encode();
        assert_eq!(series(&after), Vec::<String>::new(), "{after}");
    })
    .await;
}

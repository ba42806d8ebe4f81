//! `gantry run` end to end with notifications: a signed GitHub push webhook makes the
//! GitRepository fetch the new commit at once (its interval is 10 minutes), and a failing
//! Kustomization is reported to a generic Provider endpoint. Prints the webhook-to-artifact
//! latency (see docs/benchmarks.md).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::meta::LocalObjectReference;
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_api::notification::v1beta3::{
    Alert, AlertSpec, CrossNamespaceObjectReference, Provider, ProviderSpec,
};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_core::notification::webhook::sign_sha256;
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
use gantry_testkit::http::json_sink;
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "e2e-token";

struct Gantry {
    child: Child,
    _storage: tempfile::TempDir,
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gantry(namespace: &str, receiver_port: u16) -> Gantry {
    let storage = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run",
            "--watch-namespace",
            namespace,
            "--leader-elect=false",
        ])
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
    Gantry {
        child,
        _storage: storage,
    }
}

#[tokio::test]
async fn github_push_webhook_fetches_at_once_and_failures_alert() {
    with_namespace("notify-e2e", |client, ns| async move {
        install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("deploy/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n");
        repo.commit("initial");
        repo.push("HEAD:refs/heads/main");
        let git = GitHttpServer::start(root.path(), HttpAuth::None);

        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let spec = GitRepositorySpec {
            url: git.url("app.git"),
            interval: "10m".into(),
            r#ref: Some(GitRepositoryRef { branch: Some("main".into()), ..Default::default() }),
            ..Default::default()
        };
        repos.create(&PostParams::default(), &GitRepository::new("app", spec)).await.unwrap();
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some("token".into()), ..Default::default() },
            string_data: Some([("token".to_string(), TOKEN.to_string())].into()),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await.unwrap();
        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        let spec = ReceiverSpec {
            type_: "github".into(),
            events: vec!["push".into()],
            secret_ref: Some(LocalObjectReference { name: "token".into() }),
            resources: vec![ReceiverResource { kind: "GitRepository".into(), name: "app".into(), ..Default::default() }],
            ..Default::default()
        };
        receivers.create(&PostParams::default(), &Receiver::new("github", spec)).await.unwrap();
        let (seen, address) = json_sink("events").await;
        let spec = ProviderSpec { type_: "generic".into(), address: Some(address), ..Default::default() };
        Api::<Provider>::namespaced(client.clone(), &ns).create(&PostParams::default(), &Provider::new("generic", spec)).await.unwrap();
        let spec = AlertSpec {
            provider_ref: LocalObjectReference { name: "generic".into() },
            event_severity: Some("error".into()),
            event_sources: vec![CrossNamespaceObjectReference { kind: "Kustomization".into(), name: "*".into(), ..Default::default() }],
            ..Default::default()
        };
        Api::<Alert>::namespaced(client.clone(), &ns).create(&PostParams::default(), &Alert::new("failures", spec)).await.unwrap();

        let port = free_port();
        let _gantry = start_gantry(&ns, port);
        let first = format!("main@sha1:{}", repo.head());
        let revision_is = |want: String| move |r: Option<&GitRepository>| {
            r.and_then(|r| r.status.as_ref()).and_then(|s| s.artifact.as_ref()).is_some_and(|a| a.revision == want)
        };
        wait_for(&repos, "app", WAIT, revision_is(first.clone())).await;
        let r = wait_for(&receivers, "github", WAIT, |r| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| s.webhook_path.is_some() && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }).await.unwrap();
        let url = format!("http://127.0.0.1:{port}{}", r.status.unwrap().webhook_path.unwrap());

        // `gantry webhook-url` prints the same URL.
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["webhook-url", "github", "-n", &ns, "--base-url", &format!("http://127.0.0.1:{port}")])
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url);
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["webhook-url", "missing", "-n", &ns])
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

        // A new commit, announced by a push webhook signed as GitHub signs.
        repo.write("deploy/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v2\n");
        let sha = repo.commit("second");
        repo.push("HEAD:refs/heads/main");
        let body = serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main", "before": first.trim_start_matches("main@sha1:"), "after": sha,
            "repository": {"name": "app", "full_name": "org/app"}, "pusher": {"name": "dev"}, "commits": []
        })).unwrap();
        let http = reqwest::Client::new();
        let mut samples = Vec::new();
        let started = Instant::now();
        let response = http.post(&url)
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sign_sha256(TOKEN.as_bytes(), &body))
            .header("Content-Type", "application/json")
            .body(body.clone()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let answered = started.elapsed();
        // Poll tightly to measure when the new artifact appears.
        let want = format!("main@sha1:{sha}");
        loop {
            let r = repos.get("app").await.unwrap();
            if r.status.and_then(|s| s.artifact).is_some_and(|a| a.revision == want) {
                break;
            }
            assert!(started.elapsed() < WAIT, "the webhook did not trigger a fetch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples.push(started.elapsed());
        println!("webhook answered in {answered:?}; new artifact after {:?}", samples[0]);
        assert!(samples[0] < Duration::from_secs(5), "within seconds, not the 10m interval");

        // A Kustomization that cannot build: its failure arrives at the generic endpoint.
        let spec = KustomizationSpec {
            interval: "10m".into(),
            path: Some("./does-not-exist".into()),
            prune: true,
            source_ref: CrossNamespaceSourceReference { name: "app".into(), ..Default::default() },
            ..Default::default()
        };
        Api::<Kustomization>::namespaced(client.clone(), &ns).create(&PostParams::default(), &Kustomization::new("broken", spec)).await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let got = seen.lock().unwrap().clone();
            if let Some(event) = got.iter().find(|e| e["involvedObject"]["name"] == "broken") {
                assert_eq!(event["severity"], "error");
                assert_eq!(event["involvedObject"]["kind"], "Kustomization");
                assert_eq!(event["reportingController"], "kustomize-controller");
                assert!(event["message"].as_str().unwrap().contains("does-not-exist"), "{event}");
                break;
            }
            assert!(Instant::now() < deadline, "no alert arrived: {got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

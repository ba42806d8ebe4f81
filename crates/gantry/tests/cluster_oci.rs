//! Gitless GitOps end to end: `gantry push artifact` puts a directory in a real registry,
//! `gantry run` pulls it through an OCIRepository, a Kustomization applies it to the test
//! cluster, and `status.artifact.url` answers from the artifact server (`--storage-addr`) with
//! bytes whose sha256 is `status.artifact.digest`; a registry webhook (a Harbor Receiver naming
//! the OCIRepository) makes it pull a re-pushed tag at once.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_api::kustomize::v1::{
    CrossNamespaceSourceReference, Kustomization, KustomizationSpec, SourceKind,
};
use gantry_api::meta::LocalObjectReference;
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_api::source::v1::{OCIRepository, OCIRepositoryRef, OCIRepositorySpec};
use gantry_testkit::git::free_port;
use gantry_testkit::registry::{Registry, RegistryAuth};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(90);

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

fn start_gantry(namespace: &str, storage_port: u16, receiver_port: u16) -> Gantry {
    let storage = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run",
            "--leader-elect=false",
            "--watch-namespace",
            namespace,
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--receiver-addr=127.0.0.1:{receiver_port}"))
        .arg(format!("--storage-addr=127.0.0.1:{storage_port}"))
        .arg(format!("--storage-adv-addr=127.0.0.1:{storage_port}"))
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

fn push(registry: &Registry, tag: &str, dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["push", "artifact"])
        .arg(format!("oci://{}:{tag}", registry.image("gitless/app")))
        .arg("--path")
        .arg(dir)
        .args([
            "--source=https://git.example/team/app",
            "--revision=main@sha1:0123456789abcdef0123456789abcdef01234567",
            "--insecure-registry",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gantry push artifact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let (_, digest) = printed
        .trim()
        .rsplit_once('@')
        .expect("repo@digest printed");
    digest.to_owned()
}

/// GET over plain HTTP/1.0 (loopback only): status code and body.
fn http_get(url: &str) -> (u16, Vec<u8>) {
    http("GET", url, &[], b"")
}

/// One HTTP/1.0 request to a loopback URL: status code and body.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    assert!(host.starts_with("127.0.0.1:"), "loopback only: {url}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(host) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "connecting to {host}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    write!(stream, "{method} /{path} HTTP/1.0\r\nHost: {host}\r\n").unwrap();
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n").unwrap();
    }
    write!(stream, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

#[tokio::test]
async fn a_pushed_artifact_is_applied_its_url_serves_the_digest_and_a_registry_webhook_pulls_the_next()
 {
    with_namespace("gantry-oci", |client, ns| async move {
        install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let content = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(content.path().join("deploy")).unwrap();
        std::fs::write(
            content.path().join("deploy/settings.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: gitless\n",
        )
        .unwrap();
        let digest = push(&registry, "v1", content.path());
        let (storage_port, receiver_port) = (free_port(), free_port());
        let _gantry = start_gantry(&ns, storage_port, receiver_port);

        let repos: Api<OCIRepository> = Api::namespaced(client.clone(), &ns);
        let spec = OCIRepositorySpec {
            url: format!("oci://{}", registry.image("gitless/app")),
            interval: "10m".into(),
            insecure: true,
            r#ref: Some(OCIRepositoryRef {
                tag: Some("v1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        repos
            .create(&PostParams::default(), &OCIRepository::new("app", spec))
            .await
            .unwrap();
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let ks = KustomizationSpec {
            interval: "10m".into(),
            path: Some("./deploy".into()),
            prune: true,
            timeout: Some("40s".into()),
            target_namespace: Some(ns.clone()),
            source_ref: CrossNamespaceSourceReference {
                kind: SourceKind::OciRepository,
                name: "app".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        kustomizations
            .create(&PostParams::default(), &Kustomization::new("app", ks))
            .await
            .unwrap();

        let revision = format!("v1@{digest}");
        let applied = wait_for(&kustomizations, "app", WAIT, |k| {
            k.and_then(|k| k.status.as_ref())
                .is_some_and(|s| s.last_applied_revision.as_deref() == Some(revision.as_str()))
        })
        .await
        .unwrap();
        let ready = applied
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("True", format!("Applied revision: {revision}").as_str())
        );
        let settings = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("settings")
            .await
            .unwrap();
        assert_eq!(settings.data.unwrap()["mode"], "gitless");

        // The advertised URL answers with the artifact itself.
        let repo = repos.get("app").await.unwrap();
        let artifact = repo.status.unwrap().artifact.unwrap();
        assert_eq!(
            artifact.url,
            format!(
                "http://127.0.0.1:{storage_port}/ocirepository/{ns}/app/{digest}.tar.gz"
            )
        );
        let (status, body) = http_get(&artifact.url);
        assert_eq!(status, 200);
        let served: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(format!("sha256:{served}"), artifact.digest);
        // Nothing outside the storage and nothing unknown.
        for path in [
            format!("ocirepository/{ns}/app/../../../../../etc/passwd"),
            format!("ocirepository/{ns}/app/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
            format!("ocirepository/{ns}/app/missing.tar.gz"),
            format!("ocirepository/{ns}/app"),
        ] {
            let (status, body) = http_get(&format!("http://127.0.0.1:{storage_port}/{path}"));
            assert_eq!(status, 404, "{path}");
            assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
        }

        // The tag moves; the interval (10m) is far away: a registry webhook pulls it now.
        std::fs::write(
            content.path().join("deploy/settings.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: webhook\n",
        )
        .unwrap();
        let moved = push(&registry, "v1", content.path());
        assert_ne!(moved, digest);
        let token = "registry-webhook-token";
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "webhook-token" },
            "stringData": { "token": token },
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        let spec = ReceiverSpec {
            type_: "harbor".into(),
            secret_ref: Some(LocalObjectReference {
                name: "webhook-token".into(),
            }),
            resources: vec![ReceiverResource {
                kind: "OCIRepository".into(),
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        receivers
            .create(&PostParams::default(), &Receiver::new("registry", spec))
            .await
            .unwrap();
        let receiver = wait_for(&receivers, "registry", WAIT, |r| {
            r.and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.webhook_path.is_some())
        })
        .await
        .unwrap();
        let hook = receiver.status.unwrap().webhook_path.unwrap();
        let payload = br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v1"}]}}"#;
        let (status, body) = http(
            "POST",
            &format!("http://127.0.0.1:{receiver_port}{hook}"),
            &[("Authorization", token), ("Content-Type", "application/json")],
            payload,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let revision = format!("v1@{moved}");
        wait_for(&kustomizations, "app", WAIT, |k| {
            k.and_then(|k| k.status.as_ref())
                .is_some_and(|s| s.last_applied_revision.as_deref() == Some(revision.as_str()))
        })
        .await;
        let repo = repos.get("app").await.unwrap();
        assert!(
            repo.status.unwrap().last_handled_reconcile_at.is_some(),
            "the webhook's request was handled"
        );
        let settings = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("settings")
            .await
            .unwrap();
        assert_eq!(settings.data.unwrap()["mode"], "webhook");
    })
    .await;
}

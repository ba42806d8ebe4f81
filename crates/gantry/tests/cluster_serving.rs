//! Knative Services through the real `gantry run` (the serving controllers as the binary wires
//! them) and the CLI that shows them: `gantry get ksvc` with each URL, `gantry get all` and
//! `gantry tree` with the Revisions.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gantry_api::kustomize::v1::Kustomization;
use gantry_api::serving::v1::Service;
use gantry_testkit::git::free_port;
use gantry_testkit::{install_crds, kubeconfig_path, wait_for, with_namespace};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// `gantry run` for one namespace; killed when dropped.
struct Gantry {
    child: Child,
    _storage: tempfile::TempDir,
}

impl Gantry {
    fn start(namespace: &str) -> Self {
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
            .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
            .arg("--serving-domain=example.test")
            .arg("--storage-path")
            .arg(storage.path())
            .env("KUBECONFIG", kubeconfig_path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry run");
        Gantry {
            child,
            _storage: storage,
        }
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn gantry(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .await
        .expect("running gantry");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().expect("exit code"),
        format!("{stdout}{stderr}"),
    )
}

#[tokio::test]
async fn gantry_run_serves_a_ksvc_and_the_cli_shows_its_url_and_revisions() {
    with_namespace("ksvc-cli", |client, ns| async move {
        install_crds(&client).await;
        let _gantry = Gantry::start(&ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let ksvc: Service = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": { "name": "hello" },
            "spec": { "template": { "spec": { "containers": [{ "image": "registry.invalid/hello:1" }] } } }
        }))
        .unwrap();
        services.create(&PostParams::default(), &ksvc).await.unwrap();
        wait_for(&services, "hello", Duration::from_secs(90), |s| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|s| {
                s.latest_ready_revision_name.as_deref() == Some("hello-00001")
                    && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .await;
        let url = format!("http://hello.{ns}.example.test");

        let (code, out) = gantry(&["get", "ksvc", "-n", &ns]).await;
        assert_eq!(code, 0, "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("ksvc/hello"))
            .unwrap_or_else(|| panic!("no ksvc line in:\n{out}"));
        assert!(line.contains("True") && line.contains(&url), "{line}");
        assert!(!out.contains("Revision/"), "get ksvc lists Services only:\n{out}");

        let (code, out) = gantry(&["get", "all", "-n", &ns]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.lines().any(|l| l.starts_with("ksvc/hello")), "{out}");
        let rev = out
            .lines()
            .find(|l| l.starts_with("Revision/hello-00001"))
            .unwrap_or_else(|| panic!("no Revision line in:\n{out}"));
        assert!(rev.contains("1/1 replicas"), "{rev}");

        // A Kustomization whose inventory holds the ksvc: tree shows it and its Revisions.
        let kss: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let ks: Kustomization = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": { "name": "apps" },
            "spec": { "interval": "1h", "prune": true, "suspend": true,
                "sourceRef": { "kind": "GitRepository", "name": "app" } }
        }))
        .unwrap();
        kss.create(&PostParams::default(), &ks).await.unwrap();
        let now = jiff::Timestamp::now().to_string();
        kss.patch_status("apps", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                "message": "Applied revision: main@sha1:abc", "lastTransitionTime": now}],
            "inventory": {"entries": [
                {"id": format!("{ns}_hello_serving.knative.dev_Service"), "v": "v1"},
            ]}
        }})))
        .await
        .unwrap();
        let (code, out) = gantry(&["tree", "apps", "-n", &ns]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("Service/{ns}/hello")), "{out}");
        let rev = out
            .lines()
            .find(|l| l.contains(&format!("Revision/{ns}/hello-00001")))
            .unwrap_or_else(|| panic!("no Revision under the ksvc:\n{out}"));
        assert!(rev.contains("Ready=True") && rev.contains("100% traffic"), "{rev}");
    })
    .await;
}

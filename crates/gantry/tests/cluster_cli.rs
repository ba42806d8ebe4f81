//! The binary's edge against the test cluster: what `gantry run` says when Gantry is not
//! installed, and where `gantry webhook-url` says a Receiver is served.

use std::process::Command;

#[test]
fn run_without_the_leader_election_namespace_says_what_to_do_in_one_sentence() {
    let kubeconfig = gantry_testkit::kubeconfig_path();
    let missing = format!("gantry-missing-{}", std::process::id());
    let storage = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["run", "--leader-election-namespace", &missing])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--receiver-addr",
            "127.0.0.1:0",
            "--serving-addr",
            "127.0.0.1:0",
            "--uptime-addr",
            "127.0.0.1:0",
            "--storage-addr",
            "127.0.0.1:0",
        ])
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("GANTRY_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "gantry: namespace \"{missing}\" does not exist: run 'gantry install', or pass \
             --leader-elect=false for a single local process"
        )
    );
}

fn webhook_url(ns: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["webhook-url", "github", "-n", ns])
        .args(extra)
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env_remove("GANTRY_WEBHOOK_BASE_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn webhook_url_prints_the_address_recorded_on_gantrys_service() {
    use gantry_api::notification::v1::{Receiver, ReceiverSpec};
    use gantry_api::notification::{WEBHOOK_BASE_URL_ANNOTATION, WEBHOOK_SERVICE};
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    gantry_testkit::with_namespace("webhook-url", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
        receivers
            .create(
                &PostParams::default(),
                &Receiver::new(
                    "github",
                    ReceiverSpec {
                        type_: "github".into(),
                        secret_ref: Some(gantry_api::meta::LocalObjectReference {
                            name: "token".into(),
                        }),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        // As the Receiver controller would publish it.
        let status = serde_json::json!({"status": {
            "webhookPath": "/hook/0123abcd",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                            "message": "Receiver initialized for path: /hook/0123abcd",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }});
        receivers
            .patch_status("github", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();

        // Nothing recorded: the default address.
        let (ok, url, stderr) = webhook_url(&ns, &["--gantry-namespace", &ns]);
        assert!(ok, "{stderr}");
        assert_eq!(url, "http://localhost:9292/hook/0123abcd");

        // Recorded on the Service (as the sandbox does): that address.
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": WEBHOOK_SERVICE,
                         "annotations": {WEBHOOK_BASE_URL_ANNOTATION: "http://127.0.0.1:43397"}},
            "spec": {"clusterIP": "None", "ports": [{"port": 80, "targetPort": 9292}]}
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
        let (ok, url, stderr) = webhook_url(&ns, &["--gantry-namespace", &ns]);
        assert!(ok, "{stderr}");
        assert_eq!(url, "http://127.0.0.1:43397/hook/0123abcd");

        // An explicit base URL wins.
        let (ok, url, stderr) = webhook_url(
            &ns,
            &[
                "--gantry-namespace",
                &ns,
                "--base-url",
                "https://hooks.example.com/",
            ],
        );
        assert!(ok, "{stderr}");
        assert_eq!(url, "https://hooks.example.com/hook/0123abcd");
    })
    .await;
}

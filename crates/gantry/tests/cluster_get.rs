//! `gantry get all` and `gantry tree` against the local control plane. Statuses are written
//! through the status subresource, as the controllers would write them, so the listing is
//! checked against exactly what the API server returns.

use gantry_api::kustomize::v1::Kustomization;
use gantry_api::source::v1::GitRepository;
use gantry_testkit::{install_crds, kubeconfig_path, with_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn gantry(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .await
        .expect("running gantry");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[tokio::test]
async fn get_all_lists_sources_and_kustomizations_with_their_state() {
    with_namespace("get-all", |client, ns| async move {
        install_crds(&client).await;
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let repo: GitRepository = serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "app"},
            "spec": {"url": "https://example.invalid/app.git", "interval": "1m"}
        }))
        .unwrap();
        repos.create(&PostParams::default(), &repo).await.unwrap();
        repos
            .patch_status("app", &PatchParams::default(), &Patch::Merge(json!({"status": {
                "observedGeneration": 1,
                "artifact": {"revision": "main@sha1:0123456789abcdef0123456789abcdef01234567",
                    "digest": "sha256:00", "path": "p", "url": "u", "lastUpdateTime": now()},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                    "message": "stored artifact for revision 'main@sha1:0123456'",
                    "lastTransitionTime": now()}]
            }})))
            .await
            .unwrap();

        let run = gantry(&["get", "all", "-n", &ns]).await;
        assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("GitRepository/app"))
            .unwrap_or_else(|| panic!("no GitRepository line in:\n{}", run.stdout));
        assert!(line.contains("True"), "{line}");
        assert!(line.contains("main@sha1:0123456789abcdef"), "{line}");
        assert!(line.contains("stored artifact for revision"), "{line}");

        // A failing Kustomization makes the listing exit 1 and shows why.
        let kss: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let ks: Kustomization = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "apps"},
            "spec": {"interval": "1m", "prune": true, "sourceRef": {"kind": "GitRepository", "name": "app"}}
        }))
        .unwrap();
        kss.create(&PostParams::default(), &ks).await.unwrap();
        kss.patch_status("apps", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed",
                "message": "deploy.yaml: line 3, column 1: mapping values are not allowed",
                "lastTransitionTime": now()}]
        }})))
        .await
        .unwrap();
        let run = gantry(&["get", "all", "-n", &ns]).await;
        assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("Kustomization/apps"))
            .unwrap_or_else(|| panic!("no Kustomization line in:\n{}", run.stdout));
        assert!(line.contains("False"), "{line}");
        assert!(line.contains("deploy.yaml: line 3"), "{line}");

        // Another namespace with nothing in it says so.
        let run = gantry(&["get", "all", "-n", "kube-public"]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("no Flux objects found"), "{}", run.stdout);
    })
    .await;
}

#[tokio::test]
async fn tree_shows_the_inventory_with_each_objects_health() {
    with_namespace("tree", |client, ns| async move {
        install_crds(&client).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "settings"}, "data": {"k": "v"}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();

        let kss: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        for name in ["root", "child"] {
            let ks: Kustomization = serde_json::from_value(json!({
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": name},
                "spec": {"interval": "1m", "prune": true,
                    "sourceRef": {"kind": "GitRepository", "name": "app"}}
            }))
            .unwrap();
            kss.create(&PostParams::default(), &ks).await.unwrap();
        }
        let ready = json!([{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
            "message": "Applied revision: main@sha1:abc", "lastTransitionTime": now()}]);
        kss.patch_status("root", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "observedGeneration": 1, "conditions": ready,
            "inventory": {"entries": [
                {"id": format!("{ns}_settings__ConfigMap"), "v": "v1"},
                {"id": format!("{ns}_child_kustomize.toolkit.fluxcd.io_Kustomization"), "v": "v1"},
            ]}
        }})))
        .await
        .unwrap();
        kss.patch_status(
            "child",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": 1, "conditions": ready,
                "inventory": {"entries": [
                    {"id": format!("{ns}_gone__Service"), "v": "v1"},
                ]}
            }})),
        )
        .await
        .unwrap();

        let run = gantry(&["tree", "kustomization", "root", "-n", &ns]).await;
        assert_eq!(
            run.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert!(
            lines[0].starts_with(&format!("Kustomization/{ns}/root  Ready=True")),
            "{}",
            run.stdout
        );
        assert!(
            lines[1].starts_with(&format!("├── ConfigMap/{ns}/settings  Current")),
            "{}",
            run.stdout
        );
        assert!(
            lines[2].starts_with(&format!("└── Kustomization/{ns}/child  Current")),
            "{}",
            run.stdout
        );
        // The child's inventory is nested under it; its missing Service shows as NotFound.
        assert!(
            lines[3].starts_with(&format!("    └── Service/{ns}/gone  NotFound")),
            "{}",
            run.stdout
        );

        let run = gantry(&["tree", "missing", "-n", &ns]).await;
        assert_ne!(run.code, 0);
        assert!(run.stderr.contains("not found"), "{}", run.stderr);
    })
    .await;
}

//! `gantry diff kustomization` against the local control plane: the binary is run with
//! `KUBECONFIG` pointing at the test cluster, each test in its own namespace.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_api::kustomize::v1::{Kustomization, KustomizationSpec};
use gantry_kustomize::apply::{Applier, ApplyOptions, FIELD_MANAGER, Owner};
use gantry_kustomize::build::{self, Kustomize};
use gantry_testkit::{kubeconfig_path, with_namespace};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const NAME: &str = "apps";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn gantry_diff(dir: &Path, ns: &str) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["diff", "kustomization", NAME, "--path"])
        .arg(dir)
        .args(["-n", ns])
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

fn deployment(ns: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n\
         spec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n\
         \x20 template:\n    metadata:\n      labels:\n        app: web\n    spec:\n\
         \x20     containers:\n      - name: web\n        image: nginx:1.27\n"
    )
}

fn config_map(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  k: v\n"
    )
}

fn secret(ns: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: {ns}\n\
         stringData:\n  password: {password}\n"
    )
}

/// A directory with a Deployment, a ConfigMap and a Secret in `ns`.
fn write_app(dir: &Path, ns: &str, replicas: u32, password: &str) {
    std::fs::write(dir.join("deploy.yaml"), deployment(ns, replicas)).unwrap();
    std::fs::write(dir.join("config.yaml"), config_map(ns, "settings")).unwrap();
    std::fs::write(dir.join("secret.yaml"), secret(ns, password)).unwrap();
}

/// Applies `dir` as the controller would (owner labels of `NAME` in `ns`).
async fn apply_dir(client: &Client, dir: &Path, ns: &str) {
    let objects = build::build(
        dir,
        &KustomizationSpec::default(),
        &BTreeMap::new(),
        &Kustomize::default(),
        true,
    )
    .unwrap();
    Applier::new(client.clone(), FIELD_MANAGER)
        .apply(objects, &ApplyOptions::new(Owner::new(NAME, ns)))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_empty_namespace_gets_everything_created() {
    with_namespace("diff-create", |_client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), &ns, 1, "s3cr3t-old");
        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        let mut lines: Vec<&str> = run.stdout.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                format!("► ConfigMap/{ns}/settings created"),
                format!("► Deployment/{ns}/web created"),
                format!("► Secret/{ns}/creds created"),
            ]
        );
        assert!(!run.stdout.contains("s3cr3t"), "{}", run.stdout);
    })
    .await;
}

#[tokio::test]
async fn applied_objects_show_no_difference_and_nothing_is_written() {
    with_namespace("diff-same", |client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), &ns, 1, "s3cr3t-old");
        apply_dir(&client, dir.path(), &ns).await;

        let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), &ns);
        let cm_version = configs.get("settings").await.unwrap().resource_version();
        let secret_version = secrets.get("creds").await.unwrap().resource_version();
        // The deployment controller writes the Deployment itself (revision annotation, status);
        // what must not move is what our field manager wrote.
        let ours = |d: &k8s_openapi::api::apps::v1::Deployment| {
            let entry = d
                .managed_fields()
                .iter()
                .find(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
                .cloned();
            (d.metadata.generation, entry.and_then(|e| e.time))
        };
        let deploy_before = ours(&deployments.get("web").await.unwrap());

        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.stdout, "");

        assert_eq!(
            configs.get("settings").await.unwrap().resource_version(),
            cm_version
        );
        assert_eq!(
            secrets.get("creds").await.unwrap().resource_version(),
            secret_version
        );
        assert_eq!(ours(&deployments.get("web").await.unwrap()), deploy_before);
    })
    .await;
}

#[tokio::test]
async fn a_changed_replica_count_is_drift_with_a_diff() {
    with_namespace("diff-drift", |client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), &ns, 1, "s3cr3t-old");
        apply_dir(&client, dir.path(), &ns).await;
        std::fs::write(dir.path().join("deploy.yaml"), deployment(&ns, 3)).unwrap();

        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        let out = &run.stdout;
        assert!(
            out.starts_with(&format!(
                "► Deployment/{ns}/web drifted\n--- live\n+++ dry-run\n"
            )),
            "{out}"
        );
        assert!(out.contains("\n-  replicas: 1\n"), "{out}");
        assert!(out.contains("\n+  replicas: 3\n"), "{out}");
        // Only the Deployment changed; server-owned fields are not part of the diff.
        assert_eq!(out.matches('►').count(), 1, "{out}");
        for noise in ["resourceVersion", "managedFields", "uid:", "status:"] {
            assert!(!out.contains(noise), "{noise} in {out}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_changed_secret_is_shown_masked() {
    with_namespace("diff-secret", |client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), &ns, 1, "s3cr3t-old");
        apply_dir(&client, dir.path(), &ns).await;
        std::fs::write(dir.path().join("secret.yaml"), secret(&ns, "s3cr3t-new")).unwrap();

        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout
                .starts_with(&format!("► Secret/{ns}/creds drifted\n")),
            "{out}"
        );
        assert!(out.contains("-  password: \"*** (before)\""), "{out}");
        assert!(out.contains("*** (after)"), "{out}");
        // Neither the values nor their base64 forms appear anywhere.
        for secret in ["s3cr3t", "czNjcjN0LW9sZA", "czNjcjN0LW5ldw"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
    })
    .await;
}

#[tokio::test]
async fn inventory_entries_missing_from_the_build_are_deleted() {
    with_namespace("diff-prune", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), &ns, 1, "s3cr3t-old");
        // `old` is ours and leaves the build; `foreign` has no owner labels, so prune keeps it.
        std::fs::write(dir.path().join("old.yaml"), config_map(&ns, "old")).unwrap();
        apply_dir(&client, dir.path(), &ns).await;
        std::fs::remove_file(dir.path().join("old.yaml")).unwrap();
        let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        configs
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "foreign" } })).unwrap(),
            )
            .await
            .unwrap();

        // Suspended, so that a controller running against the cluster leaves it alone.
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let ks: Kustomization = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": { "name": NAME, "namespace": ns },
            "spec": { "interval": "10m", "path": "./", "prune": true, "suspend": true,
                      "sourceRef": { "kind": "GitRepository", "name": "repo" } }
        }))
        .unwrap();
        kustomizations
            .create(&PostParams::default(), &ks)
            .await
            .unwrap();
        let entries: Vec<_> = [
            format!("{ns}_settings__ConfigMap"),
            format!("{ns}_old__ConfigMap"),
            format!("{ns}_foreign__ConfigMap"),
            format!("{ns}_creds__Secret"),
            format!("{ns}_web_apps_Deployment"),
        ]
        .into_iter()
        .map(|id| json!({ "id": id, "v": "v1" }))
        .collect();
        kustomizations
            .patch_status(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "inventory": { "entries": entries } } })),
            )
            .await
            .unwrap();

        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.stdout, format!("► ConfigMap/{ns}/old deleted\n"));
        // A diff deletes nothing.
        assert!(configs.get_opt("old").await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn the_cluster_kustomization_supplies_spec_and_substitute_from() {
    with_namespace("diff-subst", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), config_map(&ns, "settings")).unwrap();
        apply_dir(&client, dir.path(), &ns).await;
        let templated = config_map(&ns, "settings").replace("k: v", "k: ${value}");
        std::fs::write(dir.path().join("config.yaml"), templated).unwrap();

        let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        configs
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({ "metadata": { "name": "vars" }, "data": { "value": "from-cluster" } }),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        let ks: Kustomization = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": { "name": NAME, "namespace": ns },
            "spec": { "interval": "10m", "path": "./", "prune": false, "suspend": true,
                      "sourceRef": { "kind": "GitRepository", "name": "repo" },
                      "postBuild": { "substituteFrom": [{ "kind": "ConfigMap", "name": "vars" }] } }
        }))
        .unwrap();
        kustomizations
            .create(&PostParams::default(), &ks)
            .await
            .unwrap();

        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout
                .starts_with(&format!("► ConfigMap/{ns}/settings drifted\n")),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout.contains("\n+  k: from-cluster\n"),
            "{}",
            run.stdout
        );
        assert!(!run.stderr.contains("skipped"), "{}", run.stderr);
    })
    .await;
}

#[tokio::test]
async fn invalid_yaml_exits_2_naming_file_and_line() {
    with_namespace("diff-bad", |_client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), config_map(&ns, "good")).unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
        )
        .unwrap();
        let run = gantry_diff(dir.path(), &ns).await;
        assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.stdout, "");
        assert!(run.stderr.contains("bad.yaml:"), "{}", run.stderr);
        let after = run.stderr.split("bad.yaml:").nth(1).unwrap_or_default();
        assert!(
            after.starts_with(|c: char| c.is_ascii_digit()),
            "no line number: {}",
            run.stderr
        );
    })
    .await;
}

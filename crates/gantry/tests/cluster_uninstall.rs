//! Upgrades and uninstall against a real API server (needs the test cluster: `cargo xtask test`).
//!
//! - `gantry install` applied server-side over an older install converges: same field manager,
//!   no force, no immutable-field error (the Deployment's selector and the bindings' roleRefs
//!   never change between versions or modes).
//! - `gantry uninstall` removes Gantry and never what it applied: finalizers are released first,
//!   so a Kustomization deleted afterwards takes nothing with it and nothing hangs.

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gantry_api::kustomize::v1::Kustomization;
use gantry_api::source::v1::GitRepository;
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use kube::Client;
use kube::api::{Api, DeleteParams};

const WAIT: Duration = Duration::from_secs(60);
/// The field manager of `gantry install | kubectl apply --server-side -f -`.
const MANAGER: &str = "kubectl";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("gt-{prefix}-{:x}{:x}", std::process::id(), nanos & 0xffff)
}

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .output()
        .expect("running gantry")
}

fn stdout(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `gantry install --namespace <ns> <args>`, as documents; cluster-scoped objects get `-<ns>`
/// so tests running at once do not share them (roleRefs follow).
fn install_documents(namespace: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["install", "--namespace", namespace];
    all.extend_from_slice(args);
    let stream = stdout(gantry(&all));
    let mut docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stream).unwrap();
    gantry_testkit::flux::suffix_cluster_objects(&mut docs, &format!("-{namespace}"));
    docs
}

async fn apply(client: &Client, docs: &[serde_json::Value]) {
    gantry_testkit::flux::apply_documents(client, docs, MANAGER).await;
}

/// An older release's output: the same objects with its version label and image.
fn as_version(docs: &[serde_json::Value], version: &str) -> Vec<serde_json::Value> {
    let text = serde_json::to_string(docs).unwrap().replace(
        &format!(
            "\"app.kubernetes.io/version\":\"{}\"",
            env!("CARGO_PKG_VERSION")
        ),
        &format!("\"app.kubernetes.io/version\":\"{version}\""),
    );
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn install_over_an_older_install_converges() {
    let client = gantry_testkit::client().await;
    let ns = unique("upgrade");
    let old = as_version(
        &install_documents(&ns, &["--image", "registry.invalid/gantry:0.0.9"]),
        "0.0.9",
    );
    assert_ne!(
        old,
        install_documents(&ns, &["--image", "registry.invalid/gantry:0.0.9"]),
        "the older output really differs"
    );
    apply(&client, &old).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let before = deployments.get("gantry").await.unwrap();

    // The upgrade: this version, another image.
    let new = install_documents(&ns, &["--image", "registry.invalid/gantry:0.1.0"]);
    apply(&client, &new).await;
    let after = deployments.get("gantry").await.unwrap();
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(image(&before), "registry.invalid/gantry:0.0.9");
    assert_eq!(image(&after), "registry.invalid/gantry:0.1.0");
    assert_eq!(
        before.spec.as_ref().unwrap().selector,
        after.spec.as_ref().unwrap().selector,
        "the selector is immutable and must not change"
    );
    assert!(after.metadata.generation > before.metadata.generation);
    assert_eq!(
        after.metadata.labels.as_ref().unwrap()["app.kubernetes.io/version"],
        env!("CARGO_PKG_VERSION")
    );

    // Switching to the multi-tenant lockdown and back converges too (bindings keep their
    // roleRef, which is immutable; only their subjects change).
    let locked = install_documents(
        &ns,
        &["--image", "registry.invalid/gantry:0.1.0", "--multi-tenant"],
    );
    apply(&client, &locked).await;
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(&format!("gantry-reconciler-{ns}"))
        .await
        .unwrap();
    assert_eq!(
        binding.subjects.unwrap()[0].name,
        "gantry-reconciler",
        "cluster-admin moved to the reconciler account"
    );
    apply(&client, &new).await;
    // Applying the same output again changes nothing (the status may move on; the spec not).
    let again = deployments.get("gantry").await.unwrap();
    apply(&client, &new).await;
    assert_eq!(
        deployments.get("gantry").await.unwrap().metadata.generation,
        again.metadata.generation
    );

    let uninstalled = gantry(&[
        "uninstall",
        "--namespace",
        &ns,
        "--keep-crds",
        "--watch-namespace",
        &ns,
    ]);
    stdout(uninstalled);
}

/// A `gantry run` process; killed when dropped.
struct Gantry(Child);

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(ks: Option<&Kustomization>) -> bool {
    ks.and_then(|k| k.status.as_ref()).is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[tokio::test]
async fn uninstall_releases_finalizers_and_keeps_the_workloads() {
    let client = gantry_testkit::client().await;
    gantry_testkit::install_crds(&client).await;
    let ns = unique("uninstall");
    apply(
        &client,
        &install_documents(&ns, &["--image", "registry.invalid/gantry:0.1.0"]),
    )
    .await;

    // Gantry at work: a Kustomization with `prune: true` applies a ConfigMap.
    let tenant = gantry_testkit::create_namespace(&client, "kept").await;
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write(
        "deploy/cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: workload\n  namespace: {tenant}\ndata:\n  mode: blue\n"
        ),
    );
    repo.commit("initial");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);
    gantry_testkit::flux::create_git_kustomization(
        &client,
        &tenant,
        "app",
        &server.url("app.git"),
        "./deploy",
    )
    .await;
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), &tenant);
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &tenant);
    let storage = tempfile::tempdir().unwrap();
    let process = Gantry(
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "--leader-elect=false", "--watch-namespace", &tenant])
            .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
            .arg("--serving-addr=127.0.0.1:0")
            .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
            .arg("--uptime-addr=127.0.0.1:0")
            .arg("--storage-addr=127.0.0.1:0")
            .arg("--storage-path")
            .arg(storage.path())
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry run"),
    );
    gantry_testkit::wait_for(&kustomizations, "app", WAIT, ready)
        .await
        .expect("the Kustomization became Ready");
    let has_finalizer = |meta: &kube::api::ObjectMeta| {
        meta.finalizers
            .iter()
            .flatten()
            .any(|f| f == gantry_api::meta::FINALIZER)
    };
    assert!(has_finalizer(
        &kustomizations.get("app").await.unwrap().metadata
    ));
    // The pod stops when its Deployment is deleted; here the stand-in stops first.
    drop(process);

    // A dry run names everything and deletes nothing.
    let plan = stdout(gantry(&[
        "uninstall",
        "--namespace",
        &ns,
        "--watch-namespace",
        &tenant,
        "--dry-run",
    ]));
    for line in [
        format!("would delete Deployment/{ns}/gantry"),
        format!("would delete Service/{ns}/webhook-receiver"),
        format!("would delete ClusterRoleBinding/gantry-{ns}"),
        format!("would delete ClusterRoleBinding/gantry-reconciler-{ns}"),
        format!("would delete ClusterRole/gantry-{ns}"),
        format!("would delete ServiceAccount/{ns}/gantry"),
        format!("would release the finalizer of Kustomization/{tenant}/app"),
        "would delete CustomResourceDefinition/kustomizations.kustomize.toolkit.fluxcd.io".into(),
        format!("would delete Namespace/{ns}"),
    ] {
        assert!(plan.contains(&line), "{line} in:\n{plan}");
    }
    assert!(!plan.contains("cluster-admin"), "{plan}");
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("gantry")
            .await
            .unwrap()
            .is_some()
    );

    // The real thing (the CRDs are shared with the other tests: kept).
    let done = stdout(gantry(&[
        "uninstall",
        "--namespace",
        &ns,
        "--watch-namespace",
        &tenant,
        "--keep-crds",
        "--keep-namespace",
    ]));
    assert!(
        done.contains(&format!(
            "released the finalizer of Kustomization/{tenant}/app"
        )),
        "{done}"
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("gantry")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &ns)
            .get_opt("webhook-receiver")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt("gantry")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Role>::namespaced(client.clone(), &ns)
            .get_opt("gantry-leader-election")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&format!("gantry-{ns}"))
            .await
            .unwrap()
            .is_none()
    );
    for binding in ["gantry", "gantry-reconciler"] {
        assert!(
            Api::<ClusterRoleBinding>::all(client.clone())
                .get_opt(&format!("{binding}-{ns}"))
                .await
                .unwrap()
                .is_none(),
            "{binding}"
        );
    }
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt("cluster-admin")
            .await
            .unwrap()
            .is_some(),
        "cluster-admin is Kubernetes', never deleted"
    );
    // --keep-namespace: the namespace stays.
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    assert!(namespace.metadata.deletion_timestamp.is_none());

    // Finalizers released: deleting the Kustomization and its source takes nothing with it and
    // does not hang.
    assert!(!has_finalizer(
        &kustomizations.get("app").await.unwrap().metadata
    ));
    kustomizations
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    repos.delete("app", &DeleteParams::default()).await.unwrap();
    let gone = gantry_testkit::wait_for(&kustomizations, "app", WAIT, |k| k.is_none()).await;
    assert!(gone.is_none());
    let workload = Api::<ConfigMap>::namespaced(client.clone(), &tenant)
        .get("workload")
        .await
        .expect("the workload Gantry applied is still there");
    assert_eq!(
        workload.data,
        Some(BTreeMap::from([("mode".into(), "blue".into())]))
    );

    gantry_testkit::delete_namespace(&client, &tenant).await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::background())
        .await;
}

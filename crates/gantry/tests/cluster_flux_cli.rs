//! The real `flux` CLI (built from the Go module proxy by `cargo xtask test`, `GANTRY_FLUX`)
//! against `gantry install --namespace flux-system` applied to the test cluster: `flux check`,
//! `flux version` and `flux logs` find Gantry where they look for Flux's controllers.
//!
//! The CLI may talk to nothing but the loopback API server: it runs with HTTP(S)_PROXY pointing at
//! a closed loopback port, which Go's HTTP client bypasses only for loopback addresses, so any
//! request elsewhere fails instead of leaving the machine.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, discovery};

/// The Flux-compatible layout: the namespace the `flux` CLI uses by default.
const NAMESPACE: &str = "flux-system";
const MANAGER: &str = "gantry-flux-cli-test";

fn flux_bin() -> PathBuf {
    match std::env::var_os("GANTRY_FLUX") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "GANTRY_FLUX is not set: run the suite with `cargo xtask test`, which builds the flux \
             CLI, or set GANTRY_FLUX to a flux binary (`cargo xtask tool flux` prints one)"
        ),
    }
}

fn flux(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of loopback: a request that is not for 127.0.0.0/8 goes to this
    // "proxy" and fails.
    let nowhere = "http://127.0.0.1:9";
    let out = Command::new(flux_bin())
        .args(args)
        .args(["--timeout", "60s"])
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env("HOME", home.path())
        .env("HTTPS_PROXY", nowhere)
        .env("HTTP_PROXY", nowhere)
        .env("https_proxy", nowhere)
        .env("http_proxy", nowhere)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("running flux");
    eprintln!(
        "$ flux {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Applies `gantry install --namespace flux-system` server-side. The cluster-scoped RBAC gets a
/// suffix so it cannot collide with other tests' installs; everything else is as printed.
async fn install(client: &Client) {
    // A namespace still terminating from an earlier run accepts no new Pods.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while namespaces
        .get_opt(NAMESPACE)
        .await
        .unwrap()
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{NAMESPACE} is stuck terminating"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "install",
            "--namespace",
            NAMESPACE,
            "--image",
            concat!("registry.invalid/gantry:", env!("CARGO_PKG_VERSION")),
        ])
        .output()
        .expect("running gantry install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    for doc in docs {
        let mut object: DynamicObject = serde_json::from_value(doc).unwrap();
        let gvk = GroupVersionKind::try_from(object.types.as_ref().unwrap()).unwrap();
        if gvk.kind == "ClusterRole" || gvk.kind == "ClusterRoleBinding" {
            object
                .metadata
                .name
                .as_mut()
                .unwrap()
                .push_str("-flux-cli-test");
            if let Some(role) = object.data.pointer_mut("/roleRef/name")
                && role.as_str() == Some("gantry")
            {
                *role = "gantry-flux-cli-test".into();
            }
        }
        let (resource, caps) = discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(ns) if caps.scope == discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let name = object.metadata.name.clone().unwrap();
        // A new namespace takes a moment to accept objects.
        let mut attempt = 0;
        loop {
            let applied = api
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await;
            match applied {
                Ok(_) => break,
                Err(err) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("retrying {} {name}: {err}", gvk.kind);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => panic!("the API server refused {} {name}: {err}", gvk.kind),
            }
        }
    }
}

/// Waits until the Deployment is available (kwok plays the kubelet: the Pod is scheduled and
/// reported Ready, though no container runs).
async fn wait_for_rollout(client: &Client) -> Pod {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let available = deployments
            .get_opt("gantry")
            .await
            .unwrap()
            .and_then(|d| d.status)
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        let running = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=gantry"))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Running")
            });
        if available >= 1
            && let Some(pod) = running
        {
            return pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gantry Deployment in {NAMESPACE} did not roll out"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn flux_check_version_and_logs_find_an_installed_gantry() {
    let client = gantry_testkit::client().await;
    install(&client).await;
    let pod = wait_for_rollout(&client).await;
    let version = env!("CARGO_PKG_VERSION");

    // flux version: the CLI's own version, the distribution from the GitRepository CRD's labels,
    // and one entry per container image of the Deployments labelled part-of=flux.
    let out = flux(&["version", "-n", NAMESPACE, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["distribution"],
        format!("flux-gantry-v{version}"),
        "{info}"
    );
    assert_eq!(info["gantry"], version, "{info}");
    assert!(
        info["flux"]
            .as_str()
            .is_some_and(|v| v.starts_with("v2.") && v.ends_with("-local")),
        "{info}"
    );

    // flux check: Kubernetes version, distribution, the controllers (kstatus of each Deployment
    // labelled part-of=flux) and every CRD labelled part-of=flux with a stored version.
    let out = flux(&["check", "-n", NAMESPACE, "--poll-interval", "1s"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("all checks passed"), "{report}");
    assert!(
        report.contains(&format!("distribution: flux-gantry-v{version}")),
        "{report}"
    );
    assert!(
        report.contains(&format!("registry.invalid/gantry:{version}")),
        "{report}"
    );
    for crd in [
        "gitrepositories.source.toolkit.fluxcd.io/v1",
        "kustomizations.kustomize.toolkit.fluxcd.io/v1",
        "imagepolicies.image.toolkit.fluxcd.io/v1",
        "receivers.notification.toolkit.fluxcd.io/v1",
    ] {
        assert!(report.contains(crd), "{crd} not checked:\n{report}");
    }

    // flux logs: finds the Deployment and its Pod by the same label and asks the API server for
    // the `manager` container's log, which the kubelet serves. kwok plays the kubelet and runs no
    // container, so the log it serves for that container is the output of a real `gantry run`
    // with the installed Deployment's log format (GANTRY_LOG_FORMAT=flux), reconciling a
    // GitRepository in flux-system.
    let pod_name = pod.metadata.name.clone().unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log_file = gantry_log_of_a_reconcile(&client, log_dir.path()).await;
    serve_as_container_log(&client, &pod_name, &log_file).await;

    let out = flux(&[
        "logs",
        "-n",
        NAMESPACE,
        "--flux-namespace",
        NAMESPACE,
        "--kind",
        "GitRepository",
        "--name",
        "podinfo",
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed
            .lines()
            .any(|l| l.contains(" info GitRepository/podinfo.flux-system - stored new artifact")),
        "flux logs did not print Gantry's reconcile:\n{report}"
    );
    // Its filters work on Gantry's keys: another namespace, another kind, a level.
    let out = flux(&["logs", "-n", "default", "--flux-namespace", NAMESPACE]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("podinfo"));
    let out = flux(&[
        "logs",
        "-n",
        NAMESPACE,
        "--flux-namespace",
        NAMESPACE,
        "--kind",
        "Kustomization",
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("podinfo"));
    let out = flux(&[
        "logs",
        "-n",
        NAMESPACE,
        "--flux-namespace",
        NAMESPACE,
        "--level",
        "error",
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("stored new artifact"));

    uninstall(&client).await;
}

/// Runs `gantry run --log-format flux` until it has fetched a GitRepository `podinfo` in
/// flux-system from a local git server, and returns the file holding its output.
async fn gantry_log_of_a_reconcile(client: &Client, dir: &std::path::Path) -> PathBuf {
    use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
    use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
    use std::process::Stdio;

    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "podinfo");
    repo.write(
        "deploy/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    repo.commit("initial");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);

    let output = dir.join("gantry.out");
    let storage = tempfile::tempdir().unwrap();
    let mut gantry = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run",
            "--log-format",
            "flux",
            "--leader-elect=false",
            "--watch-namespace",
            NAMESPACE,
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg("--serving-addr=127.0.0.1:0")
        .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
        .arg("--uptime-addr=127.0.0.1:0")
        .arg("--storage-addr=127.0.0.1:0")
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env_remove("GANTRY_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .spawn()
        .expect("starting gantry run");

    let repos: Api<GitRepository> = Api::namespaced(client.clone(), NAMESPACE);
    let spec = GitRepositorySpec {
        url: server.url("podinfo.git"),
        interval: "10m".into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    repos
        .patch(
            "podinfo",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&GitRepository::new("podinfo", spec)),
        )
        .await
        .unwrap();
    // The line is written once the artifact is stored, just before the status says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&output)
        .unwrap_or_default()
        .contains("stored new artifact")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gantry run logged no stored artifact:\n{}",
            std::fs::read_to_string(&output).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deleted while gantry still runs, so a finalizer of its own cannot keep it (and with it the
    // namespace) alive.
    let _ = repos.delete("podinfo", &Default::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while repos.get_opt("podinfo").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "GitRepository podinfo was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = gantry.kill();
    let _ = gantry.wait();
    output
}

/// Makes kwok serve `output` as the `manager` container's log of `pod`: the file is rewritten in
/// the kubelet's CRI log format and named in a kwok `Logs` object.
async fn serve_as_container_log(client: &Client, pod: &str, output: &std::path::Path) {
    let cri = output.with_extension("cri.log");
    let stamp = "2026-01-01T00:00:00.000000000Z";
    let text: String = std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|line| format!("{stamp} stdout F {line}\n"))
        .collect();
    std::fs::write(&cri, text).unwrap();
    let gvk = GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "logs");
    let logs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let object = serde_json::json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": pod, "namespace": NAMESPACE},
        "spec": {"logs": [{"containers": ["manager"], "logsFile": cri}]},
    });
    logs.patch(
        pod,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .expect("kwok's Logs API (the local control plane of `cargo xtask cluster up`)");
    // kwok picks the object up from its watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Removes what `install` added, except the CRDs (shared with the other tests).
async fn uninstall(client: &Client) {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::DeleteParams;
    let dp = DeleteParams::background();
    let _ = Api::<Namespace>::all(client.clone())
        .delete(NAMESPACE, &dp)
        .await;
    for name in ["gantry", "gantry-reconciler"] {
        let name = format!("{name}-flux-cli-test");
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&name, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(&name, &dp)
            .await;
    }
}

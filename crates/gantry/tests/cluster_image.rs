//! Gantry's container image, end to end (needs the test cluster and the image: `cargo xtask
//! test` builds the image and sets `GANTRY_IMAGE_LAYOUT`; by hand, `cargo xtask image` and
//! `GANTRY_IMAGE_LAYOUT=target/oci/gantry`).
//!
//! The image is pushed to a real registry (Debian's `docker-registry`), pulled back and unpacked
//! into a temp dir, and its binaries run in that root as the kubelet would run them: a private
//! mount namespace, the root read-only, the pod's emptyDir volumes (temp dirs) as the only
//! writable paths, the ServiceAccount's token, CA and namespace at the standard path, the user,
//! entrypoint and environment from the image's config, and the args, env and ports from the
//! Deployment `gantry install` prints. Only the listen addresses move to 127.0.0.1 ports, and
//! `KUBERNETES_SERVICE_HOST/PORT` name the local API server: nothing leaves 127.0.0.0/8.
//!
//! Mounting needs root (as `.ci/run` runs) or user namespaces (`unshare --map-root-user`, where
//! the pod's user cannot be switched to and the process runs as the mapped root instead).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gantry_api::kustomize::v1::Kustomization;
use gantry_api::meta::LocalObjectReference;
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_api::source::v1::GitRepository;
use gantry_image::registry::{ClientConfig, Reference, RegistryClient};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
use gantry_testkit::registry::{Registry, RegistryAuth};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::Kubeconfig;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(90);

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The OCI layout `cargo xtask image` wrote.
fn layout_dir() -> PathBuf {
    match std::env::var_os("GANTRY_IMAGE_LAYOUT") {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "GANTRY_IMAGE_LAYOUT is not set: run `cargo xtask test`, or `cargo xtask image` and \
             set GANTRY_IMAGE_LAYOUT to its layout directory (target/oci/gantry)"
        ),
    }
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let data = std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    assert_eq!(
        sha256(&data),
        digest,
        "blob {digest} of the layout is intact"
    );
    data
}

/// Pushes the layout's image as `repository:tag` with Gantry's registry client; its digest.
async fn push_layout(layout: &Path, registry: &Registry, repository: &str, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = blob(layout, &digest);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let reference = Reference::parse(&format!("{}/{repository}", registry.host())).unwrap();
    let client = RegistryClient::new(
        &reference,
        ClientConfig {
            insecure: true,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut blobs = vec![parsed["config"]["digest"].as_str().unwrap().to_string()];
    for layer in parsed["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_string());
    }
    for digest in &blobs {
        client
            .push_blob(digest, &blob(layout, digest))
            .await
            .unwrap();
    }
    let pushed = client
        .push_manifest(tag, parsed["mediaType"].as_str().unwrap(), &manifest)
        .await
        .unwrap();
    assert_eq!(pushed, digest, "the registry stores the manifest as built");
    digest
}

/// An image pulled back from the registry and unpacked, with its config.
struct Unpacked {
    root: tempfile::TempDir,
    config: serde_json::Value,
}

async fn pull_and_unpack(registry: &Registry, repository: &str, tag: &str) -> Unpacked {
    let http = gantry_runtime::http::client(&Default::default()).unwrap();
    let base = registry.base();
    let get = |url: String, accept: Option<&'static str>| {
        let mut request = http.get(url);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.unwrap().to_vec()
        }
    };
    let manifest = get(
        format!("{base}/v2/{repository}/manifests/{tag}"),
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let fetch = |digest: String| {
        let url = format!("{base}/v2/{repository}/blobs/{digest}");
        let get = get(url, None);
        async move {
            let data = get.await;
            assert_eq!(sha256(&data), digest, "the registry serves the blob pushed");
            data
        }
    };
    let config = fetch(manifest["config"]["digest"].as_str().unwrap().into()).await;
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let root = tempfile::Builder::new()
        .prefix("gantry-image-root-")
        .tempdir()
        .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let gzip = fetch(layer["digest"].as_str().unwrap().into()).await;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gzip.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(&sha256(&tar), diff_id, "diff_id is the uncompressed layer");
        let mut archive = tar::Archive::new(tar.as_slice());
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(is_root());
        archive.unpack(root.path()).unwrap();
    }
    // The image's `/`: a temp dir is created private (0700), a container's root is not.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    Unpacked { root, config }
}

/// A tool of this machine (not of the image), by absolute path: the child's PATH is the image's.
fn host_tool(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/sbin".into(),
            "/bin".into(),
        ])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is needed (util-linux, mount, coreutils)"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// A writable mount of the container: a host dir bound over a path of the image.
struct Mount {
    host: PathBuf,
    path: String,
    read_only: bool,
}

impl Unpacked {
    fn env(&self) -> Vec<(String, String)> {
        self.config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// The image's entrypoint with `args`, in its root made read-only, with `mounts` bound in
    /// and the environment from the image's config plus `env`.
    fn command(&self, args: &[String], mounts: &[Mount], env: &[(String, String)]) -> Command {
        let root = self.root.path();
        let quote = |p: &Path| format!("'{}'", p.display());
        let mount_tool = quote(&host_tool("mount"));
        let mut script = String::from("set -e\n");
        script.push_str(&format!("{mount_tool} --bind {0} {0}\n", quote(root)));
        for mount in mounts {
            let target = root.join(mount.path.trim_start_matches('/'));
            std::fs::create_dir_all(&target).unwrap();
            script.push_str(&format!(
                "{mount_tool} --bind {} {}\n",
                quote(&mount.host),
                quote(&target)
            ));
            if mount.read_only {
                script.push_str(&format!(
                    "{mount_tool} -o remount,bind,ro {}\n",
                    quote(&target)
                ));
            }
        }
        // What every container gets from its runtime.
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        script.push_str(&format!(
            "{mount_tool} --rbind /dev {}\n",
            quote(&root.join("dev"))
        ));
        script.push_str(&format!(
            "{mount_tool} -t proc proc {}\n",
            quote(&root.join("proc"))
        ));
        script.push_str(&format!(
            "{mount_tool} -o remount,bind,ro {}\n",
            quote(root)
        ));
        let user = self.config["config"]["User"].as_str().unwrap();
        let userspec = if is_root() {
            format!("--userspec={user} ")
        } else {
            String::new()
        };
        script.push_str(&format!(
            "exec {} {userspec}{} \"$@\"\n",
            quote(&host_tool("chroot")),
            quote(root)
        ));
        let mut command = Command::new(host_tool("unshare"));
        command.args(["--mount", "--propagation", "private"]);
        if !is_root() {
            command.arg("--map-root-user");
        }
        command.arg(host_tool("sh")).args(["-c", &script, "sh"]);
        for part in self.config["config"]["Entrypoint"].as_array().unwrap() {
            command.arg(part.as_str().unwrap());
        }
        command.args(args);
        command.env_clear();
        for (key, value) in self.env().into_iter().chain(env.iter().cloned()) {
            command.env(key, value);
        }
        command
    }

    fn output(&self, args: &[&str], mounts: &[Mount]) -> Output {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.command(&args, mounts, &[]).output().unwrap()
    }
}

/// Every document of `gantry install`, applied server-side as `manager`; cluster-scoped objects
/// get a suffix so tests running at once do not share them.
async fn apply_install(client: &Client, stream: &str, suffix: &str, manager: &str) {
    let mut docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(stream).unwrap();
    gantry_testkit::flux::suffix_cluster_objects(&mut docs, suffix);
    gantry_testkit::flux::apply_documents(client, &docs, manager).await;
}

async fn delete_install(client: &Client, namespace: &str, suffix: &str) {
    let dp = DeleteParams::background();
    for name in ["gantry", "gantry-reconciler"] {
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&format!("{name}{suffix}"), &dp)
            .await;
    }
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&format!("gantry{suffix}"), &dp)
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(namespace, &dp)
        .await;
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("gt-{prefix}-{:x}{:x}", std::process::id(), nanos & 0xffff)
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The image, pushed, pulled and unpacked: its binaries run from its own root; `gantry install
/// --image <it>` is accepted by the API server as is.
#[tokio::test]
async fn the_image_runs_from_its_own_root_and_installs() {
    let layout = layout_dir();
    let registry = Registry::start(RegistryAuth::Anonymous);
    let tag = env!("CARGO_PKG_VERSION");
    let digest = push_layout(&layout, &registry, "gantry", tag).await;
    let image = pull_and_unpack(&registry, "gantry", tag).await;
    let reference = format!("{}/gantry:{tag}", registry.host());
    eprintln!("pushed {reference}@{digest}");

    // Non-root, entrypoint gantry, `run` by default.
    let config = &image.config["config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));
    let passwd = std::fs::read_to_string(image.root.path().join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    // The CA bundle is there and is what SSL_CERT_FILE names.
    let ca_file = image
        .env()
        .into_iter()
        .find(|(k, _)| k == "SSL_CERT_FILE")
        .map(|(_, v)| v)
        .expect("SSL_CERT_FILE in the image's environment");
    let bundle =
        std::fs::read_to_string(image.root.path().join(ca_file.trim_start_matches('/'))).unwrap();
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 100,
        "the image carries Debian's CA bundle"
    );

    let writable = tempfile::tempdir().unwrap();
    let tmp = writable.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&tmp, Some(65532), Some(65532)).unwrap();
    }
    let mounts = [Mount {
        host: tmp.clone(),
        path: "/tmp".into(),
        read_only: false,
    }];

    let version = stdout(&image.output(&["--version"], &mounts));
    assert_eq!(version.trim(), format!("gantry {tag}"));

    // `gantry build` of an overlay runs the image's own kustomize (found on the image's PATH).
    let write = |path: &str, text: &str| {
        let path = tmp.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("app/base/kustomization.yaml", "resources:\n- cm.yaml\n");
    write(
        "app/base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: blue\n",
    );
    // The overlay sits above its base: `gantry build` copies `--path` to a scratch dir, so a
    // `../base` outside it would not be found.
    write(
        "app/kustomization.yaml",
        "resources:\n- base\nnamePrefix: prod-\nconfigMapGenerator:\n- name: extra\n  literals:\n  - tier=prod\n",
    );
    if is_root() {
        for entry in ["app", "app/base"] {
            std::os::unix::fs::chown(tmp.join(entry), Some(65532), Some(65532)).unwrap();
        }
    }
    let built = stdout(&image.output(
        &["build", "kustomization", "app", "--path", "/tmp/app"],
        &mounts,
    ));
    assert!(built.contains("name: prod-settings"), "{built}");
    // configMapGenerator is kustomize's alone: the name hash proves kustomize ran.
    assert!(built.contains("name: prod-extra-"), "{built}");

    // `gantry install --image <it>`, printed by the image's gantry, accepted as is.
    let namespace = unique("image");
    let suffix = format!("-{namespace}");
    let stream = stdout(&image.output(
        &["install", "--namespace", &namespace, "--image", &reference],
        &mounts,
    ));
    let client = gantry_testkit::client().await;
    apply_install(&client, &stream, &suffix, "gantry-install").await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get("gantry")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(reference.as_str()));
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65532));
    // Every path gantry writes is a volume.
    let mounted: Vec<_> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounted.contains(&"/data") && mounted.contains(&"/tmp"));
    for volume in pod.volumes.iter().flatten() {
        assert!(volume.empty_dir.is_some(), "{volume:?}");
    }
    let resources = container.resources.clone().unwrap();
    assert!(resources.requests.unwrap().contains_key("memory"));
    assert!(resources.limits.unwrap().contains_key("memory"));
    assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some());

    delete_install(&client, &namespace, &suffix).await;
}

/// The Pod as the kubelet would run it: the image's root read-only, the Deployment's args, env,
/// volumes and ports, a real ServiceAccount token at the standard path, in-cluster config from
/// `KUBERNETES_SERVICE_HOST/PORT`. It takes the lease, reconciles a GitRepository and a
/// Kustomization, and serves probes, metrics and the Service's webhook port.
#[tokio::test]
async fn the_installed_pod_reconciles_with_its_in_cluster_identity() {
    let layout = layout_dir();
    let registry = Registry::start(RegistryAuth::Anonymous);
    let tag = env!("CARGO_PKG_VERSION");
    push_layout(&layout, &registry, "gantry", tag).await;
    let image = pull_and_unpack(&registry, "gantry", tag).await;
    let reference = format!("{}/gantry:{tag}", registry.host());

    let client = gantry_testkit::client().await;
    let namespace = unique("pod");
    let suffix = format!("-{namespace}");
    let install = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["install", "--namespace", &namespace, "--image", &reference])
        .output()
        .unwrap();
    let stream = stdout(&install);
    apply_install(&client, &stream, &suffix, "gantry-install").await;

    // What the kubelet reads from the manifests: the Deployment's container and the Service.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stream).unwrap();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in gantry install's output"))
    };
    let deployment: Deployment = serde_json::from_value(find("Deployment")).unwrap();
    let service: Service = serde_json::from_value(find("Service")).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = pod.containers[0].clone();
    assert_eq!(container.image.as_deref(), Some(reference.as_str()));
    assert_eq!(
        pod.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(65532),
        "the image's user"
    );
    let pod_name = "gantry-5d8f9c7b6-x2k4p";
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod_name.to_string(),
                Some("metadata.namespace") => namespace.clone(),
                // The pod is this loopback process: peers reach its serving listener there.
                Some("status.podIP") => "127.0.0.1".to_string(),
                other => panic!("env {} from {other:?}: teach this test", var.name),
            },
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    // Listen addresses: the container's named ports, moved to free loopback ports.
    let mut ports = BTreeMap::new();
    for port in container.ports.iter().flatten() {
        let name = port.name.clone().expect("named container ports");
        let variable = match name.as_str() {
            "healthz" => "GANTRY_HEALTH_ADDR",
            "http-prom" => "GANTRY_METRICS_ADDR",
            "http-webhook" => "GANTRY_RECEIVER_ADDR",
            "serving" => "GANTRY_SERVING_ADDR",
            "http-uptime" => "GANTRY_UPTIME_ADDR",
            "http" => "GANTRY_STORAGE_ADDR",
            other => panic!("container port {other}: teach this test what serves it"),
        };
        let local = free_port();
        env.push((variable.into(), format!("127.0.0.1:{local}")));
        ports.insert(name, local);
    }

    // The ServiceAccount volume, from a real TokenRequest, and the API server on loopback.
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(
            "gantry",
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status");
    let kubeconfig = Kubeconfig::read_from(gantry_testkit::kubeconfig_path()).unwrap();
    let cluster = kubeconfig.clusters[0].cluster.clone().unwrap();
    let server: reqwest::Url = cluster.server.clone().unwrap().parse().unwrap();
    assert_eq!(
        server.host_str(),
        Some("127.0.0.1"),
        "a loopback API server"
    );
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap()
        }
        (None, Some(path)) => std::fs::read(path).unwrap(),
        _ => panic!("the kubeconfig has no CA"),
    };
    let volumes = tempfile::tempdir().unwrap();
    let account_dir = volumes.path().join("serviceaccount");
    std::fs::create_dir_all(&account_dir).unwrap();
    std::fs::write(account_dir.join("token"), &token).unwrap();
    std::fs::write(account_dir.join("ca.crt"), &ca).unwrap();
    std::fs::write(account_dir.join("namespace"), &namespace).unwrap();
    env.push(("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()));
    env.push((
        "KUBERNETES_SERVICE_PORT".into(),
        server.port().unwrap().to_string(),
    ));
    env.push(("GANTRY_LOG".into(), "info".into()));

    let mut mounts = vec![Mount {
        host: account_dir,
        path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        read_only: true,
    }];
    // The pod's emptyDirs: the only writable paths.
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert!(volume.empty_dir.is_some(), "{} is an emptyDir", volume.name);
        let host = volumes.path().join(&volume.name);
        std::fs::create_dir_all(&host).unwrap();
        if is_root() {
            // fsGroup makes emptyDirs writable for the pod's group.
            std::os::unix::fs::chown(&host, Some(65532), Some(65532)).unwrap();
        }
        mounts.push(Mount {
            host,
            path: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
        });
    }
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );

    // Something to reconcile: a git repository on loopback, applied into another namespace.
    let tenant = gantry_testkit::create_namespace(&client, "podapp").await;
    let repo_root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(repo_root.path(), "app");
    repo.write(
        "deploy/kustomization.yaml",
        "resources:\n- cm.yaml\nnamePrefix: in-cluster-\n",
    );
    repo.write(
        "deploy/cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {tenant}\ndata:\n  mode: blue\n"
        ),
    );
    repo.commit("initial");
    repo.push("HEAD:refs/heads/main");
    let git = GitHttpServer::start(repo_root.path(), HttpAuth::None);
    gantry_testkit::flux::create_git_kustomization(
        &client,
        &tenant,
        "app",
        &git.url("app.git"),
        "./deploy",
    )
    .await;
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), &tenant);
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &tenant);
    Api::<Secret>::namespaced(client.clone(), &tenant)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "receiver-token"}, "stringData": {"token": "s3cret"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let receivers: Api<Receiver> = Api::namespaced(client.clone(), &tenant);
    receivers
        .create(
            &PostParams::default(),
            &Receiver::new(
                "generic",
                ReceiverSpec {
                    type_: "generic".into(),
                    secret_ref: Some(LocalObjectReference {
                        name: "receiver-token".into(),
                    }),
                    resources: vec![ReceiverResource {
                        kind: "GitRepository".into(),
                        name: "app".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();

    let log_path = volumes.path().join("gantry.log");
    let args = container.args.clone().unwrap_or_default();
    let mut command = image.command(&args, &mounts, &env);
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::fs::File::create(volumes.path().join("gantry.err")).unwrap());
    let pod_process = PodProcess(command.spawn().expect("starting the pod's process"));
    let log = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&log_path).unwrap_or_default(),
            std::fs::read_to_string(volumes.path().join("gantry.err")).unwrap_or_default()
        )
    };

    // Probes, on the ports the container names.
    let http = gantry_runtime::http::client(&Default::default()).unwrap();
    let started = Instant::now();
    let health = format!("http://127.0.0.1:{}", ports["healthz"]);
    loop {
        if let Ok(r) = http.get(format!("{health}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "readyz never answered 200:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let liveness = http.get(format!("{health}/healthz")).send().await.unwrap();
    assert!(liveness.status().is_success());

    // It reconciles as its ServiceAccount: source fetched, kustomize built, objects applied.
    let started = Instant::now();
    loop {
        let ks = kustomizations.get_opt("app").await.unwrap();
        let ready = ks
            .as_ref()
            .and_then(|k| k.status.as_ref())
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        if ready {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the Kustomization never became Ready: {:?}\n{}",
            ks.and_then(|k| k.status),
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = Api::<ConfigMap>::namespaced(client.clone(), &tenant)
        .get("in-cluster-settings")
        .await
        .unwrap();
    assert_eq!(
        applied.data,
        Some(BTreeMap::from([("mode".into(), "blue".into())]))
    );
    let text = log();
    assert!(
        text.contains("connected to Kubernetes"),
        "in-cluster config used:\n{text}"
    );

    // Metrics, on the port the pod's scrape annotation names.
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", ports["http-prom"]))
        .send()
        .await
        .unwrap();
    assert!(metrics.status().is_success());
    let body = metrics.text().await.unwrap();
    assert!(body.contains("gotk_reconcile"), "{body}");

    // The webhook receiver, on the container port the Service targets.
    let target = match service.spec.unwrap().ports.unwrap()[0].target_port.clone() {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => name,
        other => panic!("the Service targets a named port, not {other:?}"),
    };
    let receiver = gantry_testkit::wait_for(&receivers, "generic", WAIT, |r| {
        r.and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.webhook_path.is_some())
    })
    .await
    .expect("the Receiver got a webhook path");
    let path = receiver.status.unwrap().webhook_path.unwrap();
    let hook = http
        .post(format!("http://127.0.0.1:{}{path}", ports[&target]))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(hook.status().is_success(), "{}", hook.status());
    let annotated = gantry_testkit::wait_for(&repos, "app", WAIT, |r| {
        r.and_then(|r| r.metadata.annotations.as_ref())
            .is_some_and(|a| a.contains_key("reconcile.fluxcd.io/requestedAt"))
    })
    .await;
    assert!(annotated.is_some(), "the webhook asked for a reconcile");

    // Nothing was written outside the volumes: the root is read-only, and stayed intact.
    assert!(
        !log().contains("Read-only file system"),
        "gantry tried to write outside its volumes:\n{}",
        log()
    );
    drop(pod_process);
    gantry_testkit::delete_namespace(&client, &tenant).await;
    delete_install(&client, &namespace, &suffix).await;
}

/// The pod's process; killed (with its mount namespace) when dropped.
struct PodProcess(Child);

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

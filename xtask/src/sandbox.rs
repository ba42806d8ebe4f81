//! `cargo xtask sandbox up|down|push-image`: the reference pipeline on loopback, in one command.
//!
//! `up` brings up (or reuses) the local control plane, server-side-applies the CRDs that
//! `gantry install --crds` prints, and starts, as detached processes tagged with
//! `GANTRY_CLUSTER=<state dir>` (so `sandbox down`, `cluster down` and a later `up` find them): a
//! `docker-registry` whose notifications go to a `generic` Receiver, a git server that accepts
//! authenticated pushes (testkit's `GitHttpServer` in `cargo xtask sandbox serve-git`), and
//! `gantry run`. It pushes the sample repository (`apps/base`, `apps/serverless`,
//! `clusters/staging`, `clusters/production`) and two images, applies the Flux objects of the
//! reference pipeline in `flux-system`, and waits until both environments are rolled out. See
//! `docs/sandbox.md`.
//!
//! Staging runs the app as a Knative Service scaled to zero (served by `gantry run`'s router and
//! woken by the first request); production runs it as an ordinary Deployment. kwok runs no
//! containers, so `sandbox serve-pods` (started detached by `up`) plays the kubelet: a stand-in
//! HTTP server on each pod's 127.244.x address and container port, answering with the pod's
//! image, so what the router forwards to gets an answer and nothing leaves loopback.
//!
//! With an existing cluster (`--kubeconfig`) the processes are tagged with `<state>/sandbox`
//! instead, so that stopping them never touches a local control plane sharing the state dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use gantry_api::image::v1::{ImagePolicy, ImageRepository, ImageUpdateAutomation};
use gantry_api::kustomize::v1::Kustomization;
use gantry_api::notification::v1::Receiver;
use gantry_api::serving::v1::{Revision, Service as KnativeService};
use gantry_api::source::v1::GitRepository;
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::{self, Paths, process};

pub mod uptime;

/// The namespace of the Flux objects, as Flux's users expect it.
pub const NAMESPACE: &str = "flux-system";
/// The image both environments run.
pub const IMAGE: &str = "web";
/// The first staging image (`<sha>-<YYYYMMDDHHMM>`) and the first release.
pub const FIRST_STAGING_TAG: &str = "0000000-202601010000";
pub const FIRST_RELEASE_TAG: &str = "1.0.0";
const GIT_USER: &str = "gantry";
const MANAGER: &str = "gantry-sandbox";
/// How long `up` waits for the pipeline to become Ready and rolled out:
/// `GANTRY_SANDBOX_TIMEOUT` seconds, 180 by default.
fn ready_timeout() -> Duration {
    let seconds = std::env::var("GANTRY_SANDBOX_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(seconds)
}
const PASSWORD_ENV: &str = "GANTRY_SANDBOX_GIT_PASSWORD";
const GITHUB_TOKEN_ENV: &str = "GANTRY_SANDBOX_GITHUB_TOKEN";

/// Where the sandbox is and how to reach it, written by `up` to `<state>/sandbox/sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub kubeconfig: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub registry: String,
    pub git_url: String,
    pub git_user: String,
    pub git_password: String,
    /// Receiver name and full webhook URL.
    pub webhooks: Vec<(String, String)>,
    pub metrics: String,
    /// The serving router (Knative Services, routed by Host).
    pub serving: String,
    /// The staging Knative Service's host (its `status.url`), the Host header for `serving`.
    #[serde(default)]
    pub staging_host: String,
    pub health: String,
    pub gantry_pid: u32,
    pub gantry_log: PathBuf,
    /// The `GANTRY_CLUSTER` tag of the sandbox's processes.
    pub tag: PathBuf,
    /// The Monitors' stand-in, alert receiver and status page.
    #[serde(default)]
    pub uptime: Option<uptime::Record>,
}

fn sandbox_dir(paths: &Paths) -> PathBuf {
    paths.state.join("sandbox")
}

fn record_path(paths: &Paths) -> PathBuf {
    sandbox_dir(paths).join("sandbox.json")
}

/// The tag of the sandbox's processes: the state dir itself for the local control plane (so
/// `cluster down` stops them), a directory of their own on an existing cluster.
fn tag(paths: &Paths, existing: bool) -> PathBuf {
    if existing {
        sandbox_dir(paths)
    } else {
        paths.state.clone()
    }
}

/// Random hex from the kernel, for passwords and webhook tokens.
fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Flux's (and Gantry's) `status.webhookPath`: `/hook/` + hex(sha256(token + name + namespace)).
/// Known before the Receiver is reconciled, so the registry can be configured first.
pub fn webhook_path(token: &str, name: &str, namespace: &str) -> String {
    let digest = Sha256::digest(format!("{token}{name}{namespace}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("/hook/{hex}")
}

/// `cargo xtask sandbox up`.
pub fn up(
    workspace: &Path,
    paths: &Paths,
    versions: &cluster::Versions,
    existing: Option<&Path>,
) -> Result<()> {
    let started = Instant::now();
    let kubeconfig = match existing {
        Some(kubeconfig) => kubeconfig.to_path_buf(),
        None => cluster::up(paths, versions, &cluster::UpOptions::default())?.kubeconfig,
    };
    let kustomize = match std::env::var_os("GANTRY_KUSTOMIZE") {
        Some(path) => PathBuf::from(path),
        None => crate::kustomize::ensure(&paths.cache)?,
    };
    let crds = install_crds(workspace, &kubeconfig)?;
    println!(
        "Installed Gantry's API ({} CRDs); cluster and CRDs ready after {:.1}s.",
        crds.len(),
        started.elapsed().as_secs_f64()
    );

    let tag = tag(paths, existing.is_some());
    stop_processes(&tag);
    let dir = sandbox_dir(paths);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let logs = tag.join("logs");

    let receiver_port = cluster::free_port()?;
    let github_token = random_hex(16)?;
    let registry_token = random_hex(16)?;
    let git_password = random_hex(12)?;
    let receiver = format!("http://127.0.0.1:{receiver_port}");
    let registry_hook = format!(
        "{receiver}{}",
        webhook_path(&registry_token, "registry", NAMESPACE)
    );

    let registry = start_registry(&tag, &dir, &logs, &registry_hook)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for tag in [FIRST_STAGING_TAG, FIRST_RELEASE_TAG] {
        runtime
            .block_on(gantry_testkit::registry::push_image(
                &registry, IMAGE, tag, tag,
            ))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("pushing {IMAGE}:{tag} to {registry}"))?;
    }
    let image = format!("{}/{IMAGE}", registry.trim_start_matches("http://"));

    let git_root = dir.join("git");
    std::fs::create_dir_all(&git_root)?;
    let repo = TestRepo::new(&git_root, "fleet");
    for (path, text) in sample_repository(&image) {
        repo.write(path, &text);
    }
    repo.commit("The reference pipeline: apps/base, clusters/staging, clusters/production");
    repo.push("HEAD:refs/heads/main");
    let git_url = start_git_server(&tag, &git_root, &logs, &git_password)?;
    // Pushes to the repository (yours and the automation's) announce themselves as GitHub does.
    let github_hook = format!(
        "{receiver}{}",
        webhook_path(&github_token, "github", NAMESPACE)
    );
    repo.hook(
        "post-receive",
        &post_receive_hook(&std::env::current_exe()?, &github_hook, &github_token),
    );

    let gantry = cluster::start_gantry(
        &gantry_binary(workspace),
        &kubeconfig,
        &cluster::GantryOptions {
            tag: &tag,
            dir: &tag,
            receiver_port: Some(receiver_port),
            env: &[("GANTRY_KUSTOMIZE", kustomize.as_os_str())],
        },
    )?;
    start_pod_stand_ins(&tag, &logs, &kubeconfig)?;

    let monitors = uptime::start(&tag, &dir, &logs, &gantry.serving, &gantry.uptime)?;

    println!(
        "Registry, git server and gantry run started after {:.1}s; applying the pipeline.",
        started.elapsed().as_secs_f64()
    );
    let pipeline = Pipeline {
        receiver_url: receiver.clone(),
        git_url: git_url.clone(),
        git_password: git_password.clone(),
        image,
        github_token: github_token.clone(),
        registry_token: registry_token.clone(),
    };
    let (webhooks, staging_host) = runtime.block_on(async {
        let client = cluster::client(&kubeconfig).await?;
        apply_pipeline(&client, &pipeline).await?;
        let hooks = [
            ("github", webhook_path(&github_token, "github", NAMESPACE)),
            (
                "registry",
                webhook_path(&registry_token, "registry", NAMESPACE),
            ),
        ];
        wait_ready(&client, &hooks).await?;
        let staging_host = wait_staging_asleep(&client).await?;
        uptime::apply(&client, &monitors).await?;
        uptime::wait_up(&client, ready_timeout()).await?;
        anyhow::Ok((
            hooks
                .iter()
                .map(|(name, path)| (name.to_string(), format!("{receiver}{path}")))
                .collect::<Vec<_>>(),
            staging_host,
        ))
    })?;

    let record = Record {
        kubeconfig,
        registry,
        git_url,
        git_user: GIT_USER.into(),
        git_password,
        webhooks,
        metrics: gantry.metrics.clone(),
        serving: gantry.serving.clone(),
        staging_host,
        health: gantry.health.clone(),
        gantry_pid: gantry.pid,
        gantry_log: gantry.log.clone(),
        tag,
        uptime: Some(monitors),
    };
    std::fs::write(record_path(paths), serde_json::to_string_pretty(&record)?)?;
    print_summary(workspace, &record, started.elapsed());
    Ok(())
}

/// `cargo xtask sandbox down`: with the local control plane, everything (as `cluster down`); on
/// an existing cluster, the Flux objects (their Kustomizations prune what they applied) and the
/// sandbox's processes.
pub fn down(paths: &Paths, existing: Option<&Path>) -> Result<()> {
    // A sandbox on an existing cluster is taken down as such even without `--kubeconfig`.
    let recorded = read_record(paths)
        .ok()
        .filter(|r| r.tag == sandbox_dir(paths))
        .map(|r| r.kubeconfig);
    let Some(kubeconfig) = existing.map(Path::to_path_buf).or(recorded) else {
        return cluster::down(paths);
    };
    let kubeconfig = kubeconfig.as_path();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // While gantry still runs, so its finalizers prune staging and production.
    let deleted = runtime.block_on(async {
        let client = cluster::client(kubeconfig).await?;
        uptime::delete(&client).await?;
        delete_pipeline(&client).await
    });
    let stopped = process::stop_all(&tag(paths, true), Duration::from_secs(10));
    let dir = sandbox_dir(paths);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    deleted?;
    println!(
        "The sandbox is down ({stopped} process(es) stopped; the cluster itself was left as it was)."
    );
    Ok(())
}

/// `cargo xtask sandbox stand-in NAME stop|start`.
pub fn stand_in(paths: &Paths, name: &str, running: bool) -> Result<()> {
    let record = read_record(paths)?;
    let monitors = record
        .uptime
        .as_ref()
        .context("this sandbox was started without Monitors; run `cargo xtask sandbox` again")?;
    uptime::stand_in(
        &record.tag,
        &record.tag.join("logs"),
        monitors,
        name,
        running,
    )
}

fn read_record(paths: &Paths) -> Result<Record> {
    let text = std::fs::read_to_string(record_path(paths))
        .context("the sandbox is not up (no sandbox.json); run `cargo xtask sandbox` first")?;
    serde_json::from_str(&text).context("reading sandbox.json")
}

/// `cargo xtask sandbox push-image TAG`: a new image in the sandbox registry, which announces it
/// to the `registry` Receiver itself.
pub fn push_image(paths: &Paths, tag: &str) -> Result<()> {
    let record = read_record(paths)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let digest = runtime
        .block_on(gantry_testkit::registry::push_image(
            &record.registry,
            IMAGE,
            tag,
            tag,
        ))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("pushing {IMAGE}:{tag} to {}", record.registry))?;
    let image = format!(
        "{}/{IMAGE}:{tag}",
        record.registry.trim_start_matches("http://")
    );
    println!("Pushed {image} ({digest}).");
    println!("The registry notifies the `registry` Receiver; watch it roll out:");
    println!(
        "  kubectl --kubeconfig {} -n staging get ksvc,revisions -w   # staging: a new Revision",
        record.kubeconfig.display()
    );
    println!(
        "  kubectl --kubeconfig {} -n production get deploy web -w",
        record.kubeconfig.display()
    );
    println!("  {}", curl_line(&record));
    Ok(())
}

/// The bare repository's `post-receive` hook: one signed GitHub `push` event per updated ref.
fn post_receive_hook(xtask: &Path, url: &str, token: &str) -> String {
    format!(
        "#!/bin/sh\n# Written by `cargo xtask sandbox up`: tells Gantry's `github` Receiver about pushes.\n\
         while read before after ref; do\n  \
         {GITHUB_TOKEN_ENV}='{token}' '{xtask}' sandbox github-push --url '{url}' \
         --ref \"$ref\" --before \"$before\" --after \"$after\"\ndone\n",
        xtask = xtask.display()
    )
}

/// `cargo xtask sandbox github-push`: POSTs a GitHub `push` event signed with
/// `X-Hub-Signature-256`, as GitHub would after a push. Run by the repository's hook.
pub fn github_push(url: &str, git_ref: &str, before: &str, after: &str) -> Result<()> {
    use hmac::{Hmac, KeyInit, Mac};
    let token = std::env::var(GITHUB_TOKEN_ENV)
        .with_context(|| format!("{GITHUB_TOKEN_ENV} is not set"))?;
    let body = serde_json::json!({
        "ref": git_ref,
        "before": before,
        "after": after,
        "repository": {"name": "fleet", "full_name": "sandbox/fleet"},
        "pusher": {"name": GIT_USER},
    })
    .to_string();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes())
        .context("HMAC takes any key length")?;
    mac.update(body.as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = gantry_runtime::http::client(&gantry_runtime::http::ClientOptions {
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    })?;
    let status = runtime.block_on(async {
        http.post(url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", format!("sha256={signature}"))
            .body(body)
            .send()
            .await
            .map(|r| r.status())
    });
    match status {
        Ok(status) if status.is_success() => Ok(()),
        Ok(status) => bail!("the github Receiver answered {status}"),
        Err(err) => bail!("the github Receiver is not reachable: {err}"),
    }
}

/// `cargo xtask sandbox serve-git`: testkit's git server in the foreground until killed, so it
/// outlives the `up` that started it. The password comes from the environment, not argv.
pub fn serve_git(root: &Path, port: u16, user: &str) -> Result<()> {
    let password =
        std::env::var(PASSWORD_ENV).with_context(|| format!("{PASSWORD_ENV} is not set"))?;
    let server = GitHttpServer::start_on(
        root,
        HttpAuth::Basic {
            username: user.into(),
            password,
        },
        port,
    )
    .with_context(|| format!("serving git on 127.0.0.1:{port}"))?;
    println!("serving {} on {}", root.display(), server.url(""));
    loop {
        std::thread::park();
    }
}

// Registry, git server and gantry of an earlier `up` (the control plane's processes stay).
fn stop_processes(tag: &Path) {
    for (pid, cmdline) in process::find(tag) {
        let ours = cmdline.contains("docker-registry")
            || cmdline.contains("serve-git")
            || cmdline.contains(uptime::STAND_IN_COMMAND)
            || cmdline.contains(uptime::ALERTS_COMMAND)
            || cmdline.contains("serve-pods")
            || (cmdline.contains("gantry") && cmdline.contains(" run "));
        if ours {
            process::stop_pid(pid, Duration::from_secs(10));
        }
    }
}

fn start_registry(tag: &Path, dir: &Path, logs: &Path, hook: &str) -> Result<String> {
    let binary = Path::new(gantry_testkit::registry::DOCKER_REGISTRY);
    if !binary.exists() {
        bail!(
            "{} is missing: install Debian's `docker-registry` package",
            binary.display()
        );
    }
    let port = cluster::free_port()?;
    let root = dir.join("registry");
    std::fs::create_dir_all(&root)?;
    let config = root.join("config.yml");
    // Blob uploads and pulls are ignored: only manifest pushes (new tags) are worth a scan.
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n\
             notifications:\n  endpoints:\n    - name: gantry\n      url: {hook}\n      \
             timeout: 2s\n      threshold: 3\n      backoff: 1s\n      ignore:\n        \
             mediatypes: [application/octet-stream]\n        actions: [pull]\n",
            data = root.join("data").display(),
            secret = random_hex(16)?,
        ),
    )?;
    let mut registry = process::spawn(
        tag,
        "docker-registry",
        binary,
        &["serve".to_string(), config.display().to_string()],
        logs,
    )?;
    process::wait_until(&mut registry, Duration::from_secs(15), || {
        cluster::port_open(port)
    })?;
    Ok(format!("http://127.0.0.1:{port}"))
}

fn start_git_server(tag: &Path, root: &Path, logs: &Path, password: &str) -> Result<String> {
    let port = cluster::free_port()?;
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let args = [
        "sandbox".to_string(),
        "serve-git".to_string(),
        "--root".to_string(),
        root.display().to_string(),
        "--port".to_string(),
        port.to_string(),
        "--user".to_string(),
        GIT_USER.to_string(),
    ];
    let mut server = process::spawn_with_env(
        tag,
        "git-server",
        &exe,
        &args,
        logs,
        &[(PASSWORD_ENV, std::ffi::OsStr::new(password))],
    )?;
    process::wait_until(&mut server, Duration::from_secs(15), || {
        cluster::port_open(port)
    })?;
    Ok(format!("http://127.0.0.1:{port}/fleet.git"))
}

/// The sample application repository, laid out as the reference pipeline. The overlays pin the
/// image through kustomize's `images:` (which also rewrites a Knative Service's container
/// image), and the setter markers on `newTag` let ImageUpdateAutomation rewrite exactly that.
/// Staging runs `apps/serverless` (the app as a Knative Service at zero), production
/// `apps/base` (a Deployment and a Service).
fn sample_repository(image: &str) -> Vec<(&'static str, String)> {
    let overlay = |ns: &str, app: &str, tag: &str, policy: &str| {
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\n\
             resources:\n  - namespace.yaml\n  - ../../apps/{app}\n\
             images:\n  - name: web\n    newName: {image}\n    \
             newTag: {tag} # {{\"$imagepolicy\": \"{NAMESPACE}:{policy}:tag\"}}\n"
        )
    };
    let namespace =
        |ns: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    vec![
        (
            "README.md",
            "# fleet\n\nThe reference pipeline of `cargo xtask sandbox`: `apps/base` is the application, \
             `apps/serverless` the same app as a Knative Service. `clusters/staging` runs it scaled \
             to zero (woken by the first request) and follows the newest `<sha>-<YYYYMMDDHHMM>` image, \
             `clusters/production` runs `apps/base` and follows the newest semver release. Gantry's \
             ImageUpdateAutomation commits new tags here.\n"
                .to_string(),
        ),
        (
            "apps/base/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - deployment.yaml\n  - service.yaml\n"
                .to_string(),
        ),
        (
            "apps/base/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: web\n\
             spec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: web\n  template:\n    \
             metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n        \
             - name: web\n          image: web\n          ports:\n            - containerPort: 8080\n"
                .to_string(),
        ),
        (
            "apps/base/service.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  \
             ports:\n    - port: 80\n      targetPort: 8080\n"
                .to_string(),
        ),
        (
            "apps/serverless/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - service.yaml\n"
                .to_string(),
        ),
        ("apps/serverless/service.yaml", STAGING_KSVC.to_string()),
        ("clusters/staging/namespace.yaml", namespace("staging")),
        (
            "clusters/staging/kustomization.yaml",
            overlay("staging", "serverless", FIRST_STAGING_TAG, "web-staging"),
        ),
        ("clusters/production/namespace.yaml", namespace("production")),
        (
            "clusters/production/kustomization.yaml",
            overlay("production", "base", FIRST_RELEASE_TAG, "web-production"),
        ),
    ]
}

/// The app as a Knative Service, as a team writes it for Knative: at zero until the first
/// request, back to zero after the 6 s window plus `gantry run`'s 30 s grace period.
const STAGING_KSVC: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: web
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/initial-scale: \"0\"
        autoscaling.knative.dev/window: 6s
    spec:
      containers:
        - image: web
          ports:
            - containerPort: 8080
";

struct Pipeline {
    /// Where `gantry run` serves webhooks, recorded on the `webhook-receiver` Service.
    receiver_url: String,
    git_url: String,
    git_password: String,
    image: String,
    github_token: String,
    registry_token: String,
}

/// The Flux objects of the pipeline, in apply order.
fn pipeline_objects(p: &Pipeline) -> Vec<(ApiResource, serde_json::Value)> {
    use serde_json::json;
    let secret = |name: &str, data: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": NAMESPACE}, "stringData": data})
    };
    let meta = |name: &str| json!({"name": name, "namespace": NAMESPACE});
    let kustomization = |name: &str| {
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": meta(name),
               "spec": {"interval": "10m", "path": format!("./clusters/{name}"), "prune": true,
                        "wait": true, "timeout": "2m",
                        "sourceRef": {"kind": "GitRepository", "name": "fleet"}}})
    };
    let policy = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImagePolicy",
               "metadata": meta(name), "spec": spec})
    };
    let receiver =
        |name: &str, type_: &str, events: serde_json::Value, resource: serde_json::Value| {
            json!({"apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
               "metadata": meta(name),
               "spec": {"type": type_, "events": events, "resources": [resource],
                        "secretRef": {"name": format!("{name}-webhook-token")}}})
        };
    // No selector, no address: it only tells `gantry webhook-url` where this sandbox's
    // `gantry run` serves webhooks (Flux's Service of that name lives in flux-system too).
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": gantry_api::notification::WEBHOOK_SERVICE, "namespace": NAMESPACE,
                     "annotations": {
                         gantry_api::notification::WEBHOOK_BASE_URL_ANNOTATION: p.receiver_url}},
        "spec": {"clusterIP": "None",
                 "ports": [{"name": "http", "port": 80, "targetPort": 9292}]}});
    let secret_ar = ApiResource::erase::<Secret>(&());
    let policy_ar = ApiResource::erase::<ImagePolicy>(&());
    let kustomization_ar = ApiResource::erase::<Kustomization>(&());
    let receiver_ar = ApiResource::erase::<Receiver>(&());
    vec![
        (ApiResource::erase::<Service>(&()), service),
        (
            secret_ar.clone(),
            secret(
                "fleet-auth",
                json!({"username": GIT_USER, "password": p.git_password}),
            ),
        ),
        (
            secret_ar.clone(),
            secret("github-webhook-token", json!({"token": p.github_token})),
        ),
        (
            secret_ar,
            secret("registry-webhook-token", json!({"token": p.registry_token})),
        ),
        (
            ApiResource::erase::<GitRepository>(&()),
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                   "metadata": meta("fleet"),
                   "spec": {"url": p.git_url, "interval": "1m", "ref": {"branch": "main"},
                            "secretRef": {"name": "fleet-auth"}}}),
        ),
        (kustomization_ar.clone(), kustomization("staging")),
        (kustomization_ar, kustomization("production")),
        (
            ApiResource::erase::<ImageRepository>(&()),
            json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
                   "metadata": meta(IMAGE),
                   "spec": {"image": p.image, "interval": "1m", "insecure": true}}),
        ),
        (
            policy_ar.clone(),
            policy(
                "web-staging",
                json!({
                "imageRepositoryRef": {"name": IMAGE},
                "filterTags": {"pattern": "^[a-f0-9]+-(?P<ts>[0-9]{12})$", "extract": "$ts"},
                "policy": {"alphabetical": {"order": "asc"}}}),
            ),
        ),
        (
            policy_ar,
            policy(
                "web-production",
                json!({
                "imageRepositoryRef": {"name": IMAGE},
                "policy": {"semver": {"range": ">=1.0.0"}}}),
            ),
        ),
        (
            ApiResource::erase::<ImageUpdateAutomation>(&()),
            json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageUpdateAutomation",
                   "metadata": meta("fleet"),
                   "spec": {"interval": "1m",
                            "sourceRef": {"kind": "GitRepository", "name": "fleet"},
                            "git": {"checkout": {"ref": {"branch": "main"}},
                                    "commit": {"author": {"name": "gantry", "email": "gantry@sandbox.invalid"}},
                                    "push": {"branch": "main"}},
                            "update": {"path": "./clusters", "strategy": "Setters"}}}),
        ),
        (
            receiver_ar.clone(),
            receiver(
                "github",
                "github",
                json!(["ping", "push"]),
                json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": "fleet"}),
            ),
        ),
        (
            receiver_ar,
            receiver(
                "registry",
                "generic",
                json!([]),
                json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository", "name": IMAGE}),
            ),
        ),
    ]
}

async fn apply_pipeline(client: &kube::Client, p: &Pipeline) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    namespaces
        .patch(
            NAMESPACE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .with_context(|| format!("creating namespace {NAMESPACE}"))?;
    // As `flux reconcile` does: a re-run of `up` changes Secrets that Receivers and sources read
    // only every interval, and their specs may not change at all.
    let requested = jiff::Timestamp::now().to_string();
    for (ar, mut object) in pipeline_objects(p) {
        if ar.kind != "Secret" && ar.kind != "Service" {
            object["metadata"]["annotations"] =
                serde_json::json!({ gantry_api::meta::RECONCILE_REQUEST_ANNOTATION: requested });
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {} {NAMESPACE}/{name}", ar.kind))?;
    }
    Ok(())
}

async fn delete_pipeline(client: &kube::Client) -> Result<()> {
    let placeholder = Pipeline {
        receiver_url: String::new(),
        git_url: String::new(),
        git_password: String::new(),
        image: String::new(),
        github_token: String::new(),
        registry_token: String::new(),
    };
    let objects = pipeline_objects(&placeholder);
    for (ar, object) in objects.iter().rev() {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, ar);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {} {name}", ar.kind)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (ar, object) in &objects {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, ar);
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!(
                    "{} {NAMESPACE}/{name} was not deleted within 60s (a finalizer left?)",
                    ar.kind
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Whether an object is Ready for its current spec: (ready, "reason: message").
fn ready_condition(object: &DynamicObject) -> (bool, String) {
    let conditions = object.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // A Ready left over from an earlier spec (a re-run of `up`) does not count.
    let observed = object.data["status"]["observedGeneration"].as_i64();
    if object.metadata.generation.is_some() && observed != object.metadata.generation {
        return (false, "not reconciled since its last change".into());
    }
    let describe = |c: &serde_json::Value| {
        format!(
            "{}: {}",
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        )
    };
    // The other conditions (Reconciling, Stalled, Healthy, ...) often say more than Ready.
    let others: Vec<String> = conditions
        .iter()
        .filter(|c| c["type"] != "Ready")
        .map(|c| {
            format!(
                "{}={} ({})",
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                describe(c)
            )
        })
        .collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!("; {}", others.join("; "))
    };
    match conditions.iter().find(|c| c["type"] == "Ready") {
        Some(c) => (
            c["status"] == "True",
            format!(
                "Ready={} ({}){others}",
                c["status"].as_str().unwrap_or(""),
                describe(c)
            ),
        ),
        None => (false, format!("no Ready condition yet{others}")),
    }
}

/// Waits until every Flux object is Ready and both Deployments run their first image; fails
/// naming what is not, with its Ready message.
async fn wait_ready(client: &kube::Client, hooks: &[(&str, String)]) -> Result<()> {
    let timeout = ready_timeout();
    let deadline = Instant::now() + timeout;
    let kinds: Vec<(ApiResource, &[&str])> = vec![
        (ApiResource::erase::<GitRepository>(&()), &["fleet"]),
        (ApiResource::erase::<ImageRepository>(&()), &[IMAGE]),
        (
            ApiResource::erase::<ImagePolicy>(&()),
            &["web-staging", "web-production"],
        ),
        (ApiResource::erase::<ImageUpdateAutomation>(&()), &["fleet"]),
        (ApiResource::erase::<Receiver>(&()), &["github", "registry"]),
        (
            ApiResource::erase::<Kustomization>(&()),
            &["staging", "production"],
        ),
    ];
    // Set once the GitRepository (first in the list) is Ready.
    let mut source_revision = serde_json::Value::Null;
    for (ar, names) in &kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, ar);
        for name in *names {
            loop {
                let (ready, message) = match api.get_opt(name).await? {
                    Some(object) => {
                        let (ready, message) = ready_condition(&object);
                        // The token Secret changes on every `up`; the spec does not.
                        let applied = &object.data["status"]["lastAppliedRevision"];
                        match hooks
                            .iter()
                            .find(|(hook, _)| ar.kind == "Receiver" && hook == name)
                        {
                            Some((_, path)) if object.data["status"]["webhookPath"] != **path => {
                                (false, format!("webhookPath is not yet {path}"))
                            }
                            // Ready for this `up`'s repository, not the last one's.
                            _ if ar.kind == "Kustomization" && *applied != source_revision => (
                                false,
                                format!("has not applied {source_revision} yet ({message})"),
                            ),
                            _ => (ready, message),
                        }
                    }
                    None => (false, "it does not exist".into()),
                };
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} {NAMESPACE}/{name} did not become Ready within {timeout:?}: {message}",
                        ar.kind
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if ar.kind == "GitRepository" {
                let repo = api.get(name).await?;
                source_revision = repo.data["status"]["artifact"]["revision"].clone();
            }
        }
    }
    // Staging is a Knative Service: see `wait_staging_asleep`.
    for (ns, tag) in [("production", FIRST_RELEASE_TAG)] {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        loop {
            let deployment = api.get_opt("web").await?;
            if deployment.as_ref().is_some_and(|d| rolled_out(d, tag)) {
                break;
            }
            if Instant::now() > deadline {
                let state = deployment.map_or("it does not exist".to_string(), |d| {
                    format!("image {:?}, status {:?}", deployment_image(&d), d.status)
                });
                bail!(
                    "Deployment {ns}/web did not roll out {IMAGE}:{tag} within {timeout:?}: {state}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Waits until staging's Knative Service routes to a Ready Revision of the first staging image
/// that sleeps at zero replicas; returns the Service's host (the Host header to the router).
async fn wait_staging_asleep(client: &kube::Client) -> Result<String> {
    let timeout = ready_timeout();
    let deadline = Instant::now() + timeout;
    let services: Api<KnativeService> = Api::namespaced(client.clone(), "staging");
    let revisions: Api<Revision> = Api::namespaced(client.clone(), "staging");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "staging");
    loop {
        let state = match staging_state(&services, &revisions, &deployments).await? {
            Ok(host) => return Ok(host),
            Err(state) => state,
        };
        if Instant::now() > deadline {
            bail!(
                "Knative Service staging/{IMAGE} did not serve {IMAGE}:{FIRST_STAGING_TAG} at zero within {timeout:?}: {state}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Ok(host)` when staging's ksvc is Ready on the first image at zero, else what is missing.
async fn staging_state(
    services: &Api<KnativeService>,
    revisions: &Api<Revision>,
    deployments: &Api<Deployment>,
) -> Result<std::result::Result<String, String>> {
    let Some(svc) = services.get_opt(IMAGE).await? else {
        return Ok(Err("it does not exist".into()));
    };
    let Some(status) = svc.status.as_ref() else {
        return Ok(Err("no status yet".into()));
    };
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("Ready={} ({}: {})", c.status, c.reason, c.message))
        .unwrap_or_else(|| "no Ready condition yet".into());
    if !ready.starts_with("Ready=True") || status.observed_generation != svc.metadata.generation {
        return Ok(Err(ready));
    }
    let Some(revision) = status.latest_ready_revision_name.as_deref() else {
        return Ok(Err("no Ready Revision yet".into()));
    };
    let image = revisions
        .get_opt(revision)
        .await?
        .and_then(|r| r.spec.container().and_then(|c| c.image.clone()))
        .unwrap_or_default();
    if !image.ends_with(&format!(":{FIRST_STAGING_TAG}")) {
        return Ok(Err(format!("Revision {revision} runs {image:?}")));
    }
    let replicas = deployments
        .get_opt(&format!("{revision}-deployment"))
        .await?
        .and_then(|d| d.spec?.replicas);
    if replicas != Some(0) {
        return Ok(Err(format!(
            "Revision {revision} has {replicas:?} replicas, not 0"
        )));
    }
    let host = status
        .url
        .as_deref()
        .and_then(|u| {
            u.strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
        })
        .unwrap_or_default()
        .to_string();
    Ok(Ok(host))
}

/// The `curl` that wakes staging through the router.
pub fn curl_line(r: &Record) -> String {
    format!(
        "curl -H 'Host: {}' http://{}/   # wakes staging from zero",
        r.staging_host, r.serving
    )
}

/// Starts `sandbox serve-pods` in the background for staging and production.
fn start_pod_stand_ins(tag: &Path, logs: &Path, kubeconfig: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let args = [
        "sandbox".to_string(),
        "serve-pods".to_string(),
        "--pods-kubeconfig".to_string(),
        kubeconfig.display().to_string(),
        "--namespace".to_string(),
        "staging".to_string(),
        "--namespace".to_string(),
        "production".to_string(),
    ];
    process::spawn(tag, "pod-stand-ins", &exe, &args, logs)?;
    Ok(())
}

/// One stand-in: a pod's address and port, and what it answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StandIn {
    pod: String,
    addr: std::net::SocketAddr,
    answer: String,
}

/// The stand-ins a pod needs: one per container port, on its IP, when it has a loopback one.
fn stand_ins(pod: &Pod) -> Vec<StandIn> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let namespace = pod.namespace().unwrap_or_default();
    let name = format!("{namespace}/{}", pod.name_any());
    let Some(ip) = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return Vec::new();
    };
    // The sandbox never listens on (or sends to) anything off the machine.
    if !ip.is_loopback() {
        eprintln!("pod {name} has address {ip}, not loopback: no stand-in");
        return Vec::new();
    }
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .flat_map(|c| {
            let image = c.image.clone().unwrap_or_default();
            let name = name.clone();
            c.ports.iter().flatten().filter_map(move |p| {
                let port = u16::try_from(p.container_port).ok()?;
                Some(StandIn {
                    pod: name.clone(),
                    addr: (ip, port).into(),
                    answer: format!("Hello from {image} (pod {name})\n"),
                })
            })
        })
        .collect()
}

/// `cargo xtask sandbox serve-pods`: plays the kubelet for kwok's pods in `namespaces` until
/// killed: each pod's container ports get a stand-in HTTP server on the pod's loopback IP,
/// started when the pod gets its address and stopped when it goes.
pub fn serve_pods(kubeconfig: &Path, namespaces: &[String]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = cluster::client(kubeconfig).await?;
        let mut running: HashMap<StandIn, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let mut wanted = Vec::new();
            for ns in namespaces {
                let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
                match pods.list(&ListParams::default()).await {
                    Ok(list) => wanted.extend(list.items.iter().flat_map(stand_ins)),
                    Err(err) => eprintln!("listing pods in {ns}: {err}"),
                }
            }
            running.retain(|s, task| {
                let keep = wanted.contains(s);
                if !keep {
                    println!("{}: stopped {}", s.pod, s.addr);
                    task.abort();
                }
                keep
            });
            for s in wanted {
                if running.contains_key(&s) {
                    continue;
                }
                // A pod that went away may still hold the address for a moment: next round.
                match tokio::net::TcpListener::bind(s.addr).await {
                    Ok(listener) => {
                        println!("{}: serving on {}", s.pod, s.addr);
                        let answer: std::sync::Arc<str> = s.answer.clone().into();
                        running.insert(s, tokio::spawn(serve_stand_in(listener, answer)));
                    }
                    Err(err) => eprintln!("{}: binding {}: {err}", s.pod, s.addr),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Answers every HTTP/1.1 request on `listener` with 200 and `answer`, one per connection.
async fn serve_stand_in(listener: tokio::net::TcpListener, answer: std::sync::Arc<str>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors or the like: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let request = async {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 || head.len() > 64 * 1024 {
                        return None;
                    }
                    head.extend_from_slice(&chunk[..n]);
                }
                Some(())
            };
            // Readiness probes connect and close: nothing to answer then.
            if tokio::time::timeout(Duration::from_secs(30), request)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                return;
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The image of the Deployment's first container.
pub fn deployment_image(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

/// Runs `…:tag`, every replica updated and available.
pub fn rolled_out(d: &Deployment, tag: &str) -> bool {
    let image_ok = deployment_image(d).is_some_and(|i| i.ends_with(&format!(":{tag}")));
    let Some(status) = &d.status else {
        return false;
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    image_ok
        && status.observed_generation >= d.metadata.generation
        && status.updated_replicas == Some(want)
        && status.available_replicas == Some(want)
        && status.replicas == Some(want)
}

fn print_summary(workspace: &Path, r: &Record, took: Duration) {
    let registry_host = r.registry.trim_start_matches("http://");
    let rel = |p: &str| workspace.join(p).display().to_string();
    println!(
        "The sandbox is up ({:.1}s): staging runs {IMAGE}:{FIRST_STAGING_TAG} as a Knative Service at zero, production {IMAGE}:{FIRST_RELEASE_TAG}.",
        took.as_secs_f64()
    );
    println!("  kubeconfig   {}", r.kubeconfig.display());
    println!(
        "  registry     {} (image {registry_host}/{IMAGE}, anonymous, notifies the `registry` Receiver)",
        r.registry
    );
    println!(
        "  git          {} (user {} password {})",
        r.git_url, r.git_user, r.git_password
    );
    println!(
        "  gantry run   pid {} (log {})",
        r.gantry_pid,
        r.gantry_log.display()
    );
    println!("  metrics      {}", r.metrics);
    println!(
        "  serving      http://{} (Knative Services, by Host header; staging is {})",
        r.serving, r.staging_host
    );
    println!("  ready        {}", r.health);
    if let Some(u) = &r.uptime {
        u.print();
    }
    for (name, url) in &r.webhooks {
        println!("  webhook      {name:<9} {url}");
    }
    println!(
        "  dashboard    {}",
        rel("deploy/grafana/gantry-dashboard.json")
    );
    println!(
        "  alert rules  {}",
        rel("deploy/prometheus/gantry-rules.yaml")
    );
    println!("Try it:");
    println!("  export KUBECONFIG={}", r.kubeconfig.display());
    println!(
        "  cargo xtask sandbox push-image 1a2b3c4-202602011200   # staging follows <sha>-<YYYYMMDDHHMM>"
    );
    println!("  {}", curl_line(r));
    println!("  kubectl -n staging get ksvc,revisions,deploy   # staging sleeps at 0 replicas");
    println!(
        "  cargo xtask sandbox push-image 1.1.0                  # production follows releases"
    );
    println!("  cargo run --bin gantry -- get all -A");
    println!("  cargo run --bin gantry -- tree staging -n {NAMESPACE}");
    println!("  cargo run --bin gantry -- webhook-url github -n {NAMESPACE}   # the URL to paste");
    let authed = r.git_url.replacen(
        "http://",
        &format!("http://{}:{}@", r.git_user, r.git_password),
        1,
    );
    println!("  git clone {authed}   # the automation's commits are here");
    if let Some(u) = &r.uptime {
        u.print_try();
    }
    println!("Stop it:  cargo xtask sandbox down");
}

/// Builds and runs `gantry install --crds`, server-side-applies what it prints to the cluster
/// in `kubeconfig`, and waits until every CRD is Established. Returns the CRD names.
pub fn install_crds(workspace: &Path, kubeconfig: &Path) -> Result<Vec<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "run", "--quiet", "--bin", "gantry", "--", "install", "--crds",
        ])
        .current_dir(workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("running gantry install --crds")?;
    if !out.status.success() {
        bail!("gantry install --crds failed ({})", out.status);
    }
    let text = String::from_utf8(out.stdout).context("gantry install printed non-UTF-8")?;
    let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
        .context("gantry install --crds printed something that is not a list of CRDs")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = crate::cluster::client(kubeconfig).await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let mut names = Vec::new();
        for crd in &crds {
            let name = crd.name_any();
            api.patch(
                &name,
                &PatchParams::apply("gantry").force(),
                &Patch::Apply(crd),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
        for name in &names {
            wait_established(&api, name).await?;
        }
        Ok(names)
    })
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api.get(name).await?;
        let established = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("CRD {name} was not Established within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `gantry` binary `cargo run` built for [`install_crds`].
pub fn gantry_binary(workspace: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("debug/gantry")
}

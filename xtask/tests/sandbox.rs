//! The README's first command, `cargo xtask sandbox`: the reference pipeline on a cluster of its
//! own. Everything is real: the control plane with kwok, `docker-registry` notifying the
//! `registry` Receiver, the git server in `sandbox serve-git`, the `gantry run` binary.
//!
//! up -> every Flux object Ready, both environments run their first image (staging as a Knative
//! Service at zero, woken by the printed `curl`) -> a new staging image (registry webhook, scan,
//! policy, commit+push, fetch, apply, a new Revision that serves and goes back to zero) -> a
//! release reaches production and not staging -> down leaves no process of the state directory.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_api::image::v1::{ImagePolicy, ImageRepository, ImageUpdateAutomation};
use gantry_api::kustomize::v1::Kustomization;
use gantry_api::notification::v1::Receiver;
use gantry_api::serving::v1::{Revision, Service as KnativeService};
use gantry_api::source::v1::GitRepository;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};

mod common;
use common::{xtask, xtask_ok};

const NS: &str = "flux-system";

/// Takes the sandbox down when dropped, also when the test fails.
struct Sandbox<'a>(&'a Path);

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        let _ = xtask(self.0, &["sandbox", "down"]);
    }
}

/// The rest of the first line of `text` whose first word is `label`.
fn value_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            let l = l.trim_start();
            l.strip_prefix(label).filter(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no {label:?} line in: {text}"))
        .trim()
}

/// Processes tagged with `GANTRY_CLUSTER=<state>`, as the cluster code finds them.
fn tagged_processes(state: &Path) -> Vec<String> {
    let tag = format!("GANTRY_CLUSTER={}", state.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == tag.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if !zombie {
                found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
            }
        }
    }
    found
}

fn image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn rolled_out(d: &Deployment, tag: &str) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    image(d).ends_with(&format!(":{tag}"))
        && d.status.as_ref().is_some_and(|s| {
            s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(want)
                && s.available_replicas == Some(want)
                && s.replicas == Some(want)
        })
}

/// Polls until the Deployment `ns/web` runs `tag`, rolled out; returns how long that took.
async fn wait_rollout(client: &kube::Client, ns: &str, tag: &str, timeout: Duration) -> Duration {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let d = api.get("web").await.unwrap();
        if rolled_out(&d, tag) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{ns}/web did not roll out {tag} within {timeout:?}: image {}, status {:?}",
            image(&d),
            d.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Staging's latest Ready Revision and its image, once its ksvc is Ready for its generation.
async fn staging_revision(client: &kube::Client) -> Option<(String, String)> {
    let svc = Api::<KnativeService>::namespaced(client.clone(), "staging")
        .get("web")
        .await
        .unwrap();
    let status = svc.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready || status.observed_generation != svc.metadata.generation {
        return None;
    }
    let name = status.latest_ready_revision_name.clone()?;
    if status.traffic.first()?.revision_name.as_deref() != Some(name.as_str()) {
        return None;
    }
    let rev = Api::<Revision>::namespaced(client.clone(), "staging")
        .get(&name)
        .await
        .unwrap();
    let image = rev.spec.container()?.image.clone()?;
    Some((name, image))
}

/// Polls until staging's ksvc serves a Revision of `tag`; returns its name and the time taken.
async fn wait_staging(client: &kube::Client, tag: &str, timeout: Duration) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let current = staging_revision(client).await;
        if let Some((name, image)) = &current
            && image.ends_with(&format!(":{tag}"))
        {
            return (name.clone(), start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "staging did not serve {tag} within {timeout:?}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revision_replicas(client: &kube::Client, revision: &str) -> i32 {
    Api::<Deployment>::namespaced(client.clone(), "staging")
        .get(&format!("{revision}-deployment"))
        .await
        .unwrap()
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(-1)
}

/// Runs the printed `curl` (its Host header, its URL) and returns status and body.
async fn curl(line: &str) -> (u16, String) {
    let host = line
        .split("Host: ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no Host header in {line:?}"));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let resp = reqwest::Client::new()
        .get(url)
        .header("host", host)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

async fn deployment_image(client: &kube::Client, ns: &str) -> String {
    image(
        &Api::<Deployment>::namespaced(client.clone(), ns)
            .get("web")
            .await
            .unwrap(),
    )
}

fn git(args: &[&str]) -> String {
    gantry_testkit::git::git(Path::new("."), args)
}

/// The Monitors `up` adds: both UP on the printed status page; stopping the production
/// stand-in turns production DOWN with one alert at the printed receiver (staging, checked on
/// the router's listener, stays UP); starting it again sends the recovery.
async fn monitors_alert_when_production_goes_down(state: &Path, client: &kube::Client, said: &str) {
    use gantry_api::uptime::v1alpha1::Monitor;
    let page = value_after(said, "status page")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let alerts = value_after(said, "alerts")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // The page is rendered from a cached snapshot of the history: it follows within seconds.
    let page_shows = |name: &'static str, state: &'static str| {
        let page = page.clone();
        async move {
            let want = format!("data-monitor=\"{NS}/{name}\" data-state=\"{state}\"");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let html = reqwest::get(&page).await.unwrap().text().await.unwrap();
                if html.contains(&want) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} is not {state} on the status page: {html}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    page_shows("production", "UP").await;
    page_shows("staging", "UP").await;
    let received = || async {
        let all: Vec<serde_json::Value> =
            reqwest::get(&alerts).await.unwrap().json().await.unwrap();
        all.iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a["reason"].as_str().unwrap_or_default(),
                    a["involvedObject"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        received().await.is_empty(),
        "no alert while everything is UP"
    );
    let monitors: Api<Monitor> = Api::namespaced(client.clone(), NS);
    let state_of = |name: &'static str| {
        let monitors = monitors.clone();
        async move {
            monitors
                .get(name)
                .await
                .unwrap()
                .status
                .and_then(|s| s.state)
                .unwrap_or_default()
        }
    };
    let until = |want: &'static [&'static str]| {
        let received = &received;
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let now = received().await;
                if now == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "alerts {now:?}, expected {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    let stopped = xtask_ok(state, &["sandbox", "stand-in", "production", "stop"]);
    assert!(stopped.contains("stand-in is stopped"), "{stopped}");
    until(&["MonitorDown production"]).await;
    assert_eq!(state_of("production").await, "DOWN");
    assert_eq!(state_of("staging").await, "UP", "staging is not affected");
    page_shows("production", "DOWN").await;

    xtask_ok(state, &["sandbox", "stand-in", "production", "start"]);
    until(&["MonitorDown production", "MonitorUp production"]).await;
    assert_eq!(state_of("production").await, "UP");
}

#[tokio::test]
async fn sandbox_runs_the_reference_pipeline_from_push_to_production_until_down() {
    let state = tempfile::tempdir().unwrap();
    let _sandbox = Sandbox(state.path());
    let started = Instant::now();
    let said = xtask_ok(state.path(), &["sandbox"]);
    eprintln!("sandbox up took {:.1?}", started.elapsed());
    assert!(said.contains("The sandbox is up"), "{said}");

    let kubeconfig = value_after(&said, "kubeconfig");
    let client = gantry_testkit::connect(Path::new(kubeconfig)).await;

    // Every Flux object of the pipeline is Ready.
    let objects: Vec<(ApiResource, &[&str])> = vec![
        (ApiResource::erase::<GitRepository>(&()), &["fleet"]),
        (
            ApiResource::erase::<Kustomization>(&()),
            &["staging", "production"],
        ),
        (ApiResource::erase::<ImageRepository>(&()), &["web"]),
        (
            ApiResource::erase::<ImagePolicy>(&()),
            &["web-staging", "web-production"],
        ),
        (ApiResource::erase::<ImageUpdateAutomation>(&()), &["fleet"]),
        (ApiResource::erase::<Receiver>(&()), &["github", "registry"]),
    ];
    for (ar, names) in &objects {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, ar);
        for name in *names {
            let object = api.get(name).await.unwrap();
            let ready = object.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            assert!(ready, "{} {name} is Ready: {:?}", ar.kind, object.data);
        }
    }
    // Both environments run their first image.
    let registry = value_after(&said, "registry")
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let (first, image) = staging_revision(&client).await.expect("staging is Ready");
    assert_eq!(image, format!("{registry}/web:0000000-202601010000"));
    assert_eq!(
        revision_replicas(&client, &first).await,
        0,
        "staging sleeps"
    );
    assert_eq!(
        deployment_image(&client, "production").await,
        format!("{registry}/web:1.0.0")
    );
    wait_rollout(&client, "production", "1.0.0", Duration::ZERO).await;

    // The printed curl wakes staging and gets the app's answer (a stand-in on the pod's IP).
    let curl_line = said
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl -H 'Host: "))
        .unwrap_or_else(|| panic!("no curl line in: {said}"))
        .to_string();
    assert!(curl_line.contains("Host: web.staging."), "{curl_line}");
    let (status, body) = curl(&curl_line).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(&format!(
            "Hello from {registry}/web:0000000-202601010000 (pod staging/{first}-deployment-"
        )),
        "{body}"
    );
    assert_eq!(revision_replicas(&client, &first).await, 1, "woken");

    // What it printed is where things are.
    let metrics = value_after(&said, "metrics");
    let body = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    assert!(
        body.contains("gotk_reconcile_condition") && body.contains("Kustomization"),
        "gantry serves Flux's series: {body}"
    );
    for name in ["github", "registry"] {
        let line = said
            .lines()
            .find(|l| l.trim_start().starts_with("webhook") && l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no webhook line for {name}: {said}"));
        let url = line.split_whitespace().last().unwrap();
        let receiver = Api::<Receiver>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .unwrap();
        let path = receiver.status.unwrap().webhook_path.unwrap();
        assert!(url.ends_with(&path), "{url} is the Receiver's {path}");
        // `gantry webhook-url` prints the address this sandbox's receiver really listens on.
        let gantry = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug/gantry");
        let printed = std::process::Command::new(gantry)
            .args(["webhook-url", name, "-n", NS])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("GANTRY_WEBHOOK_BASE_URL")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&printed.stdout).trim(),
            url,
            "{}",
            String::from_utf8_lossy(&printed.stderr)
        );
    }
    monitors_alert_when_production_goes_down(state.path(), &client, &said).await;

    let git_line = value_after(&said, "git");
    let mut words = git_line.split_whitespace();
    let git_url = words.next().unwrap().to_string();
    let user = git_line
        .split("user ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let password = git_line
        .split("password ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .trim();
    let authed = git_url.replacen("http://", &format!("http://{user}:{password}@"), 1);
    let remote_main = || git(&["ls-remote", &authed, "refs/heads/main"]);
    let wrong = git_url.replacen("http://", &format!("http://{user}:wrong@"), 1);
    let refused = gantry_testkit::git::git_command(Path::new("."))
        .args(["ls-remote", &wrong])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the git server wants the password"
    );
    let first_commit = remote_main();

    // A new staging image: the registry's notification alone carries it to staging.
    let tag = "1a2b3c4-202602011200";
    let pushed = Instant::now();
    xtask_ok(state.path(), &["sandbox", "push-image", tag]);
    let (second, took) = wait_staging(&client, tag, Duration::from_secs(20)).await;
    eprintln!(
        "push-image {tag} to staging's new Revision {second}: {:.0?} (the push itself included: {:.0?})",
        took,
        pushed.elapsed()
    );
    assert_ne!(second, first);
    // The new Revision serves (from zero), then staging goes back to zero: window 6 s + grace
    // 30 s, with room for a loaded machine.
    let (status, body) = curl(&curl_line).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(&format!(
            "Hello from {registry}/web:{tag} (pod staging/{second}-"
        )),
        "{body}"
    );
    let idle = Instant::now();
    while revision_replicas(&client, &second).await != 0
        || revision_replicas(&client, &first).await != 0
    {
        assert!(
            idle.elapsed() < Duration::from_secs(90),
            "staging did not go back to zero"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "staging back to zero {:.0?} after its last request",
        idle.elapsed()
    );
    assert_eq!(
        deployment_image(&client, "production").await,
        format!("{registry}/web:1.0.0"),
        "production does not follow staging's tags"
    );
    // The automation's commit is on main, served by the git server.
    let automation = Api::<ImageUpdateAutomation>::namespaced(client.clone(), NS)
        .get("fleet")
        .await
        .unwrap();
    let pushed_commit = automation
        .status
        .and_then(|s| s.last_push_commit)
        .expect("the automation pushed");
    let head = remote_main();
    assert_ne!(head, first_commit);
    assert!(
        head.starts_with(&pushed_commit),
        "{head} is {pushed_commit}"
    );
    let clone = tempfile::tempdir().unwrap();
    let dir = clone.path().to_str().unwrap();
    git(&["clone", "--quiet", &authed, dir]);
    let staging = git(&[
        "-C",
        dir,
        "show",
        "HEAD:clusters/staging/kustomization.yaml",
    ]);
    assert!(
        staging.contains(&format!(
            "newTag: {tag} # {{\"$imagepolicy\": \"flux-system:web-staging:tag\"}}"
        )),
        "{staging}"
    );
    let author = git(&["-C", dir, "log", "-1", "--format=%an <%ae>"]);
    assert_eq!(author, "gantry <gantry@sandbox.invalid>");

    // A release reaches production, not staging.
    xtask_ok(state.path(), &["sandbox", "push-image", "1.1.0"]);
    let took = wait_rollout(&client, "production", "1.1.0", Duration::from_secs(20)).await;
    eprintln!("push-image 1.1.0 to production rolled out: {took:.0?}");
    assert_eq!(
        staging_revision(&client).await.map(|(_, image)| image),
        Some(format!("{registry}/web:{tag}")),
        "staging does not follow releases"
    );

    // A push of yours: the repository's hook sends GitHub's signed push event to the `github`
    // Receiver, so production gets it at once (the GitRepository's interval is 1m).
    git(&["-C", dir, "pull", "--quiet", "--ff-only"]);
    let base = Path::new(dir).join("apps/base/deployment.yaml");
    let manifest = std::fs::read_to_string(&base).unwrap();
    assert!(manifest.contains("replicas: 1"), "{manifest}");
    std::fs::write(&base, manifest.replace("replicas: 1", "replicas: 2")).unwrap();
    git(&["-C", dir, "commit", "--quiet", "-am", "web: two replicas"]);
    let pushed = Instant::now();
    let out = gantry_testkit::git::git_command(Path::new(dir))
        .args(["push", "--quiet", "origin", "HEAD:main"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ns in ["production"] {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        loop {
            let d = api.get("web").await.unwrap();
            let replicas = d.spec.as_ref().and_then(|s| s.replicas);
            let available = d.status.as_ref().and_then(|s| s.available_replicas);
            if replicas == Some(2) && available == Some(2) {
                break;
            }
            assert!(
                pushed.elapsed() < Duration::from_secs(15),
                "{ns}/web did not get the pushed change within 15s: {:?}",
                d.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "a git push to production with two replicas available: {:.0?}",
        pushed.elapsed()
    );

    // Nothing can be scheduled any more: a second `up` (which resets the repository to the first
    // images) must fail naming what did not become Ready, not trust the previous run's Ready.
    // Staging needs no pod at zero; production's first image does.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "kwok-node-0",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sandbox", "--state-dir"])
        .arg(state.path())
        .env_remove("GANTRY_KUBECONFIG")
        .env("GANTRY_SANDBOX_TIMEOUT", "15")
        .output()
        .unwrap();
    let failed = common::text(&again);
    assert!(!again.status.success(), "{failed}");
    eprintln!(
        "a second up without schedulable nodes: {}",
        failed.trim_end().lines().last().unwrap_or("")
    );
    assert!(
        failed.contains("Kustomization flux-system/production did not become Ready within 15s"),
        "{failed}"
    );

    let gantry_pid = value_after(&said, "gantry run")
        .trim_start_matches("pid")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        !tagged_processes(state.path()).is_empty(),
        "the processes carry the state dir's tag"
    );
    xtask_ok(state.path(), &["sandbox", "down"]);
    let left = tagged_processes(state.path());
    assert!(left.is_empty(), "down stops everything: {left:?}");
    assert!(
        !Path::new(&format!("/proc/{gantry_pid}/cmdline")).exists()
            || !std::fs::read_to_string(format!("/proc/{gantry_pid}/cmdline"))
                .unwrap_or_default()
                .contains("gantry"),
        "gantry run ({gantry_pid}) is gone"
    );
}

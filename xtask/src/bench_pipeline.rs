//! `cargo xtask bench pipeline`: push-to-running latency of the staging pipeline, split by hop.
//!
//! Everything is real and on loopback: `docker-registry`, a git server (`git http-backend`),
//! the local control plane, and the release `gantry run` binary. One namespace holds the
//! reference staging pipeline: a GitRepository and a Kustomization applying a Deployment whose
//! image carries a setter marker, an ImageRepository, an ImagePolicy following
//! `<sha>-<YYYYMMDDHHMM>` tags by timestamp, an ImageUpdateAutomation pushing to `main`, and a
//! `dockerhub` Receiver for the ImageRepository. Every interval is 10 minutes or more, so only
//! the webhook can explain a run.
//!
//! Each run pushes a new tag to the registry, then POSTs a Docker Hub push payload to the
//! Receiver, and records (through watches, not polling) when each hop's result shows in status:
//! scan (`lastScanResult.tagCount`), policy (`latestRef.tag`), commit+push (`lastPushCommit`),
//! fetch (the GitRepository's artifact revision), apply (`lastAppliedRevision`), rollout (the
//! Deployment updated and available on the kwok node). Median and p95 are printed per hop, and
//! Gantry's share (webhook to applied). Afterwards the idle `gantry run` process is sampled for
//! RSS and CPU.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::bench_support;
use futures::{StreamExt, TryStreamExt};
use gantry_api::image::v1::{
    AlphabeticalPolicy, CommitSpec, CommitUser, CrossNamespaceSourceReference as ImageSourceRef,
    GitSpec, ImagePolicy, ImagePolicyChoice, ImagePolicySpec, ImageRepository, ImageRepositorySpec,
    ImageUpdateAutomation, ImageUpdateAutomationSpec, PushSpec, TagFilter, UpdateStrategy,
};
use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::meta::{LocalObjectReference, NamespacedObjectReference};
use gantry_api::notification::v1::{Receiver, ReceiverResource, ReceiverSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::registry::{Registry, RegistryAuth};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const GIT_USER: &str = "bench";
const GIT_PASSWORD: &str = "bench-password";
const TOKEN: &str = "bench-webhook-token";
const HOPS: [&str; 6] = ["scan", "policy", "commit+push", "fetch", "apply", "rollout"];

fn deployment(image: &str, ns: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: {image}:0000000-202601010000 # {{\"$imagepolicy\": \"{ns}:web\"}}
"
    )
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark `runs` times against the cluster in `kubeconfig`.
pub fn pipeline(workspace: &Path, kubeconfig: &Path, runs: usize) -> Result<()> {
    let gantry = bench_support::build_release(workspace)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = crate::cluster::client(kubeconfig).await?;
        gantry_testkit::install_crds(&client).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = format!("bench-pipeline-{}", std::process::id());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(ns.clone());
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let result = measure(&gantry, kubeconfig, &client, &ns, runs).await;
        namespaces.delete(&ns, &DeleteParams::background()).await?;
        result
    })
}

async fn measure(
    gantry: &Path,
    kubeconfig: &Path,
    client: &kube::Client,
    ns: &str,
    runs: usize,
) -> Result<()> {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let image = registry.image("web");
    registry.push("web", "0000000-202601010000").await;
    let root = tempfile::tempdir()?;
    let repo = TestRepo::new(root.path(), "fleet");
    repo.write("staging/web.yaml", &deployment(&image, ns));
    repo.commit("staging");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(
        root.path(),
        HttpAuth::Basic {
            username: GIT_USER.into(),
            password: GIT_PASSWORD.into(),
        },
    );

    let receiver_port = gantry_testkit::git::free_port();
    let storage = tempfile::tempdir()?;
    let child = Command::new(gantry)
        .args(["run", "--leader-elect=false", "--watch-namespace", ns])
        .args(["--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"])
        .args(["--serving-addr=127.0.0.1:0", "--serving-loopback-only=true"])
        .arg(format!("--receiver-addr=127.0.0.1:{receiver_port}"))
        .arg("--uptime-addr=127.0.0.1:0")
        .arg("--storage-addr=127.0.0.1:0")
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting gantry run")?;
    let process = Process(child);
    let pid = process.0.id();

    create_pipeline(client, ns, &server.url("fleet.git"), &image).await?;
    let receivers: Api<Receiver> = Api::namespaced(client.clone(), ns);
    let path = wait(&receivers, "registry", Duration::from_secs(60), |r| {
        r.status.as_ref().and_then(|s| s.webhook_path.clone())
    })
    .await
    .context("the Receiver never got a webhookPath")?;
    let url = format!("http://127.0.0.1:{receiver_port}{path}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait(&deployments, "web", Duration::from_secs(120), |d| {
        rolled_out(d, "0000000-202601010000").then_some(())
    })
    .await
    .context("the first version never rolled out")?;
    let http = gantry_runtime::http::client(&Default::default())?;

    let mut samples: Vec<[Duration; 6]> = Vec::new();
    for run in 0..runs {
        let tag = format!("{:07x}-20260201{:04}", run + 1, run + 1);
        registry.push_variant("web", &tag, &tag).await;
        let hops = one_run(client, ns, &http, &url, &tag).await?;
        let line: Vec<String> = HOPS
            .iter()
            .zip(&hops)
            .map(|(h, d)| format!("{h} {:.0}ms", d.as_secs_f64() * 1000.0))
            .collect();
        println!("run {:>2}: {}", run + 1, line.join(", "));
        samples.push(hops);
    }

    println!();
    println!("{:<14} {:>10} {:>10}", "hop", "median", "p95");
    for (i, hop) in HOPS.iter().enumerate() {
        let values: Vec<Duration> = samples.iter().map(|s| s[i]).collect();
        print_row(hop, &values);
    }
    let gantry_share: Vec<Duration> = samples.iter().map(|s| s[..5].iter().sum()).collect();
    let total: Vec<Duration> = samples.iter().map(|s| s.iter().sum()).collect();
    print_row("gantry share", &gantry_share);
    print_row("push-to-run", &total);

    // Idle: the pipeline is in place and nothing happens.
    let (rss, cpu) = bench_support::idle_usage(pid, Duration::from_secs(30)).await;
    println!(
        "\nidle gantry run with the pipeline: RSS {rss:.1} MiB, CPU {cpu:.2}% of one core (30 s)"
    );
    drop(process);
    Ok(())
}

fn print_row(name: &str, values: &[Duration]) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let pick = |q: f64| {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[i].as_secs_f64() * 1000.0
    };
    println!("{name:<14} {:>8.0}ms {:>8.0}ms", pick(0.5), pick(0.95));
}

// One tag's trip: watchers first, then the webhook; returns the six hop durations.
async fn one_run(
    client: &kube::Client,
    ns: &str,
    http: &reqwest::Client,
    url: &str,
    tag: &str,
) -> Result<[Duration; 6]> {
    let images: Api<ImageRepository> = Api::namespaced(client.clone(), ns);
    let policies: Api<ImagePolicy> = Api::namespaced(client.clone(), ns);
    let automations: Api<ImageUpdateAutomation> = Api::namespaced(client.clone(), ns);
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);

    let tags_before = images
        .get("web")
        .await?
        .status
        .and_then(|s| s.last_scan_result)
        .map_or(0, |r| r.tag_count);
    let push_before = automations
        .get("staging")
        .await?
        .status
        .and_then(|s| s.last_push_commit)
        .unwrap_or_default();

    let tag_owned = tag.to_owned();
    let scan = tokio::spawn(reached(images, "web", move |o: &ImageRepository| {
        o.status
            .as_ref()
            .and_then(|s| s.last_scan_result.as_ref())
            .is_some_and(|r| r.tag_count > tags_before)
    }));
    let policy = tokio::spawn(reached(policies, "web", move |o: &ImagePolicy| {
        o.status
            .as_ref()
            .and_then(|s| s.latest_ref.as_ref())
            .is_some_and(|r| r.tag == tag_owned)
    }));
    let (commit_tx, commit_rx) = tokio::sync::watch::channel(String::new());
    let push = tokio::spawn(reached(
        automations,
        "staging",
        move |o: &ImageUpdateAutomation| match o
            .status
            .as_ref()
            .and_then(|s| s.last_push_commit.clone())
        {
            Some(c) if c != push_before => {
                let _ = commit_tx.send(c);
                true
            }
            _ => false,
        },
    ));
    let rx = commit_rx.clone();
    let fetch = tokio::spawn(reached(repos, "fleet", move |o: &GitRepository| {
        let commit = rx.borrow().clone();
        !commit.is_empty()
            && o.status
                .as_ref()
                .and_then(|s| s.artifact.as_ref())
                .is_some_and(|a| a.revision.ends_with(&commit))
    }));
    let rx = commit_rx.clone();
    let apply = tokio::spawn(reached(
        kustomizations,
        "staging",
        move |o: &Kustomization| {
            let commit = rx.borrow().clone();
            !commit.is_empty()
                && o.status
                    .as_ref()
                    .and_then(|s| s.last_applied_revision.as_ref())
                    .is_some_and(|r| r.ends_with(&commit))
        },
    ));
    let tag_owned = tag.to_owned();
    let rollout = tokio::spawn(reached(deployments, "web", move |d: &Deployment| {
        rolled_out(d, &tag_owned)
    }));
    // Let the watches start before anything can happen.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = serde_json::json!({
        "callback_url": "https://registry.hub.docker.com/u/team/web/hook/0/",
        "push_data": {"pushed_at": jiff::Timestamp::now().as_second(), "pusher": "ci", "tag": tag},
        "repository": {"name": "web", "namespace": "team", "repo_name": "team/web",
            "repo_url": "https://hub.docker.com/r/team/web"}
    });
    let sent = Instant::now();
    let answer = http.post(url).json(&body).send().await?;
    if !answer.status().is_success() {
        bail!("the receiver answered {}", answer.status());
    }
    let deadline = Duration::from_secs(60);
    let mut at = [sent; 6];
    for (i, task) in [scan, policy, push, fetch, apply, rollout]
        .into_iter()
        .enumerate()
    {
        at[i] = tokio::time::timeout(deadline, task)
            .await
            .with_context(|| format!("hop '{}' did not happen within {deadline:?}", HOPS[i]))??
            .with_context(|| format!("watching hop '{}'", HOPS[i]))?;
    }
    let mut hops = [Duration::ZERO; 6];
    let mut previous = sent;
    for i in 0..6 {
        hops[i] = at[i].saturating_duration_since(previous);
        previous = previous.max(at[i]);
    }
    Ok(hops)
}

// When `done` first holds for `name`, as seen through a watch.
async fn reached<K>(
    api: Api<K>,
    name: &'static str,
    done: impl Fn(&K) -> bool + Send + 'static,
) -> Result<Instant>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).applied_objects().boxed();
    while let Some(obj) = stream.try_next().await? {
        if done(&obj) {
            return Ok(Instant::now());
        }
    }
    bail!("the watch of {name} ended")
}

fn rolled_out(d: &Deployment, tag: &str) -> bool {
    let image_ok = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .is_some_and(|p| {
            p.containers
                .iter()
                .any(|c| c.image.as_deref().is_some_and(|i| i.ends_with(tag)))
        });
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

async fn wait<K, T>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    check: impl Fn(&K) -> Option<T>,
) -> Result<T>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(obj) = api.get_opt(name).await?
            && let Some(v) = check(&obj)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{name} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_pipeline(
    client: &kube::Client,
    ns: &str,
    git_url: &str,
    image: &str,
) -> Result<()> {
    let pp = PostParams::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, data) in [
        (
            "git-auth",
            serde_json::json!({"username": GIT_USER, "password": GIT_PASSWORD}),
        ),
        ("webhook-token", serde_json::json!({"token": TOKEN})),
    ] {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "stringData": data
        }))?;
        secrets.create(&pp, &secret).await?;
    }
    let long = "10m".to_string();
    Api::<GitRepository>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &GitRepository::new(
                "fleet",
                GitRepositorySpec {
                    url: git_url.into(),
                    interval: long.clone(),
                    secret_ref: Some(LocalObjectReference {
                        name: "git-auth".into(),
                    }),
                    r#ref: Some(GitRepositoryRef {
                        branch: Some("main".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await?;
    Api::<Kustomization>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &Kustomization::new(
                "staging",
                KustomizationSpec {
                    interval: "1h".into(),
                    path: Some("./staging".into()),
                    prune: true,
                    target_namespace: Some(ns.into()),
                    source_ref: CrossNamespaceSourceReference {
                        name: "fleet".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ),
        )
        .await?;
    Api::<ImageRepository>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &ImageRepository::new(
                "web",
                ImageRepositorySpec {
                    image: image.into(),
                    interval: "1h".into(),
                    insecure: true,
                    ..Default::default()
                },
            ),
        )
        .await?;
    Api::<ImagePolicy>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &ImagePolicy::new(
                "web",
                ImagePolicySpec {
                    image_repository_ref: NamespacedObjectReference {
                        name: "web".into(),
                        namespace: None,
                    },
                    policy: ImagePolicyChoice {
                        alphabetical: Some(AlphabeticalPolicy { order: None }),
                        ..Default::default()
                    },
                    filter_tags: Some(TagFilter {
                        pattern: Some("^[a-f0-9]+-(?P<ts>[0-9]{12})$".into()),
                        extract: Some("$ts".into()),
                    }),
                    ..Default::default()
                },
            ),
        )
        .await?;
    Api::<ImageUpdateAutomation>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &ImageUpdateAutomation::new(
                "staging",
                ImageUpdateAutomationSpec {
                    source_ref: ImageSourceRef {
                        kind: "GitRepository".into(),
                        name: "fleet".into(),
                        ..Default::default()
                    },
                    interval: long,
                    git: Some(GitSpec {
                        checkout: None,
                        commit: CommitSpec {
                            author: CommitUser {
                                name: Some("gantry".into()),
                                email: "gantry@bench.invalid".into(),
                            },
                            ..Default::default()
                        },
                        push: Some(PushSpec {
                            branch: Some("main".into()),
                            ..Default::default()
                        }),
                    }),
                    update: Some(UpdateStrategy {
                        path: Some("./staging".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await?;
    Api::<Receiver>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &Receiver::new(
                "registry",
                ReceiverSpec {
                    type_: "dockerhub".into(),
                    secret_ref: Some(LocalObjectReference {
                        name: "webhook-token".into(),
                    }),
                    resources: vec![ReceiverResource {
                        api_version: Some("image.toolkit.fluxcd.io/v1".into()),
                        kind: "ImageRepository".into(),
                        name: "web".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
        )
        .await?;
    Ok(())
}

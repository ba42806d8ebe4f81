//! `cargo xtask bench oci`: an OCIRepository pulling a large artifact, and the artifact server
//! serving it, with the release `gantry run` against the local control plane and a local
//! registry (both on 127.0.0.1).
//!
//! Measured: for each of `runs` OCIRepositories (each a fresh pull of the same `size` MiB
//! artifact, incompressible content, pushed once by `gantry push artifact`'s code), the time from
//! creation to Ready; the peak RSS of `gantry run` before the first pull and after all of them;
//! then downloads of `status.artifact.url` from the artifact server, one at a time and 8 at once,
//! as MiB/s.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use gantry_api::source::v1::{OCIRepository, OCIRepositoryRef, OCIRepositorySpec};
use gantry_source::oci::layout::{self, PushMetadata};
use gantry_source::registry::{ClientConfig, Reference, RegistryClient};
use gantry_source::sourceignore::SourceIgnore;
use gantry_testkit::git::free_port;
use gantry_testkit::registry::{Registry, RegistryAuth};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};

use crate::bench_support;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark against the cluster in `kubeconfig` and prints the figures.
pub fn oci(
    workspace: &Path,
    kubeconfig: &Path,
    gantry: Option<&Path>,
    size_mib: usize,
    runs: usize,
    downloads: usize,
) -> Result<()> {
    let gantry = match gantry {
        Some(path) => path.to_owned(),
        None => bench_support::build_release(workspace)?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = crate::cluster::client(kubeconfig).await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = format!("bench-oci-{}", std::process::id());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(ns.clone());
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let result = measure(&gantry, kubeconfig, &client, &ns, size_mib, runs, downloads).await;
        namespaces.delete(&ns, &DeleteParams::background()).await?;
        result
    })
}

async fn measure(
    gantry: &Path,
    kubeconfig: &Path,
    client: &kube::Client,
    ns: &str,
    size_mib: usize,
    runs: usize,
    downloads: usize,
) -> Result<()> {
    let registry = Registry::start(RegistryAuth::Anonymous);
    // Incompressible content (a xorshift stream), in 1 MiB files, so the layer is ~size MiB.
    let content = tempfile::tempdir()?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..size_mib {
        let mut bytes = Vec::with_capacity(1 << 20);
        while bytes.len() < 1 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        std::fs::write(content.path().join(format!("blob-{i:03}.bin")), &bytes)?;
    }
    let reference = Reference::parse(&registry.image("bench/app"))?;
    let registry_client = RegistryClient::new(
        &reference,
        ClientConfig {
            insecure: true,
            ..Default::default()
        },
    )?;
    let meta = PushMetadata {
        source: "https://git.example/bench".into(),
        revision: "main@sha1:0000000000000000000000000000000000000000".into(),
        ..Default::default()
    };
    let pushed = layout::push(
        &registry_client,
        "v1",
        content.path(),
        &SourceIgnore::vcs_and(&[])?,
        &meta,
    )
    .await?;
    let (manifest, _) = registry_client.manifest(&pushed.digest).await?;
    let layer_bytes = layout::Manifest::parse(&manifest)?.layers[0].size;

    let storage = tempfile::tempdir()?;
    let storage_port = free_port();
    let child = Command::new(gantry)
        .args(["run", "--leader-elect=false", "--watch-namespace", ns])
        .args(["--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0"])
        .arg("--receiver-addr=127.0.0.1:0")
        .arg(format!("--storage-addr=127.0.0.1:{storage_port}"))
        .arg(format!("--storage-adv-addr=127.0.0.1:{storage_port}"))
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting gantry run")?;
    let process = Process(child);
    let pid = process.0.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = bench_support::peak_rss_mib(pid);

    let api: Api<OCIRepository> = Api::namespaced(client.clone(), ns);
    let mut times = Vec::new();
    let mut url = String::new();
    for run in 0..runs {
        let name = format!("pull-{run}");
        let spec = OCIRepositorySpec {
            url: format!("oci://{}", registry.image("bench/app")),
            interval: "1h".into(),
            insecure: true,
            r#ref: Some(OCIRepositoryRef {
                tag: Some("v1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let started = Instant::now();
        api.create(&PostParams::default(), &OCIRepository::new(&name, spec))
            .await?;
        let deadline = started + Duration::from_secs(300);
        loop {
            let repo = api.get(&name).await?;
            let status = repo.status.unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status.clone(), c.message.clone()));
            match ready {
                Some((s, _)) if s == "True" => {
                    times.push(started.elapsed());
                    if let Some(artifact) = status.artifact {
                        url = artifact.url;
                    }
                    break;
                }
                Some((s, message)) if s == "False" && Instant::now() > deadline => {
                    bail!("{name} failed: {message}")
                }
                _ if Instant::now() > deadline => bail!("{name} not Ready within 300 s"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    let rss_after = bench_support::peak_rss_mib(pid);

    // Downloads: one after the other, then all at once.
    let http = gantry_runtime::http::client(&Default::default())?;
    let fetch = |http: reqwest::Client, url: String| async move {
        let bytes = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        anyhow::Ok(bytes.len())
    };
    let size = fetch(http.clone(), url.clone()).await?;
    let started = Instant::now();
    for _ in 0..downloads {
        fetch(http.clone(), url.clone()).await?;
    }
    let sequential = started.elapsed();
    let started = Instant::now();
    let parallel =
        futures::future::join_all((0..downloads).map(|_| fetch(http.clone(), url.clone()))).await;
    for result in parallel {
        result?;
    }
    let concurrent = started.elapsed();
    drop(process);

    let mib = |b: f64| b / f64::from(1 << 20);
    times.sort();
    println!(
        "OCIRepository pull of a {size_mib} MiB artifact (layer {:.1} MiB, artifact {:.1} MiB), {runs} pulls:",
        mib(layer_bytes as f64),
        mib(size as f64)
    );
    println!(
        "  creation to Ready: min {:.2?}, median {:.2?}, max {:.2?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!(
        "  gantry run peak RSS: {rss_before:.1} MiB before the first pull, {rss_after:.1} MiB after {runs}"
    );
    let rate = |d: Duration| mib((size * downloads) as f64) / d.as_secs_f64();
    println!(
        "Artifact server, {downloads} downloads of {:.1} MiB: one at a time {:.0} MiB/s, all at once {:.0} MiB/s",
        mib(size as f64),
        rate(sequential),
        rate(concurrent)
    );
    Ok(())
}

//! Flux's own source-controller and kustomize-controller, for `cargo xtask bench gitops
//! --against flux` only (never for the tests): built from the Go module proxy and run as
//! local processes on loopback.
//!
//! Each controller's module zip lacks its `api/` directory (a nested module), which its go.mod
//! replaces with `./api`; so each is built as a dependency of a small wrapper module that
//! requires it at its release version (its `api` module then comes from the proxy at the
//! version it names) and repeats its other `replace` directives. Binaries are cached in
//! `<cache>/<controller>-<version>/bin/`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use crate::bench::Process;
use crate::gotools;

/// The controllers' release built by default (override with `GANTRY_FLUX_CONTROLLERS_VERSION`):
/// the one Flux v2.9 ships.
pub const VERSION: &str = "v1.9.6";

/// go.mod `replace` lines of each controller's own go.mod at [`VERSION`], without `./api`.
const DIGEST_REPLACE: &str = "replace github.com/opencontainers/go-digest => \
     github.com/opencontainers/go-digest v1.0.1-0.20220411205349-bde1400a84be";
const KUSTOMIZE_REPLACES: &[&str] = &[
    DIGEST_REPLACE,
    "replace sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1",
    "replace sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1",
    "replace gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1",
];
const SOURCE_REPLACES: &[&str] = &[
    DIGEST_REPLACE,
    // v0.18.3, which source-controller v1.9.6 names, is refused by the module proxy
    // ("not available"); v0.18.0 of the same minor line is served.
    "replace github.com/fluxcd/pkg/artifact => github.com/fluxcd/pkg/artifact v0.18.0",
];

/// The two controller binaries and their CustomResourceDefinitions.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub source: PathBuf,
    pub kustomize: PathBuf,
    /// Flux's own CRD files (`config/crd/bases` of both modules): the controllers watch kinds
    /// Gantry does not serve (HelmChart, Bucket, ExternalArtifact, ...) and exit without them.
    pub crds: Vec<PathBuf>,
}

/// Overrides the cache the controllers (and the Go module and build caches they are built
/// with) live in, e.g. a scratch directory to check that a fresh machine can build them.
pub const CACHE_VAR: &str = "GANTRY_FLUX_CONTROLLERS_CACHE";

/// The cached controllers, built first if missing (several minutes each on 2 cores): in
/// `cache`, or in `$GANTRY_FLUX_CONTROLLERS_CACHE` if set.
pub fn build(cache: &Path) -> Result<Binaries> {
    let scratch = std::env::var_os(CACHE_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let cache = match &scratch {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::path::absolute(dir)?
        }
        None => cache.to_path_buf(),
    };
    let cache = cache.as_path();
    let version = gotools::version("GANTRY_FLUX_CONTROLLERS_VERSION", VERSION);
    let source = gotools::wrapped(
        cache,
        "source-controller",
        "github.com/fluxcd/source-controller",
        &version,
        SOURCE_REPLACES,
    )?;
    let kustomize = gotools::wrapped(
        cache,
        "kustomize-controller",
        "github.com/fluxcd/kustomize-controller",
        &version,
        KUSTOMIZE_REPLACES,
    )?;
    let mut crds = Vec::new();
    for module in [
        "github.com/fluxcd/source-controller",
        "github.com/fluxcd/kustomize-controller",
    ] {
        let bases = gotools::module_dir(cache, module, &version)?.join("config/crd/bases");
        for entry in
            std::fs::read_dir(&bases).with_context(|| format!("reading {}", bases.display()))?
        {
            crds.push(entry?.path());
        }
    }
    crds.sort();
    Ok(Binaries {
        source,
        kustomize,
        crds,
    })
}

/// Server-side applies Flux's CRDs (over Gantry's, which serve the same API) and waits until
/// each is established.
pub async fn install_crds(client: &kube::Client, bin: &Binaries) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("bench-flux").force();
    let mut names = Vec::new();
    for file in &bin.crds {
        let text = std::fs::read_to_string(file)?;
        let crd: serde_json::Value =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for name in names {
        loop {
            let crd = api.get(&name).await?;
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts both controllers for the namespace `ns`: source-controller with
/// `--concurrent=10` (flux-benchmark's setting), kustomize-controller with `concurrency`, both
/// unthrottled (`--kube-api-qps=-1 --kube-api-burst=-1`: with API Priority and Fairness off,
/// as on the local control plane, client-go would otherwise throttle itself to 50 requests/s),
/// artifacts stored in `storage` and served on a loopback port.
pub fn start(
    bin: &Binaries,
    kubeconfig: &Path,
    ns: &str,
    concurrency: u16,
    storage: &Path,
) -> Result<Vec<Process>> {
    let storage_port = free_port()?;
    let common = |cmd: &mut Command| -> Result<()> {
        cmd.arg(format!("--metrics-addr=127.0.0.1:{}", free_port()?))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()?))
            .args([
                "--enable-leader-election=false",
                "--watch-all-namespaces=false",
                "--kube-api-qps=-1",
                "--kube-api-burst=-1",
                "--log-level=error",
                "--events-addr=",
            ])
            .env("RUNTIME_NAMESPACE", ns)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Ok(())
    };
    let mut source = Command::new(&bin.source);
    common(&mut source)?;
    source
        .arg("--concurrent=10")
        .arg(format!("--storage-path={}", storage.display()))
        .arg(format!("--storage-addr=127.0.0.1:{storage_port}"))
        .arg(format!("--storage-adv-addr=127.0.0.1:{storage_port}"));
    let source = Process(source.spawn().context("starting source-controller")?);
    let mut kustomize = Command::new(&bin.kustomize);
    common(&mut kustomize)?;
    kustomize.arg(format!("--concurrent={concurrency}"));
    let kustomize = Process(kustomize.spawn().context("starting kustomize-controller")?);
    Ok(vec![source, kustomize])
}

//! Developer tasks for Gantry, run as `cargo xtask <task>`.
//!
//! - `cluster up|down|status`: a real local Kubernetes control plane (see `cluster`).
//! - `sandbox up|down|push-image`: the reference pipeline (registry, git server, `gantry run`,
//!   staging and production) on that control plane (see `sandbox`).
//! - `test`: the whole test suite against that control plane (or `GANTRY_KUBECONFIG`).
//! - `prerequisites`: the Debian packages and Go the two above need (they check it first).
//! - `tool flux|actionlint|kustomize|sops`: the path of a Go tool the tests use, built if missing.
//! - `image`: Gantry's container image, reproducible, without Docker (see `image`).

mod bench;
mod bench_oci;
mod bench_pipeline;
mod bench_receiver;
mod bench_serving;
mod bench_support;
mod bench_timeline;
mod bench_uptime;
mod cache_lock;
mod cluster;
mod flux_controllers;
mod gotools;
mod image;
mod kustomize;
mod prerequisites;
mod sandbox;
// A test over the workspace's sources: no span guard in async code.
#[cfg(test)]
mod span_lint;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Gantry's developer tasks")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Args)]
struct Global {
    /// Use this existing cluster (kind, k3d, a real one) instead of the local control plane;
    /// nothing is built or started.
    #[arg(long, global = true, env = "GANTRY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Where the local control plane keeps its certificates, data and logs.
    #[arg(long, global = true, env = "GANTRY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where built binaries and Go's caches are kept between runs.
    #[arg(long, global = true, env = "GANTRY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Manage the local Kubernetes control plane.
    #[command(subcommand)]
    Cluster(ClusterTask),
    /// The reference pipeline on loopback: control plane (or GANTRY_KUBECONFIG), registry, git
    /// server, `gantry run`, staging and production. `cargo xtask sandbox` is `sandbox up`.
    Sandbox {
        #[command(subcommand)]
        task: Option<SandboxTask>,
    },
    /// Run the whole test suite against a control plane, starting one if needed.
    Test(TestArgs),
    /// Benchmarks that print figures (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchTask),
    /// Check the Debian packages and Go that `sandbox` and `test` need (they run this first);
    /// as root, install missing packages.
    Prerequisites {
        /// Only report what is missing, never install.
        #[arg(long)]
        check: bool,
        /// Print the Debian packages, one a line, and exit.
        #[arg(long, conflicts_with = "check")]
        list: bool,
    },
    /// Print the path of a Go tool the tests use, building it first if it is not cached.
    Tool {
        #[arg(value_enum)]
        tool: GoTool,
    },
    /// Build Gantry's container image (release `gantry`, `kustomize`, CA certificates, non-root
    /// user) as an OCI image layout, reproducibly and without Docker; push it if asked.
    Image(ImageArgs),
}

#[derive(Debug, Args)]
struct ImageArgs {
    /// Push the image to `REGISTRY/REPOSITORY:TAG` (credentials from the docker config).
    #[arg(long, value_name = "REGISTRY/REPO:TAG")]
    push: Option<String>,
    /// Talk plain HTTP to the registry (a local one).
    #[arg(long, requires = "push")]
    insecure: bool,
    /// Where to write the OCI image layout [default: <target dir>/oci/gantry].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GoTool {
    Flux,
    Actionlint,
    Kustomize,
    /// The `sops` CLI (the decryption tests encrypt with it).
    Sops,
}

#[derive(Debug, Subcommand)]
enum ClusterTask {
    /// Build what is missing, start the control plane and wait until it is ready.
    Up(UpArgs),
    /// Stop every process of the control plane and remove its state.
    Down,
    /// Say what runs.
    Status,
    /// Kill kube-apiserver and start it again (for fault tests).
    RestartApiserver,
}

#[derive(Debug, Subcommand)]
enum SandboxTask {
    /// Bring the whole pipeline up and wait until staging and production are rolled out.
    Up,
    /// Stop everything `up` started (with the local control plane: the control plane too).
    Down,
    /// Push a new `web:TAG` to the sandbox registry (which announces it to Gantry by webhook).
    PushImage {
        /// e.g. `1a2b3c4-202602011200` (staging) or `1.1.0` (production).
        tag: String,
    },
    /// Send a signed GitHub push event (run by the sandbox repository's post-receive hook).
    #[command(hide = true)]
    GithubPush {
        #[arg(long)]
        url: String,
        #[arg(long = "ref")]
        git_ref: String,
        #[arg(long)]
        before: String,
        #[arg(long)]
        after: String,
    },
    /// Stop or start a stand-in application (`production`): its Monitor goes DOWN and alerts.
    StandIn {
        /// The environment: `production`.
        name: String,
        #[arg(value_enum)]
        action: StandInAction,
    },
    /// Serve a stand-in application until killed (started detached by `up` and `stand-in`).
    #[command(hide = true)]
    ServeStandIn {
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
    },
    /// Receive the sandbox's alerts until killed (started detached by `up`).
    #[command(hide = true)]
    ServeAlerts {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        log: PathBuf,
    },
    /// Serve the sandbox's git repositories until killed (started detached by `up`).
    #[command(hide = true)]
    ServeGit {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        user: String,
    },
    /// Play the kubelet for kwok's pods until killed: a stand-in HTTP server on each pod's
    /// loopback IP and container port (started detached by `up`).
    #[command(hide = true)]
    ServePods {
        #[arg(long)]
        pods_kubeconfig: PathBuf,
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StandInAction {
    Stop,
    Start,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Port for kube-apiserver (default: a free one).
    #[arg(long)]
    apiserver_port: Option<u16>,
    /// Port for etcd's clients (default: a free one).
    #[arg(long)]
    etcd_port: Option<u16>,
    /// etcd's data directory (default: inside the state directory).
    #[arg(long)]
    etcd_data_dir: Option<PathBuf>,
    /// How many kwok nodes to create.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
}

#[derive(Debug, Subcommand)]
enum BenchTask {
    /// N Kustomizations from one git repository: time until all are Ready, peak RSS and CPU,
    /// API server CPU and requests per Kustomization, beside a floor (the same objects applied
    /// by a minimal client) and, with `--against flux`, Flux's own controllers.
    Gitops {
        /// Comma-separated counts of Kustomizations.
        #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
        count: Vec<usize>,
        /// Concurrent reconciles (`gantry run --concurrent`, kustomize-controller's
        /// `--concurrent`; source-controller gets 10) and the floor's requests in flight.
        #[arg(long, default_value_t = 20)]
        concurrent: u16,
        /// Also run Flux's source-controller and kustomize-controller (built from the Go module
        /// proxy and cached), alternating with Gantry on the same input.
        #[arg(long, value_parser = ["flux"])]
        against: Option<String>,
        /// Benchmark this `gantry` binary (e.g. another branch's release build) instead of
        /// building this workspace's.
        #[arg(long)]
        gantry: Option<PathBuf>,
        /// Seconds to measure the idle cost after all are Ready (0: skip).
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
    },
    /// Push-to-running latency of the staging pipeline (registry webhook to rollout), per hop.
    Pipeline {
        /// How many tags to push, one after the other.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// The webhook server under load: valid and forged signed calls at each concurrency;
    /// latency percentiles and API requests per call.
    Receiver {
        /// Calls per case.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Comma-separated concurrencies.
        #[arg(long, value_delimiter = ',', default_value = "1,50")]
        concurrency: Vec<usize>,
        /// Benchmark this `gantry` binary (e.g. another branch's release build) instead of
        /// building this workspace's.
        #[arg(long)]
        gantry: Option<PathBuf>,
    },
    /// Decryption time for N SOPS-encrypted Secrets in one build, files made by the real sops
    /// CLI (no cluster).
    Sops {
        /// How many Secrets.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Timed runs.
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// The serving router (no cluster, loopback): cold-start overhead over pod ready, warm
    /// latency direct vs through nginx vs through the router at 1000 and 5000 rps, saturation,
    /// the proxies' CPU and memory. With `--sleeping N`: the release `gantry run` on the local
    /// control plane, idle, without and with N Knative Services asleep.
    Serving {
        /// Cold starts to time.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Seconds per warm case.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds of the warm cases (direct, nginx and the router alternate); medians printed.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Instead: idle CPU and RSS of `gantry run` without and with this many ksvcs at zero.
        #[arg(long)]
        sleeping: Option<usize>,
        /// Seconds of each idle measurement (`--sleeping`).
        #[arg(long, default_value_t = 60)]
        idle: u64,
        /// With `--sleeping`: benchmark this `gantry` binary instead of building a release one.
        #[arg(long)]
        gantry: Option<PathBuf>,
    },
    /// N HTTP Monitors against a local server, checked by `gantry uptime serve` (no cluster):
    /// CPU, RSS and scheduling lateness.
    Uptime {
        /// How many Monitors.
        #[arg(long, default_value_t = 10_000)]
        monitors: usize,
        /// Their interval, seconds.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// How long to measure after one interval of warm-up, seconds.
        #[arg(long, default_value_t = 300)]
        duration: u64,
        /// Benchmark this `gantry` binary instead of building a release one.
        #[arg(long)]
        gantry: Option<PathBuf>,
        /// Where the history goes: `sqlite` (a file in a temporary directory) or `postgres`
        /// (a private server on loopback); its growth per day is measured.
        #[arg(long, default_value = "sqlite")]
        database: String,
    },
    /// An OCIRepository pulling a large artifact (time, peak RSS) and the artifact server's
    /// download throughput.
    Oci {
        /// Artifact content size, MiB (incompressible).
        #[arg(long, default_value_t = 10)]
        size_mib: usize,
        /// How many OCIRepositories pull it, one after the other.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// How many downloads of the artifact URL per measurement.
        #[arg(long, default_value_t = 20)]
        downloads: usize,
        /// Benchmark this `gantry` binary instead of building the release one.
        #[arg(long)]
        gantry: Option<PathBuf>,
    },
    /// Artifact compression: goflate (Go's gzip, what Flux's digests need) against flate2, same
    /// inputs, release build (no cluster).
    Gzip {
        /// Input size, MiB.
        #[arg(long, default_value_t = 10)]
        size_mib: usize,
        /// Timed runs of each compressor per input (alternating; the median is printed).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// ImagePolicy's tag choice over a large tag list: time and heap allocations (no cluster).
    Policy {
        /// How many tags.
        #[arg(long, default_value_t = 100_000)]
        tags: usize,
        /// Timed runs per policy.
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// The uptime history store on SQLite and a private Postgres: write throughput, database
    /// growth per day for N monitors at 30 s, and the status page's render time (no cluster).
    UptimeStore {
        /// Monitors checked every 30 s.
        #[arg(long, default_value_t = 10_000)]
        monitors: usize,
        /// Hours of checks to simulate.
        #[arg(long, default_value_t = 2)]
        hours: usize,
        /// Monitors on the status page.
        #[arg(long, default_value_t = 1000)]
        page_monitors: usize,
    },
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Leave the control plane running afterwards (it is always left running if it was already).
    #[arg(long)]
    keep_cluster: bool,
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Run by a git hook, whose environment git-http-backend cleared (no HOME): needs no paths.
    if let Task::Sandbox {
        task:
            Some(SandboxTask::GithubPush {
                url,
                git_ref,
                before,
                after,
            }),
    } = &cli.task
    {
        sandbox::github_push(url, git_ref, before, after)?;
        return Ok(ExitCode::SUCCESS);
    }
    let paths = paths(&cli.global)?;
    let versions = cluster::Versions::from_env();
    // Everything the machine must provide is checked before anything is built, so a missing
    // package stops the command in seconds rather than after a long build.
    match &cli.task {
        Task::Sandbox {
            task: None | Some(SandboxTask::Up),
        } => prerequisites::ensure(
            go_needed(&cli.global, &paths, &versions, false),
            prerequisites::Missing::InstallAsRoot,
        )?,
        Task::Test(_) => prerequisites::ensure(
            go_needed(&cli.global, &paths, &versions, true),
            prerequisites::Missing::InstallAsRoot,
        )?,
        _ => {}
    }
    match cli.task {
        Task::Cluster(ClusterTask::Up(args)) => {
            if let Some(kubeconfig) = &cli.global.kubeconfig {
                use_existing(kubeconfig)?;
                return Ok(ExitCode::SUCCESS);
            }
            let opts = cluster::UpOptions {
                etcd_port: args.etcd_port,
                apiserver_port: args.apiserver_port,
                etcd_data_dir: args.etcd_data_dir,
                nodes: args.nodes,
            };
            cluster::up(&paths, &versions, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Cluster(ClusterTask::Down) => {
            if cli.global.kubeconfig.is_some() {
                eprintln!("Using an existing cluster (GANTRY_KUBECONFIG): nothing to stop.");
            } else {
                cluster::down(&paths)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Cluster(ClusterTask::RestartApiserver) => {
            cluster::restart_apiserver(&paths)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Cluster(ClusterTask::Status) => {
            if let Some(kubeconfig) = &cli.global.kubeconfig {
                use_existing(kubeconfig)?;
                return Ok(ExitCode::SUCCESS);
            }
            Ok(if cluster::status(&paths) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Task::Sandbox { task } => {
            let existing = cli.global.kubeconfig.as_deref();
            match task.unwrap_or(SandboxTask::Up) {
                SandboxTask::Up => {
                    if let Some(kubeconfig) = existing {
                        use_existing(kubeconfig)?;
                    }
                    sandbox::up(&workspace_root(), &paths, &versions, existing)?;
                }
                SandboxTask::Down => sandbox::down(&paths, existing)?,
                SandboxTask::PushImage { tag } => sandbox::push_image(&paths, &tag)?,
                SandboxTask::GithubPush { .. } => bail!("github-push is handled before the paths"),
                SandboxTask::StandIn { name, action } => {
                    sandbox::stand_in(&paths, &name, matches!(action, StandInAction::Start))?
                }
                SandboxTask::ServeStandIn { name, port } => {
                    sandbox::uptime::serve_stand_in(&name, port)?
                }
                SandboxTask::ServeAlerts { port, log } => {
                    sandbox::uptime::serve_alerts(port, &log)?
                }
                SandboxTask::ServeGit { root, port, user } => {
                    sandbox::serve_git(&root, port, &user)?
                }
                SandboxTask::ServePods {
                    pods_kubeconfig,
                    namespaces,
                } => sandbox::serve_pods(&pods_kubeconfig, &namespaces)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Test(args) => test(&cli.global, &paths, &versions, &args),
        Task::Bench(BenchTask::Gitops {
            count,
            concurrent,
            against,
            gantry,
            idle_secs,
        }) => {
            let kubeconfig = match &cli.global.kubeconfig {
                Some(kubeconfig) => kubeconfig.clone(),
                None => cluster::up(&paths, &versions, &cluster::UpOptions::default())?.kubeconfig,
            };
            let options = bench::Options {
                counts: count,
                concurrency: concurrent,
                gantry,
                against_flux: against.is_some(),
                cache: paths.cache.clone(),
                idle_secs,
            };
            bench::gitops(&workspace_root(), &kubeconfig, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Pipeline { runs }) => {
            let kubeconfig = match &cli.global.kubeconfig {
                Some(kubeconfig) => kubeconfig.clone(),
                None => cluster::up(&paths, &versions, &cluster::UpOptions::default())?.kubeconfig,
            };
            bench_pipeline::pipeline(&workspace_root(), &kubeconfig, runs)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Receiver {
            requests,
            concurrency,
            gantry,
        }) => {
            let kubeconfig = match &cli.global.kubeconfig {
                Some(kubeconfig) => kubeconfig.clone(),
                None => cluster::up(&paths, &versions, &cluster::UpOptions::default())?.kubeconfig,
            };
            bench_receiver::receiver(
                &workspace_root(),
                &kubeconfig,
                gantry.as_deref(),
                requests,
                &concurrency,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Image(args) => {
            let options = image::Options {
                out: args.out.unwrap_or_else(default_image_dir),
                push: args.push,
                insecure: args.insecure,
            };
            image::image(&workspace_root(), &paths.cache, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Sops { count, runs }) => {
            let sops = gotools::sops(&paths.cache)?;
            bench::sops(&workspace_root(), &sops, count, runs)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Serving {
            runs,
            seconds,
            rounds,
            sleeping: None,
            ..
        }) => {
            bench::serving(&workspace_root(), runs, seconds, rounds)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Serving {
            sleeping: Some(count),
            idle,
            gantry,
            ..
        }) => {
            let kubeconfig = match &cli.global.kubeconfig {
                Some(kubeconfig) => kubeconfig.clone(),
                None => cluster::up(&paths, &versions, &cluster::UpOptions::default())?.kubeconfig,
            };
            bench_serving::sleeping(
                &workspace_root(),
                &kubeconfig,
                gantry.as_deref(),
                count,
                std::time::Duration::from_secs(idle),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Uptime {
            monitors,
            interval,
            duration,
            gantry,
            database,
        }) => {
            bench_uptime::uptime(
                &workspace_root(),
                gantry.as_deref(),
                monitors,
                std::time::Duration::from_secs(interval),
                std::time::Duration::from_secs(duration),
                &database,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Oci {
            size_mib,
            runs,
            downloads,
            gantry,
        }) => {
            let kubeconfig = match &cli.global.kubeconfig {
                Some(kubeconfig) => kubeconfig.clone(),
                None => cluster::up(&paths, &versions, &cluster::UpOptions::default())?.kubeconfig,
            };
            bench_oci::oci(
                &workspace_root(),
                &kubeconfig,
                gantry.as_deref(),
                size_mib,
                runs,
                downloads,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Gzip { size_mib, runs }) => {
            bench::gzip(&workspace_root(), size_mib, runs)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::Policy { tags, runs }) => {
            bench::policy(&workspace_root(), tags, runs)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(BenchTask::UptimeStore {
            monitors,
            hours,
            page_monitors,
        }) => {
            bench::uptime_store(&workspace_root(), monitors, hours, page_monitors)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Prerequisites { list: true, .. } => {
            for package in prerequisites::package_names() {
                println!("{package}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Prerequisites { check, .. } => {
            let on_missing = if check {
                prerequisites::Missing::Report
            } else {
                prerequisites::Missing::InstallAsRoot
            };
            prerequisites::ensure(true, on_missing)?;
            eprintln!("All prerequisites are installed.");
            Ok(ExitCode::SUCCESS)
        }
        Task::Tool { tool } => {
            let path = match tool {
                GoTool::Flux => gotools::flux(&paths.cache)?,
                GoTool::Actionlint => gotools::actionlint(&paths.cache)?,
                GoTool::Kustomize => kustomize::ensure(&paths.cache)?,
                GoTool::Sops => gotools::sops(&paths.cache)?,
            };
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether something must still be built with Go: the control plane (unless an existing cluster
/// is used) and the Go tools not given by their `GANTRY_*` variable nor cached.
fn go_needed(
    global: &Global,
    paths: &cluster::Paths,
    versions: &cluster::Versions,
    test_tools: bool,
) -> bool {
    let missing = |var: &str, path: PathBuf| std::env::var_os(var).is_none() && !path.is_file();
    let cache = &paths.cache;
    let control_plane = global.kubeconfig.is_none() && !cluster::is_built(cache, versions);
    let kustomize = missing(
        "GANTRY_KUSTOMIZE",
        kustomize::binary_path(cache, &kustomize::version()),
    );
    let tools = test_tools
        && (missing("GANTRY_FLUX", gotools::flux_path(cache))
            || missing("GANTRY_ACTIONLINT", gotools::actionlint_path(cache))
            || missing("GANTRY_SOPS", gotools::sops_path(cache)));
    control_plane || kustomize || tools
}

fn use_existing(kubeconfig: &Path) -> Result<()> {
    if !cluster::api_ready(kubeconfig) {
        bail!(
            "the cluster in {} is not reachable or not ready (GET /readyz failed)",
            kubeconfig.display()
        );
    }
    println!(
        "Using the existing cluster in {} (nothing built or started).",
        kubeconfig.display()
    );
    Ok(())
}

/// Brings the control plane up if needed, runs `cargo test` for the whole workspace against
/// it, and brings it down again if this run started it, also on Ctrl-C.
fn test(
    global: &Global,
    paths: &cluster::Paths,
    versions: &cluster::Versions,
    args: &TestArgs,
) -> Result<ExitCode> {
    let started = Instant::now();
    let (kubeconfig, ours) = match &global.kubeconfig {
        Some(kubeconfig) => {
            use_existing(kubeconfig)?;
            (kubeconfig.clone(), false)
        }
        None => {
            let was_running = cluster::status_quiet(paths);
            let record = cluster::up(paths, versions, &cluster::UpOptions::default())?;
            (record.kubeconfig, !was_running && !args.keep_cluster)
        }
    };
    // Kustomization builds shell out to kustomize; a pinned one is built from the Go module proxy
    // so a new machine needs no kubectl.
    let kustomize_bin = match std::env::var_os("GANTRY_KUSTOMIZE") {
        Some(path) => PathBuf::from(path),
        None => kustomize::ensure(&paths.cache)?,
    };
    // The real `flux` CLI (its operational commands against an installed Gantry) and actionlint
    // (the workflows), both from the Go module proxy.
    let flux_bin = match std::env::var_os("GANTRY_FLUX") {
        Some(path) => PathBuf::from(path),
        None => gotools::flux(&paths.cache)?,
    };
    let actionlint_bin = match std::env::var_os("GANTRY_ACTIONLINT") {
        Some(path) => PathBuf::from(path),
        None => gotools::actionlint(&paths.cache)?,
    };
    // The real `sops` CLI encrypts the decryption tests' files.
    let sops_bin = match std::env::var_os("GANTRY_SOPS") {
        Some(path) => PathBuf::from(path),
        None => gotools::sops(&paths.cache)?,
    };
    // The image tests install and run the real image; cargo's release target dir is the cache,
    // so an unchanged tree only re-assembles the layers.
    let image_dir = match std::env::var_os("GANTRY_IMAGE_LAYOUT") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = default_image_dir();
            let options = image::Options {
                out: dir.clone(),
                push: None,
                insecure: false,
            };
            image::image(&workspace_root(), &paths.cache, &options)?;
            dir
        }
    };
    eprintln!(
        "Control plane and image ready after {:.0?}; running the test suite.",
        started.elapsed()
    );

    // Ctrl-C reaches `cargo test` too (same process group); we only need to survive it to clean up.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _signals = watch_signals(interrupted.clone());

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tests_started = Instant::now();
    let status = Command::new(cargo)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(&args.cargo_args)
        .env("GANTRY_KUBECONFIG", &kubeconfig)
        .env("GANTRY_KUSTOMIZE", &kustomize_bin)
        .env("GANTRY_FLUX", &flux_bin)
        .env("GANTRY_ACTIONLINT", &actionlint_bin)
        .env("GANTRY_SOPS", &sops_bin)
        .env("GANTRY_IMAGE_LAYOUT", &image_dir)
        // Every `gantry run` a test starts serves its router on a free loopback port and dials
        // loopback only (pods get 127.x addresses from kwok here).
        .env("GANTRY_SERVING_ADDR", "127.0.0.1:0")
        .env("GANTRY_SERVING_LOOPBACK_ONLY", "true")
        .current_dir(workspace_root())
        .status()
        .context("running cargo test");
    eprintln!("Test suite took {:.0?}.", tests_started.elapsed());

    if ours {
        cluster::down(paths)?;
    }
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    let status = status?;
    eprintln!("cargo xtask test finished in {:.0?}.", started.elapsed());
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Replaces the default "terminate" action of SIGINT and SIGTERM with setting `flag`, so the
/// cluster can still be stopped. The returned runtime must live as long as that is wanted.
fn watch_signals(flag: Arc<AtomicBool>) -> Option<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .ok()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let _ = ready_tx.send(());
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            flag.store(true, Ordering::SeqCst);
        }
    });
    let _ = ready_rx.recv();
    Some(runtime)
}

/// `<target dir>/oci/gantry`: where `cargo xtask image` and `cargo xtask test` put the image.
fn default_image_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("oci/gantry")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn paths(global: &Global) -> Result<cluster::Paths> {
    let state = match &global.state_dir {
        Some(dir) => dir.clone(),
        None => workspace_root().join("target/gantry-cluster"),
    };
    let cache = match &global.cache_dir {
        Some(dir) => dir.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(home).join(".cache"));
            base.join("gantry")
        }
    };
    // Absolute paths: they are written into kubeconfigs and used to recognise our processes.
    Ok(cluster::Paths {
        state: std::path::absolute(state)?,
        cache: std::path::absolute(cache)?,
    })
}

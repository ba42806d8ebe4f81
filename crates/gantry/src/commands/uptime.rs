//! `gantry uptime serve --config DIR`: uptime monitoring without Kubernetes, from Monitor,
//! Provider, Alert and Secret manifests in a directory (see `gantry_uptime::standalone`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct UptimeArgs {
    #[command(subcommand)]
    command: UptimeCommand,
}

#[derive(Debug, Subcommand)]
enum UptimeCommand {
    /// Check the Monitors of a directory and send their alerts, without Kubernetes.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of YAML files with Monitors, Providers, Alerts and Secrets.
    #[arg(long, env = "GANTRY_UPTIME_CONFIG")]
    config: PathBuf,
    /// Where heartbeats, `/api/v1/monitors` and `/metrics` are served.
    #[arg(long, env = "GANTRY_UPTIME_LISTEN", default_value = "0.0.0.0:9334")]
    listen: SocketAddr,
    /// Where the history (an SQLite file) is kept; states are recovered from it after a restart.
    #[arg(long, env = "GANTRY_STORAGE_PATH", default_value = "gantry-uptime")]
    storage_path: PathBuf,
    /// `postgres://...` to keep the history in Postgres instead.
    #[arg(long, env = "GANTRY_DATABASE_URL")]
    database_url: Option<String>,
    /// How often the config directory is looked at for changes; SIGHUP reloads it at once.
    /// A reload keeps every Monitor's state; a directory that does not load is reported and the
    /// running configuration goes on.
    #[arg(long, default_value = "5s", value_parser = super::run::parse_duration_arg)]
    reload_interval: std::time::Duration,
    /// Checks running at once at most.
    #[arg(long, default_value_t = gantry_uptime::engine::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Log format.
    #[arg(long, env = "GANTRY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: super::run::LogFormat,
}

pub fn run(args: &UptimeArgs) -> Result<ExitCode> {
    match &args.command {
        UptimeCommand::Serve(serve) => run_serve(serve),
    }
}

fn run_serve(args: &ServeArgs) -> Result<ExitCode> {
    super::run::init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut settings =
            gantry_uptime::standalone::Settings::new(args.config.clone(), args.listen);
        settings.concurrency = args.concurrency;
        settings.reload_interval = args.reload_interval;
        settings.storage = Some(gantry_uptime_store::Location::from_flags(
            &args.storage_path,
            args.database_url.as_deref(),
        )?);
        let (_engine, _addr, running) =
            gantry_uptime::standalone::start(settings, shutdown.clone())
                .await
                .with_context(|| format!("serving the Monitors of {}", args.config.display()))?;
        let signal = shutdown.clone();
        tokio::spawn(async move {
            super::run::wait_for_signal().await;
            tracing::info!("shutting down");
            signal.cancel();
        });
        running.await;
        Ok::<_, anyhow::Error>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

//! The `gantry` binary: command-line parsing and wiring. The logic lives in the library crates.

mod commands;
mod controllers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// GitOps continuous delivery for Kubernetes, speaking Flux's API, in one small binary.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, long_about = None)]
#[command(after_help = commands::PLANNED)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (sources and kustomizations) against a cluster.
    Run(commands::run::RunArgs),
    /// Print the manifests that install Gantry into a cluster.
    Install(commands::install::InstallArgs),
    /// Remove Gantry from a cluster (its workloads stay), as `flux uninstall` does.
    Uninstall(commands::uninstall::UninstallArgs),
    /// Versions, notes and tags from Conventional Commits (replaces semantic-release).
    Release(commands::release::ReleaseArgs),
    /// Conventions for CI scripts, such as the staging image tag.
    Ci(commands::ci::CiArgs),
    /// Scaffolding for a repository, such as CI workflows.
    Init(commands::init::InitArgs),
    /// Render manifests offline, exactly as they would be applied.
    Build(commands::build::BuildArgs),
    /// Show what applying manifests would change in the cluster (exit 1 when anything would).
    Diff(commands::diff::DiffArgs),
    /// Print the URL a Receiver is served on, to paste into GitHub, GitLab or Docker Hub.
    WebhookUrl(commands::webhook_url::WebhookUrlArgs),
    /// List every Flux object with Ready, revision, last change and message (`get all`).
    Get(commands::get::GetArgs),
    /// Show the objects a Kustomization applied and their health.
    Tree(commands::get::TreeArgs),
    /// Test ImagePolicy tag choices and setter markers offline; list a registry's tags.
    Image(commands::image::ImageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Install(args) => commands::install::run(&args),
        Command::Uninstall(args) => commands::uninstall::run(&args),
        Command::Release(args) => commands::release::run(&args),
        Command::Ci(args) => commands::ci::run(&args),
        Command::Init(args) => commands::init::run(&args),
        Command::Build(args) => commands::build::run(&args),
        Command::Diff(args) => commands::diff::run(&args),
        Command::WebhookUrl(args) => commands::webhook_url::run(&args),
        Command::Get(args) => commands::get::run_get(&args),
        Command::Tree(args) => commands::get::run_tree(&args),
        Command::Image(args) => commands::image::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gantry: {err:#}");
            ExitCode::FAILURE
        }
    }
}

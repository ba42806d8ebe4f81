//! The `gantry` binary: command-line parsing and wiring. The logic lives in the library crates.

mod commands;

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
    /// Print the manifests that install Gantry into a cluster.
    Install(commands::install::InstallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Install(args) => commands::install::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gantry: {err:#}");
            ExitCode::FAILURE
        }
    }
}

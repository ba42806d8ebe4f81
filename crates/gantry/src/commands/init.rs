//! `gantry init ...`: scaffolding written once into a repository.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use gantry_release::workflows;

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(subcommand)]
    command: InitCommand,
}

#[derive(Debug, Subcommand)]
enum InitCommand {
    /// Write CI workflows: tests on pull requests, a staging image per merge to main, a
    /// release per push to `release`, a production image per published release.
    Ci(InitCiArgs),
}

#[derive(Debug, Args)]
struct InitCiArgs {
    /// GitHub Actions (the only CI supported so far), written to .github/workflows.
    #[arg(long, required = true)]
    github: bool,
    /// Repository root to write into.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Overwrite existing workflow files of the same names.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        InitCommand::Ci(ci) => {
            for path in workflows::write_github(&ci.repo, ci.force)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

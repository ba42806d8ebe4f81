//! `gantry ci ...`: small, exact conventions CI scripts would otherwise reimplement in shell.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_core::release::image_tag;
use gantry_release::ReleaseRepo;

#[derive(Debug, Args)]
pub struct CiArgs {
    #[command(subcommand)]
    command: CiCommand,
}

#[derive(Debug, Subcommand)]
enum CiCommand {
    /// Print the staging image tag `<sha>-<YYYYMMDDHHMM>` (UTC) for HEAD.
    ///
    /// Matched by an ImagePolicy with pattern `^[a-f0-9]+-(?P<ts>[0-9]{12})$`, extract `$ts`,
    /// numerical ascending order.
    ImageTag(ImageTagArgs),
}

#[derive(Debug, Args)]
struct ImageTagArgs {
    /// Any directory inside the repository.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Build time (RFC 3339, e.g. 2026-11-26T09:30:00Z); default: now.
    #[arg(long, value_name = "RFC3339")]
    time: Option<String>,
    /// Characters of the commit id (default: image_tag.sha_length, 7).
    #[arg(long)]
    sha_length: Option<usize>,
    /// Text before the sha, e.g. `main-` (default: image_tag.prefix, empty).
    #[arg(long)]
    prefix: Option<String>,
}

pub fn run(args: &CiArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        CiCommand::ImageTag(a) => {
            let time = match &a.time {
                Some(text) => text.parse::<jiff::Timestamp>().with_context(|| {
                    format!("--time `{text}` is not an RFC 3339 time with an offset, e.g. 2026-11-26T09:30:00Z")
                })?,
                None => jiff::Timestamp::now(),
            };
            let repo = ReleaseRepo::open(&a.repo)?;
            let config = &repo.config.image_tag;
            let prefix = a.prefix.as_deref().unwrap_or(&config.prefix);
            let sha_length = a.sha_length.unwrap_or(config.sha_length);
            let tag = image_tag(prefix, &repo.head_sha()?, sha_length, time)?;
            println!("{tag}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

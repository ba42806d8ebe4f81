//! `gantry release next|notes|tag`: semantic versions from Conventional Commits, replacing
//! semantic-release in CI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_release::{Plan, ReleaseRepo, TagOutcome};

/// Exit code when no commit since the last release calls for one. Distinct from errors (1)
/// and usage errors (2) so CI can skip the release without masking failures.
pub const NOTHING_TO_RELEASE: u8 = 3;

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Print the next version, from the commits since the last release tag.
    ///
    /// Exit codes: 0 a version was printed; 3 nothing to release; 1 error.
    Next(Target),
    /// Print the next release's notes in Markdown, breaking changes first.
    Notes(NotesArgs),
    /// Create the next release's annotated tag (message: the notes) and print its name.
    ///
    /// Idempotent: when the commit already carries its release tag, that tag is printed
    /// and nothing changes.
    Tag(TagArgs),
}

#[derive(Debug, Args)]
struct Target {
    /// Any directory inside the repository.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Branch to release (its tip, local or `<remote>/<branch>`); default: the checked-out
    /// branch. The branch decides the channel (`beta` releases `X.Y.Z-beta.N`).
    #[arg(long)]
    branch: Option<String>,
}

#[derive(Debug, Args)]
struct NotesArgs {
    #[command(flatten)]
    target: Target,
    /// Date in the heading (default: today, UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    date: Option<jiff::civil::Date>,
}

#[derive(Debug, Args)]
struct TagArgs {
    #[command(flatten)]
    target: Target,
    /// Push the tag to the configured remote with `git push`, using the credentials git
    /// is configured with (as CI checkouts set them up).
    #[arg(long)]
    push: bool,
}

fn plan(target: &Target) -> anyhow::Result<(ReleaseRepo, Plan)> {
    let repo = ReleaseRepo::open(&target.repo)?;
    let plan = repo.plan(target.branch.as_deref())?;
    eprintln!("{}", plan.summary());
    Ok((repo, plan))
}

fn nothing_to_release() -> ExitCode {
    eprintln!("gantry: nothing to release (exit code {NOTHING_TO_RELEASE})");
    ExitCode::from(NOTHING_TO_RELEASE)
}

fn today() -> jiff::civil::Date {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

pub fn run(args: &ReleaseArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ReleaseCommand::Next(target) => {
            let (_, plan) = plan(target)?;
            match plan.next {
                Some(version) => {
                    println!("{version}");
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(nothing_to_release()),
            }
        }
        ReleaseCommand::Notes(notes) => {
            let (_, plan) = plan(&notes.target)?;
            let date = notes.date.unwrap_or_else(today).to_string();
            match plan.notes(Some(&date)) {
                Some(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(nothing_to_release()),
            }
        }
        ReleaseCommand::Tag(tag) => {
            let (repo, plan) = plan(&tag.target)?;
            let notes = plan.notes(Some(&today().to_string())).unwrap_or_default();
            let Some(outcome) = repo.tag(&plan, &notes)? else {
                return Ok(nothing_to_release());
            };
            match &outcome {
                TagOutcome::Created(name) => {
                    eprintln!("created annotated tag {name} on {}", plan.target)
                }
                TagOutcome::AlreadyTagged(name) => {
                    eprintln!("{name} already tags {}; nothing changed", plan.target)
                }
            }
            if tag.push {
                repo.push_tag(outcome.name())
                    .with_context(|| format!("pushing {}", outcome.name()))?;
                eprintln!("pushed {} to {}", outcome.name(), repo.config.remote);
            }
            println!("{}", outcome.name());
            Ok(ExitCode::SUCCESS)
        }
    }
}

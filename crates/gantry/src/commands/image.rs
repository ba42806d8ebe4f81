//! `gantry image policy|update`: ImagePolicy's tag choice and ImageUpdateAutomation's setter
//! markers, offline, with exactly the code the controllers run (`gantry_core::image`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use gantry_core::image::policy::{self, Order, Policy, PolicyError, TagFilter};
use gantry_core::image::setters::{self, ImageRef, Policies};

/// Exit code for a policy that cannot work whatever the tags (invalid range or regex), the
/// same as clap's usage errors.
pub const INVALID_POLICY: u8 = 2;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Choose a tag the way an ImagePolicy does, from tags given one per line on stdin.
    ///
    /// Prints the chosen tag (the original one, also with --extract). Exit codes: 0 a tag was
    /// printed; 1 no tag matches (or a numerical policy met a tag that is not a number);
    /// 2 an invalid range, regex or usage.
    Policy(PolicyArgs),
    /// Apply `# {"$imagepolicy": "NS:NAME"}` setter markers under a directory, in place.
    ///
    /// Reads `*.yaml`, `*.yml` and `Kustomization` files containing "$imagepolicy", as the
    /// automation does, and rewrites only the marked scalars (everything else stays
    /// byte-identical). Prints each change as `FILE:LINE: OLD -> NEW (SETTER)`. Markers naming a
    /// policy that is not given with --set are left alone and reported on stderr. A file that is
    /// not valid YAML, or has a marker on something other than a single-line scalar, is reported
    /// and left untouched while the other files are still updated; the exit code is then 1.
    /// Exit codes: 0 done (also when nothing changed); 1 some file failed; 2 usage (a bad --set).
    Update(UpdateArgs),
    /// List a registry's tags as an ImageRepository sees them, one per line.
    ///
    /// Follows pagination to the end, authenticates like the controller (Basic or bearer
    /// token, credentials from --docker-config) and drops tags matching the exclusion list
    /// (by default `^.*\.sig$`). Exit codes: 0 listed; 1 the registry could not be listed.
    Tags(super::image_tags::TagsArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "lower")]
enum OrderArg {
    Asc,
    Desc,
}

impl From<OrderArg> for Order {
    fn from(o: OrderArg) -> Order {
        match o {
            OrderArg::Asc => Order::Asc,
            OrderArg::Desc => Order::Desc,
        }
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("choice").required(true).args(["semver", "alphabetical", "numerical"])))]
pub struct PolicyArgs {
    /// A semver range in Flux's (Masterminds) syntax, e.g. '>=1.0.0 <2.0.0', '^1.2', '1.x || ~2.3'.
    #[arg(long, value_name = "RANGE", allow_hyphen_values = true)]
    semver: Option<String>,
    /// Byte-wise order: asc picks the greatest tag, desc the least.
    #[arg(long, value_name = "ORDER", ignore_case = true)]
    alphabetical: Option<OrderArg>,
    /// Every candidate must be a number: asc picks the greatest, desc the least.
    #[arg(long, value_name = "ORDER", ignore_case = true)]
    numerical: Option<OrderArg>,
    /// filterTags.pattern: only tags this regular expression matches are considered.
    #[arg(long, value_name = "REGEX", allow_hyphen_values = true)]
    pattern: Option<String>,
    /// filterTags.extract: order by this expansion of the match ($1, $name, ${name}).
    #[arg(
        long,
        value_name = "TEMPLATE",
        requires = "pattern",
        allow_hyphen_values = true
    )]
    extract: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The directory (or one file) to update, like ImageUpdateAutomation's update.path.
    #[arg(long, value_name = "DIR")]
    path: PathBuf,
    /// A policy's latest image: NAMESPACE:POLICY=IMAGE:TAG[@DIGEST]. Repeatable.
    #[arg(long = "set", value_name = "NS:POLICY=IMAGE:TAG[@DIGEST]", value_parser = parse_set, required = true)]
    set: Vec<(String, ImageRef)>,
    /// Print a unified diff of what would change instead of writing files.
    #[arg(long)]
    dry_run: bool,
}

fn parse_set(s: &str) -> Result<(String, ImageRef), String> {
    let (policy, image) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected NAMESPACE:POLICY=IMAGE:TAG[@DIGEST]"))?;
    let valid = |p: &str| !p.is_empty() && !p.contains(char::is_whitespace);
    match policy.split_once(':') {
        Some((ns, name)) if valid(ns) && valid(name) && !name.contains(':') => {}
        _ => return Err(format!("'{policy}': expected NAMESPACE:POLICY before '='")),
    }
    Ok((policy.to_owned(), ImageRef::parse(image)?))
}

pub fn run(args: &ImageArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ImageCommand::Policy(a) => run_policy(a),
        ImageCommand::Update(a) => run_update(a),
        ImageCommand::Tags(a) => super::image_tags::run(a),
    }
}

fn run_policy(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let invalid = |e: PolicyError| {
        eprintln!("gantry: {e}");
        Ok(ExitCode::from(INVALID_POLICY))
    };
    let chosen = match (&args.semver, args.alphabetical, args.numerical) {
        (Some(range), _, _) => Policy::semver(range),
        (_, Some(order), _) => Ok(Policy::Alphabetical(order.into())),
        (_, _, Some(order)) => Ok(Policy::Numerical(order.into())),
        _ => unreachable!("clap requires one of the policies"),
    };
    let policy = match chosen {
        Ok(p) => p,
        Err(e) => return invalid(e),
    };
    let filter = match &args.pattern {
        Some(p) => match TagFilter::new(p, args.extract.as_deref().unwrap_or("")) {
            Ok(f) => Some(f),
            Err(e) => return invalid(e),
        },
        None => None,
    };
    // Streams stdin: one line at a time, only the winner kept.
    let mut read_error = None;
    let tags = std::io::stdin()
        .lock()
        .split(b'\n')
        .map_while(|line| match line {
            Ok(l) => Some(l),
            Err(e) => {
                read_error = Some(e);
                None
            }
        })
        .map(|l| String::from_utf8_lossy(&l).trim().to_owned())
        .filter(|t| !t.is_empty());
    let result = policy::choose(&policy, filter.as_ref(), tags);
    if let Some(e) = read_error {
        return Err(e).context("reading tags from stdin");
    }
    match result {
        Ok(tag) => {
            println!("{tag}");
            Ok(ExitCode::SUCCESS)
        }
        Err(PolicyError::NoMatch) => {
            eprintln!("gantry: no tag matches the policy (tags are read one per line on stdin)");
            Ok(ExitCode::FAILURE)
        }
        Err(e) if e.is_invalid_spec() => invalid(e),
        Err(e) => {
            eprintln!("gantry: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_update(args: &UpdateArgs) -> anyhow::Result<ExitCode> {
    let mut policies = Policies::new();
    for (name, image) in &args.set {
        if let Some(previous) = policies.insert(name.clone(), image.clone())
            && previous != *image
        {
            eprintln!("gantry: --set {name} given twice with different images");
            return Ok(ExitCode::from(INVALID_POLICY));
        }
    }
    let reports = setters::update_path(&args.path, &policies, !args.dry_run)
        .with_context(|| format!("reading {}", args.path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    let mut changed = 0;
    for report in &reports {
        match &report.outcome {
            Ok(u) => {
                for s in &u.skipped {
                    eprintln!("gantry: warning: {s}");
                }
                if !u.changed() {
                    continue;
                }
                changed += 1;
                if args.dry_run {
                    let before = String::from_utf8_lossy(&report.original);
                    let after = String::from_utf8_lossy(&u.content);
                    let diff = similar::TextDiff::from_lines(before.as_ref(), after.as_ref());
                    let a = format!("a/{}", report.file);
                    let b = format!("b/{}", report.file);
                    write!(
                        out,
                        "{}",
                        diff.unified_diff().context_radius(3).header(&a, &b)
                    )?;
                } else {
                    for c in &u.changes {
                        writeln!(
                            out,
                            "{}:{}: {} -> {} ({})",
                            c.file, c.line, c.old, c.new, c.setter
                        )?;
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("gantry: error: {e} (file left unchanged)");
            }
        }
    }
    out.flush()?;
    if changed == 0 && failed == 0 {
        eprintln!("gantry: no marker needed a change");
    }
    if failed > 0 {
        eprintln!("gantry: {failed} file(s) could not be updated");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

//! `gantry push artifact oci://REGISTRY/REPO:TAG --path DIR --source URL --revision REV`: the
//! artifact `flux push artifact` writes (same manifest, media types and annotations; see
//! `gantry_source::oci::layout`), so an OCIRepository of Gantry or Flux consumes either's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gantry_source::oci::{self, layout};
use gantry_source::registry::{ClientConfig, Credentials, Reference, RegistryClient};
use gantry_source::sourceignore::{SourceIgnore, read_patterns};

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(subcommand)]
    command: PushCommand,
}

#[derive(Debug, Subcommand)]
enum PushCommand {
    /// Push a directory as an OCI artifact, as `flux push artifact` does.
    Artifact(ArtifactArgs),
}

#[derive(Debug, Args)]
pub struct ArtifactArgs {
    /// Where to push: `oci://<registry>/<repository>:<tag>`.
    url: String,
    /// The directory to package.
    #[arg(long)]
    path: PathBuf,
    /// Where the content comes from, e.g. the git URL (`org.opencontainers.image.source`).
    #[arg(long)]
    source: String,
    /// The source revision, e.g. `main@sha1:<hex>` (`org.opencontainers.image.revision`).
    #[arg(long)]
    revision: String,
    /// Extra manifest annotations `key=value` (repeatable).
    #[arg(long = "annotations", short = 'a', value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Paths to leave out, in .gitignore syntax (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    ignore_paths: Vec<String>,
    /// Registry credentials `username:password`.
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
    /// A docker config file with credentials for the registry.
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    insecure_registry: bool,
    /// Time limit of each registry request (Go duration).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    timeout: String,
}

pub fn run(args: &PushArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        PushCommand::Artifact(args) => push_artifact(args),
    }
}

fn push_artifact(args: &ArtifactArgs) -> anyhow::Result<ExitCode> {
    let Some(rest) = args.url.strip_prefix("oci://") else {
        bail!("URL must be in format 'oci://<domain>/<org>/<repo>:<tag>'");
    };
    let (reference, tag, digest) = Reference::parse_with_tag(rest)?;
    if digest.is_some() {
        bail!("URL must name a tag, not a digest");
    }
    let Some(tag) = tag else {
        bail!("URL must name a tag: 'oci://<domain>/<org>/<repo>:<tag>'");
    };
    if !args.path.is_dir() {
        bail!("invalid path '{}': not a directory", args.path.display());
    }
    let timeout = gantry_api::meta::parse_duration(&args.timeout)
        .with_context(|| format!("invalid --timeout '{}'", args.timeout))?;
    let mut annotations = BTreeMap::new();
    for pair in &args.annotations {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("invalid annotation '{pair}', expected key=value"))?;
        annotations.insert(k.to_owned(), v.to_owned());
    }
    let credentials = credentials(args, &reference)?;
    let ignore = SourceIgnore::vcs_and(&read_patterns(&args.ignore_paths.join("\n"), ""))?;
    let meta = layout::PushMetadata {
        source: args.source.clone(),
        revision: args.revision.clone(),
        created: None,
        annotations,
    };
    let client = RegistryClient::new(
        &reference,
        ClientConfig {
            insecure: args.insecure_registry,
            credentials,
            request_timeout: timeout.max(Duration::from_secs(1)),
            ..ClientConfig::default()
        },
    )?;
    eprintln!("► pushing artifact to {}:{tag}", reference.canonical_name());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let pushed = runtime
        .block_on(layout::push(&client, &tag, &args.path, &ignore, &meta))
        .context("pushing artifact failed")?;
    eprintln!("✔ artifact successfully pushed to {}", pushed.reference);
    println!("{}", pushed.reference);
    // The revision an OCIRepository following this tag reports.
    eprintln!(
        "  revision: {tag}@{}",
        oci::digest_of_revision(&pushed.digest)
    );
    Ok(ExitCode::SUCCESS)
}

fn credentials(args: &ArtifactArgs, reference: &Reference) -> anyhow::Result<Option<Credentials>> {
    if let Some(creds) = &args.creds {
        let (username, password) = creds
            .split_once(':')
            .context("--creds must be 'username:password'")?;
        return Ok(Some(Credentials {
            username: username.into(),
            password: password.into(),
        }));
    }
    match &args.docker_config {
        Some(path) => {
            let json = std::fs::read(path)
                .with_context(|| format!("reading the docker config {}", path.display()))?;
            Ok(Credentials::from_docker_config(&json, &reference.registry)?)
        }
        None => Ok(None),
    }
}

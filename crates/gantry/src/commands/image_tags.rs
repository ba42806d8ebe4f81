//! `gantry image tags IMAGE`: a registry's tags as an ImageRepository sees them, with exactly
//! the client and exclusion list the controller uses (`gantry_image`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gantry_api::image::v1::DEFAULT_EXCLUSION;
use gantry_image::controller::repository::compile_exclusions;
use gantry_image::registry::{ClientConfig, Credentials, Reference, RegistryClient};

#[derive(Debug, Args)]
pub struct TagsArgs {
    /// The image repository without tag: `alpine`, `ghcr.io/org/app`, `127.0.0.1:5000/app`.
    image: String,
    /// Talk plain HTTP to the registry (`spec.insecure`).
    #[arg(long)]
    insecure: bool,
    /// A docker config file (`~/.docker/config.json` or a Secret's `.dockerconfigjson`) with
    /// credentials for the registry; anonymous without it.
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// A PEM CA certificate to trust for the registry (`certSecretRef`'s `ca.crt`).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Exclude tags matching this regular expression (`spec.exclusionList`, repeatable). Given
    /// at least once, it replaces the default, which excludes `^.*\.sig$`.
    #[arg(long = "exclude", value_name = "REGEX", allow_hyphen_values = true)]
    exclusion_list: Vec<String>,
    /// Time limit of the whole listing (Go duration).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    timeout: String,
}

pub fn run(args: &TagsArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.image)?;
    let timeout: Duration = args
        .timeout
        .parse::<kube::core::Duration>()
        .map(Duration::from)
        .with_context(|| format!("invalid --timeout '{}'", args.timeout))?;
    let patterns = if args.exclusion_list.is_empty() {
        vec![DEFAULT_EXCLUSION.to_owned()]
    } else {
        args.exclusion_list.clone()
    };
    let exclusions = compile_exclusions(&patterns)?;
    let credentials = match &args.docker_config {
        Some(path) => {
            let json = std::fs::read(path)
                .with_context(|| format!("reading the docker config {}", path.display()))?;
            let creds = Credentials::from_docker_config(&json, &reference.registry)
                .with_context(|| format!("reading the docker config {}", path.display()))?;
            if creds.is_none() {
                eprintln!(
                    "gantry: {} has no credentials for {}; listing anonymously",
                    path.display(),
                    reference.registry
                );
            }
            creds
        }
        None => None,
    };
    let ca_pem = match &args.ca_file {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("reading the CA {}", path.display()))?,
        ),
        None => None,
    };
    let client = RegistryClient::new(
        &reference,
        ClientConfig {
            insecure: args.insecure,
            ca_pem,
            credentials,
            request_timeout: timeout,
            ..ClientConfig::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Pages are printed as they arrive: memory stays one page whatever the repository's size.
    let listing = client.list_tags(|page| {
        for tag in page {
            if !exclusions.iter().any(|r| r.is_match(&tag)) {
                writeln!(out, "{tag}")?;
            }
        }
        Ok(())
    });
    runtime
        .block_on(async { tokio::time::timeout(timeout, listing).await })
        .map_err(|_| anyhow::anyhow!("listing {reference} took longer than {timeout:?}"))?
        .with_context(|| format!("listing the tags of {reference}"))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

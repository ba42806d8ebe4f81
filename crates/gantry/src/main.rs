//! The `gantry` binary: command-line parsing and wiring. The logic lives in the library crates.

mod artifact_server;
mod commands;
mod controllers;
mod flux_log;

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
    Run(Box<commands::run::RunArgs>),
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
    /// Uptime monitoring without Kubernetes (`gantry uptime serve --config DIR`).
    Uptime(commands::uptime::UptimeArgs),
    /// Push a directory to a registry as an OCI artifact (`push artifact`, as `flux push`).
    Push(commands::push::PushArgs),
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
        Command::Uptime(args) => commands::uptime::run(&args),
        Command::Push(args) => commands::push::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gantry: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// One line for a chain of errors. Errors that embed their source's text (kube's do, with the
/// API server's whole `Status` in debug form) would otherwise repeat it once per level; an API
/// refusal reads as the server's own message.
fn describe(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut causes = err.chain().peekable();
    while let Some(cause) = causes.next() {
        let mut text = match cause.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => status.message.clone(),
            _ => cause.to_string(),
        };
        if matches!(
            cause.downcast_ref::<kube::Error>(),
            Some(kube::Error::Api(_))
        ) {
            parts.push(text);
            break;
        }
        if let Some(source) = causes.peek().map(|s| s.to_string())
            && let Some(own) = text.strip_suffix(&source)
        {
            text = own.trim_end_matches([':', ' ']).to_string();
        }
        if !text.is_empty() {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source inside its own message, as kube-lease-manager's does.
    #[derive(Debug)]
    struct Wrapper(kube::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Kube error: {}", self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_api_refusal_reads_as_one_line_without_debug_dumps() {
        let status =
            kube::core::Status::failure("namespaces \"x\" not found", "NotFound").with_code(404);
        let err = anyhow::Error::new(Wrapper(kube::Error::Api(Box::new(status))))
            .context("setting up leader election");
        let text = describe(&err);
        assert_eq!(
            text,
            "setting up leader election: Kube error: namespaces \"x\" not found"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }
}

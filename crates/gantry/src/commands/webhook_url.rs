//! `gantry webhook-url RECEIVER -n NS`: the full URL to paste into GitHub, GitLab or Docker Hub.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use gantry_api::meta::READY_CONDITION;
use gantry_api::notification::v1::Receiver;
use gantry_api::notification::{WEBHOOK_BASE_URL_ANNOTATION, WEBHOOK_SERVICE};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::Api;

/// Where `gantry run` listens by default (Flux's port), reached from the same machine.
const DEFAULT_BASE_URL: &str = "http://localhost:9292";
/// Where Gantry's Service is looked for: `gantry install`'s namespace, then Flux's layout.
const GANTRY_NAMESPACES: &[&str] = &["gantry-system", "flux-system"];

#[derive(Debug, Args)]
pub struct WebhookUrlArgs {
    /// Name of the Receiver.
    pub receiver: String,
    /// Namespace of the Receiver.
    #[arg(short, long, default_value = "flux-system")]
    pub namespace: String,
    /// How the receiver server is reached from the sender (scheme, host and port). Default:
    /// the `gantry.dev/webhook-base-url` annotation of the `webhook-receiver` Service in
    /// `--gantry-namespace` (the sandbox sets it to where its `gantry run` listens), else
    /// http://localhost:9292.
    #[arg(long, env = "GANTRY_WEBHOOK_BASE_URL")]
    pub base_url: Option<String>,
    /// Namespace of Gantry's `webhook-receiver` Service (default: gantry-system, then
    /// flux-system).
    #[arg(long)]
    pub gantry_namespace: Option<String>,
}

pub fn run(args: &WebhookUrlArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = runtime.block_on(url(args))?;
    println!("{url}");
    Ok(ExitCode::SUCCESS)
}

async fn url(args: &WebhookUrlArgs) -> Result<String> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")?;
    let api: Api<Receiver> = Api::namespaced(client.clone(), &args.namespace);
    let receiver = api
        .get_opt(&args.receiver)
        .await
        .with_context(|| format!("reading Receiver {}/{}", args.namespace, args.receiver))?;
    let Some(receiver) = receiver else {
        bail!("Receiver {}/{} not found", args.namespace, args.receiver);
    };
    let status = receiver.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY_CONDITION);
    match (ready, status.webhook_path) {
        (Some(c), Some(path)) if c.status == "True" => {
            let base = base_url(&client, args).await?;
            Ok(format!("{}{path}", base.trim_end_matches('/')))
        }
        (Some(c), _) => bail!(
            "Receiver {}/{} is not ready ({}): {}",
            args.namespace,
            args.receiver,
            c.reason,
            c.message
        ),
        (None, _) => bail!(
            "Receiver {}/{} is not ready yet (no Ready condition: is `gantry run` running?)",
            args.namespace,
            args.receiver
        ),
    }
}

/// `--base-url`, else the address recorded on Gantry's Service, else the default.
async fn base_url(client: &kube::Client, args: &WebhookUrlArgs) -> Result<String> {
    if let Some(base) = &args.base_url {
        return Ok(base.clone());
    }
    let namespaces: Vec<&str> = match &args.gantry_namespace {
        Some(ns) => vec![ns.as_str()],
        None => GANTRY_NAMESPACES.to_vec(),
    };
    for ns in namespaces {
        let service = Api::<Service>::namespaced(client.clone(), ns)
            .get_opt(WEBHOOK_SERVICE)
            .await
            .with_context(|| format!("reading Service {ns}/{WEBHOOK_SERVICE}"))?;
        if let Some(base) = service
            .as_ref()
            .and_then(|s| s.annotations().get(WEBHOOK_BASE_URL_ANNOTATION))
        {
            return Ok(base.clone());
        }
    }
    Ok(DEFAULT_BASE_URL.to_string())
}

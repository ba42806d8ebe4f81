//! `gantry webhook-url RECEIVER -n NS`: the full URL to paste into GitHub, GitLab or Docker Hub.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use gantry_api::meta::READY_CONDITION;
use gantry_api::notification::v1::Receiver;
use kube::api::Api;

#[derive(Debug, Args)]
pub struct WebhookUrlArgs {
    /// Name of the Receiver.
    pub receiver: String,
    /// Namespace of the Receiver.
    #[arg(short, long, default_value = "flux-system")]
    pub namespace: String,
    /// How the receiver server is reached from the sender (scheme, host and port).
    #[arg(
        long,
        env = "GANTRY_WEBHOOK_BASE_URL",
        default_value = "http://localhost:9292"
    )]
    pub base_url: String,
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
    let api: Api<Receiver> = Api::namespaced(client, &args.namespace);
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
            Ok(format!("{}{path}", args.base_url.trim_end_matches('/')))
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

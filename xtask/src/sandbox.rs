//! `cargo xtask sandbox`: the local control plane with Gantry's API installed by the `gantry`
//! binary itself (`gantry install --crds`) and `gantry run` reconciling in the background, ready
//! for `kubectl` and the `flux` CLI.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

/// Builds and runs `gantry install --crds`, server-side-applies what it prints to the cluster
/// in `kubeconfig`, and waits until every CRD is Established. Returns the CRD names.
pub fn install_crds(workspace: &Path, kubeconfig: &Path) -> Result<Vec<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--package",
            "gantry",
            "--",
            "install",
            "--crds",
        ])
        .current_dir(workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("running gantry install --crds")?;
    if !out.status.success() {
        bail!("gantry install --crds failed ({})", out.status);
    }
    let text = String::from_utf8(out.stdout).context("gantry install printed non-UTF-8")?;
    let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
        .context("gantry install --crds printed something that is not a list of CRDs")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = crate::cluster::client(kubeconfig).await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let mut names = Vec::new();
        for crd in &crds {
            let name = crd.name_any();
            api.patch(
                &name,
                &PatchParams::apply("gantry").force(),
                &Patch::Apply(crd),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
        for name in &names {
            wait_established(&api, name).await?;
        }
        Ok(names)
    })
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api.get(name).await?;
        let established = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("CRD {name} was not Established within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `gantry` binary `cargo run` built for [`install_crds`].
pub fn gantry_binary(workspace: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("debug/gantry")
}

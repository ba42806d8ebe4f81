//! `gantry build kustomization`: render a Kustomization offline, exactly as the controller would
//! apply it (the same build, transforms, substitution and owner labels), like
//! `flux build kustomization`.
//!
//! Directories with a kustomization file are built from a scratch copy of their checkout whose
//! kustomization takes the spec's fields, as the controller and Flux do; the user's files are
//! never written to. No cluster is contacted. `postBuild.substituteFrom` reads ConfigMaps and Secrets from the
//! cluster, so it is skipped with a warning on standard error; its variables can be given with
//! `--var KEY=VALUE` instead. Substitution is strict: a variable that is unset and has no default
//! fails the build, naming it (and when `substituteFrom` was skipped, substitution runs even
//! without any variable, so such a variable is reported rather than printed as `${var}`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use gantry_api::kustomize::v1::{
    Kustomization, KustomizationSpec, SubstituteKind, SubstituteStrategy,
};
use gantry_kustomize::build::{self, Kustomize};
use serde_json::Value;

/// Namespace of the Kustomization when neither `--namespace` nor the file says (Flux's default).
pub const DEFAULT_NAMESPACE: &str = "flux-system";

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(subcommand)]
    pub what: BuildWhat,
}

#[derive(Debug, Subcommand)]
pub enum BuildWhat {
    /// Print the manifests a Kustomization would apply, as one YAML stream.
    Kustomization(KustomizationArgs),
}

#[derive(Debug, Args)]
pub struct KustomizationArgs {
    #[command(flatten)]
    pub input: BuildInput,

    /// Accepted for compatibility with `flux build kustomization`: this command never contacts a
    /// cluster anyway.
    #[arg(long)]
    pub dry_run: bool,
}

/// What to build: shared by `gantry build kustomization` and `gantry diff kustomization`.
#[derive(Debug, Args)]
pub struct BuildInput {
    /// Name of the Kustomization (goes into the `kustomize.toolkit.fluxcd.io/name` label).
    pub name: String,

    /// Local directory to build: the checkout of the Kustomization's `spec.path`.
    #[arg(long)]
    pub path: PathBuf,

    /// Namespace of the Kustomization [default: the file's, else flux-system].
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,

    /// A Flux Kustomization (YAML) whose spec to use: targetNamespace, patches, images,
    /// postBuild and so on. Without it the spec is empty (`gantry diff`: the cluster's, if any).
    #[arg(long)]
    pub kustomization_file: Option<PathBuf>,

    /// A substitution variable, as `substituteFrom` would supply it (repeatable). The file's
    /// `postBuild.substitute` wins over these, as in Flux.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,

    /// kustomize or kubectl binary for directories with a kustomization file
    /// [default: $GANTRY_KUSTOMIZE, then kustomize, then kubectl on PATH].
    #[arg(long)]
    pub kustomize: Option<PathBuf>,
}

pub fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    match &args.what {
        BuildWhat::Kustomization(args) => {
            print!("{}", render(args)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The YAML stream `gantry build kustomization` prints.
pub fn render(args: &KustomizationArgs) -> anyhow::Result<String> {
    let args = &args.input;
    let (spec, namespace) = file_spec(args)?;
    let objects = build_objects(args, spec.unwrap_or_default(), &namespace, None)?;
    to_yaml_stream(&objects)
}

/// The spec of `--kustomization-file` (if given) and the Kustomization's namespace:
/// `--namespace`, else the file's, else [`DEFAULT_NAMESPACE`].
pub fn file_spec(args: &BuildInput) -> anyhow::Result<(Option<KustomizationSpec>, String)> {
    let (spec, file_namespace) = match &args.kustomization_file {
        Some(file) => {
            let (spec, namespace) = read_kustomization(file, &args.name)?;
            (Some(spec), namespace)
        }
        None => (None, None),
    };
    let namespace = args
        .namespace
        .clone()
        .or(file_namespace)
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    Ok((spec, namespace))
}

/// The objects `spec` builds from `--path`, with the owner labels. `substitute_from` holds the
/// variables of `postBuild.substituteFrom` when a cluster was read for them; `None` skips those
/// sources with a warning. `--var` values go over them.
pub fn build_objects(
    args: &BuildInput,
    mut spec: KustomizationSpec,
    namespace: &str,
    substitute_from: Option<BTreeMap<String, String>>,
) -> anyhow::Result<Vec<Value>> {
    let from_cluster = substitute_from.is_some();
    if let Some(post_build) = &mut spec.post_build
        && !post_build.substitute_from.is_empty()
        && !from_cluster
    {
        // In the cluster these sources would define variables, so substitution would run: run it
        // here too, so that a variable nobody supplied is reported instead of left as `${var}`.
        post_build.substitute_strategy = Some(SubstituteStrategy::Always);
        let skipped: Vec<String> = post_build
            .substitute_from
            .iter()
            .map(|s| {
                let kind = match s.kind {
                    SubstituteKind::ConfigMap => "ConfigMap",
                    SubstituteKind::Secret => "Secret",
                };
                format!("{kind}/{}", s.name)
            })
            .collect();
        eprintln!(
            "gantry: warning: postBuild.substituteFrom needs a cluster and was skipped ({}); \
             pass its variables with --var KEY=VALUE",
            skipped.join(", ")
        );
    }
    let mut vars = substitute_from.unwrap_or_default();
    for var in &args.vars {
        let Some((key, value)) = var.split_once('=') else {
            bail!("--var {var:?}: expected KEY=VALUE");
        };
        vars.insert(key.to_string(), value.to_string());
    }

    let mut kustomize = Kustomize {
        binary: args.kustomize.clone(),
        // As in Flux (`../patches/x.yaml` works). Safe here: the user builds their own checkout
        // on their own machine, and the output only goes to their terminal.
        load_files_outside: true,
        ..Kustomize::default()
    };
    // Like the controller, build kustomizations on a private copy whose kustomization file takes
    // the spec's fields (Flux's way); the user's files are never written to.
    let needs_copy = build::kustomization_file(&args.path).is_some() || !spec.components.is_empty();
    let mut objects = if needs_copy && args.path.is_dir() {
        let root = repository_root(&args.path)?;
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let copy = scratch.path().join("src");
        copy_tree(&root, &copy)?;
        let relative = args.path.canonicalize()?;
        let dir = copy.join(relative.strip_prefix(&root).unwrap_or(Path::new("")));
        kustomize.edit_in_place = true;
        build::build(&dir, &spec, &vars, &kustomize, true).map_err(|err| {
            // Name the user's files, not the copies.
            let message = err
                .to_string()
                .replace(&copy.display().to_string(), &root.display().to_string());
            anyhow::anyhow!(message)
        })?
    } else {
        build::build(&args.path, &spec, &vars, &kustomize, true)?
    };
    build::set_owner_labels(&mut objects, &args.name, namespace);
    Ok(objects)
}

/// The checkout `path` belongs to (the nearest ancestor with `.git`), else `path` itself: what a
/// kustomization may reference with `../`, like the artifact root in the cluster.
fn repository_root(path: &Path) -> anyhow::Result<PathBuf> {
    let path = path
        .canonicalize()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(path
        .ancestors()
        .find(|dir| dir.join(".git").exists())
        .unwrap_or(&path)
        .to_path_buf())
}

/// Copies the files of `from` to `to` (`.git` left out; symlinked directories not followed).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != ".git" {
                copy_tree(&source, &target)?;
            }
        } else if source.is_file() {
            std::fs::copy(&source, &target)
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

/// Reads the Kustomization named `name` from a YAML file (which may hold other documents too).
fn read_kustomization(
    file: &Path,
    name: &str,
) -> anyhow::Result<(KustomizationSpec, Option<String>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let documents = build::parse_stream(&text, file)?;
    let mut kinds = Vec::new();
    for (doc, _) in documents {
        let is_kustomization = doc.get("kind").and_then(Value::as_str) == Some("Kustomization")
            && doc
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("kustomize.toolkit.fluxcd.io/"));
        if !is_kustomization {
            kinds.push(format!(
                "{}/{}",
                doc["kind"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            ));
            continue;
        }
        if doc["metadata"]["name"].as_str() != Some(name) {
            kinds.push(format!(
                "Kustomization/{}",
                doc["metadata"]["name"].as_str().unwrap_or("?")
            ));
            continue;
        }
        let ks: Kustomization = serde_json::from_value(doc)
            .with_context(|| format!("{}: Kustomization {name}: invalid spec", file.display()))?;
        return Ok((ks.spec, ks.metadata.namespace));
    }
    bail!(
        "{}: no Kustomization named {name:?} (found: {})",
        file.display(),
        if kinds.is_empty() {
            "nothing".to_string()
        } else {
            kinds.join(", ")
        }
    )
}

fn to_yaml_stream(objects: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(object).context("rendering YAML")?);
    }
    Ok(out)
}

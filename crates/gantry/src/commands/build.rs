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
//!
//! As `flux build kustomization` does, SOPS-encrypted Secrets are printed masked (every value
//! `**SOPS**`, no `sops` key: [`gantry_core::kustomize::sops::mask_secret`]), `--ignore-paths`
//! leaves files out of a directory without a kustomization file, and `--recursive` builds the
//! Flux Kustomizations the build contains from `--local-sources KIND/NAMESPACE/NAME=DIR`,
//! appending their objects after the parent's. `--dry-run` needs `--kustomization-file`, as in
//! Flux.

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

    /// Build from `--kustomization-file` without a cluster (required with it, as in Flux; this
    /// command never contacts a cluster anyway).
    #[arg(long)]
    pub dry_run: bool,

    /// Build the Flux Kustomizations found in the output too, from `--local-sources`.
    #[arg(long, short = 'r')]
    pub recursive: bool,

    /// Where a nested Kustomization's source is checked out: `KIND/NAMESPACE/NAME=DIR`
    /// (comma-separated or repeated), e.g. `GitRepository/flux-system/flux-system=./`.
    #[arg(long, value_delimiter = ',', value_name = "KIND/NAMESPACE/NAME=DIR")]
    pub local_sources: Vec<String>,
}

/// What to build: shared by `gantry build kustomization` and `gantry diff kustomization`.
#[derive(Debug, Clone, Args)]
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

    /// Paths to leave out, in .gitignore format (comma-separated or repeated); as in Flux they
    /// apply to a directory without a kustomization file.
    #[arg(long, value_delimiter = ',', value_name = "PATTERN")]
    pub ignore_paths: Vec<String>,
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
    if args.dry_run && args.input.kustomization_file.is_none() {
        bail!("dry-run mode requires a kustomization file");
    }
    let sources = local_sources(&args.local_sources)?;
    let input = &args.input;
    let (spec, namespace) = file_spec(input)?;
    let spec = spec.unwrap_or_default();
    let mut objects = build_objects(input, spec.clone(), &namespace, None)?;
    if args.recursive {
        let mut seen = vec![(input.name.clone(), namespace.clone())];
        let nested = build_nested(input, &objects, &sources, &namespace, &mut seen)?;
        objects.extend(nested);
    }
    for object in &mut objects {
        gantry_core::kustomize::sops::mask_secret(object);
    }
    to_yaml_stream(&objects)
}

/// `--local-sources` as `KIND/NAMESPACE/NAME` → directory.
fn local_sources(args: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    args.iter()
        .filter(|a| !a.is_empty())
        .map(|arg| match arg.split_once('=') {
            Some((key, dir)) if !key.is_empty() && !dir.is_empty() => {
                Ok((key.to_string(), PathBuf::from(dir)))
            }
            _ => bail!("--local-sources {arg:?}: expected KIND/NAMESPACE/NAME=DIR"),
        })
        .collect()
}

/// The objects of the Flux Kustomizations among `objects` (`--recursive`), each built from its
/// source's local directory joined with its `spec.path`, depth first, as `flux build` does.
fn build_nested(
    input: &BuildInput,
    objects: &[Value],
    sources: &BTreeMap<String, PathBuf>,
    parent_namespace: &str,
    seen: &mut Vec<(String, String)>,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for object in objects {
        let is_kustomization = object.get("kind").and_then(Value::as_str) == Some("Kustomization")
            && object
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("kustomize.toolkit.fluxcd.io/"));
        if !is_kustomization {
            continue;
        }
        let ks: Kustomization = serde_json::from_value(object.clone())
            .context("a Kustomization in the build has an invalid spec")?;
        let name = ks.metadata.name.clone().unwrap_or_default();
        let namespace = ks
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| parent_namespace.to_string());
        if seen.contains(&(name.clone(), namespace.clone())) {
            continue;
        }
        seen.push((name.clone(), namespace.clone()));
        let source = &ks.spec.source_ref;
        let source_namespace = source
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| namespace.clone());
        let kind = serde_json::to_value(source.kind)?;
        let key = format!(
            "{}/{source_namespace}/{}",
            kind.as_str().unwrap_or_default(),
            source.name
        );
        let Some(dir) = sources.get(&key) else {
            bail!("cannot get local path for {key} of kustomization {name}");
        };
        let mut nested = input.clone();
        nested.name = name;
        nested.path = build::resolve_path(dir, ks.spec.path.as_deref());
        nested.kustomization_file = None;
        let built = build_objects(&nested, ks.spec.clone(), &namespace, None)?;
        let deeper = build_nested(&nested, &built, sources, &namespace, seen)?;
        out.extend(built);
        out.extend(deeper);
    }
    Ok(out)
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
    let has_kustomization = build::kustomization_file(&args.path).is_some();
    let ignore = !args.ignore_paths.is_empty() && !has_kustomization;
    let needs_copy = has_kustomization || !spec.components.is_empty() || ignore;
    let mut objects = if needs_copy && args.path.is_dir() {
        let root = repository_root(&args.path)?;
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let copy = scratch.path().join("src");
        copy_tree(&root, &copy)?;
        let relative = args.path.canonicalize()?;
        let dir = copy.join(relative.strip_prefix(&root).unwrap_or(Path::new("")));
        if ignore {
            remove_ignored(&dir, &args.ignore_paths)?;
        }
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

/// Removes from the scratch copy `dir` what `--ignore-paths` patterns (relative to `dir`, as
/// Flux's generator reads them) exclude.
fn remove_ignored(dir: &Path, patterns: &[String]) -> anyhow::Result<()> {
    let patterns = gantry_source::sourceignore::read_patterns(&patterns.join("\n"), "");
    let rules = gantry_source::sourceignore::SourceIgnore::from_patterns(&patterns)
        .context("--ignore-paths")?;
    fn walk(
        base: &Path,
        dir: &Path,
        rules: &gantry_source::sourceignore::SourceIgnore,
    ) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let is_dir = entry.file_type()?.is_dir();
            let rel = path.strip_prefix(base).unwrap_or(&path);
            if rules.is_ignored(rel, is_dir) {
                if is_dir {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            } else if is_dir {
                walk(base, &path, rules)?;
            }
        }
        Ok(())
    }
    walk(dir, dir, &rules)
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

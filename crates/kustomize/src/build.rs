//! Building a Kustomization's path into the manifests to apply, as Flux's kustomize-controller does.
//!
//! 1. **Read.** A directory with a `kustomization.yaml`, `kustomization.yml` or `Kustomization`
//!    is built by kustomize ([`Kustomize`]: `kustomize build` or `kubectl kustomize`). Any other
//!    directory is taken as all its `*.yaml`/`*.yml` files, recursively, in lexical order per
//!    directory (Flux's walk), without an external tool; a subdirectory that has a kustomization
//!    file is built by kustomize in its place, as Flux does. Documents may be multi-document
//!    streams; empty documents are skipped; a `v1` `List` is flattened.
//! 2. **Transform** with the spec: patches, `targetNamespace`, `namePrefix`/`nameSuffix`,
//!    `images` ([`gantry_core::kustomize::transform`], in kustomize's order).
//! 3. **Substitute** `postBuild` variables ([`gantry_core::kustomize::substitute`]): the inline `substitute`
//!    map wins over the `substituteFrom` values, which the caller reads from the cluster and merges
//!    with [`merge_substitute_from`].
//! 4. **commonMetadata** labels and annotations, last (kustomize-controller sets them when
//!    applying, so they are never substituted).
//!
//! [`build`] blocks (it reads files and may wait for kustomize): call it from
//! `tokio::task::spawn_blocking` in async code. [`resolve_path`] turns `spec.path` into a
//! directory confined to the artifact.
//!
//! Flux writes the spec's kustomize fields into the kustomization file and builds once. Gantry
//! does the same when the directory is a private copy it may edit ([`Kustomize::edit_in_place`],
//! what the controller uses on extracted artifacts). Otherwise the directory is never written to
//! and, for a directory with a kustomization file, the spec's transforms run on kustomize's
//! output: a spec patch or image then matches what the kustomization produced (after its own
//! `namePrefix` or `images`), the spec's `namePrefix` is added to the file's instead of replacing
//! it, and `spec.components` is refused. Files outside a kustomization's directory need
//! [`Kustomize::load_files_outside`].
//!
//! Every failure is a [`BuildError`], which the controller reports with Flux's `BuildFailed`
//! reason; the messages name the file, line and column (YAML), the document, or the field.
//! Nothing is returned from a failed build, so nothing half-built is ever applied.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gantry_api::kustomize::v1::{
    BUILD_FAILED_REASON, KustomizationSpec, SubstituteKind, SubstituteStrategy,
};
use gantry_api::meta::{KUSTOMIZE_NAME_LABEL, KUSTOMIZE_NAMESPACE_LABEL};
use gantry_core::kustomize::substitute::{self, SubstituteError};
use gantry_core::kustomize::transform::{
    self, ImageOverride, Patch, PatchError, Selector, Transforms,
};
use serde_json::Value;
use serde_saphyr::MessageFormatter as _;

/// File names that make a directory a kustomization, in kustomize's order of preference.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Environment variable naming the kustomize (or kubectl) binary to run.
pub const KUSTOMIZE_ENV: &str = "GANTRY_KUSTOMIZE";

/// Default limit for one kustomize run.
pub const DEFAULT_KUSTOMIZE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a build failed. Every variant maps to Flux's `BuildFailed` reason ([`BuildError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The path does not exist in the artifact.
    #[error("kustomization path not found: {path}")]
    PathNotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// The path is a file, not a directory.
    #[error("kustomization path is not a directory: {path}")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A symlink in the path points outside it.
    #[error("{path} is a symlink to a file outside the kustomization path")]
    OutsidePath {
        /// The symlink.
        path: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A YAML syntax (or structure) error.
    #[error("{file}:{line}:{column}: {message}")]
    Yaml {
        /// The file (for kustomize output: `<dir> (kustomize output)`).
        file: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What the parser found.
        message: String,
    },
    /// A document that is not a Kubernetes object.
    #[error("{file}:{line}: document {document}: {problem}")]
    InvalidObject {
        /// The file.
        file: PathBuf,
        /// 1-based index of the document in its file, empty documents included.
        document: usize,
        /// Line where the document starts.
        line: u64,
        /// What is missing or wrong, e.g. `missing kind`.
        problem: String,
    },
    /// Two objects with the same group, kind, namespace and name.
    #[error("duplicate object {id} in {first} and {second}")]
    Duplicate {
        /// `group/Kind/namespace/name`.
        id: String,
        /// Where it first appeared.
        first: String,
        /// Where it appeared again.
        second: String,
    },
    /// No kustomize binary was found.
    #[error(
        "{dir} has a kustomization file, which needs kustomize: none found (tried {tried}); \
         install kustomize or kubectl, or set {KUSTOMIZE_ENV} to its path"
    )]
    KustomizeNotFound {
        /// The directory to build.
        dir: PathBuf,
        /// What was looked for.
        tried: String,
    },
    /// kustomize could not be started.
    #[error("starting {binary}: {source}")]
    KustomizeSpawn {
        /// The binary.
        binary: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// kustomize failed; its error output is kept.
    #[error("kustomize build failed for {dir}: {stderr}")]
    KustomizeFailed {
        /// The directory.
        dir: PathBuf,
        /// kustomize's standard error, trimmed.
        stderr: String,
    },
    /// kustomize ran longer than allowed and was killed.
    #[error("kustomize build of {dir} timed out after {timeout:?}")]
    KustomizeTimeout {
        /// The directory.
        dir: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// A patch's text is not valid YAML.
    #[error("spec.patches[{index}]: line {line}, column {column}: {message}")]
    PatchYaml {
        /// Position in `spec.patches`.
        index: usize,
        /// 1-based line in the patch text.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What the parser found.
        message: String,
    },
    /// A patch failed to apply or has an invalid target.
    #[error("spec.{0}")]
    Patch(#[from] PatchError),
    /// Substitution failed (strict mode and an unset variable, a syntax error, a bad name).
    #[error("postBuild substitution: {0}")]
    Substitute(#[from] SubstituteError),
    /// A `substituteFrom` source is missing (and not optional) or unreadable.
    #[error("substitute from '{kind}/{name}' error: {message}")]
    SubstituteFrom {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A spec field Gantry's build does not support yet.
    #[error("spec.{field} is not supported: {reason}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },
}

impl BuildError {
    /// The Flux condition reason for this error: always `BuildFailed`.
    pub fn reason(&self) -> &'static str {
        BUILD_FAILED_REASON
    }
}

/// Which kustomize to run and for how long.
#[derive(Debug, Clone)]
pub struct Kustomize {
    /// Explicit binary; `None` means [`KUSTOMIZE_ENV`], then `kustomize`, then `kubectl` on `PATH`.
    /// A binary whose file name starts with `kubectl` is run as `kubectl kustomize`.
    pub binary: Option<PathBuf>,
    /// Limit for one run.
    pub timeout: Duration,
    /// Let a kustomization read files outside its own directory (`../patches/x.yaml`), as Flux
    /// does. Flux confines such reads to the artifact with its own file system layer; kustomize's
    /// CLI cannot, so with this on a repository could read any file of the machine (e.g. a
    /// ServiceAccount token into a generated Secret). Off by default: kustomize's `RootOnly`.
    pub load_files_outside: bool,
    /// The directory is a private copy (e.g. an artifact extracted for this build), so its
    /// kustomization file may be rewritten: the spec's `targetNamespace`, `namePrefix`,
    /// `nameSuffix`, `patches`, `components` and `images` are then written into it and built in
    /// one kustomize run, exactly as Flux does. Without it the directory is never written to and
    /// the spec's transforms run on kustomize's output (see the module docs).
    pub edit_in_place: bool,
}

impl Default for Kustomize {
    fn default() -> Self {
        Self {
            binary: None,
            timeout: DEFAULT_KUSTOMIZE_TIMEOUT,
            load_files_outside: false,
            edit_in_place: false,
        }
    }
}

impl Kustomize {
    /// The binary to run and its arguments before the directory, or what was tried.
    pub fn resolve(&self) -> Result<(PathBuf, Vec<&'static str>), String> {
        let explicit = self.binary.clone().or_else(|| {
            std::env::var_os(KUSTOMIZE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let binary = match explicit {
            Some(path) => path,
            None => match find_in_path("kustomize").or_else(|| find_in_path("kubectl")) {
                Some(path) => path,
                None => return Err(format!("{KUSTOMIZE_ENV}, kustomize and kubectl on PATH")),
            },
        };
        let is_kubectl = binary
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("kubectl"));
        let args = if is_kubectl {
            vec!["kustomize"]
        } else {
            vec!["build"]
        };
        Ok((binary, args))
    }

    /// Runs kustomize on `dir` and returns its standard output.
    pub fn run(&self, dir: &Path) -> Result<String, BuildError> {
        let (binary, args) = self
            .resolve()
            .map_err(|tried| BuildError::KustomizeNotFound {
                dir: dir.to_path_buf(),
                tried,
            })?;
        tracing::debug!(binary = %binary.display(), dir = %dir.display(), "running kustomize");
        let mut command = Command::new(&binary);
        command.args(&args);
        if self.load_files_outside {
            command.arg("--load-restrictor=LoadRestrictionsNone");
        }
        let mut child = command
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BuildError::KustomizeSpawn {
                binary: binary.clone(),
                source,
            })?;
        // Both pipes are drained on their own threads so a large output cannot block the child.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf).map(|_| buf)
        });
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BuildError::KustomizeTimeout {
                        dir: dir.to_path_buf(),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(BuildError::KustomizeSpawn { binary, source });
                }
            }
        };
        let stdout = out
            .join()
            .unwrap_or_else(|_| Ok(Vec::new()))
            .map_err(|source| BuildError::Read {
                path: binary.clone(),
                source,
            })?;
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
            return Err(BuildError::KustomizeFailed {
                dir: dir.to_path_buf(),
                stderr: if stderr.is_empty() {
                    format!("{} exited with {status}", binary.display())
                } else {
                    stderr
                },
            });
        }
        let warnings = String::from_utf8_lossy(&stderr);
        if !warnings.trim().is_empty() {
            // e.g. deprecation notices: worth seeing, not worth failing for.
            tracing::warn!(dir = %dir.display(), "kustomize: {}", warnings.trim());
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The directory `spec.path` names inside an artifact extracted at `root`, confined to `root`:
/// `..` never climbs above it (as Flux's secure join does), and an absolute path is taken
/// relative to it. Whether the directory exists is [`read`]'s concern.
pub fn resolve_path(root: &Path, path: Option<&str>) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in Path::new(path.unwrap_or("")).components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    parts
        .iter()
        .fold(root.to_path_buf(), |acc, part| acc.join(part))
}

/// The kustomization file of `dir`, if it has one.
pub fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// Builds `dir` with the transforms of `spec` and substitutes variables: `vars` are the
/// `substituteFrom` values (see [`merge_substitute_from`]); `spec.postBuild.substitute` wins over
/// them. `strict` fails on a variable that is unset and has no default (Flux's strict mode).
pub fn build(
    dir: &Path,
    spec: &KustomizationSpec,
    vars: &BTreeMap<String, String>,
    kustomize: &Kustomize,
    strict: bool,
) -> Result<Vec<Value>, BuildError> {
    let mut transforms = transforms(spec)?;
    // commonMetadata is set after substitution, as kustomize-controller does it at apply time:
    // `${var}` in its values stays literal.
    let labels = std::mem::take(&mut transforms.labels);
    let annotations = std::mem::take(&mut transforms.annotations);
    check_dir(dir)?;
    let merge = kustomize.edit_in_place
        && (kustomization_file(dir).is_some() || !spec.components.is_empty());
    let mut objects = if merge {
        // Flux's way: the spec goes into the kustomization and kustomize applies it.
        write_flux_kustomization(dir, spec)?;
        read(dir, kustomize)?
    } else {
        if !spec.components.is_empty() {
            return Err(BuildError::Unsupported {
                field: "components",
                reason: "components need a kustomization file Gantry may edit \
                         (Kustomize::edit_in_place); list them in the path's kustomization.yaml",
            });
        }
        transform::apply(read(dir, kustomize)?, &transforms)?
    };
    if let Some(post_build) = &spec.post_build {
        let mut all = vars.clone();
        all.extend(
            post_build
                .substitute
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        // Flux substitutes only when some variable is defined, unless told to always.
        let always = post_build.substitute_strategy == Some(SubstituteStrategy::Always);
        if !all.is_empty() || always {
            for obj in &mut objects {
                substitute::substitute_object(obj, &all, strict)?;
            }
        }
    }
    transform::set_metadata(&mut objects, &labels, &annotations);
    Ok(objects)
}

/// The objects of `dir` before any transform (step 1 of the module docs).
pub fn read(dir: &Path, kustomize: &Kustomize) -> Result<Vec<Value>, BuildError> {
    check_dir(dir)?;
    let root = dir.canonicalize().map_err(|source| BuildError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut objects = Vec::new();
    let mut seen = HashMap::new();
    collect(dir, &root, kustomize, &mut objects, &mut seen)?;
    Ok(objects.into_iter().map(|(obj, _)| obj).collect())
}

fn check_dir(dir: &Path) -> Result<(), BuildError> {
    let meta = std::fs::metadata(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => BuildError::PathNotFound {
            path: dir.to_path_buf(),
        },
        _ => BuildError::Read {
            path: dir.to_path_buf(),
            source,
        },
    })?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(BuildError::NotADirectory {
            path: dir.to_path_buf(),
        })
    }
}

/// Writes the spec's kustomize fields into `dir`'s kustomization file as Flux's generator does
/// (creating one that lists the directory's manifests when there is none): `targetNamespace`
/// and `namePrefix`/`nameSuffix` replace the file's, `patches` and `components` are appended,
/// and `images` merge with the file's by name.
pub fn write_flux_kustomization(dir: &Path, spec: &KustomizationSpec) -> Result<(), BuildError> {
    let (file, mut kus) = match kustomization_file(dir) {
        Some(file) => {
            let bytes = std::fs::read(&file).map_err(|source| BuildError::Read {
                path: file.clone(),
                source,
            })?;
            let text = decode_text(&bytes).map_err(|message| BuildError::Read {
                path: file.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
            })?;
            let value: Option<Value> = serde_saphyr::from_str_with_options(&text, yaml_options())
                .map_err(|e| yaml_error(&e, &file, 0))?;
            (
                file,
                value.unwrap_or_else(|| Value::Object(Default::default())),
            )
        }
        None => {
            let mut resources = Vec::new();
            generated_resources(dir, dir, &mut resources)?;
            let kus = serde_json::json!({ "resources": resources });
            (dir.join(KUSTOMIZATION_FILES[0]), kus)
        }
    };
    let Some(map) = kus.as_object_mut() else {
        return Err(BuildError::InvalidObject {
            file,
            document: 1,
            line: 1,
            problem: "a kustomization must be a mapping".into(),
        });
    };
    map.entry("apiVersion")
        .or_insert_with(|| "kustomize.config.k8s.io/v1beta1".into());
    map.entry("kind").or_insert_with(|| "Kustomization".into());
    let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    if let Some(ns) = non_empty(&spec.target_namespace) {
        map.insert("namespace".into(), ns.into());
    }
    if let Some(prefix) = non_empty(&spec.name_prefix) {
        map.insert("namePrefix".into(), prefix.into());
    }
    if let Some(suffix) = non_empty(&spec.name_suffix) {
        map.insert("nameSuffix".into(), suffix.into());
    }
    let list = |map: &mut serde_json::Map<String, Value>, key: &str| -> Vec<Value> {
        match map.remove(key) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        }
    };
    if !spec.patches.is_empty() {
        let mut patches = list(map, "patches");
        for p in &spec.patches {
            let mut patch = serde_json::Map::new();
            patch.insert("patch".into(), p.patch.clone().into());
            if let Some(t) = &p.target {
                let target: serde_json::Map<String, Value> = [
                    ("group", &t.group),
                    ("version", &t.version),
                    ("kind", &t.kind),
                    ("name", &t.name),
                    ("namespace", &t.namespace),
                    ("labelSelector", &t.label_selector),
                    ("annotationSelector", &t.annotation_selector),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), Value::String(v))))
                .collect();
                patch.insert("target".into(), Value::Object(target));
            }
            patches.push(Value::Object(patch));
        }
        map.insert("patches".into(), patches.into());
    }
    if !spec.components.is_empty() {
        let mut components = list(map, "components");
        for c in &spec.components {
            if Path::new(c).is_absolute() || c.contains("://") {
                return Err(BuildError::Unsupported {
                    field: "components",
                    reason: "component paths must be local and relative",
                });
            }
            if spec.ignore_missing_components && !dir.join(c).exists() {
                continue;
            }
            components.push(c.clone().into());
        }
        map.insert("components".into(), components.into());
    }
    if !spec.images.is_empty() {
        let mut images = list(map, "images");
        for image in &spec.images {
            let found = images
                .iter_mut()
                .find(|i| i.get("name").and_then(Value::as_str) == Some(image.name.as_str()));
            match found.and_then(Value::as_object_mut) {
                // Fields merge like an overlay; a new tag or digest replaces both.
                Some(existing) => {
                    if let Some(n) = non_empty(&image.new_name) {
                        existing.insert("newName".into(), n.into());
                    }
                    if non_empty(&image.new_tag).is_some() || non_empty(&image.digest).is_some() {
                        existing.remove("newTag");
                        existing.remove("digest");
                        if let Some(t) = non_empty(&image.new_tag) {
                            existing.insert("newTag".into(), t.into());
                        }
                        if let Some(d) = non_empty(&image.digest) {
                            existing.insert("digest".into(), d.into());
                        }
                    }
                }
                None => {
                    let mut new = serde_json::Map::new();
                    new.insert("name".into(), image.name.clone().into());
                    for (key, value) in [
                        ("newName", &image.new_name),
                        ("newTag", &image.new_tag),
                        ("digest", &image.digest),
                    ] {
                        if let Some(v) = non_empty(value) {
                            new.insert(key.into(), v.into());
                        }
                    }
                    images.push(Value::Object(new));
                }
            }
        }
        map.insert("images".into(), images.into());
    }
    let text = serde_saphyr::to_string(&kus).map_err(|e| BuildError::Read {
        path: file.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(&file, text).map_err(|source| BuildError::Read { path: file, source })
}

/// What Flux's generated kustomization lists for a directory without one: every `*.yaml`/`*.yml`
/// file below it, and each subdirectory with its own kustomization file (not descended into).
fn generated_resources(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<(), BuildError> {
    let read_err = |source| BuildError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let relative = || format!("./{}", path.strip_prefix(base).unwrap_or(&path).display());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if kustomization_file(&path).is_some() {
                out.push(relative());
            } else {
                generated_resources(&path, base, out)?;
            }
        } else {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(relative());
            }
        }
    }
    Ok(())
}

type Seen = HashMap<String, String>;

/// Adds the objects of `dir` to `out`, each with a description of where it came from.
fn collect(
    dir: &Path,
    root: &Path,
    kustomize: &Kustomize,
    out: &mut Vec<(Value, String)>,
    seen: &mut Seen,
) -> Result<(), BuildError> {
    if kustomization_file(dir).is_some() {
        let text = kustomize.run(dir)?;
        let origin = PathBuf::from(format!("{} (kustomize output)", dir.display()));
        for (obj, _) in parse_stream(&text, &origin)? {
            push(out, seen, obj, format!("{}", dir.display()))?;
        }
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| BuildError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| BuildError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| BuildError::Read {
            path: path.clone(),
            source,
        })?;
        // Symlinked directories are not followed: they could loop or leave the artifact.
        if file_type.is_dir() {
            collect(&path, root, kustomize, out, seen)?;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || !path.is_file() {
            continue;
        }
        // A symlinked file may only point inside the path, so a repository cannot make the
        // controller read (and apply, or echo in errors) files of its own machine.
        if file_type.is_symlink() {
            let target = path.canonicalize().map_err(|source| BuildError::Read {
                path: path.clone(),
                source,
            })?;
            if !target.starts_with(root) {
                return Err(BuildError::OutsidePath { path });
            }
        }
        let bytes = std::fs::read(&path).map_err(|source| BuildError::Read {
            path: path.clone(),
            source,
        })?;
        let text = decode_text(&bytes).map_err(|message| BuildError::Read {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        })?;
        for (obj, document) in parse_stream(&text, &path)? {
            push(
                out,
                seen,
                obj,
                format!("{} (document {document})", path.display()),
            )?;
        }
    }
    Ok(())
}

fn push(
    out: &mut Vec<(Value, String)>,
    seen: &mut Seen,
    obj: Value,
    origin: String,
) -> Result<(), BuildError> {
    let (group, _, kind) = transform::gvk(&obj);
    let id = format!(
        "{group}/{kind}/{}/{}",
        transform::namespace_of(&obj),
        transform::name_of(&obj)
    );
    if let Some(first) = seen.get(&id) {
        return Err(BuildError::Duplicate {
            id,
            first: first.clone(),
            second: origin,
        });
    }
    seen.insert(id, origin.clone());
    out.push((obj, origin));
    Ok(())
}

/// A manifest file's text: UTF-8 (a byte-order mark is dropped) or, with its byte-order mark,
/// UTF-16 as Windows editors write it (kustomize accepts both).
fn decode_text(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |rest: &[u8], unit: fn([u8; 2]) -> u16| {
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|c| unit([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        String::from_utf16(&units).map_err(|e| format!("invalid UTF-16: {e}"))
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8(rest.to_vec()),
        [0xFF, 0xFE, rest @ ..] => return utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => return utf16(rest, u16::from_be_bytes),
        _ => String::from_utf8(bytes.to_vec()),
    }
    .map_err(|e| format!("not UTF-8 (nor UTF-16 with a byte-order mark): {e}"))
}

/// Parses a multi-document YAML stream of Kubernetes objects. Returns each object with the
/// 1-based index of its document (empty documents count, and are skipped). `v1` `List`s are
/// flattened.
pub fn parse_stream(text: &str, file: &Path) -> Result<Vec<(Value, usize)>, BuildError> {
    let mut objects = Vec::new();
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let document = i + 1;
        let value: Option<Value> = serde_saphyr::from_str_with_options(doc.text, yaml_options())
            .map_err(|e| yaml_error(&e, file, doc.first_line))?;
        let value = match value {
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        let invalid = |problem: String| BuildError::InvalidObject {
            file: file.to_path_buf(),
            document,
            line: doc.first_line + 1,
            problem,
        };
        if !value.is_object() {
            return Err(invalid("not a mapping (a Kubernetes object)".into()));
        }
        if value.get("kind").and_then(Value::as_str) == Some("List")
            && value.get("apiVersion").and_then(Value::as_str) == Some("v1")
            && let Some(items) = value.get("items").and_then(Value::as_array)
        {
            for (n, item) in items.iter().enumerate() {
                check_object(item).map_err(|p| invalid(format!("items[{n}]: {p}")))?;
                objects.push((item.clone(), document));
            }
            continue;
        }
        check_object(&value).map_err(invalid)?;
        objects.push((value, document));
    }
    Ok(objects)
}

fn check_object(value: &Value) -> Result<(), String> {
    for (pointer, field) in [
        ("/apiVersion", "apiVersion"),
        ("/kind", "kind"),
        ("/metadata/name", "metadata.name"),
    ] {
        match value.pointer(pointer) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(format!("missing {field}"));
            }
            Some(_) => return Err(format!("{field} must be a string")),
        }
    }
    Ok(())
}

struct Document<'a> {
    text: &'a str,
    /// 0-based line of the document's first line in the file.
    first_line: u64,
}

/// Splits a stream at `---` document markers (and `...` ends) so each document parses on its own:
/// one bad document is reported with its own index, and an empty one is counted but skipped.
/// Lines keep their numbering through [`Document::first_line`].
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let blank = |t: &str| {
        t.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    };
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 0u64, 0usize);
    // After `...` the stream is between documents until the next `---`.
    let mut ended = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let dashes = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if dashes || bare == "..." {
            let chunk = &text[start..offset];
            if !(ended && blank(chunk)) {
                docs.push(Document {
                    text: chunk,
                    first_line: start_line,
                });
            }
            ended = bare == "...";
            // Content after `--- ` on the marker line belongs to the next document.
            if dashes && bare.len() > 3 {
                (start, start_line) = (offset + 3, n as u64);
            } else {
                (start, start_line) = (offset + line.len(), n as u64 + 1);
            }
        }
        offset += line.len();
    }
    let rest = &text[start..];
    if !(ended && blank(rest)) {
        docs.push(Document {
            text: rest,
            first_line: start_line,
        });
    }
    // Whatever precedes a leading `---` (nothing, or comments) is not a document.
    if docs.len() > 1 && docs[0].first_line == 0 && blank(docs[0].text) {
        docs.remove(0);
    }
    docs
}

/// How kustomize (kyaml, go-yaml v3) reads manifests: only `true`/`false` are booleans, so
/// `name: y` or `value: on` stay strings, and a leading zero means octal (`defaultMode: 0644`).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        legacy_octal_numbers: true,
    }
}

fn yaml_error(err: &serde_saphyr::Error, file: &Path, line_offset: u64) -> BuildError {
    let inner = err.without_snippet();
    let message = serde_saphyr::DefaultMessageFormatter
        .format_message(inner)
        // The parser's advice is about its own API, not about the manifest.
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    BuildError::Yaml {
        file: file.to_path_buf(),
        line: line + line_offset,
        column,
        message,
    }
}

/// The spec's transforms in [`gantry_core`] terms; patch texts are parsed here so their errors
/// can name the patch.
pub fn transforms(spec: &KustomizationSpec) -> Result<Transforms, BuildError> {
    let patches = spec
        .patches
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let patch: Value = serde_saphyr::from_str_with_options(&p.patch, yaml_options())
                .map_err(|e| {
                    let (line, column) = e
                        .location()
                        .map(|l| (l.line(), l.column()))
                        .unwrap_or((0, 0));
                    BuildError::PatchYaml {
                        index,
                        line,
                        column,
                        message: serde_saphyr::DefaultMessageFormatter
                            .format_message(e.without_snippet())
                            .into_owned(),
                    }
                })?;
            Ok(Patch {
                patch,
                target: p.target.as_ref().map(|t| Selector {
                    group: t.group.clone(),
                    version: t.version.clone(),
                    kind: t.kind.clone(),
                    name: t.name.clone(),
                    namespace: t.namespace.clone(),
                    label_selector: t.label_selector.clone(),
                    annotation_selector: t.annotation_selector.clone(),
                }),
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    let (labels, annotations) = spec
        .common_metadata
        .as_ref()
        .map(|m| (m.labels.clone(), m.annotations.clone()))
        .unwrap_or_default();
    Ok(Transforms {
        patches,
        target_namespace: spec.target_namespace.clone().filter(|n| !n.is_empty()),
        name_prefix: spec.name_prefix.clone(),
        name_suffix: spec.name_suffix.clone(),
        labels,
        annotations,
        images: spec
            .images
            .iter()
            .map(|i| ImageOverride {
                name: i.name.clone(),
                new_name: i.new_name.clone(),
                new_tag: i.new_tag.clone(),
                digest: i.digest.clone(),
            })
            .collect(),
    })
}

/// The data of one `substituteFrom` source as the caller found it in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceData {
    /// A ConfigMap's `data`, or a Secret's `stringData`-like decoded values.
    Plain(BTreeMap<String, String>),
    /// A Secret's `data` as in its JSON/YAML form (base64).
    Base64(BTreeMap<String, String>),
    /// A Secret's `data` already decoded (e.g. k8s-openapi's `ByteString`s).
    Bytes(BTreeMap<String, Vec<u8>>),
}

/// One entry of `postBuild.substituteFrom` with what the caller read for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstituteSource {
    /// ConfigMap or Secret.
    pub kind: SubstituteKind,
    /// Its name.
    pub name: String,
    /// `optional` from the spec: a missing object then counts as empty.
    pub optional: bool,
    /// The data, or `None` when the object does not exist.
    pub data: Option<SourceData>,
}

/// Merges `substituteFrom` sources in order (later keys win, as in Flux). A missing source fails
/// unless optional; Secret values are base64-decoded and must be UTF-8. Newlines are removed from
/// values when substituting, as Flux does.
pub fn merge_substitute_from(
    sources: &[SubstituteSource],
) -> Result<BTreeMap<String, String>, BuildError> {
    let mut vars = BTreeMap::new();
    for source in sources {
        let kind = match source.kind {
            SubstituteKind::ConfigMap => "ConfigMap",
            SubstituteKind::Secret => "Secret",
        };
        let fail = |message: String| BuildError::SubstituteFrom {
            kind,
            name: source.name.clone(),
            message,
        };
        match &source.data {
            None if source.optional => {}
            None => return Err(fail(format!("{kind} \"{}\" not found", source.name))),
            Some(SourceData::Plain(data)) => {
                vars.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Some(SourceData::Base64(data)) => {
                for (k, v) in data {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .map_err(|e| fail(format!("key {k}: invalid base64: {e}")))?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| fail(format!("key {k}: value is not UTF-8")))?;
                    vars.insert(k.clone(), text);
                }
            }
            Some(SourceData::Bytes(data)) => {
                for (k, v) in data {
                    let text = String::from_utf8(v.clone())
                        .map_err(|_| fail(format!("key {k}: value is not UTF-8")))?;
                    vars.insert(k.clone(), text);
                }
            }
        }
    }
    Ok(vars)
}

/// Sets Flux's owner labels (`kustomize.toolkit.fluxcd.io/name` and `/namespace`) on every
/// object, as the apply step (and `flux build kustomization`) does.
pub fn set_owner_labels(objects: &mut [Value], name: &str, namespace: &str) {
    let labels = BTreeMap::from([
        (KUSTOMIZE_NAME_LABEL.to_string(), name.to_string()),
        (KUSTOMIZE_NAMESPACE_LABEL.to_string(), namespace.to_string()),
    ]);
    transform::set_metadata(objects, &labels, &BTreeMap::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encodings() {
        let utf16 = |le: bool| {
            let mut out = if le {
                vec![0xFF, 0xFE]
            } else {
                vec![0xFE, 0xFF]
            };
            for unit in "a: é\n".encode_utf16() {
                out.extend(if le {
                    unit.to_le_bytes()
                } else {
                    unit.to_be_bytes()
                });
            }
            out
        };
        assert_eq!(decode_text(b"a: 1\n").unwrap(), "a: 1\n");
        assert_eq!(decode_text(b"\xEF\xBB\xBFa: 1\n").unwrap(), "a: 1\n");
        assert_eq!(decode_text(&utf16(true)).unwrap(), "a: é\n");
        assert_eq!(decode_text(&utf16(false)).unwrap(), "a: é\n");
        assert!(decode_text(b"a: \xFF\n").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn spec_paths_stay_inside_the_artifact() {
        let root = Path::new("/artifact");
        let cases = [
            (None, "/artifact"),
            (Some(""), "/artifact"),
            (Some("./"), "/artifact"),
            (Some("./apps/prod"), "/artifact/apps/prod"),
            (Some("apps/../infra"), "/artifact/infra"),
            (Some("../../etc"), "/artifact/etc"),
            (Some("/etc/passwd"), "/artifact/etc/passwd"),
        ];
        for (path, want) in cases {
            assert_eq!(resolve_path(root, path), Path::new(want), "{path:?}");
        }
    }

    #[test]
    fn documents_split_with_their_lines() {
        let text = "---\na: 1\n---\n\n---\n# only a comment\n---\nb: 2\n...\n";
        let docs = split_documents(text);
        let got: Vec<(&str, u64)> = docs.iter().map(|d| (d.text, d.first_line)).collect();
        assert_eq!(
            got,
            vec![
                ("a: 1\n", 1),
                ("\n", 3),
                ("# only a comment\n", 5),
                ("b: 2\n", 7),
            ]
        );
        let single = split_documents("a: 1\n");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].first_line, 0);
    }

    #[test]
    fn merge_sources_in_order_with_optional() {
        let plain = |pairs: &[(&str, &str)]| {
            SourceData::Plain(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let sources = vec![
            SubstituteSource {
                kind: SubstituteKind::ConfigMap,
                name: "a".into(),
                optional: false,
                data: Some(plain(&[("x", "1"), ("y", "1")])),
            },
            SubstituteSource {
                kind: SubstituteKind::Secret,
                name: "s".into(),
                optional: false,
                data: Some(SourceData::Base64(BTreeMap::from([(
                    "y".into(),
                    "Mg==".into(),
                )]))),
            },
            SubstituteSource {
                kind: SubstituteKind::ConfigMap,
                name: "gone".into(),
                optional: true,
                data: None,
            },
        ];
        let vars = merge_substitute_from(&sources).unwrap();
        assert_eq!(
            vars,
            BTreeMap::from([("x".into(), "1".into()), ("y".into(), "2".into())])
        );

        let missing = SubstituteSource {
            kind: SubstituteKind::Secret,
            name: "creds".into(),
            optional: false,
            data: None,
        };
        let err = merge_substitute_from(&[missing]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "substitute from 'Secret/creds' error: Secret \"creds\" not found"
        );
        let bad = SubstituteSource {
            kind: SubstituteKind::Secret,
            name: "s".into(),
            optional: false,
            data: Some(SourceData::Base64(BTreeMap::from([(
                "k".into(),
                "!!".into(),
            )]))),
        };
        assert!(
            merge_substitute_from(&[bad])
                .unwrap_err()
                .to_string()
                .contains("key k")
        );
    }
}

//! The GitHub Actions workflows of the team's pipeline, written by `gantry init ci --github`:
//! tests on pull requests, a staging image per merge to `main`, a release per push to
//! `release`, a production image per published release.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where GitHub looks for workflows, relative to the repository root.
pub const GITHUB_WORKFLOWS_DIR: &str = ".github/workflows";

/// Where Gantry is published: the repository of the workspace manifest. The generated workflows
/// install Gantry from here, at the tag of the version that wrote them.
pub const REPOSITORY: &str = env!("CARGO_PKG_REPOSITORY");
/// The version that writes the workflows (and that they install).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The package of the `gantry` binary. Not `gantry`: that name on crates.io is an unrelated
/// project, and a workflow installing it would run a stranger's program next to the team's
/// credentials. (`crates/gantry`'s tests hold this to its manifest.)
pub const PACKAGE: &str = "gantry-gitops";

/// Stands for [`install_command`] in the templates.
const INSTALL_PLACEHOLDER: &str = "@@GANTRY_INSTALL@@";

/// The step that installs the Gantry that wrote the workflows: built from its own repository at
/// its own release tag, with its lock file.
pub fn install_command() -> String {
    format!("cargo install --git {REPOSITORY} --tag v{VERSION} --locked {PACKAGE}")
}

/// File name and contents of each workflow, as written.
pub fn github_workflows() -> Vec<(&'static str, String)> {
    GITHUB_TEMPLATES
        .iter()
        .map(|(name, template)| {
            (
                *name,
                template.replace(INSTALL_PLACEHOLDER, &install_command()),
            )
        })
        .collect()
}

/// File name and template of each workflow.
const GITHUB_TEMPLATES: &[(&str, &str)] = &[
    ("test.yaml", include_str!("../templates/github/test.yaml")),
    (
        "staging-image.yaml",
        include_str!("../templates/github/staging-image.yaml"),
    ),
    (
        "release.yaml",
        include_str!("../templates/github/release.yaml"),
    ),
    (
        "production-image.yaml",
        include_str!("../templates/github/production-image.yaml"),
    ),
];

#[derive(Debug, Error)]
pub enum WorkflowError {
    #[error("{} already exist; pass --force to overwrite", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the workflows under `<root>/.github/workflows`. Without `force`, nothing is written
/// when any of them exists, so a half-customised pipeline is never partly replaced.
pub fn write_github(root: &Path, force: bool) -> Result<Vec<PathBuf>, WorkflowError> {
    let dir = root.join(GITHUB_WORKFLOWS_DIR);
    let workflows = github_workflows();
    let paths: Vec<PathBuf> = workflows.iter().map(|(name, _)| dir.join(name)).collect();
    let existing: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
    if !force && !existing.is_empty() {
        return Err(WorkflowError::Exists(existing));
    }
    std::fs::create_dir_all(&dir).map_err(|source| WorkflowError::Write {
        path: dir.clone(),
        source,
    })?;
    for ((_, contents), path) in workflows.iter().zip(&paths) {
        std::fs::write(path, contents).map_err(|source| WorkflowError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}

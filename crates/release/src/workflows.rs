//! The GitHub Actions workflows of the team's pipeline, written by `gantry init ci --github`:
//! tests on pull requests, a staging image per merge to `main`, a release per push to
//! `release`, a production image per published release.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where GitHub looks for workflows, relative to the repository root.
pub const GITHUB_WORKFLOWS_DIR: &str = ".github/workflows";

/// File name and contents of each workflow.
pub const GITHUB_WORKFLOWS: &[(&str, &str)] = &[
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
    let paths: Vec<PathBuf> = GITHUB_WORKFLOWS
        .iter()
        .map(|(name, _)| dir.join(name))
        .collect();
    let existing: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
    if !force && !existing.is_empty() {
        return Err(WorkflowError::Exists(existing));
    }
    std::fs::create_dir_all(&dir).map_err(|source| WorkflowError::Write {
        path: dir.clone(),
        source,
    })?;
    for ((_, contents), path) in GITHUB_WORKFLOWS.iter().zip(&paths) {
        std::fs::write(path, contents).map_err(|source| WorkflowError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}

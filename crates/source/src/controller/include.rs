//! `spec.include`: other GitRepositories' artifacts copied into this one's checkout, with every
//! path confined to the artifact.

use std::path::Path;

use gantry_api::source::v1::{Artifact, GitRepository, GitRepositoryInclude};
use kube::Client;
use kube::api::Api;

use super::{Error, api_message};
use crate::artifact::{ArtifactError, ArtifactStore};

// The artifacts of `spec.include`, each checked to exist and be stored.
pub(super) async fn resolve_includes(
    obj: &GitRepository,
    client: &Client,
    store: &ArtifactStore,
    namespace: &str,
) -> Result<Vec<(GitRepositoryInclude, Artifact)>, Error> {
    let api: Api<GitRepository> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for include in &obj.spec.include {
        let name = &include.repository.name;
        for path in [include.from_path.as_deref(), Some(include.to_path())] {
            if path.is_some_and(|p| confined(Path::new("/"), p).is_none()) {
                return Err(Error::Include {
                    reason: "IllegalPath",
                    message: format!(
                        "path calculation for include '{name}' failed: '{}' leaves the artifact",
                        path.unwrap_or_default()
                    ),
                });
            }
        }
        let dep = api.get(name).await.map_err(|e| Error::Include {
            reason: "NotFound",
            message: format!(
                "could not get resource for include '{name}': {}",
                api_message(&e)
            ),
        })?;
        let artifact = dep
            .status
            .and_then(|s| s.artifact)
            .filter(|a| store.exists(a))
            .ok_or_else(|| Error::Include {
                reason: "NoArtifact",
                message: format!("no artifact available for include '{name}'"),
            })?;
        out.push((include.clone(), artifact));
    }
    Ok(out)
}

// Copies `fromPath` of an included artifact to `toPath` of the checkout in `dir`.
pub(super) fn copy_include(
    store: &ArtifactStore,
    include: &GitRepositoryInclude,
    artifact: &Artifact,
    dir: &Path,
) -> Result<(), Error> {
    let unpacked = store.open(artifact)?;
    let illegal = |p: &str| Error::Include {
        reason: "IllegalPath",
        message: format!(
            "path calculation for include '{}' failed: '{p}' leaves the artifact",
            include.repository.name
        ),
    };
    let from_path = include.from_path.as_deref().unwrap_or("");
    let from = confined(unpacked.path(), from_path).ok_or_else(|| illegal(from_path))?;
    let to = confined(dir, include.to_path()).ok_or_else(|| illegal(include.to_path()))?;
    let io = |source| {
        Error::Artifact(ArtifactError::Storage {
            path: to.clone(),
            source,
        })
    };
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(io)?;
    }
    copy_tree(&from, &to).map_err(io)
}

// `root` joined with a relative path that must not leave it (`..` beyond the root, absolute).
fn confined(root: &Path, rel: &str) -> Option<std::path::PathBuf> {
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
                out.pop();
            }
            p => {
                depth += 1;
                out.push(p);
            }
        }
    }
    Some(out)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_paths_stay_inside() {
        let root = Path::new("/r");
        assert_eq!(confined(root, "a/b"), Some("/r/a/b".into()));
        assert_eq!(confined(root, "./a/../b/"), Some("/r/b".into()));
        assert_eq!(confined(root, ""), Some("/r".into()));
        assert_eq!(confined(root, "../x"), None);
        assert_eq!(confined(root, "a/../../x"), None);
        assert_eq!(
            confined(root, "/etc"),
            Some("/r/etc".into()),
            "absolute is taken as relative"
        );
    }
}

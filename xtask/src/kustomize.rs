//! kustomize for the build tests, built from the Go module proxy once per machine.
//!
//! Gantry shells out to kustomize for directories with a kustomization file. Machines with kubectl
//! have one built in, but not every machine has kubectl, and its kustomize lags behind: this builds
//! the pinned release into `<cache>/kustomize-<version>/bin/kustomize` the same way the control
//! plane is built (Go caches under `<cache>/go`, a scratch directory renamed into place only when
//! the build succeeded, so an interrupted build is never taken for a finished one).

use std::path::{Path, PathBuf};

use anyhow::Result;

/// The kustomize release built by default (override with `GANTRY_KUSTOMIZE_VERSION`).
// v5.8.3 needs Go 1.27; v5.8.2 is the newest that builds with the Go 1.26 the project requires.
pub const VERSION: &str = "v5.8.2";

const MODULE: &str = "sigs.k8s.io/kustomize/kustomize/v5";

/// The version to build: `GANTRY_KUSTOMIZE_VERSION` or [`VERSION`].
pub fn version() -> String {
    std::env::var("GANTRY_KUSTOMIZE_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| VERSION.to_string())
}

/// Where the binary of `version` lives under `cache`.
pub fn binary_path(cache: &Path, version: &str) -> PathBuf {
    cache.join(format!("kustomize-{version}/bin/kustomize"))
}

/// Returns the cached kustomize binary, building it first if it is missing.
pub fn ensure(cache: &Path) -> Result<PathBuf> {
    crate::gotools::install(cache, "kustomize", MODULE, &version())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    #[test]
    fn cached_binary_is_used_without_building() {
        let cache = tempfile::tempdir().unwrap();
        let bin = binary_path(cache.path(), &version());
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::write(&bin, "").unwrap();
        assert_eq!(ensure(cache.path()).unwrap(), bin);
        assert!(bin.ends_with(format!("kustomize-{}/bin/kustomize", version())));
    }

    /// Builds the real thing into the machine's cache: `cargo test -p xtask -- --ignored kustomize`.
    #[test]
    #[ignore = "downloads and compiles kustomize (minutes); run explicitly"]
    fn builds_kustomize_from_the_module_proxy() {
        let home = std::env::var_os("HOME").expect("HOME");
        let cache = PathBuf::from(home).join(".cache/gantry");
        let bin = ensure(&cache).unwrap();
        let out = Command::new(&bin).arg("version").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(&version()[1..]));
    }
}

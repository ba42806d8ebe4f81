//! kustomize for the build tests, built from the Go module proxy once per machine.
//!
//! Gantry shells out to kustomize for directories with a kustomization file. Machines with kubectl
//! have one built in, but not every machine has kubectl, and its kustomize lags behind: this builds
//! the pinned release into `<cache>/kustomize-<version>/bin/kustomize` the same way the control
//! plane is built (Go caches under `<cache>/go`, a scratch directory renamed into place only when
//! the build succeeded, so an interrupted build is never taken for a finished one).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

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
    let version = version();
    let bin = binary_path(cache, &version);
    if bin.is_file() {
        return Ok(bin);
    }
    let dest = cache.join(format!("kustomize-{version}"));
    let work = cache.join(format!("kustomize-{version}.partial"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(work.join("bin")).with_context(|| format!("creating {}", work.display()))?;

    let started = Instant::now();
    eprintln!("[build] kustomize {version}: go install {MODULE}@{version} (first time only)");
    let out = Command::new("go")
        .args(["install", "-trimpath", "-ldflags", "-s -w"])
        .arg(format!("{MODULE}@{version}"))
        .current_dir(&work)
        .env("GOBIN", work.join("bin"))
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        .env("CGO_ENABLED", "0")
        // Only the module proxy is reachable: never let a go.mod line fetch another toolchain.
        .env("GOTOOLCHAIN", "local")
        .env_remove("GOPATH")
        .env_remove("GOFLAGS")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "the `go` command is needed to build kustomize {version} (Go 1.26 or newer); install \
             Go, or set GANTRY_KUSTOMIZE to an existing kustomize or kubectl binary"
        ),
        Err(err) => return Err(err).context("running go install"),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!(
            "building kustomize {version} failed ({}):\n{tail}",
            out.status
        );
    }
    if !work.join("bin/kustomize").is_file() {
        bail!(
            "go install succeeded but left no kustomize binary in {}",
            work.display()
        );
    }
    if dest.exists() {
        fs::remove_dir_all(&dest)?;
    }
    fs::rename(&work, &dest).with_context(|| format!("moving the build to {}", dest.display()))?;
    eprintln!(
        "[build] kustomize {version} done in {:.0?}",
        started.elapsed()
    );
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

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

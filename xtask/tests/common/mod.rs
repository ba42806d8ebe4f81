//! Running `cargo xtask` from its tests, always against a state directory of the test's own.

#![allow(dead_code)] // Each test file uses a different part of this.

use std::path::Path;
use std::process::{Command, Output};

/// Runs xtask with `--state-dir state`. `GANTRY_KUBECONFIG` is removed: under `cargo xtask test`
/// it points at the shared cluster, and xtask would then use that one instead.
pub fn xtask(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("GANTRY_KUBECONFIG")
        .output()
        .expect("running xtask")
}

/// stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs xtask, asserts it succeeded, returns what it said.
pub fn xtask_ok(state: &Path, args: &[&str]) -> String {
    let out = xtask(state, args);
    let said = text(&out);
    assert!(out.status.success(), "xtask {args:?}: {said}");
    said
}

/// Stops the cluster of a state directory when dropped, also when the test fails.
pub struct Cluster<'a>(pub &'a Path);

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        let _ = xtask(self.0, &["cluster", "down"]);
    }
}

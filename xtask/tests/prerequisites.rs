//! `cargo xtask prerequisites`, the step `sandbox` and `test` run first, with a package that is
//! really not installed on this machine (real `dpkg-query`, real unprivileged user).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// A Debian package that is not installed here, as dpkg itself reports.
fn absent_package() -> String {
    for candidate in ["hello", "cowsay", "sl", "fortune-mod"] {
        let out = Command::new("dpkg-query")
            .args(["-W", "--showformat=${db:Status-Abbrev}", candidate])
            .output()
            .expect("dpkg-query (the prerequisite step is Debian's)");
        if !String::from_utf8_lossy(&out.stdout).starts_with("ii") {
            return candidate.to_string();
        }
    }
    panic!("hello, cowsay, sl and fortune-mod are all installed: pick another absent package");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs the xtask binary as an unprivileged user (`nobody` through `setpriv` when the tests run
/// as root), from a copy it can read, with a HOME of its own.
fn run_unprivileged(home: &Path, args: &[&str], extra: &str) -> Output {
    let bin = home.join("xtask");
    std::fs::copy(env!("CARGO_BIN_EXE_xtask"), &bin).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        cmd
    } else {
        Command::new(&bin)
    };
    cmd.args(args)
        .env("HOME", home)
        .env("GANTRY_CACHE_DIR", home.join("cache"))
        .env("GANTRY_STATE_DIR", home.join("state"))
        .env("GANTRY_PREREQUISITES_EXTRA", extra)
        .env_remove("GANTRY_KUBECONFIG");
    cmd.output()
        .expect("running xtask (setpriv is util-linux's)")
}

#[test]
fn a_missing_package_stops_an_unprivileged_run_at_once_with_the_install_line() {
    let absent = absent_package();
    let home = tempfile::tempdir().unwrap();
    for task in [&["prerequisites"][..], &["test"], &["sandbox"]] {
        let started = Instant::now();
        let out = run_unprivileged(home.path(), task, &absent);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{task:?} stopped after {:.1?}", started.elapsed());
        assert!(!out.status.success(), "{task:?} succeeded: {stderr}");
        assert!(
            stderr.contains("missing Debian packages:"),
            "{task:?}: {stderr}"
        );
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with("sudo apt-get install"))
            .unwrap_or_else(|| panic!("{task:?} printed no install line: {stderr}"));
        assert!(
            line.trim()
                .starts_with("sudo apt-get install -y --no-install-recommends ")
                && line.split_whitespace().any(|w| w == absent),
            "{line}"
        );
        // Stopped before anything was built or started: no cache, no control plane state.
        assert!(
            !home.path().join("cache").exists(),
            "{task:?} built something"
        );
        assert!(
            !home.path().join("state").exists(),
            "{task:?} started something"
        );
    }
}

#[test]
fn the_package_list_is_printed_one_a_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["prerequisites", "--list"])
        .env("GANTRY_PREREQUISITES_EXTRA", "")
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for package in ["git", "docker-registry", "shellcheck", "openssh-server"] {
        assert!(list.iter().any(|p| p == package), "{package} in {list:?}");
    }
}

/// As root, the step installs a missing package for real (quietly, without starting services)
/// and leaves no policy-rc.d behind. Changes the machine (installs and removes `hello`) and needs
/// Debian's mirror: `cargo test -p xtask --test prerequisites -- --ignored`.
#[test]
#[ignore = "installs a Debian package (root, apt mirror); run explicitly"]
fn installs_a_missing_package_as_root() {
    assert!(is_root(), "run as root");
    let absent = absent_package();
    let policy = PathBuf::from("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("prerequisites")
        .env("GANTRY_PREREQUISITES_EXTRA", &absent)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = Command::new("dpkg-query")
        .args(["-W", "--showformat=${db:Status-Abbrev}", &absent])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("ii"));
    assert_eq!(policy.exists(), had_policy);
    let _ = Command::new("apt-get")
        .args(["remove", "-y", "-qq", &absent])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
}

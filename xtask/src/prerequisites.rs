//! What `cargo xtask sandbox` and `cargo xtask test` need from the machine, checked in the first
//! seconds, before anything is built.
//!
//! [`DEBIAN_PACKAGES`] is the only list: `.ci/run` runs `cargo xtask test`, which installs what is
//! missing when it runs as root (quietly, with package scripts kept from starting services), and
//! otherwise stops at once with the exact `apt-get install` line. Each package names the files of
//! it the project runs or builds against, so a test can hold the list to what the code executes
//! (`prerequisites_cover_every_program_the_project_runs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// A Debian package and the files of it the project uses.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub files: &'static [&'static str],
    pub why: &'static str,
}

/// Every Debian package the build, the tests and the sandbox need.
pub const DEBIAN_PACKAGES: &[Package] = &[
    Package {
        name: "git",
        files: &["/usr/bin/git", "/usr/lib/git-core/git-http-backend"],
        why: "test repositories and the git servers (smart HTTP)",
    },
    Package {
        name: "pkg-config",
        files: &["/usr/bin/pkg-config"],
        why: "finds OpenSSL for git2",
    },
    Package {
        name: "libssl-dev",
        files: &["/usr/include/openssl/ssl.h"],
        why: "git2's HTTPS transport",
    },
    Package {
        name: "zlib1g-dev",
        files: &["/usr/include/zlib.h"],
        why: "libgit2 and libssh2",
    },
    Package {
        name: "ca-certificates",
        files: &["/usr/sbin/update-ca-certificates"],
        why: "TLS roots (/etc/ssl/certs) for the package registries",
    },
    Package {
        name: "openssh-server",
        files: &["/usr/sbin/sshd"],
        why: "git over SSH in the tests",
    },
    Package {
        name: "openssh-client",
        files: &["/usr/bin/ssh-keygen", "/usr/bin/ssh"],
        why: "SSH keys and clients in the tests",
    },
    Package {
        name: "docker-registry",
        files: &["/usr/bin/docker-registry"],
        why: "the OCI registry of the tests and the sandbox",
    },
    Package {
        name: "prometheus",
        files: &["/usr/bin/prometheus", "/usr/bin/promtool"],
        why: "checks the shipped alert rules and scrapes /metrics",
    },
    Package {
        name: "postgresql",
        // The server binaries live under /usr/lib/postgresql/<major>/bin (the major version is
        // Debian release's); the testkit picks the newest there. This file is the metapackage's own.
        files: &["/usr/share/doc/postgresql/copyright"],
        why: "the uptime history tests run a private Postgres server (initdb, postgres) on loopback",
    },
    Package {
        name: "chromium",
        files: &["/usr/bin/chromium"],
        why: "the status page is tested in a real headless browser",
    },
    Package {
        name: "chromium-driver",
        files: &["/usr/bin/chromedriver"],
        why: "WebDriver for that browser (driven from Rust with fantoccini)",
    },
    Package {
        name: "shellcheck",
        files: &["/usr/bin/shellcheck"],
        why: "actionlint checks the workflows' shell steps with it",
    },
    Package {
        name: "gnupg",
        files: &["/usr/bin/gpg", "/usr/bin/gpg-agent"],
        why: "OpenPGP keys for the SOPS decryption tests (sops encrypts for them with gpg)",
    },
    Package {
        name: "gpgconf",
        files: &["/usr/bin/gpgconf"],
        why: "stops the gpg-agent of the SOPS decryption tests",
    },
];

/// Debian packages only a benchmark needs: never installed by `cargo xtask test` or the
/// sandbox, only by the benchmark that runs them ([`ensure_bench`]).
pub const BENCH_PACKAGES: &[Package] = &[Package {
    name: "nginx",
    files: &["/usr/sbin/nginx"],
    why: "`cargo xtask bench serving` compares the router with nginx as a reverse proxy",
}];

/// Every package either list names.
fn all_packages() -> impl Iterator<Item = &'static Package> {
    DEBIAN_PACKAGES.iter().chain(BENCH_PACKAGES)
}

/// Checks the benchmark packages `names` (of [`BENCH_PACKAGES`]), installing missing ones as
/// root like [`ensure`].
pub fn ensure_bench(names: &[&str]) -> Result<()> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let missing = missing_packages(&names)?;
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the benchmark needs Debian packages {}. Install them with (or run as root, which installs them):\n  {}",
            described(&missing),
            install_line(&missing, false)
        );
    }
    install(&missing)?;
    let still = missing_packages(&missing)?;
    if !still.is_empty() {
        bail!(
            "apt-get install succeeded but {} still not installed",
            still.join(", ")
        );
    }
    Ok(())
}

/// Names of [`DEBIAN_PACKAGES`], plus `GANTRY_PREREQUISITES_EXTRA` (space-separated; lets a test
/// require a package that is really absent).
pub fn package_names() -> Vec<String> {
    let mut names: Vec<String> = DEBIAN_PACKAGES.iter().map(|p| p.name.to_string()).collect();
    if let Ok(extra) = std::env::var("GANTRY_PREREQUISITES_EXTRA") {
        names.extend(extra.split_whitespace().map(str::to_string));
    }
    names
}

/// The command line that installs `missing`.
pub fn install_line(missing: &[String], root: bool) -> String {
    let sudo = if root { "" } else { "sudo " };
    format!(
        "{sudo}apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    )
}

/// What to do about missing packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Install them when running as root, else stop with the install line.
    InstallAsRoot,
    /// Only report them.
    Report,
}

/// `name (why it is needed)`, comma-separated.
fn described(names: &[String]) -> String {
    names
        .iter()
        .map(
            |name| match all_packages().find(|p| p.name == name.as_str()) {
                Some(p) => format!("{name} ({})", p.why),
                None => name.clone(),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the Debian packages (and `go` when `needs_go`), installing missing packages as root.
pub fn ensure(needs_go: bool, on_missing: Missing) -> Result<()> {
    let names = package_names();
    let missing = missing_packages(&names)?;
    if !missing.is_empty() {
        let root = is_root();
        if root && on_missing == Missing::InstallAsRoot {
            install(&missing)?;
            let still = missing_packages(&missing)?;
            if !still.is_empty() {
                bail!(
                    "apt-get install succeeded but {} still not installed",
                    still.join(", ")
                );
            }
        } else {
            let how = if root {
                "Install them with"
            } else {
                "Install them with (or run as root, which installs them)"
            };
            bail!(
                "missing Debian packages: {}. {how}:\n  {}",
                described(&missing),
                install_line(&missing, root)
            );
        }
    }
    if needs_go {
        check_go()?;
    }
    Ok(())
}

/// The packages of `names` that are not installed, asked of dpkg in one call. Without dpkg (not a
/// Debian machine) the files each package provides are looked for instead.
pub fn missing_packages(names: &[String]) -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("--showformat=${Package} ${db:Status-Abbrev}\n")
        .args(names)
        .stderr(Stdio::null())
        .output();
    match out {
        // dpkg-query exits 1 when some names are unknown; what it printed is still right.
        Ok(out) => Ok(not_installed(names, &String::from_utf8_lossy(&out.stdout))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(names
            .iter()
            .filter(|name| {
                all_packages()
                    .find(|p| p.name == name.as_str())
                    .is_none_or(|p| !p.files.iter().all(|f| Path::new(f).exists()))
            })
            .cloned()
            .collect()),
        Err(err) => Err(err).context("running dpkg-query"),
    }
}

/// Reads `dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n'` output: `ii` is installed;
/// anything else (`un`, `rc`, half-installed, or no line at all) is missing.
pub fn not_installed(names: &[String], dpkg_output: &str) -> Vec<String> {
    let status: BTreeMap<&str, &str> = dpkg_output
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, status)| (name.split(':').next().unwrap_or(name), status.trim()))
        .collect();
    names
        .iter()
        .filter(|name| status.get(name.as_str()).is_none_or(|s| *s != "ii"))
        .cloned()
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `apt-get install` without prompts and without starting services: package scripts would start
/// sshd, prometheus and the registry listening on every interface; the tests start their own on
/// loopback.
fn install(missing: &[String]) -> Result<()> {
    eprintln!("[prerequisites] installing {}", missing.join(" "));
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let _guard = if policy.exists() {
        None
    } else {
        std::fs::write(
            policy,
            "#!/bin/sh\n# added by cargo xtask while installing\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        set_executable(policy)?;
        Some(RemoveOnDrop(policy))
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    apt(&args)
}

fn apt(args: &[&str]) -> Result<()> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .context("running apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// The Go tools (control plane, kustomize, flux, actionlint) are built with Go 1.26 or newer.
fn check_go() -> Result<()> {
    let out = Command::new("go").arg("version").output();
    let text = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => bail!(
            "the `go` command (Go 1.26 or newer) is needed to build the control plane and the Go \
             tools the tests use; install Go from https://go.dev/dl/ (or point GANTRY_KUBECONFIG \
             at a cluster and the GANTRY_* tool variables at existing binaries)"
        ),
    };
    match go_minor(&text) {
        Some(minor) if minor >= 26 => Ok(()),
        Some(_) => bail!("Go 1.26 or newer is needed; found: {}", text.trim()),
        None => Ok(()),
    }
}

/// The minor version of `go version` output (`go version go1.26.8 linux/amd64` → 26).
fn go_minor(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("go1."))?;
    version.split(['.', 'r', 'b']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_installed_ok_counts_as_installed() {
        let out = "git ii \nlibssl-dev:amd64 ii \nprometheus un \nshellcheck rc \n";
        let wanted = names(&[
            "git",
            "libssl-dev",
            "prometheus",
            "shellcheck",
            "docker-registry",
        ]);
        assert_eq!(
            not_installed(&wanted, out),
            names(&["prometheus", "shellcheck", "docker-registry"])
        );
    }

    #[test]
    fn the_install_line_is_exact() {
        let missing = names(&["docker-registry", "shellcheck"]);
        assert_eq!(
            install_line(&missing, false),
            "sudo apt-get install -y --no-install-recommends docker-registry shellcheck"
        );
        assert!(install_line(&missing, true).starts_with("apt-get install -y"));
    }

    #[test]
    fn go_versions_are_read() {
        assert_eq!(go_minor("go version go1.26.8 linux/amd64"), Some(26));
        assert_eq!(go_minor("go version go1.27rc1 linux/amd64"), Some(27));
        assert_eq!(go_minor("go version go1.9 linux/amd64"), Some(9));
        assert_eq!(go_minor("nonsense"), None);
    }

    #[test]
    fn package_names_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for p in all_packages() {
            assert!(seen.insert(p.name), "{} twice", p.name);
            assert!(!p.files.is_empty() && !p.why.is_empty(), "{}", p.name);
        }
    }

    /// Every program the project's code runs by absolute path or by name comes from a listed
    /// package, from the toolchains (`cargo`, `go`), or from Debian's essential set. Scans the
    /// sources, so a program run by a new `Command::new` without its package here fails.
    #[test]
    fn prerequisites_cover_every_program_the_project_runs() {
        // Programs that need no package of the list, and why.
        const NOT_PACKAGES: &[(&str, &str)] = &[
            ("cargo", "the Rust toolchain"),
            ("go", "the Go toolchain, checked by `ensure`"),
            ("id", "coreutils (essential)"),
            ("dpkg-query", "dpkg (essential)"),
            ("dpkg", "dpkg (essential)"),
            ("setpriv", "util-linux (essential)"),
            ("sh", "dash (essential); tests use its builtin `kill`"),
            ("apt-get", "apt (essential)"),
            ("kubectl", "`cargo xtask bench` only, optional there"),
            ("/usr/sbin/policy-rc.d", "written by `install`, not run"),
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut sources = Vec::new();
        for dir in ["crates", "xtask"] {
            collect_rust_files(&root.join(dir), &mut sources);
        }
        assert!(sources.len() > 20, "found only {} sources", sources.len());
        let provided: Vec<&str> = all_packages().flat_map(|p| p.files).copied().collect();
        let mut checked = 0;
        for source in &sources {
            let text = std::fs::read_to_string(source).unwrap();
            for literal in string_literals(&text) {
                let by_path = ["/usr/bin/", "/usr/sbin/", "/usr/lib/git-core/"]
                    .iter()
                    .any(|dir| literal.len() > dir.len() && literal.starts_with(dir))
                    && !literal.contains(char::is_whitespace);
                if by_path {
                    checked += 1;
                    assert!(
                        provided.contains(&literal)
                            || NOT_PACKAGES.iter().any(|(n, _)| *n == literal),
                        "{} runs {literal}, which no package in DEBIAN_PACKAGES provides",
                        source.display()
                    );
                }
            }
            for name in commands_by_name(&text) {
                checked += 1;
                let from_package = provided
                    .iter()
                    .any(|f| Path::new(f).file_name().is_some_and(|n| n == name));
                assert!(
                    from_package || NOT_PACKAGES.iter().any(|(n, _)| *n == name),
                    "{} runs `{name}`, which no package in DEBIAN_PACKAGES provides",
                    source.display()
                );
            }
        }
        // sshd, git-http-backend, docker-registry, git, ssh-keygen at least.
        assert!(
            checked >= 5,
            "only {checked} programs found: is the scan broken?"
        );
    }

    /// The list's claims hold on this machine: each file is installed by its package (or by a
    /// package it depends on, as `pkg-config` on `pkgconf`).
    #[test]
    fn each_listed_file_comes_from_its_package() {
        if Command::new("dpkg").arg("--version").output().is_err() {
            eprintln!("not a Debian machine: nothing to compare");
            return;
        }
        let mut names = package_names();
        names.extend(BENCH_PACKAGES.iter().map(|p| p.name.to_string()));
        let missing = missing_packages(&names).unwrap();
        for package in all_packages().filter(|p| !missing.contains(&p.name.to_string())) {
            let depends = Command::new("dpkg-query")
                .args(["-W", "--showformat=${Depends}", package.name])
                .output()
                .unwrap();
            let depends = String::from_utf8_lossy(&depends.stdout).into_owned();
            for file in package.files {
                let out = Command::new("dpkg").args(["-S", file]).output().unwrap();
                let owners = String::from_utf8_lossy(&out.stdout);
                let owner = owners
                    .split(": ")
                    .next()
                    .unwrap_or_default()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    owner == package.name || depends.contains(&owner) && !owner.is_empty(),
                    "{file}: owned by {owners:?}, listed under {}",
                    package.name
                );
            }
        }
    }

    /// `.ci/run` keeps no list of its own and runs exactly the README's test command, which
    /// checks (and as root installs) the list above.
    #[test]
    fn ci_runs_the_readme_command_and_has_no_list_of_its_own() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(
            !ci.contains("apt-get") && !ci.contains("dpkg"),
            ".ci/run lists packages"
        );
        assert!(
            ci.lines()
                .any(|l| l.trim_start().starts_with("cargo xtask test "))
        );
        assert!(
            readme.lines().any(|l| l.starts_with("cargo xtask test ")),
            "README's test command changed"
        );
        for package in DEBIAN_PACKAGES {
            assert!(
                readme.contains(package.name),
                "README does not mention {}",
                package.name
            );
        }
    }

    fn collect_rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            if path.is_dir() {
                collect_rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The contents of simple `"..."` literals (no escapes needed for paths and names).
    fn string_literals(text: &str) -> Vec<&str> {
        text.split('"').skip(1).step_by(2).collect()
    }

    /// The program named by every `Command::new` with a string literal.
    fn commands_by_name(text: &str) -> Vec<&str> {
        text.match_indices("Command::new(\"")
            .filter_map(|(at, m)| {
                let rest = &text[at + m.len()..];
                rest.split('"').next()
            })
            .collect()
    }
}

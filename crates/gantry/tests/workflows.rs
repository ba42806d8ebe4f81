//! GitHub Actions workflows, checked with the real `actionlint` (built from the Go module proxy
//! by `cargo xtask test`, `GANTRY_ACTIONLINT`) and Debian's `shellcheck` for the shell steps:
//! the ones `gantry init ci --github` writes, and this repository's own `.github/workflows`.
//! They cannot run here (no GitHub runner); this is as far as they can be tested.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gantry_release::workflows::{self, github_workflows};
use serde_json::Value;

const SHELLCHECK: &str = "/usr/bin/shellcheck";

fn actionlint(files: &[PathBuf]) -> Output {
    let bin = std::env::var_os("GANTRY_ACTIONLINT").unwrap_or_else(|| {
        panic!(
            "GANTRY_ACTIONLINT is not set: run the suite with `cargo xtask test`, which builds \
             actionlint, or set it (`cargo xtask tool actionlint` prints one)"
        )
    });
    // actionlint skips shell checks silently when it finds no shellcheck: insist on it.
    assert!(
        Path::new(SHELLCHECK).is_file(),
        "{SHELLCHECK} is missing: `cargo xtask prerequisites` installs Debian's shellcheck"
    );
    Command::new(bin)
        .args([
            "-no-color",
            "-oneline",
            &format!("-shellcheck={SHELLCHECK}"),
            // Only shell steps here; no Python.
            "-pyflakes=",
        ])
        .args(files)
        .output()
        .expect("running actionlint")
}

fn report(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .expect("running gantry")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn generated_workflows_pass_actionlint_with_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    let out = gantry(&[
        "init",
        "ci",
        "--github",
        "--repo",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", report(&out));
    let files = yaml_files(&dir.path().join(".github/workflows"));
    assert_eq!(files.len(), 4, "{files:?}");
    let out = actionlint(&files);
    assert!(out.status.success(), "actionlint:\n{}", report(&out));
}

#[test]
fn the_projects_own_workflows_pass_actionlint_with_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = yaml_files(&root.join(".github/workflows"));
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "test.yaml",
        "image.yaml",
        "release.yaml",
        "release-image.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let out = actionlint(&files);
    assert!(out.status.success(), "actionlint:\n{}", report(&out));

    // The test workflow runs exactly the README's test command; the images come from
    // `cargo xtask image`, tagged by `gantry ci image-tag` on main and by the version on a release.
    let text = |name: &str| std::fs::read_to_string(root.join(".github/workflows").join(name));
    let runs = |name: &str| run_steps(&serde_saphyr::from_str(&text(name).unwrap()).unwrap());
    assert!(runs("test.yaml").iter().any(|r| r == "cargo xtask test"));
    let image = runs("image.yaml");
    assert!(image.iter().any(|r| r.contains("gantry -- ci image-tag")));
    assert!(
        image
            .iter()
            .any(|r| r.starts_with("cargo xtask image --push"))
    );
    assert!(
        runs("release-image.yaml")
            .iter()
            .any(|r| r.starts_with("cargo xtask image --push"))
    );
    assert!(
        runs("release.yaml")
            .iter()
            .any(|r| r.contains("gantry release tag --push"))
    );
}

/// actionlint really runs shellcheck on `run:` steps: without this, a missing or broken
/// shellcheck would let the tests above pass on workflows it never looked at.
#[test]
fn actionlint_rejects_a_shell_step_shellcheck_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\non: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      \
         - run: echo $1 > $GITHUB_OUTPUT\n",
    )
    .unwrap();
    let out = actionlint(&[bad]);
    assert!(!out.status.success());
    let text = report(&out);
    assert!(
        text.contains("SC2086") && text.contains("[shellcheck]"),
        "{text}"
    );
}

fn run_steps(workflow: &Value) -> Vec<String> {
    workflow["jobs"]
        .as_object()
        .into_iter()
        .flat_map(|jobs| jobs.values())
        .flat_map(|job| job["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|step| step["run"].as_str().map(str::to_string))
        .collect()
}

/// The generated workflows install Gantry only as the project publishes it (its repository at
/// the release tag of this version, its own package name) and run only commands this binary has.
#[test]
fn generated_workflows_reference_only_what_the_project_publishes() {
    assert_eq!(workflows::PACKAGE, env!("CARGO_PKG_NAME"));
    assert_eq!(workflows::REPOSITORY, env!("CARGO_PKG_REPOSITORY"));
    assert_eq!(workflows::VERSION, env!("CARGO_PKG_VERSION"));
    let install = workflows::install_command();
    assert_eq!(
        install,
        format!(
            "cargo install --git {} --tag v{} --locked {}",
            env!("CARGO_PKG_REPOSITORY"),
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_NAME")
        )
    );
    let mut installs = 0;
    let mut commands = std::collections::BTreeSet::new();
    for (name, text) in github_workflows() {
        assert!(!text.contains("@@"), "{name}: a placeholder was left");
        assert!(!text.contains("crates.io"), "{name}");
        let workflow: Value = serde_saphyr::from_str(&text).unwrap();
        for run in run_steps(&workflow) {
            for line in run.lines().map(str::trim) {
                if line.contains("cargo install") {
                    assert_eq!(line, install, "{name}");
                    installs += 1;
                }
                // `gantry <command> <subcommand>` wherever it is invoked, e.g. in `$(...)`.
                for (at, _) in line.match_indices("gantry ") {
                    let before = line[..at].chars().last();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '/') {
                        continue;
                    }
                    let words: Vec<&str> = line[at..]
                        .split(|c: char| c.is_whitespace() || c == ')' || c == '"')
                        .filter(|w| !w.is_empty())
                        .skip(1)
                        .take_while(|w| !w.starts_with('-') && !w.starts_with('>'))
                        .take(2)
                        .collect();
                    commands.insert(words.join(" "));
                }
            }
        }
        // Actions come from GitHub and Docker, never from a Gantry namespace nobody publishes.
        for step in workflow["jobs"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|j| j["steps"].as_array().cloned().unwrap_or_default())
        {
            if let Some(uses) = step["uses"].as_str() {
                let owner = uses.split('/').next().unwrap();
                assert!(
                    ["actions", "docker"].contains(&owner),
                    "{name}: {uses} is not a GitHub or Docker action"
                );
            }
        }
    }
    assert_eq!(installs, 2, "staging-image and release install gantry");
    for expected in [
        "ci image-tag",
        "release next",
        "release notes",
        "release tag",
    ] {
        assert!(commands.contains(expected), "{expected} in {commands:?}");
    }
    for command in &commands {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let out = gantry(&args);
        assert!(
            out.status.success(),
            "the workflows run `gantry {command}`, which this binary does not have: {}",
            report(&out)
        );
    }
}

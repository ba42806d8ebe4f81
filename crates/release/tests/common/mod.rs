//! Real git repositories for tests, built with the `git` CLI in temporary directories and
//! isolated from the user's configuration. Shared with the CLI tests of the `gantry` crate.
#![allow(dead_code)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// A `git` command isolated from global and system configuration, with a fixed identity and
/// the given commit time (seconds since the epoch), so histories are reproducible.
pub fn git_command(dir: &Path, time: u64) -> Command {
    let mut cmd = Command::new("git");
    let date = format!("@{time} +0000");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    cmd
}

pub fn check(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub struct TestRepo {
    // Kept for its Drop: the directory lives as long as the repository.
    _tmp: TempDir,
    path: PathBuf,
    clock: Cell<u64>,
}

impl TestRepo {
    /// An empty repository on branch `main`, with a local identity for libgit2.
    pub fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("repo");
        std::fs::create_dir(&path).unwrap();
        let repo = Self {
            _tmp: tmp,
            path,
            clock: Cell::new(1_767_225_600),
        };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.git(&["config", "user.name", "Test Committer"]);
        repo.git(&["config", "user.email", "committer@example.com"]);
        repo
    }

    /// A second directory next to the repository, removed with it.
    pub fn sibling(&self, name: &str) -> PathBuf {
        self.path.parent().unwrap().join(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tick(&self) -> u64 {
        self.clock.set(self.clock.get() + 60);
        self.clock.get()
    }

    pub fn git(&self, args: &[&str]) -> String {
        self.git_in(&self.path, args)
    }

    pub fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        let output = git_command(dir, self.tick()).args(args).output().unwrap();
        check(output, &format!("git {}", args.join(" ")))
    }

    pub fn try_git(&self, args: &[&str]) -> Output {
        git_command(&self.path, self.tick())
            .args(args)
            .output()
            .unwrap()
    }

    /// Commits a change to a file of its own, so merges never conflict; returns the full sha.
    pub fn commit(&self, message: &str) -> String {
        let n = self.tick();
        std::fs::write(self.path.join(format!("file-{n}.txt")), n.to_string()).unwrap();
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--message", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// An annotated tag, as releases have.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", "--annotate", name, "--message", name]);
    }

    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.path.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

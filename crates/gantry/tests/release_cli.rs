//! `gantry release`, `gantry ci image-tag` and `gantry init ci` run as a process against real
//! repositories: output and exit codes as CI scripts see them.

#[path = "../../release/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TestRepo;

/// The binary with git isolated from the user's configuration, as in CI.
fn gantry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_COMMITTER_NAME", "Release Bot")
        .env("GIT_COMMITTER_EMAIL", "release@example.com")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

#[test]
fn next_prints_the_version_and_exits_0() {
    let repo = TestRepo::new();
    repo.commit("feat: one");
    repo.tag("v1.0.0");
    repo.commit("fix(parser): two");
    let out = gantry(repo.path(), &["release", "next"]);
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "1.0.1\n"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("patch release 1.0.1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nothing_to_release_is_exit_3_and_says_why() {
    let repo = TestRepo::new();
    repo.commit("Initial commit");
    repo.commit("docs: readme");
    for sub in ["next", "notes", "tag"] {
        let out = gantry(repo.path(), &["release", sub]);
        assert_eq!(code(&out), 3, "{sub}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{sub}");
        let err = stderr(&out);
        assert!(err.contains("1 not conventional"), "{sub}: {err}");
        assert!(err.contains("nothing to release"), "{sub}: {err}");
    }
    assert_eq!(repo.git(&["tag", "--list"]), "");
}

#[test]
fn bad_input_is_exit_1_with_a_clear_message() {
    let empty = TestRepo::new();
    let out = gantry(empty.path(), &["release", "next"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no commits yet"), "{}", stderr(&out));

    let out = gantry(empty.path(), &["ci", "image-tag"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no commits yet"), "{}", stderr(&out));

    let not_repo = tempfile::TempDir::new().unwrap();
    let out = gantry(not_repo.path(), &["release", "next"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not inside a git repository"),
        "{}",
        stderr(&out)
    );

    let malformed = TestRepo::new();
    malformed.commit("feat: one");
    malformed.tag("v1.0");
    let out = gantry(malformed.path(), &["release", "next"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("tag `v1.0`") && err.contains("not a semantic version"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn shallow_clone_without_tags_asks_to_fetch_them() {
    let origin = TestRepo::new();
    origin.commit("feat: one");
    origin.tag("v1.0.0");
    origin.commit("fix: two");
    origin.commit("fix: three");
    let clone = origin.sibling("shallow");
    let url = format!("file://{}", origin.path().display());
    origin.git_in(
        origin.path().parent().unwrap(),
        &[
            "clone",
            "--quiet",
            "--depth=1",
            "--no-tags",
            &url,
            clone.to_str().unwrap(),
        ],
    );
    let out = gantry(&clone, &["release", "next"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("git fetch --unshallow --tags"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn notes_are_markdown_grouped_by_type() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    repo.tag("v1.0.0");
    repo.commit("fix: escape quotes");
    repo.commit("feat(export)!: CSV by default\n\nBREAKING CHANGE: JSON needs --format json.");
    repo.commit("chore: deps");
    let out = gantry(repo.path(), &["release", "notes", "--date", "2026-11-26"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let a = repo.git(&["rev-parse", "--short=7", "HEAD~1"]);
    let b = repo.git(&["rev-parse", "--short=7", "HEAD~2"]);
    let expected = format!(
        "## v2.0.0 (2026-11-26)\n\n### ⚠ Breaking changes\n\n* **export:** CSV by default ({a})\n  JSON needs --format json.\n\n### Features\n\n* **export:** CSV by default ({a})\n\n### Bug fixes\n\n* escape quotes ({b})\n"
    );
    assert_eq!(stdout(&out), expected);

    let out = gantry(repo.path(), &["release", "notes", "--date", "26/11/2026"]);
    assert_eq!(code(&out), 2, "a bad date is a usage error");
}

#[test]
fn tag_push_creates_pushes_and_is_idempotent() {
    let repo = TestRepo::new();
    let remote = repo.sibling("remote.git");
    repo.git(&["init", "--quiet", "--bare", remote.to_str().unwrap()]);
    repo.git(&[
        "remote",
        "add",
        "origin",
        &format!("file://{}", remote.display()),
    ]);
    repo.commit("feat: pushed");
    repo.git(&["push", "--quiet", "origin", "main"]);

    let out = gantry(repo.path(), &["release", "tag", "--push"]);
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "v1.0.0\n"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("created annotated tag v1.0.0"));
    assert_eq!(
        repo.git_in(&remote, &["rev-parse", "v1.0.0^{commit}"]),
        repo.head()
    );
    let tagger = repo.git(&[
        "tag",
        "--list",
        "--format=%(taggername) %(taggeremail)",
        "v1.0.0",
    ]);
    assert_eq!(tagger, "Release Bot <release@example.com>");

    let again = gantry(repo.path(), &["release", "tag", "--push"]);
    assert_eq!(
        (code(&again), stdout(&again).as_str()),
        (0, "v1.0.0\n"),
        "{}",
        stderr(&again)
    );
    assert!(
        stderr(&again).contains("already tags"),
        "{}",
        stderr(&again)
    );
    // After the release, `next` has nothing to do.
    assert_eq!(code(&gantry(repo.path(), &["release", "next"])), 3);
}

#[test]
fn tag_without_identity_says_how_to_set_one() {
    let repo = TestRepo::new();
    repo.git(&["config", "--unset", "user.name"]);
    repo.git(&["config", "--unset", "user.email"]);
    repo.commit("feat: x");
    let home = tempfile::TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(repo.path())
        .args(["release", "tag"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_COMMITTER_NAME")
        .env_remove("GIT_COMMITTER_EMAIL")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("GIT_COMMITTER_NAME"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn prerelease_branch_via_option() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    repo.tag("v1.0.0");
    repo.git(&["switch", "--quiet", "--create", "beta"]);
    repo.commit("feat!: v2 storage");
    repo.git(&["switch", "--quiet", "main"]);
    let out = gantry(repo.path(), &["release", "tag", "--branch", "beta"]);
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "v2.0.0-beta.1\n"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        repo.git(&["rev-parse", "v2.0.0-beta.1^{commit}"]),
        repo.git(&["rev-parse", "beta"])
    );
    repo.git(&["switch", "--quiet", "beta"]);
    repo.commit("fix: migration");
    let out = gantry(repo.path(), &["release", "next"]);
    assert_eq!(stdout(&out), "2.0.0-beta.2\n", "{}", stderr(&out));
}

#[test]
fn image_tag_is_sha_and_utc_minutes() {
    let repo = TestRepo::new();
    let sha = repo.commit("feat: x");
    let out = gantry(
        repo.path(),
        &["ci", "image-tag", "--time", "2026-11-26T09:05:59+02:00"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}-202611260705\n", &sha[..7]));

    let out = gantry(
        repo.path(),
        &[
            "ci",
            "image-tag",
            "--time",
            "2026-01-02T03:04:00Z",
            "--sha-length",
            "12",
            "--prefix",
            "main-",
        ],
    );
    assert_eq!(stdout(&out), format!("main-{}-202601020304\n", &sha[..12]));

    repo.write(
        ".gantry/release.toml",
        "[image_tag]\nsha_length = 10\nprefix = \"main-\"\n",
    );
    let out = gantry(
        repo.path(),
        &["ci", "image-tag", "--time", "2026-01-02T03:04:00Z"],
    );
    assert_eq!(stdout(&out), format!("main-{}-202601020304\n", &sha[..10]));

    // Without --time it is now: the stamp is 12 digits of the current UTC minute.
    let out = gantry(repo.path(), &["ci", "image-tag"]);
    let tag = stdout(&out);
    let stamp = tag.trim().rsplit_once('-').unwrap().1;
    assert!(stamp.len() == 12 && stamp.starts_with("20"), "{tag}");

    let out = gantry(repo.path(), &["ci", "image-tag", "--time", "yesterday"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not an RFC 3339 time"),
        "{}",
        stderr(&out)
    );
    let out = gantry(repo.path(), &["ci", "image-tag", "--sha-length", "2"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("sha length 2"), "{}", stderr(&out));
}

#[test]
fn init_ci_github_writes_the_workflows_once() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = gantry(dir.path(), &["init", "ci", "--github"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for (name, contents) in gantry_release::workflows::github_workflows() {
        let path = dir.path().join(".github/workflows").join(name);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), contents, "{name}");
        assert!(stdout(&out).contains(name));
    }
    let again = gantry(dir.path(), &["init", "ci", "--github"]);
    assert_eq!(code(&again), 1);
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        code(&gantry(dir.path(), &["init", "ci", "--github", "--force"])),
        0
    );
    assert_eq!(
        code(&gantry(dir.path(), &["init", "ci"])),
        2,
        "--github is required"
    );
}

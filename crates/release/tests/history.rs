//! Release planning and tagging against real repositories built with the git CLI.

mod common;

use common::TestRepo;
use gantry_core::release::{Bump, Channel};
use gantry_release::{ReleaseRepo, RepoError, TagOutcome};
use semver::Version;

fn next(repo: &TestRepo) -> Option<String> {
    ReleaseRepo::open(repo.path())
        .unwrap()
        .plan(None)
        .unwrap()
        .next
        .map(|v| v.to_string())
}

fn plan_err(repo: &TestRepo, branch: Option<&str>) -> RepoError {
    match ReleaseRepo::open(repo.path()).and_then(|r| r.plan(branch)) {
        Ok(plan) => panic!("expected an error, got {:?}", plan.next),
        Err(e) => e,
    }
}

/// Tags the planned release through the library, as `gantry release tag` does.
fn release(repo: &TestRepo) -> TagOutcome {
    let r = ReleaseRepo::open(repo.path()).unwrap();
    let plan = r.plan(None).unwrap();
    let notes = plan.notes(None).unwrap_or_default();
    r.tag(&plan, &notes).unwrap().expect("something to release")
}

#[test]
fn first_release_is_1_0_0() {
    let repo = TestRepo::new();
    repo.commit("feat: first feature");
    repo.commit("fix: first fix");
    assert_eq!(next(&repo).as_deref(), Some("1.0.0"));
}

#[test]
fn versions_follow_the_commits_since_the_last_tag() {
    let repo = TestRepo::new();
    repo.commit("feat: start");
    repo.tag("v1.0.0");
    repo.commit("docs: no release by itself");
    assert_eq!(next(&repo), None);
    repo.commit("fix: a bug");
    assert_eq!(next(&repo).as_deref(), Some("1.0.1"));
    repo.commit("feat(api): a feature");
    assert_eq!(next(&repo).as_deref(), Some("1.1.0"));
    repo.commit("refactor!: rename everything");
    assert_eq!(next(&repo).as_deref(), Some("2.0.0"));
    repo.tag("v2.0.0");
    repo.commit("perf: faster");
    assert_eq!(next(&repo).as_deref(), Some("2.0.1"));
}

#[test]
fn breaking_footer_in_body_is_major() {
    let repo = TestRepo::new();
    repo.commit("feat: x");
    repo.tag("v1.4.0");
    repo.commit("fix: change config\n\nBREAKING CHANGE: the `extends` key now extends other files");
    assert_eq!(next(&repo).as_deref(), Some("2.0.0"));
}

#[test]
fn non_conventional_history_has_nothing_to_release() {
    let repo = TestRepo::new();
    repo.commit("Initial commit");
    repo.commit("Update README");
    let plan = ReleaseRepo::open(repo.path()).unwrap().plan(None).unwrap();
    assert_eq!(plan.next, None);
    assert_eq!(plan.analysis.non_conventional.len(), 2);
    let summary = plan.summary();
    assert!(summary.contains("2 not conventional"), "{summary}");
    assert!(summary.contains("nothing to release"), "{summary}");
}

#[test]
fn merges_are_read_through_to_the_commits_they_bring() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    repo.tag("v1.0.0");
    repo.git(&["switch", "--quiet", "--create", "feature"]);
    repo.commit("feat(ui): the feature");
    repo.git(&["switch", "--quiet", "main"]);
    repo.commit("fix: on main meanwhile");
    repo.git(&[
        "merge",
        "--quiet",
        "--no-ff",
        "feature",
        "--message",
        "Merge branch 'feature'",
    ]);

    let plan = ReleaseRepo::open(repo.path()).unwrap().plan(None).unwrap();
    assert_eq!(plan.next, Some(Version::new(1, 1, 0)));
    // The merge commit itself is not counted: two commits, both conventional.
    assert_eq!(plan.commits.len(), 2);
    assert!(plan.analysis.non_conventional.is_empty());
}

#[test]
fn squash_merge_body_counts_each_message() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    repo.tag("v1.2.3");
    repo.git(&["switch", "--quiet", "--create", "feature"]);
    repo.commit("docs: describe the exporter");
    repo.commit("feat!: exporter writes CSV by default");
    repo.git(&["switch", "--quiet", "main"]);
    repo.git(&["merge", "--quiet", "--squash", "feature"]);
    repo.git(&[
        "commit",
        "--quiet",
        "--message",
        "Exporter defaults (#7)\n\n* docs: describe the exporter\n\n* feat!: exporter writes CSV by default",
    ]);
    let plan = ReleaseRepo::open(repo.path()).unwrap().plan(None).unwrap();
    assert_eq!(plan.commits.len(), 1);
    assert_eq!(plan.analysis.changes.len(), 2);
    assert_eq!(plan.analysis.bump(), Some(Bump::Major));
    assert_eq!(plan.next, Some(Version::new(2, 0, 0)));
}

#[test]
fn revert_in_range_cancels_and_revert_of_a_release_is_a_patch() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    let released = repo.commit("feat: shipped in 1.0.0");
    repo.tag("v1.0.0");
    let unreleased = repo.commit("feat!: risky change");
    repo.git(&["revert", "--no-edit", &unreleased]);
    // The breaking change and its revert cancel out: nothing to release.
    let plan = ReleaseRepo::open(repo.path()).unwrap().plan(None).unwrap();
    assert_eq!(plan.next, None);
    assert_eq!(plan.analysis.cancelled.len(), 2);

    repo.git(&["revert", "--no-edit", &released]);
    assert_eq!(next(&repo).as_deref(), Some("1.0.1"));
}

#[test]
fn prerelease_channel_numbers_then_stable_release() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    repo.tag("v1.0.0");
    repo.git(&["switch", "--quiet", "--create", "beta"]);
    repo.commit("feat!: new storage format");
    let r = ReleaseRepo::open(repo.path()).unwrap();
    assert_eq!(
        r.plan(None).unwrap().channel,
        Channel::Prerelease("beta".into())
    );
    assert_eq!(release(&repo), TagOutcome::Created("v2.0.0-beta.1".into()));
    repo.commit("fix: migration of old files");
    assert_eq!(release(&repo), TagOutcome::Created("v2.0.0-beta.2".into()));

    // main has moved on with a fix of its own, then takes the beta.
    repo.git(&["switch", "--quiet", "main"]);
    repo.commit("fix: on main");
    assert_eq!(next(&repo).as_deref(), Some("1.0.1"));
    repo.git(&[
        "merge",
        "--quiet",
        "--no-ff",
        "beta",
        "--message",
        "Merge branch 'beta'",
    ]);
    assert_eq!(next(&repo).as_deref(), Some("2.0.0"));
}

#[test]
fn tag_is_annotated_carries_the_notes_and_is_idempotent() {
    let repo = TestRepo::new();
    repo.commit("feat(cli): release next");
    repo.commit("fix: tag names");
    let r = ReleaseRepo::open(repo.path()).unwrap();
    let plan = r.plan(None).unwrap();
    let notes = plan.notes(Some("2026-01-01")).unwrap();
    assert_eq!(
        r.tag(&plan, &notes).unwrap(),
        Some(TagOutcome::Created("v1.0.0".into()))
    );
    assert_eq!(repo.git(&["cat-file", "-t", "v1.0.0"]), "tag");
    assert_eq!(repo.git(&["rev-parse", "v1.0.0^{commit}"]), repo.head());
    let message = repo.git(&["tag", "--list", "--format=%(contents)", "v1.0.0"]);
    assert!(
        message.contains("### Features\n\n* **cli:** release next"),
        "{message}"
    );
    assert!(message.contains("### Bug fixes"), "{message}");

    // Planning again finds the release done; tagging again changes nothing.
    let again = r.plan(None).unwrap();
    assert_eq!(again.next, None);
    assert_eq!(
        again.released.as_ref().map(|t| t.name.as_str()),
        Some("v1.0.0")
    );
    assert_eq!(
        r.tag(&again, "").unwrap(),
        Some(TagOutcome::AlreadyTagged("v1.0.0".into()))
    );
    // A stale plan (made before the tag) does not create a second tag either.
    assert_eq!(
        r.tag(&plan, &notes).unwrap(),
        Some(TagOutcome::AlreadyTagged("v1.0.0".into()))
    );
    assert_eq!(repo.git(&["tag", "--list"]), "v1.0.0");
}

#[test]
fn nothing_to_tag_without_changes() {
    let repo = TestRepo::new();
    repo.commit("chore: tooling");
    let r = ReleaseRepo::open(repo.path()).unwrap();
    let plan = r.plan(None).unwrap();
    assert_eq!(r.tag(&plan, "").unwrap(), None);
    assert_eq!(repo.git(&["tag", "--list"]), "");
}

#[test]
fn push_to_a_real_bare_remote_is_idempotent() {
    let repo = TestRepo::new();
    let remote = repo.sibling("remote.git");
    repo.git(&["init", "--quiet", "--bare", remote.to_str().unwrap()]);
    let url = format!("file://{}", remote.display());
    repo.git(&["remote", "add", "origin", &url]);
    repo.commit("feat: pushed");
    repo.git(&["push", "--quiet", "origin", "main"]);

    let r = ReleaseRepo::open(repo.path()).unwrap();
    let outcome = release(&repo);
    r.push_tag(outcome.name()).unwrap();
    let remote_tag = repo.git_in(&remote, &["rev-parse", "v1.0.0^{commit}"]);
    assert_eq!(remote_tag, repo.head());
    assert_eq!(repo.git_in(&remote, &["cat-file", "-t", "v1.0.0"]), "tag");
    // Pushing the same tag again succeeds without change.
    r.push_tag("v1.0.0").unwrap();

    // A different v1.0.1 on the remote is never overwritten.
    repo.commit("fix: one");
    let other = repo.sibling("other");
    repo.git_in(
        repo.path().parent().unwrap(),
        &["clone", "--quiet", &url, other.to_str().unwrap()],
    );
    repo.git_in(
        &other,
        &[
            "commit",
            "--quiet",
            "--allow-empty",
            "--message",
            "fix: elsewhere",
        ],
    );
    repo.git_in(
        &other,
        &["tag", "--annotate", "v1.0.1", "--message", "v1.0.1"],
    );
    repo.git_in(&other, &["push", "--quiet", "origin", "v1.0.1"]);
    let outcome = release(&repo);
    assert_eq!(outcome, TagOutcome::Created("v1.0.1".into()));
    match r.push_tag("v1.0.1") {
        Err(RepoError::Push { stderr, .. }) => assert!(stderr.contains("rejected"), "{stderr}"),
        other => panic!("expected a rejected push, got {other:?}"),
    }
}

#[test]
fn repository_without_commits() {
    let repo = TestRepo::new();
    let err = plan_err(&repo, None);
    assert!(matches!(err, RepoError::NoCommits), "{err:?}");
    assert!(err.to_string().contains("no commits"));
}

#[test]
fn not_a_repository() {
    let dir = tempfile::TempDir::new().unwrap();
    let err = ReleaseRepo::open(dir.path())
        .err()
        .expect("not a repository");
    assert!(
        err.to_string().contains("is not inside a git repository"),
        "{err}"
    );
}

#[test]
fn shallow_clone_without_the_last_tag_says_fetch_tags() {
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
            "--depth",
            "1",
            "--no-tags",
            &url,
            clone.to_str().unwrap(),
        ],
    );
    let err = ReleaseRepo::open(&clone)
        .and_then(|r| r.plan(None))
        .expect_err("shallow");
    assert!(
        matches!(err, RepoError::ShallowWithoutTag { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("git fetch --unshallow --tags"),
        "{message}"
    );
    assert!(message.contains("fetch-depth: 0"), "{message}");

    origin.git_in(&clone, &["fetch", "--quiet", "--unshallow", "--tags"]);
    let plan = ReleaseRepo::open(&clone).unwrap().plan(None).unwrap();
    assert_eq!(plan.next, Some(Version::new(1, 0, 1)));
}

#[test]
fn malformed_reachable_tag_is_refused_others_ignored() {
    let repo = TestRepo::new();
    repo.commit("feat: one");
    repo.tag("v1.0.0");
    repo.tag("vendor-snapshot");
    repo.git(&["switch", "--quiet", "--create", "side"]);
    repo.commit("fix: side");
    repo.tag("v9.9");
    repo.git(&["switch", "--quiet", "main"]);
    repo.commit("fix: two");
    // `v9.9` is malformed but not on main's history, `vendor-snapshot` is no release tag.
    assert_eq!(next(&repo).as_deref(), Some("1.0.1"));

    repo.tag("v1.1");
    repo.commit("fix: three");
    let err = plan_err(&repo, None);
    let message = err.to_string();
    assert!(matches!(err, RepoError::MalformedTag { .. }), "{err:?}");
    assert!(message.contains("tag `v1.1`"), "{message}");
    assert!(message.contains("not a semantic version"), "{message}");
}

#[test]
fn configuration_file_changes_format_initial_version_and_0x_rule() {
    let repo = TestRepo::new();
    repo.write(
        ".gantry/release.toml",
        "tag_format = \"release-${version}\"\ninitial_version = \"0.1.0\"\nbreaking_bumps_minor_before_1_0 = true\n",
    );
    repo.commit("feat: first");
    let r = ReleaseRepo::open(repo.path()).unwrap();
    let plan = r.plan(None).unwrap();
    assert_eq!(plan.tag_name.as_deref(), Some("release-0.1.0"));
    r.tag(&plan, "first").unwrap();
    repo.commit("feat!: break while 0.x");
    let plan = r.plan(None).unwrap();
    assert_eq!(plan.tag_name.as_deref(), Some("release-0.2.0"));
}

#[test]
fn invalid_configuration_is_reported_with_the_file() {
    let repo = TestRepo::new();
    repo.write(".gantry/release.toml", "tag_format = 3\n");
    repo.commit("feat: x");
    let err = ReleaseRepo::open(repo.path())
        .err()
        .expect("invalid config");
    let message = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(message.contains(".gantry/release.toml"), "{message}");
}

#[test]
fn branch_option_and_detached_head() {
    let origin = TestRepo::new();
    origin.commit("feat: one");
    origin.git(&["switch", "--quiet", "--create", "beta"]);
    origin.commit("feat: beta work");
    origin.git(&["switch", "--quiet", "main"]);
    let clone = origin.sibling("clone");
    let url = format!("file://{}", origin.path().display());
    origin.git_in(
        origin.path().parent().unwrap(),
        &["clone", "--quiet", &url, clone.to_str().unwrap()],
    );
    origin.git_in(&clone, &["switch", "--quiet", "--detach", "HEAD"]);

    let r = ReleaseRepo::open(&clone).unwrap();
    assert!(matches!(r.plan(None), Err(RepoError::DetachedHead)));
    // Only `origin/beta` exists in the clone: the remote-tracking branch is used.
    let plan = r.plan(Some("beta")).unwrap();
    assert_eq!(
        plan.next.map(|v| v.to_string()).as_deref(),
        Some("1.0.0-beta.1")
    );
    assert_eq!(plan.target.to_string(), origin.git(&["rev-parse", "beta"]));
    assert!(matches!(
        r.plan(Some("nope")),
        Err(RepoError::UnknownBranch { .. })
    ));
}

#[test]
fn stable_version_tagged_on_another_branch_is_refused() {
    let repo = TestRepo::new();
    repo.commit("feat: base");
    repo.tag("v1.0.0");
    repo.git(&["switch", "--quiet", "--create", "hotfix"]);
    repo.commit("fix: hotfix");
    repo.tag("v1.0.1");
    repo.git(&["switch", "--quiet", "main"]);
    repo.commit("fix: the same number on main");
    let err = plan_err(&repo, None);
    assert!(matches!(err, RepoError::Version(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("1.0.1 is already released elsewhere"),
        "{err}"
    );
}

//! `gantry image policy` and `gantry image update` run as a process: output, files and exit codes
//! as a person testing a policy or a marker sees them.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn gantry(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
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

const TAGS: &str = "latest\nv1.0.0\n1.2.0\n1.10.0-rc.1\n1.9.3\n2.0.0\nmain-abc1234-1700000100\nmain-def5678-1700000200\n";

#[test]
fn policy_prints_the_chosen_tag() {
    for (args, want) in [
        (vec!["--semver", ">=1.0.0 <2.0.0"], "1.9.3"),
        (vec!["--semver", "^1.0.0-0"], "1.10.0-rc.1"),
        (vec!["--semver", "1.0.x"], "v1.0.0"),
        // Byte-wise: `v` sorts after `m` and the digits.
        (vec!["--alphabetical", "asc"], "v1.0.0"),
        (vec!["--alphabetical", "DESC"], "1.10.0-rc.1"),
        (
            vec![
                "--numerical",
                "asc",
                "--pattern",
                r"^main-[a-f0-9]+-(?P<ts>\d+)$",
                "--extract",
                "$ts",
            ],
            "main-def5678-1700000200",
        ),
        (
            vec![
                "--numerical",
                "desc",
                "--pattern",
                r"^main-[a-f0-9]+-(\d+)$",
                "--extract",
                "$1",
            ],
            "main-abc1234-1700000100",
        ),
    ] {
        let mut full = vec!["image", "policy"];
        full.extend(&args);
        let out = gantry(&full, TAGS);
        assert_eq!(
            (code(&out), stdout(&out)),
            (0, format!("{want}\n")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn policy_streams_many_tags_with_crlf_and_blank_lines() {
    let mut tags = String::new();
    for i in 0..20_000 {
        tags.push_str(&format!("1.{}.{}\r\n\n", i / 100, i % 100));
    }
    let out = gantry(&["image", "policy", "--semver", "<1.150"], &tags);
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "1.149.99\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_match_exits_1_with_a_message() {
    let out = gantry(&["image", "policy", "--semver", ">=3"], TAGS);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("no tag matches"), "{}", stderr(&out));
    // Nothing on stdin at all.
    let out = gantry(&["image", "policy", "--alphabetical", "asc"], "");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // A filter nothing passes.
    let out = gantry(
        &[
            "image",
            "policy",
            "--alphabetical",
            "asc",
            "--pattern",
            "^nope",
        ],
        TAGS,
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
}

#[test]
fn numerical_over_a_non_number_exits_1_and_names_it() {
    let out = gantry(&["image", "policy", "--numerical", "asc"], "1\n2\nv3\n");
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("'v3' is not a number"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_range_regex_or_usage_exit_2() {
    for args in [
        vec!["--semver", ">= bar"],
        vec!["--semver", ""],
        vec!["--alphabetical", "asc", "--pattern", "(unclosed"],
        // clap's own usage errors: no policy, two policies, a bad order, extract without pattern.
        vec![],
        vec!["--semver", "1", "--numerical", "asc"],
        vec!["--alphabetical", "up"],
        vec!["--alphabetical", "asc", "--extract", "$1"],
    ] {
        let mut full = vec!["image", "policy"];
        full.extend(&args);
        let out = gantry(&full, TAGS);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
    let out = gantry(&["image", "policy", "--semver", ">= bar"], TAGS);
    assert!(
        stderr(&out).contains("invalid semver range '>= bar'"),
        "{}",
        stderr(&out)
    );
}

const DEPLOY: &str = "apiVersion: apps/v1\r\nkind: Deployment\r\nmetadata:\r\n  name: app\r\nspec:\r\n  template:\r\n    spec:\r\n      containers:\r\n      - name: app   # main container\r\n        image: ghcr.io/org/app:1.0.0 # {\"$imagepolicy\": \"flux-system:app\"}\r\n        args: |\r\n          --image ghcr.io/org/app:1.0.0\r\n";

const VALUES: &str = "image:\n  repository: ghcr.io/org/app # {\"$imagepolicy\": \"flux-system:app:name\"}\n  tag: '1.0.0' # {\"$imagepolicy\": \"flux-system:app:tag\"}\n  other: x:1 # {\"$imagepolicy\": \"flux-system:unknown\"}\n";

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("apps/staging")).unwrap();
    std::fs::write(dir.join("apps/deploy.yaml"), DEPLOY).unwrap();
    std::fs::write(dir.join("apps/staging/values.yml"), VALUES).unwrap();
    std::fs::write(
        dir.join("README.md"),
        "image: x # {\"$imagepolicy\": \"flux-system:app\"}\n",
    )
    .unwrap();
}

#[test]
fn update_rewrites_only_marked_scalars_and_prints_changes() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let path = dir.path().to_str().unwrap();
    let out = gantry(
        &[
            "image",
            "update",
            "--path",
            path,
            "--set",
            "flux-system:app=ghcr.io/org/app:1.1.0",
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "apps/deploy.yaml:10: ghcr.io/org/app:1.0.0 -> ghcr.io/org/app:1.1.0 (flux-system:app)\n\
         apps/staging/values.yml:3: 1.0.0 -> 1.1.0 (flux-system:app:tag)\n"
    );
    assert!(
        stderr(&out).contains("unknown policy 'flux-system:unknown'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("apps/deploy.yaml")).unwrap(),
        DEPLOY.replacen("app:1.0.0 #", "app:1.1.0 #", 1)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("apps/staging/values.yml")).unwrap(),
        VALUES.replace("'1.0.0'", "'1.1.0'")
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("README.md")).unwrap(),
        "image: x # {\"$imagepolicy\": \"flux-system:app\"}\n"
    );
    // A second run has nothing to do.
    let again = gantry(
        &[
            "image",
            "update",
            "--path",
            path,
            "--set",
            "flux-system:app=ghcr.io/org/app:1.1.0",
        ],
        "",
    );
    assert_eq!(
        (code(&again), stdout(&again).as_str()),
        (0, ""),
        "{}",
        stderr(&again)
    );
    assert!(stderr(&again).contains("no marker needed a change"));
}

#[test]
fn dry_run_prints_a_diff_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let path = dir.path().to_str().unwrap();
    let out = gantry(
        &[
            "image",
            "update",
            "--dry-run",
            "--path",
            path,
            "--set",
            "flux-system:app=ghcr.io/org/app:2.0.0@sha256:0123",
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let diff = stdout(&out);
    assert!(
        diff.contains("--- a/apps/deploy.yaml\n+++ b/apps/deploy.yaml\n"),
        "{diff}"
    );
    assert!(
        diff.contains("-        image: ghcr.io/org/app:1.0.0 # {\"$imagepolicy\": \"flux-system:app\"}\r\n+        image: ghcr.io/org/app:2.0.0@sha256:0123 # {\"$imagepolicy\": \"flux-system:app\"}\r\n"),
        "{diff}"
    );
    assert!(diff.contains("-  tag: '1.0.0'"), "{diff}");
    assert!(diff.contains("+  tag: '2.0.0'"), "{diff}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("apps/deploy.yaml")).unwrap(),
        DEPLOY
    );
}

#[test]
fn an_invalid_yaml_file_is_reported_and_the_others_still_updated() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let broken = "a: x # {\"$imagepolicy\": \"flux-system:app\"}\nb: [unclosed\n";
    std::fs::write(dir.path().join("apps/broken.yaml"), broken).unwrap();
    let on_map = "image: # {\"$imagepolicy\": \"flux-system:app\"}\n  name: x\n";
    std::fs::write(dir.path().join("apps/onmap.yaml"), on_map).unwrap();
    let out = gantry(
        &[
            "image",
            "update",
            "--path",
            dir.path().to_str().unwrap(),
            "--set",
            "flux-system:app=ghcr.io/org/app:1.1.0",
        ],
        "",
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("apps/broken.yaml:"), "{err}");
    assert!(err.contains("not valid YAML"), "{err}");
    assert!(
        err.contains(
            "apps/onmap.yaml:1: the marker for 'flux-system:app' is not on a single-line scalar"
        ),
        "{err}"
    );
    assert!(err.contains("2 file(s) could not be updated"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("apps/broken.yaml")).unwrap(),
        broken
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("apps/onmap.yaml")).unwrap(),
        on_map
    );
    assert!(
        stdout(&out).contains("apps/deploy.yaml:10:"),
        "{}",
        stdout(&out)
    );
    assert!(
        std::fs::read_to_string(dir.path().join("apps/deploy.yaml"))
            .unwrap()
            .contains("app:1.1.0 #")
    );
}

#[test]
fn bad_set_or_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    for set in [
        "flux-system:app",
        "app=ghcr.io/org/app:1",
        "a:b=ghcr.io/org/app",
        "a:b=img:1@",
        "a:b:c=img:1",
    ] {
        let out = gantry(&["image", "update", "--path", path, "--set", set], "");
        assert_eq!(code(&out), 2, "{set}: {}", stderr(&out));
        assert!(stderr(&out).contains("--set"), "{set}: {}", stderr(&out));
    }
    let out = gantry(&["image", "update", "--path", path], "");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let missing = dir.path().join("missing");
    let out = gantry(
        &[
            "image",
            "update",
            "--path",
            missing.to_str().unwrap(),
            "--set",
            "a:b=img:1",
        ],
        "",
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
}

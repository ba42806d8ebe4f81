//! Commit and push against real git servers on loopback (`git-http-backend` behind basic auth or
//! a bearer token, `sshd`), as image automation uses it: new branches, refspecs, nothing to
//! commit, refused pushes, and writers racing for the same branch. No mocks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use gantry_source::git::push::{
    CommitPlan, PushError, PushOutcome, PushRequest, Pushed, commit_and_push,
};
use gantry_source::git::{AUTHENTICATION_FAILED, Credentials, GIT_OPERATION_FAILED, Reference};
use gantry_testkit::git::{GitHttpServer, HttpAuth, SshKeyPair, SshServer, TestRepo, git};

const USER: &str = "flux";
const PASSWORD: &str = "s3cret";

type EditError = std::io::Error;

fn basic() -> (HttpAuth, Credentials) {
    (
        HttpAuth::Basic {
            username: USER.into(),
            password: PASSWORD.into(),
        },
        Credentials {
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            ..Default::default()
        },
    )
}

// A repository with `deploy/app.yaml` on main, served over HTTP with `auth`.
struct Fixture {
    _root: tempfile::TempDir,
    repo: TestRepo,
    server: GitHttpServer,
}

fn fixture(auth: HttpAuth) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write(
        "deploy/app.yaml",
        "image: app:1.0.0 # {\"$imagepolicy\": \"ns:app\"}\n",
    )
    .commit("initial");
    repo.tag("v1.0.0");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), auth);
    Fixture {
        _root: root,
        repo,
        server,
    }
}

fn plan(message: &str) -> CommitPlan {
    CommitPlan {
        message: message.into(),
        author_name: "fluxcdbot".into(),
        author_email: "fluxcdbot@users.noreply.github.com".into(),
    }
}

// An edit that replaces `from` with `to` in `file` and commits with `message`.
fn replace<'a>(
    file: &'a str,
    from: &'a str,
    to: &'a str,
    message: &'a str,
) -> impl FnMut(&Path) -> Result<Option<CommitPlan>, EditError> + 'a {
    move |dir| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)?;
        if !text.contains(from) {
            return Ok(None);
        }
        std::fs::write(&path, text.replace(from, to))?;
        Ok(Some(plan(message)))
    }
}

fn pushed(outcome: PushOutcome) -> Pushed {
    match outcome {
        PushOutcome::Pushed(p) => p,
        other => panic!("expected a push, got {other:?}"),
    }
}

fn show(bare: &Path, rev: &str, file: &str) -> String {
    git(bare, &["show", &format!("{rev}:{file}")])
}

fn request(url: &str, credentials: Credentials) -> PushRequest {
    let mut req = PushRequest::new(url, Reference::Branch("main".into()), credentials);
    req.timeout = Duration::from_secs(30);
    req
}

#[test]
fn pushes_over_http_with_basic_auth() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let before = f.repo.remote_head("main");
    let req = request(&f.server.url("app.git"), creds);
    let work = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let p = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.0.0", "1.1.0", "app: 1.1.0"),
        )
        .unwrap(),
    );
    eprintln!(
        "clone, edit, commit and push over HTTP: {:?}",
        started.elapsed()
    );
    assert_eq!(p.branch, "main");
    assert_eq!(p.attempts, 1);
    assert_eq!(f.repo.remote_head("main"), p.id);
    assert_eq!(p.revision, format!("main@sha1:{}", p.id));
    assert_eq!(p.checkout_revision, format!("main@sha1:{before}"));
    assert!(show(&f.repo.bare, "main", "deploy/app.yaml").contains("app:1.1.0"));
    // Parent, author, committer and message as given; comment bytes untouched.
    let log = git(
        &f.repo.bare,
        &["log", "-1", "--format=%P%n%an <%ae>%n%cn <%ce>%n%B", "main"],
    );
    assert_eq!(
        log,
        format!(
            "{before}\nfluxcdbot <fluxcdbot@users.noreply.github.com>\n\
             fluxcdbot <fluxcdbot@users.noreply.github.com>\napp: 1.1.0"
        )
    );
    assert!(
        show(&f.repo.bare, "main", "deploy/app.yaml").contains("# {\"$imagepolicy\": \"ns:app\"}")
    );
}

#[test]
fn pushes_over_http_with_a_bearer_token() {
    let f = fixture(HttpAuth::Bearer("tok3n".into()));
    let creds = Credentials {
        bearer_token: Some("tok3n".into()),
        ..Default::default()
    };
    let req = request(&f.server.url("app.git"), creds);
    let work = tempfile::tempdir().unwrap();
    let p = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.0.0", "2.0.0", "bump"),
        )
        .unwrap(),
    );
    assert_eq!(f.repo.remote_head("main"), p.id);
}

#[test]
fn pushes_over_ssh_and_deleted_files_are_committed() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("deploy/app.yaml", "image: app:1.0.0\n")
        .write("deploy/old.yaml", "old\n")
        .commit("initial");
    repo.push("HEAD:refs/heads/main");
    let server = SshServer::start();
    let creds = Credentials {
        identity: Some(server.client_key.private.clone()),
        known_hosts: Some(server.known_hosts_line()),
        ..Default::default()
    };
    let req = request(&server.url(&repo.bare), creds);
    let work = tempfile::tempdir().unwrap();
    let p = pushed(
        commit_and_push(&req, work.path(), |dir: &Path| {
            std::fs::write(dir.join("deploy/app.yaml"), "image: app:1.2.0\n")?;
            std::fs::write(dir.join("deploy/new.yaml"), "new\n")?;
            std::fs::remove_file(dir.join("deploy/old.yaml"))?;
            Ok::<_, EditError>(Some(plan("over ssh")))
        })
        .unwrap_or_else(|e| panic!("{e}\nsshd: {}", server.log())),
    );
    assert_eq!(repo.remote_head("main"), p.id);
    let files = git(&repo.bare, &["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(files, "deploy/app.yaml\ndeploy/new.yaml");
}

#[test]
fn a_new_push_branch_is_created_from_the_checkout_commit_and_then_built_upon() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let main = f.repo.remote_head("main");
    let mut req = request(&f.server.url("app.git"), creds);
    req.push_branch = Some("auto-update".into());
    let work = tempfile::tempdir().unwrap();
    let first = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.0.0", "1.1.0", "first"),
        )
        .unwrap(),
    );
    assert_eq!(first.branch, "auto-update");
    assert_eq!(first.revision, format!("auto-update@sha1:{}", first.id));
    assert_eq!(first.checkout_revision, format!("main@sha1:{main}"));
    assert_eq!(f.repo.remote_head("main"), main, "main is untouched");
    assert_eq!(f.repo.remote_head("auto-update"), first.id);
    assert_eq!(git(&f.repo.bare, &["rev-parse", "auto-update^"]), main);

    // The branch exists now: the next commit goes on top of it (its content, not main's), in a
    // fresh work directory as after a restart.
    let work = tempfile::tempdir().unwrap();
    let second = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.1.0", "1.2.0", "second"),
        )
        .unwrap(),
    );
    assert_eq!(
        git(&f.repo.bare, &["rev-parse", "auto-update^"]),
        first.id,
        "built on the existing push branch"
    );
    assert_eq!(f.repo.remote_head("auto-update"), second.id);
    assert_eq!(second.checkout_revision, format!("main@sha1:{main}"));
}

#[test]
fn a_tag_checkout_pushes_to_the_push_branch() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let tagged = f.repo.remote_head("main");
    let mut req = request(&f.server.url("app.git"), creds);
    req.checkout = Reference::Tag("v1.0.0".into());
    req.push_branch = Some("release-bump".into());
    let work = tempfile::tempdir().unwrap();
    let p = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.0.0", "1.0.1", "patch"),
        )
        .unwrap(),
    );
    assert_eq!(p.checkout_revision, format!("v1.0.0@sha1:{tagged}"));
    assert_eq!(git(&f.repo.bare, &["rev-parse", "release-bump^"]), tagged);
}

#[test]
fn the_refspec_is_pushed_after_the_branch_with_push_options() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    // The server advertises push options and records them, as Gerrit or GitLab read them.
    git(
        &f.repo.bare,
        &["config", "receive.advertisePushOptions", "true"],
    );
    let recorded = f._root.path().join("push-options.txt");
    f.repo.hook(
        "pre-receive",
        &format!(
            "#!/bin/sh\ncat >/dev/null\ni=0\nwhile [ $i -lt \"${{GIT_PUSH_OPTION_COUNT:-0}}\" ]; do\n  eval \"echo \\$GIT_PUSH_OPTION_$i\" >> {}\n  i=$((i+1))\ndone\nexit 0\n",
            recorded.display()
        ),
    );
    let mut req = request(&f.server.url("app.git"), creds);
    req.refspec = Some("refs/heads/main:refs/heads/auto-update".into());
    req.push_options = BTreeMap::from([
        ("merge_request.create".to_owned(), String::new()),
        ("ci.skip".to_owned(), "true".to_owned()),
    ]);
    let work = tempfile::tempdir().unwrap();
    let p = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.0.0", "1.3.0", "refspec"),
        )
        .unwrap(),
    );
    assert_eq!(
        p.refspec.as_deref(),
        Some("refs/heads/main:refs/heads/auto-update")
    );
    assert_eq!(f.repo.remote_head("main"), p.id);
    assert_eq!(f.repo.remote_head("auto-update"), p.id);
    let options = std::fs::read_to_string(&recorded).unwrap();
    // Once per push (branch, then refspec).
    assert_eq!(
        options,
        "ci.skip=true\nmerge_request.create\nci.skip=true\nmerge_request.create\n"
    );

    // `HEAD:` works as a source too (Gerrit's `HEAD:refs/for/main`).
    req.refspec = Some("HEAD:refs/heads/review".into());
    let work = tempfile::tempdir().unwrap();
    let p = pushed(
        commit_and_push(
            &req,
            work.path(),
            replace("deploy/app.yaml", "1.3.0", "1.4.0", "head refspec"),
        )
        .unwrap(),
    );
    assert_eq!(f.repo.remote_head("review"), p.id);
}

#[test]
fn nothing_changed_means_no_commit_and_no_push() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let before = f.repo.remote_head("main");
    let req = request(&f.server.url("app.git"), creds);

    // The edit finds nothing to do.
    let work = tempfile::tempdir().unwrap();
    let outcome = commit_and_push(
        &req,
        work.path(),
        replace("deploy/app.yaml", "9.9.9", "1.0.0", "never"),
    )
    .unwrap();
    assert_eq!(
        outcome,
        PushOutcome::NothingToCommit {
            revision: format!("main@sha1:{before}")
        }
    );

    // The edit says it changed something but wrote the same bytes.
    let work = tempfile::tempdir().unwrap();
    let outcome = commit_and_push(&req, work.path(), |dir: &Path| {
        let p = dir.join("deploy/app.yaml");
        std::fs::write(&p, std::fs::read(&p)?)?;
        Ok::<_, EditError>(Some(plan("same bytes")))
    })
    .unwrap();
    assert!(
        matches!(outcome, PushOutcome::NothingToCommit { .. }),
        "{outcome:?}"
    );
    assert_eq!(f.repo.remote_head("main"), before);
}

#[test]
fn an_edit_error_pushes_nothing() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let before = f.repo.remote_head("main");
    let req = request(&f.server.url("app.git"), creds);
    let work = tempfile::tempdir().unwrap();
    let err = commit_and_push(&req, work.path(), |dir: &Path| {
        std::fs::write(dir.join("deploy/app.yaml"), "half done")?;
        Err::<Option<CommitPlan>, _>(std::io::Error::other("deploy/app.yaml: not valid YAML"))
    })
    .unwrap_err();
    assert!(matches!(err, PushError::Edit(_)), "{err}");
    assert_eq!(err.to_string(), "deploy/app.yaml: not valid YAML");
    assert_eq!(f.repo.remote_head("main"), before);
}

#[test]
fn a_read_only_http_remote_gives_a_permission_error() {
    // git-http-backend serves receive-pack only to authenticated users: anonymous clients may
    // fetch but their push gets HTTP 403.
    let f = fixture(HttpAuth::None);
    let before = f.repo.remote_head("main");
    let url = f.server.url("app.git");
    let req = request(&url, Credentials::default());
    let work = tempfile::tempdir().unwrap();
    let err = commit_and_push(
        &req,
        work.path(),
        replace("deploy/app.yaml", "1.0.0", "1.1.0", "denied"),
    )
    .unwrap_err();
    assert!(matches!(err, PushError::Denied { .. }), "{err:?}");
    assert_eq!(err.reason(), AUTHENTICATION_FAILED);
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("403"), "{message}");
    assert_eq!(f.repo.remote_head("main"), before);
}

#[test]
fn a_read_only_ssh_key_gives_a_permission_error() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("deploy/app.yaml", "image: app:1.0.0\n")
        .commit("initial");
    repo.push("HEAD:refs/heads/main");
    let before = repo.remote_head("main");
    let server = SshServer::start();
    let keys = tempfile::tempdir().unwrap();
    let deploy_key = SshKeyPair::generate(keys.path(), "deploy");
    server.authorize_read_only(&deploy_key);
    let creds = Credentials {
        identity: Some(deploy_key.private.clone()),
        known_hosts: Some(server.known_hosts_line()),
        ..Default::default()
    };
    let url = server.url(&repo.bare);
    let req = request(&url, creds);
    let work = tempfile::tempdir().unwrap();
    // The key fetches (the edit runs on the checkout), then the push is refused.
    let mut edited = false;
    let err = commit_and_push(&req, work.path(), |dir: &Path| {
        edited = true;
        replace("deploy/app.yaml", "1.0.0", "1.1.0", "read-only")(dir)
    })
    .unwrap_err();
    assert!(edited, "fetching with a read-only key works");
    assert!(
        matches!(err, PushError::Denied { .. }),
        "{err:?}\nsshd: {}",
        server.log()
    );
    assert_eq!(err.reason(), AUTHENTICATION_FAILED);
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("denied to deploy key"), "{message}");
    assert_eq!(repo.remote_head("main"), before);
}

#[test]
fn a_push_refused_by_a_server_hook_is_reported_not_retried() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("deploy/app.yaml", "image: app:1.0.0\n")
        .commit("initial");
    repo.push("HEAD:refs/heads/main");
    let counter = root.path().join("hook-runs");
    repo.hook(
        "pre-receive",
        &format!(
            "#!/bin/sh\necho run >> {}\necho 'main is protected: open a pull request' >&2\nexit 1\n",
            counter.display()
        ),
    );
    let server = SshServer::start();
    let creds = Credentials {
        identity: Some(server.client_key.private.clone()),
        known_hosts: Some(server.known_hosts_line()),
        ..Default::default()
    };
    let url = server.url(&repo.bare);
    let req = request(&url, creds);
    let work = tempfile::tempdir().unwrap();
    let err = commit_and_push(
        &req,
        work.path(),
        replace("deploy/app.yaml", "1.0.0", "1.1.0", "refused"),
    )
    .unwrap_err();
    assert!(matches!(err, PushError::Rejected { .. }), "{err:?}");
    assert_eq!(err.reason(), GIT_OPERATION_FAILED);
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("refs/heads/main"), "{message}");
    assert!(message.contains("hook declined"), "{message}");
    assert!(
        message.contains("main is protected: open a pull request"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        1,
        "a refusal is not retried"
    );
}

#[test]
fn a_commit_pushed_between_fetch_and_push_is_kept_and_the_edit_redone() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let req = request(&f.server.url("app.git"), creds);
    let work = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let mut other = String::new();
    let p = pushed(
        commit_and_push(&req, work.path(), |dir: &Path| {
            calls += 1;
            if calls == 1 {
                // Someone else pushes after our fetch.
                f.repo.write("README.md", "someone else\n");
                other = f.repo.commit("someone else");
                f.repo.push("HEAD:refs/heads/main");
            } else {
                // The second run sees their commit in the work tree.
                assert_eq!(
                    std::fs::read_to_string(dir.join("README.md")).unwrap(),
                    "someone else\n"
                );
            }
            replace("deploy/app.yaml", "1.0.0", "1.1.0", "retry")(dir)
        })
        .unwrap(),
    );
    assert_eq!(calls, 2);
    assert_eq!(p.attempts, 2);
    assert_eq!(f.repo.remote_head("main"), p.id);
    assert_eq!(git(&f.repo.bare, &["rev-parse", "main^"]), other);
    assert!(show(&f.repo.bare, "main", "deploy/app.yaml").contains("1.1.0"));
}

#[test]
fn a_branch_that_keeps_moving_gives_up_after_max_attempts() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let mut req = request(&f.server.url("app.git"), creds);
    req.max_attempts = 3;
    let work = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let err = commit_and_push(&req, work.path(), |dir: &Path| {
        calls += 1;
        f.repo.write("README.md", &format!("race {calls}\n"));
        f.repo.commit("race");
        f.repo.push("HEAD:refs/heads/main");
        std::fs::write(dir.join("deploy/app.yaml"), format!("image: app:{calls}\n"))?;
        Ok::<_, EditError>(Some(plan("losing")))
    })
    .unwrap_err();
    assert_eq!(calls, 3);
    assert!(
        matches!(err, PushError::Conflict { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("branch 'main' moved"), "{err}");
}

#[test]
fn two_writers_pushing_to_the_same_branch_at_once_both_land() {
    let (auth, creds) = basic();
    let f = fixture(auth);
    let url = f.server.url("app.git");
    const WRITERS: usize = 2;
    const ROUNDS: usize = 3;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (barrier, creds, url) = (barrier.clone(), creds.clone(), url.clone());
            std::thread::spawn(move || {
                let mut req = request(&url, creds);
                req.max_attempts = 10;
                let mut attempts = 0;
                for round in 0..ROUNDS {
                    let work = tempfile::tempdir().unwrap();
                    barrier.wait();
                    let outcome = commit_and_push(&req, work.path(), |dir: &Path| {
                        let file = dir.join(format!("writer-{w}.txt"));
                        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
                        text.push_str(&format!("round {round}\n"));
                        std::fs::write(&file, text)?;
                        Ok::<_, EditError>(Some(plan(&format!("writer {w} round {round}"))))
                    })
                    .unwrap_or_else(|e| panic!("writer {w}: {e}"));
                    attempts += pushed(outcome).attempts;
                }
                attempts
            })
        })
        .collect();
    let attempts: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // Every commit of every writer is on main, none lost.
    let subjects = git(&f.repo.bare, &["log", "--format=%s", "main"]);
    for w in 0..WRITERS {
        for round in 0..ROUNDS {
            assert!(
                subjects.contains(&format!("writer {w} round {round}")),
                "missing writer {w} round {round} in:\n{subjects}"
            );
        }
        let expected: String = (0..ROUNDS).map(|r| format!("round {r}\n")).collect();
        assert_eq!(
            format!(
                "{}\n",
                show(&f.repo.bare, "main", &format!("writer-{w}.txt"))
            ),
            expected
        );
    }
    assert_eq!(subjects.lines().count(), 1 + WRITERS * ROUNDS);
    // Linear history: no merge commits, each commit on the previous tip.
    assert_eq!(
        git(&f.repo.bare, &["rev-list", "--merges", "main"]),
        "",
        "no merges"
    );
    eprintln!("{} pushes took {attempts} attempts", WRITERS * ROUNDS);
}

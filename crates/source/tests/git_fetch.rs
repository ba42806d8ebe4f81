//! Fetching from real git servers on loopback: `git-http-backend` behind HTTP basic auth or a
//! bearer token, and `sshd` with a test key. No mocks.

use std::path::Path;
use std::time::Duration;

use gantry_source::artifact::ArtifactStore;
use gantry_source::git::auth::hashed_known_hosts_line;
use gantry_source::git::{Credentials, FetchOutcome, FetchRequest, GitError, Reference, fetch};
use gantry_source::sourceignore::SourceIgnore;
use gantry_testkit::git::{
    GitHttpServer, HttpAuth, PROXIED_HOST, SshKeyPair, SshServer, TestRepo, free_port,
};

const USER: &str = "flux";
const PASSWORD: &str = "s3cret";

fn basic() -> HttpAuth {
    HttpAuth::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

fn basic_creds() -> Credentials {
    Credentials {
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..Default::default()
    }
}

fn request(url: &str, reference: Reference, credentials: Credentials) -> FetchRequest {
    FetchRequest {
        url: url.into(),
        reference,
        credentials,
        timeout: Duration::from_secs(30),
        last_revision: None,
        recurse_submodules: false,
        proxy: None,
    }
}

fn fetched(req: &FetchRequest) -> (gantry_source::git::Commit, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    match fetch(req, dir.path()) {
        Ok(FetchOutcome::Fetched(c)) => (c, dir),
        other => panic!("expected a fetch of {}, got {other:?}", req.url),
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn fetch_err(req: &FetchRequest) -> GitError {
    let dir = tempfile::tempdir().unwrap();
    match fetch(req, dir.path()) {
        Err(e) => e,
        Ok(o) => panic!("expected an error from {}, got {o:?}", req.url),
    }
}

// main: two commits; tags v1.0.0 (lightweight), v1.2.0 (annotated), v1.3.0-rc.1, v2.0.0;
// refs/pull/1/head; branch dev.
struct Fixture {
    _root: tempfile::TempDir,
    repo: TestRepo,
    server: GitHttpServer,
}

fn fixture(auth: HttpAuth) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("deploy/app.yaml", "version: 1.0.0\n")
        .commit("one");
    repo.tag("v1.0.0");
    repo.write("deploy/app.yaml", "version: 1.2.0\n")
        .commit("two");
    repo.annotated_tag("v1.2.0");
    repo.write("deploy/app.yaml", "version: 1.3.0-rc.1\n")
        .commit("rc");
    repo.tag("v1.3.0-rc.1");
    repo.write("deploy/app.yaml", "version: 2.0.0\n")
        .commit("three");
    repo.tag("v2.0.0");
    repo.push("HEAD:refs/heads/main");
    repo.checkout("pr")
        .write("pr.yaml", "pr: 1\n")
        .commit("pull request");
    repo.push("HEAD:refs/pull/1/head");
    repo.checkout("main");
    repo.checkout("dev")
        .write("dev.yaml", "dev: true\n")
        .commit("dev work");
    repo.push("HEAD:refs/heads/dev");
    repo.checkout("main");
    let server = GitHttpServer::start(root.path(), auth);
    Fixture {
        _root: root,
        repo,
        server,
    }
}

#[test]
fn http_basic_auth_fetches_the_branch_with_flux_revision() {
    let f = fixture(basic());
    let head = f.repo.head();
    let req = request(
        &f.server.url("app.git"),
        Reference::Branch("main".into()),
        basic_creds(),
    );
    let (commit, dir) = fetched(&req);
    assert_eq!(commit.revision, format!("main@sha1:{head}"));
    assert_eq!(commit.id, head);
    assert_eq!(commit.subject, "three");
    assert_eq!(read(dir.path(), "deploy/app.yaml"), "version: 2.0.0\n");
}

#[test]
fn http_bearer_token() {
    let f = fixture(HttpAuth::Bearer("t0ken".into()));
    let url = f.server.url("app.git");
    let creds = |t: &str| Credentials {
        bearer_token: Some(t.into()),
        ..Default::default()
    };
    let (commit, _dir) = fetched(&request(
        &url,
        Reference::Branch("main".into()),
        creds("t0ken"),
    ));
    assert_eq!(commit.revision, format!("main@sha1:{}", f.repo.head()));

    // ls-remote with the token too: an unchanged remote is not fetched again.
    let packs = f.server.upload_pack_requests();
    let mut again = request(&url, Reference::Branch("main".into()), creds("t0ken"));
    again.last_revision = Some(commit.revision.clone());
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        fetch(&again, dir.path()).unwrap(),
        FetchOutcome::Unchanged {
            revision: commit.revision.clone()
        }
    );
    assert_eq!(f.server.upload_pack_requests(), packs);

    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        creds("wrong"),
    ));
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn every_reference_kind_gives_flux_revisions() {
    let f = fixture(basic());
    let url = f.server.url("app.git");
    let rev = |name: &str| f.repo.git(&["rev-parse", &format!("{name}^{{commit}}")]);
    let cases = [
        (
            Reference::Branch("dev".into()),
            format!("dev@sha1:{}", rev("dev")),
            "dev.yaml",
        ),
        (
            Reference::Tag("v1.0.0".into()),
            format!("v1.0.0@sha1:{}", rev("v1.0.0")),
            "deploy/app.yaml",
        ),
        // Annotated: the revision names the commit, not the tag object.
        (
            Reference::Tag("v1.2.0".into()),
            format!("v1.2.0@sha1:{}", rev("v1.2.0")),
            "deploy/app.yaml",
        ),
        (
            Reference::Semver(">=1.0.0 <2.0.0".into()),
            format!("v1.2.0@sha1:{}", rev("v1.2.0")),
            "deploy/app.yaml",
        ),
        (
            Reference::Semver("^1.0.0-0".into()),
            format!("v1.3.0-rc.1@sha1:{}", rev("v1.3.0-rc.1")),
            "deploy/app.yaml",
        ),
        (
            Reference::Semver("*".into()),
            format!("v2.0.0@sha1:{}", rev("v2.0.0")),
            "deploy/app.yaml",
        ),
        (
            Reference::Name("refs/pull/1/head".into()),
            format!("refs/pull/1/head@sha1:{}", rev("pr")),
            "pr.yaml",
        ),
        (
            Reference::Commit {
                commit: rev("v1.0.0"),
                branch: None,
            },
            format!("sha1:{}", rev("v1.0.0")),
            "deploy/app.yaml",
        ),
        (
            Reference::Commit {
                commit: rev("v1.2.0"),
                branch: Some("main".into()),
            },
            format!("main@sha1:{}", rev("v1.2.0")),
            "deploy/app.yaml",
        ),
    ];
    for (reference, expected, file) in cases {
        let (commit, dir) = fetched(&request(&url, reference.clone(), basic_creds()));
        assert_eq!(commit.revision, expected, "{reference:?}");
        assert!(
            dir.path().join(file).is_file(),
            "{reference:?} checks out {file}"
        );
    }
    let (_, dir) = fetched(&request(
        &url,
        Reference::Tag("v1.0.0".into()),
        basic_creds(),
    ));
    assert_eq!(read(dir.path(), "deploy/app.yaml"), "version: 1.0.0\n");

    let err = fetch_err(&request(
        &url,
        Reference::Branch("nope".into()),
        basic_creds(),
    ));
    assert_eq!(err.reason(), "GitOperationFailed");
    assert!(err.to_string().contains("branch 'nope' not found"), "{err}");
    let err = fetch_err(&request(
        &url,
        Reference::Semver(">=9".into()),
        basic_creds(),
    ));
    assert!(err.to_string().contains("semver range '>=9'"), "{err}");
}

#[test]
fn an_unchanged_remote_is_not_fetched_again() {
    let f = fixture(basic());
    let url = f.server.url("app.git");
    let mut req = request(&url, Reference::Branch("main".into()), basic_creds());
    let (first, _dir) = fetched(&req);
    let packs = f.server.upload_pack_requests();
    assert!(packs >= 1, "the first fetch negotiated a pack");

    req.last_revision = Some(first.revision.clone());
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        fetch(&req, dir.path()).unwrap(),
        FetchOutcome::Unchanged {
            revision: first.revision.clone()
        }
    );
    assert_eq!(
        f.server.upload_pack_requests(),
        packs,
        "no upload-pack after ls-remote"
    );
    assert!(
        std::fs::read_dir(dir.path().join("deploy")).is_err(),
        "nothing checked out"
    );

    f.repo
        .write("deploy/app.yaml", "version: 3\n")
        .commit("four");
    f.repo.push("HEAD:refs/heads/main");
    let (next, dir) = fetched(&req);
    assert_eq!(next.revision, format!("main@sha1:{}", f.repo.head()));
    assert_eq!(read(dir.path(), "deploy/app.yaml"), "version: 3\n");
    assert!(f.server.upload_pack_requests() > packs);
}

#[test]
fn a_force_push_rewriting_history_is_followed() {
    let f = fixture(basic());
    let mut req = request(
        &f.server.url("app.git"),
        Reference::Branch("main".into()),
        basic_creds(),
    );
    let (before, _d) = fetched(&req);
    f.repo
        .orphan("rewritten")
        .write("only.yaml", "rewritten: true\n");
    let new_head = f.repo.commit("history rewritten");
    f.repo.push("HEAD:refs/heads/main");
    req.last_revision = Some(before.revision);
    let (after, dir) = fetched(&req);
    assert_eq!(after.revision, format!("main@sha1:{new_head}"));
    assert_eq!(read(dir.path(), "only.yaml"), "rewritten: true\n");
    assert!(!dir.path().join("deploy").exists(), "old tree is gone");
}

#[test]
fn a_wrong_password_is_an_authentication_failure() {
    let f = fixture(basic());
    let url = f.server.url("app.git");
    let creds = Credentials {
        username: Some(USER.into()),
        password: Some("wrong".into()),
        ..Default::default()
    };
    let err = fetch_err(&request(&url, Reference::Branch("main".into()), creds));
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("401"), "{msg}");

    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        Credentials::default(),
    ));
    assert_eq!(
        err.reason(),
        "AuthenticationFailed",
        "no credentials at all: {err}"
    );
}

#[test]
fn a_server_that_is_down_is_a_clear_git_error() {
    let url = format!("http://127.0.0.1:{}/app.git", free_port());
    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        basic_creds(),
    ));
    assert_eq!(err.reason(), "GitOperationFailed");
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(
        msg.to_lowercase().contains("connect"),
        "names the cause: {msg}"
    );
}

struct SshFixture {
    _root: tempfile::TempDir,
    repo: TestRepo,
    server: SshServer,
}

fn ssh_fixture() -> SshFixture {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("deploy/app.yaml", "over: ssh\n").commit("one");
    repo.tag("v1.0.0");
    repo.push("HEAD:refs/heads/main");
    SshFixture {
        _root: root,
        repo,
        server: SshServer::start(),
    }
}

fn ssh_creds(server: &SshServer, known_hosts: String) -> Credentials {
    Credentials {
        identity: Some(server.client_key.private.clone()),
        known_hosts: Some(known_hosts),
        ..Default::default()
    }
}

#[test]
fn ssh_with_identity_and_known_hosts() {
    let f = ssh_fixture();
    let url = f.server.url(&f.repo.bare);
    let plain = ssh_creds(&f.server, f.server.known_hosts_line());
    let (commit, dir) = fetched(&request(&url, Reference::Branch("main".into()), plain));
    assert_eq!(commit.revision, format!("main@sha1:{}", f.repo.head()));
    assert_eq!(read(dir.path(), "deploy/app.yaml"), "over: ssh\n");

    // Hashed known_hosts entries (`ssh-keyscan -H`) work the same.
    let key = f.server.host_key.public_key();
    let (key_type, blob) = key.split_once(' ').unwrap();
    let blob = base64_decode(blob);
    let hashed = hashed_known_hosts_line(
        "127.0.0.1",
        f.server.port(),
        key_type,
        &blob,
        b"saltsaltsaltsaltsalt",
    );
    let (commit, _dir) = fetched(&request(
        &url,
        Reference::Tag("v1.0.0".into()),
        ssh_creds(&f.server, format!("# hashed\n{hashed}\n")),
    ));
    assert_eq!(commit.revision, format!("v1.0.0@sha1:{}", f.repo.head()));
}

#[test]
fn ssh_with_a_wrong_host_key_fails_with_host_key_mismatch() {
    let f = ssh_fixture();
    let keys = tempfile::tempdir().unwrap();
    let impostor = SshKeyPair::generate(keys.path(), "other_host");
    let known = format!("[127.0.0.1]:{} {}", f.server.port(), impostor.public_key());
    let url = f.server.url(&f.repo.bare);
    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        ssh_creds(&f.server, known),
    ));
    assert_eq!(err.reason(), "GitOperationFailed");
    let msg = err.to_string();
    assert!(
        msg.contains("host key mismatch") && msg.contains(&url),
        "{msg}"
    );

    let unknown = format!("[127.0.0.1]:1 {}", f.server.host_key.public_key());
    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        ssh_creds(&f.server, unknown),
    ));
    assert!(err.to_string().contains("not in known_hosts"), "{err}");
}

#[test]
fn ssh_with_a_key_the_server_does_not_accept_is_an_authentication_failure() {
    let f = ssh_fixture();
    let keys = tempfile::tempdir().unwrap();
    let stranger = SshKeyPair::generate(keys.path(), "stranger");
    let creds = Credentials {
        identity: Some(stranger.private),
        known_hosts: Some(f.server.known_hosts_line()),
        ..Default::default()
    };
    let err = fetch_err(&request(
        &f.server.url(&f.repo.bare),
        Reference::Branch("main".into()),
        creds,
    ));
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
}

#[test]
fn artifacts_of_the_same_tree_have_the_same_digest_and_ignore_rules_apply() {
    let f = fixture(basic());
    f.repo
        .write(".sourceignore", "/docs/\n")
        .write("docs/readme.md", "docs")
        .write("deploy/logo.png", "png")
        .write("deploy/.sourceignore", "*.tmp\n")
        .write("deploy/x.tmp", "tmp");
    f.repo.commit("docs and noise");
    f.repo.push("HEAD:refs/heads/main");

    let store_root = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(store_root.path(), "http://gantry.test");
    let req = request(
        &f.server.url("app.git"),
        Reference::Branch("main".into()),
        basic_creds(),
    );
    let mut digests = Vec::new();
    for _ in 0..2 {
        // Two independent checkouts (different mtimes, inode order) of the same commit.
        let (commit, dir) = fetched(&req);
        std::thread::sleep(Duration::from_millis(1100));
        let rules = SourceIgnore::load(dir.path(), None).unwrap();
        let a = store
            .store(
                "gitrepository",
                "ns",
                "app",
                dir.path(),
                &rules,
                &commit.revision,
            )
            .unwrap();
        digests.push(a);
    }
    assert_eq!(digests[0].digest, digests[1].digest);
    assert!(digests[0].digest.starts_with("sha256:") && digests[0].digest.len() == 71);

    let opened = store.open(&digests[1]).unwrap();
    let p = opened.path();
    assert!(p.join("deploy/app.yaml").is_file());
    assert!(!p.join("docs").exists(), ".sourceignore at the root");
    assert!(!p.join("deploy/x.tmp").exists(), "nested .sourceignore");
    assert!(
        p.join("deploy/logo.png").exists(),
        "user patterns replace the defaults"
    );
    assert!(!p.join(".git").exists());

    // spec.ignore comes last and wins; a content change changes the digest.
    let (commit, dir) = fetched(&req);
    let rules = SourceIgnore::load(dir.path(), Some("deploy/\n")).unwrap();
    let other = store
        .store(
            "gitrepository",
            "ns",
            "app",
            dir.path(),
            &rules,
            &commit.revision,
        )
        .unwrap();
    assert_ne!(other.digest, digests[0].digest);
    let opened = store.open(&other).unwrap();
    assert!(!opened.path().join("deploy").exists());
    assert!(opened.path().join(".sourceignore").is_file());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn https_with_the_ca_from_the_secret() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("app.yaml", "over: https\n").commit("one");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start_tls(root.path(), basic());
    let url = server.url("app.git");
    assert!(url.starts_with("https://"));
    let with_ca = |ca: Option<&str>| Credentials {
        ca_cert: ca.map(str::to_owned),
        ..basic_creds()
    };

    let (commit, dir) = fetched(&request(
        &url,
        Reference::Branch("main".into()),
        with_ca(server.ca_pem()),
    ));
    assert_eq!(commit.revision, format!("main@sha1:{}", repo.head()));
    assert_eq!(read(dir.path(), "app.yaml"), "over: https\n");

    // The system roots do not know the test CA.
    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        with_ca(None),
    ));
    assert_eq!(err.reason(), "GitOperationFailed");
    assert!(err.to_string().contains(&url), "{err}");

    // Another CA is not this server's.
    let other_root = tempfile::tempdir().unwrap();
    let other = GitHttpServer::start_tls(other_root.path(), basic());
    let err = fetch_err(&request(
        &url,
        Reference::Branch("main".into()),
        with_ca(other.ca_pem()),
    ));
    assert!(err.to_string().contains("unknown authority"), "{err}");
}

#[test]
fn ssh_with_a_passphrase_protected_identity() {
    let f = ssh_fixture();
    let keys = tempfile::tempdir().unwrap();
    for key_type in ["ed25519", "ecdsa", "rsa"] {
        let key = SshKeyPair::generate_with(keys.path(), key_type, key_type, "open sesame");
        f.server.authorize(&key);
        let creds = |password: Option<&str>| Credentials {
            identity: Some(key.private.clone()),
            password: password.map(str::to_owned),
            known_hosts: Some(f.server.known_hosts_line()),
            ..Default::default()
        };
        let url = f.server.url(&f.repo.bare);
        let (commit, _dir) = fetched(&request(
            &url,
            Reference::Branch("main".into()),
            creds(Some("open sesame")),
        ));
        assert_eq!(
            commit.revision,
            format!("main@sha1:{}", f.repo.head()),
            "{key_type}"
        );
        let err = fetch_err(&request(
            &url,
            Reference::Branch("main".into()),
            creds(Some("wrong")),
        ));
        assert_eq!(err.reason(), "AuthenticationFailed", "{key_type}: {err}");
    }
}

#[test]
fn submodules_are_checked_out_with_the_same_credentials() {
    let root = tempfile::tempdir().unwrap();
    let server = GitHttpServer::start(root.path(), basic());
    let sub = TestRepo::new(root.path(), "sub");
    sub.write("lib.yaml", "from: submodule\n").commit("sub");
    sub.push("HEAD:refs/heads/main");
    let app = TestRepo::new(root.path(), "app");
    app.write("app.yaml", "a: 1\n");
    let bare = sub.bare.to_string_lossy().into_owned();
    app.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "--quiet",
        &bare,
        "vendor/sub",
    ]);
    // What the fetcher sees: the submodule behind the same authenticated server.
    app.git(&[
        "config",
        "-f",
        ".gitmodules",
        "submodule.vendor/sub.url",
        &server.url("sub.git"),
    ]);
    app.commit("with submodule");
    app.push("HEAD:refs/heads/main");

    let mut req = request(
        &server.url("app.git"),
        Reference::Branch("main".into()),
        basic_creds(),
    );
    let (_, without) = fetched(&req);
    assert!(!without.path().join("vendor/sub/lib.yaml").exists());

    req.recurse_submodules = true;
    let (commit, dir) = fetched(&req);
    assert_eq!(commit.revision, format!("main@sha1:{}", app.head()));
    assert_eq!(read(dir.path(), "vendor/sub/lib.yaml"), "from: submodule\n");

    let store_root = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(store_root.path(), "http://gantry.test");
    let rules = SourceIgnore::load(dir.path(), None).unwrap();
    let a = store
        .store(
            "gitrepository",
            "ns",
            "app",
            dir.path(),
            &rules,
            &commit.revision,
        )
        .unwrap();
    let opened = store.open(&a).unwrap();
    assert!(opened.path().join("vendor/sub/lib.yaml").is_file());
    assert!(
        !opened.path().join("vendor/sub/.git").exists(),
        "no submodule .git file"
    );
}

#[test]
fn https_through_a_proxy() {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    repo.write("app.yaml", "via: proxy\n").commit("one");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start_tls(root.path(), basic());
    let proxy_root = tempfile::tempdir().unwrap();
    let proxy = GitHttpServer::start(
        proxy_root.path(),
        HttpAuth::Basic {
            username: "proxy-user".into(),
            password: "proxy p@ss".into(),
        },
    );
    // A host that does not resolve: only the proxy can reach the repository.
    let url = format!("https://{PROXIED_HOST}:{}/app.git", server.port());
    let creds = Credentials {
        ca_cert: server.ca_pem().map(str::to_owned),
        ..basic_creds()
    };
    let mut req = request(&url, Reference::Branch("main".into()), creds);
    let err = fetch_err(&req);
    assert!(err.to_string().contains(PROXIED_HOST), "{err}");

    req.proxy = Some(format!("http://127.0.0.1:{}", proxy.port()));
    let err = fetch_err(&req);
    assert!(
        proxy.unauthorized_requests() >= 1,
        "the proxy asked for credentials: {err}"
    );

    // As the controller builds it from a proxySecretRef Secret.
    let secret: std::collections::BTreeMap<String, Vec<u8>> = [
        ("address", format!("http://127.0.0.1:{}", proxy.port())),
        ("username", "proxy-user".to_string()),
        ("password", "proxy p@ss".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_bytes()))
    .collect();
    req.proxy = Some(gantry_source::git::auth::proxy_url(&secret).unwrap());
    let (commit, dir) = fetched(&req);
    assert_eq!(commit.revision, format!("main@sha1:{}", repo.head()));
    assert_eq!(read(dir.path(), "app.yaml"), "via: proxy\n");
    assert!(
        proxy.proxied_requests() >= 2,
        "ls-remote and fetch went through the proxy"
    );
}

//! Fetching a revision of a git repository with libgit2 (`git2`), over smart HTTP(S) and SSH.
//!
//! [`fetch`] resolves Flux's reference (`commit` > `name` > `semver` > `tag` > `branch`), first
//! with a ref listing only (like `git ls-remote`) so that an unchanged remote costs one round trip
//! and no pack, then fetches just that reference with force refspecs (so force-pushed history
//! simply replaces what was there) into a fresh repository and checks the commit out.
//! Everything here blocks: call it from `spawn_blocking`.

pub mod auth;
pub mod push;
pub mod tls;

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use gantry_api::source::v1::{DEFAULT_BRANCH, GitRepositoryRef};
use gantry_core::source::revision;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, Oid, RemoteCallbacks, Repository,
};

pub use auth::Credentials;
use auth::{HostKeyCheck, check_host_key, parse_known_hosts};
use gantry_core::semver::Range;

/// Flux's condition reason for refused or unusable credentials.
pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
/// Flux's condition reason for every other git failure.
pub const GIT_OPERATION_FAILED: &str = "GitOperationFailed";

/// What to check out, after Flux's precedence was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Follow a branch.
    Branch(String),
    /// A tag.
    Tag(String),
    /// The highest tag in a Masterminds semver range.
    Semver(String),
    /// A full reference name such as `refs/pull/1/head`.
    Name(String),
    /// A commit, looked up in `branch` when given (else in all branches and tags).
    Commit {
        commit: String,
        branch: Option<String>,
    },
}

impl Reference {
    /// Applies Flux's precedence to `spec.ref`; no ref means branch `master`.
    pub fn from_spec(spec: Option<&GitRepositoryRef>) -> Self {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let Some(r) = spec else {
            return Reference::Branch(DEFAULT_BRANCH.to_owned());
        };
        if let Some(commit) = non_empty(&r.commit) {
            Reference::Commit {
                commit,
                branch: non_empty(&r.branch),
            }
        } else if let Some(name) = non_empty(&r.name) {
            Reference::Name(name)
        } else if let Some(range) = non_empty(&r.semver) {
            Reference::Semver(range)
        } else if let Some(tag) = non_empty(&r.tag) {
            Reference::Tag(tag)
        } else {
            Reference::Branch(non_empty(&r.branch).unwrap_or_else(|| DEFAULT_BRANCH.to_owned()))
        }
    }
}

/// One fetch to perform.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// `http://`, `https://` or `ssh://` URL.
    pub url: String,
    /// What to check out.
    pub reference: Reference,
    /// Credentials from the secret, if any.
    pub credentials: Credentials,
    /// Limit for the whole operation.
    pub timeout: Duration,
    /// Revision of the last artifact: when the remote still resolves to it, nothing is fetched.
    pub last_revision: Option<String>,
    /// Also check out submodules (recursively), with the same credentials.
    pub recurse_submodules: bool,
    /// HTTP(S) proxy URL, credentials in its user info (`http://user:pass@proxy:3128`).
    pub proxy: Option<String>,
}

/// What a fetch produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The remote resolves to `last_revision`; nothing was downloaded or checked out.
    Unchanged {
        /// The (unchanged) revision string.
        revision: String,
    },
    /// The commit was fetched and its tree checked out into the work directory.
    Fetched(Commit),
}

/// The checked-out commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// 40-hex id.
    pub id: String,
    /// Flux revision string, e.g. `main@sha1:<id>`.
    pub revision: String,
    /// First line of the commit message.
    pub subject: String,
}

/// Why a fetch failed. Messages name the URL and the cause.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// Credentials were refused or are unusable.
    #[error("authentication failed for '{url}': {cause}")]
    Authentication { url: String, cause: String },
    /// Any other failure of the git operation (network, protocol, missing reference, ...).
    #[error("unable to fetch '{url}': {cause}")]
    Operation { url: String, cause: String },
    /// The operation did not finish in time.
    #[error("unable to fetch '{url}': timeout after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

impl GitError {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            GitError::Authentication { .. } => AUTHENTICATION_FAILED,
            _ => GIT_OPERATION_FAILED,
        }
    }
}

// What the callbacks learnt, to tell auth failures and host key problems apart afterwards.
#[derive(Default)]
struct CallbackState {
    auth_problem: std::cell::RefCell<Option<String>>,
    certificate_problem: std::cell::RefCell<Option<String>>,
}

struct Session<'a> {
    req: &'a FetchRequest,
    deadline: Instant,
    state: CallbackState,
    host: String,
    port: u16,
    username_in_url: Option<String>,
}

impl<'a> Session<'a> {
    fn new(req: &'a FetchRequest) -> Result<Self, GitError> {
        let (scheme, host, port, user) =
            parse_url(&req.url).ok_or_else(|| GitError::Operation {
                url: req.url.clone(),
                cause: "invalid URL: expected http://, https:// or ssh://host/path".into(),
            })?;
        let creds = &req.credentials;
        if scheme == "ssh" && (creds.identity.is_none() || creds.known_hosts.is_none()) {
            return Err(GitError::Authentication {
                url: req.url.clone(),
                cause: "SSH needs 'identity' and 'known_hosts' in the secret".into(),
            });
        }
        Ok(Session {
            req,
            deadline: Instant::now() + req.timeout,
            state: CallbackState::default(),
            host,
            port,
            username_in_url: user,
        })
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cb = RemoteCallbacks::new();
        let creds = &self.req.credentials;
        let state = &self.state;
        let deadline = self.deadline;
        // Counted per operation (each connects anew): libgit2 asks again after a refusal, so a
        // second ask for a secret means the first one was refused.
        let asked = Cell::new(0u32);
        cb.credentials(move |_url, username, allowed| {
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(username.unwrap_or("git"));
            }
            asked.set(asked.get() + 1);
            if asked.get() > 1 {
                let what = if allowed.contains(CredentialType::SSH_KEY) {
                    "the SSH key was refused"
                } else {
                    "the credentials were refused (HTTP 401)"
                };
                *state.auth_problem.borrow_mut() = Some(what.into());
                return Err(git2::Error::from_str(what));
            }
            if allowed.contains(CredentialType::SSH_KEY)
                && let Some(identity) = &creds.identity
            {
                let user = username
                    .map(str::to_owned)
                    .or_else(|| self.username_in_url.clone())
                    .unwrap_or_else(|| "git".into());
                return Cred::ssh_key_from_memory(&user, None, identity, creds.password.as_deref())
                    .inspect_err(|e| {
                        *state.auth_problem.borrow_mut() =
                            Some(format!("unusable SSH identity: {}", e.message()));
                    });
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && let (Some(u), Some(p)) = (&creds.username, &creds.password)
            {
                return Cred::userpass_plaintext(u, p);
            }
            let what = "the server asks for credentials the secret does not have";
            *state.auth_problem.borrow_mut() = Some(what.into());
            Err(git2::Error::from_str(what))
        });
        let (host, port) = (self.host.clone(), self.port);
        let known = creds.known_hosts.as_deref().map(parse_known_hosts);
        let ca_cert = creds.ca_cert.clone();
        cb.certificate_check(move |cert, connecting_to| {
            // Submodules may live on another host: check the key of the host actually connected.
            let (host, port) = if connecting_to == host {
                (host.clone(), port)
            } else {
                (connecting_to.to_owned(), 22)
            };
            if let Some(x509) = cert.as_x509() {
                // Without a CA of its own, libgit2's verification against the system roots holds.
                let Some(ca) = &ca_cert else {
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                return match tls::verify_server_certificate(ca, x509.data(), &host) {
                    Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                    Err(problem) => {
                        *state.certificate_problem.borrow_mut() = Some(problem.clone());
                        Err(git2::Error::new(
                            ErrorCode::Certificate,
                            ErrorClass::Ssl,
                            problem,
                        ))
                    }
                };
            }
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let problem = match (&known, hostkey.hostkey()) {
                (None, _) => "no known_hosts to check the host key against".to_owned(),
                (Some(_), None) => "the server's host key is not available".to_owned(),
                (Some(known), Some(key)) => match check_host_key(known, &host, port, key) {
                    HostKeyCheck::Match => return Ok(CertificateCheckStatus::CertificateOk),
                    HostKeyCheck::Mismatch => format!(
                        "host key mismatch for {}: the server's key is not the one in known_hosts",
                        auth::host_entry_name(&host, port)
                    ),
                    HostKeyCheck::Unknown => format!(
                        "host key verification failed: {} is not in known_hosts",
                        auth::host_entry_name(&host, port)
                    ),
                },
            };
            *state.certificate_problem.borrow_mut() = Some(problem.clone());
            Err(git2::Error::new(
                ErrorCode::Certificate,
                ErrorClass::Ssh,
                problem,
            ))
        });
        cb.transfer_progress(move |_| Instant::now() < deadline);
        cb.sideband_progress(move |_| Instant::now() < deadline);
        cb
    }

    fn proxy_options(&self) -> Option<git2::ProxyOptions<'_>> {
        self.req.proxy.as_deref().map(|url| {
            let mut po = git2::ProxyOptions::new();
            po.url(url);
            po
        })
    }

    fn fetch_options(&self) -> FetchOptions<'_> {
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(self.callbacks());
        if let Some(po) = self.proxy_options() {
            fo.proxy_options(po);
        }
        fo.download_tags(AutotagOption::None);
        fo.update_fetchhead(false);
        if let Some(token) = &self.req.credentials.bearer_token {
            fo.custom_headers(&[&format!("Authorization: Bearer {token}")]);
        }
        fo
    }

    fn error(&self, err: git2::Error) -> GitError {
        let url = self.req.url.clone();
        if Instant::now() >= self.deadline {
            return GitError::Timeout {
                url,
                timeout: self.req.timeout,
            };
        }
        if let Some(problem) = self.state.certificate_problem.borrow().clone() {
            return GitError::Operation {
                url,
                cause: problem,
            };
        }
        if let Some(problem) = self.state.auth_problem.borrow().clone() {
            return GitError::Authentication {
                url,
                cause: problem,
            };
        }
        let cause = err.message().to_owned();
        // libssh2 reports an undecryptable or unreadable identity as a failed authentication.
        let auth = err.code() == ErrorCode::Auth
            || (err.class() == ErrorClass::Ssh && cause.contains("authenticate"))
            || cause.contains("401")
            || cause.contains("authentication required")
            || cause.contains("403");
        if auth {
            GitError::Authentication { url, cause }
        } else {
            GitError::Operation { url, cause }
        }
    }

    fn operation(&self, cause: impl Into<String>) -> GitError {
        GitError::Operation {
            url: self.req.url.clone(),
            cause: cause.into(),
        }
    }
}

/// A reference resolved on the remote: which ref (for the revision string) and which commit.
struct Resolved {
    ref_name: String,
    oid: Oid,
}

/// Resolves `req.reference` from the remote's advertisement and, unless it still resolves to
/// `req.last_revision`, fetches it and checks its tree out into `workdir` (which must be empty).
pub fn fetch(req: &FetchRequest, workdir: &Path) -> Result<FetchOutcome, GitError> {
    let session = Session::new(req)?;
    let span = tracing::debug_span!("git_fetch", url = %req.url, reference = ?req.reference);
    let _enter = span.enter();

    // A pinned commit cannot move: no need to ask the server.
    if let Reference::Commit { commit, branch } = &req.reference {
        let rev = commit_revision(commit, branch.as_deref());
        if req.last_revision.as_deref() == Some(rev.as_str()) {
            return Ok(FetchOutcome::Unchanged { revision: rev });
        }
    }

    let repo = Repository::init(workdir).map_err(|e| session.operation(e.message()))?;
    let mut remote = repo
        .remote_anonymous(&req.url)
        .map_err(|e| session.operation(e.message()))?;

    let heads = list_remote(&session, &mut remote)?;
    let resolved = resolve_listed(&session, &heads)?;
    if let Some(last) = &req.last_revision {
        let rev = revision_for(
            &req.reference,
            &resolved.ref_name,
            &resolved.oid.to_string(),
        );
        if &rev == last {
            tracing::debug!(revision = %rev, "remote unchanged, not fetching");
            return Ok(FetchOutcome::Unchanged { revision: rev });
        }
    }

    let refspecs = refspecs(&req.reference, &resolved);
    let mut fo = session.fetch_options();
    if !matches!(req.reference, Reference::Commit { .. }) {
        // Only the tip is needed; history is not part of the artifact.
        fo.depth(1);
    }
    remote
        .fetch(&refspecs, Some(&mut fo), None)
        .map_err(|e| session.error(e))?;
    drop(remote);

    let (ref_name, oid) = resolve_local(&session, &repo, resolved)?;
    let commit = repo
        .find_commit(oid)
        .map_err(|e| session.operation(format!("commit {oid} not found: {}", e.message())))?;
    let tree = commit.tree().map_err(|e| session.operation(e.message()))?;
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force();
    repo.checkout_tree(tree.as_object(), Some(&mut checkout))
        .map_err(|e| session.operation(format!("checkout of {oid}: {}", e.message())))?;
    repo.set_head_detached(oid)
        .map_err(|e| session.operation(e.message()))?;
    if req.recurse_submodules {
        update_submodules(&session, &repo)?;
    }
    let id = oid.to_string();
    Ok(FetchOutcome::Fetched(Commit {
        revision: revision_for(&req.reference, &ref_name, &id),
        subject: commit
            .summary()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
        id,
    }))
}

// ls-remote: the refs the remote advertises, without downloading anything.
fn list_remote(
    session: &Session<'_>,
    remote: &mut git2::Remote<'_>,
) -> Result<Vec<(String, Oid)>, GitError> {
    if session.req.credentials.bearer_token.is_none() {
        let conn = remote
            .connect_auth(
                Direction::Fetch,
                Some(session.callbacks()),
                session.proxy_options(),
            )
            .map_err(|e| session.error(e))?;
        let heads = conn
            .list()
            .map_err(|e| session.error(e))?
            .iter()
            .map(|h| (h.name().to_owned(), h.oid()))
            .collect();
        drop(conn);
        return Ok(heads);
    }
    // `git2` has no custom headers on a bare connect, only on a download. A download of a
    // refspec that matches nothing wants no object, so no pack is requested; the
    // advertisement stays readable until the disconnect.
    let mut fo = session.fetch_options();
    remote
        .download(
            &["+refs/gantry/ls-remote:refs/gantry/ls-remote"],
            Some(&mut fo),
        )
        .map_err(|e| session.error(e))?;
    let heads = remote
        .list()
        .map_err(|e| session.error(e))?
        .iter()
        .map(|h| (h.name().to_owned(), h.oid()))
        .collect();
    remote.disconnect().map_err(|e| session.error(e))?;
    Ok(heads)
}

// Clones and checks out every submodule at the recorded commit, then theirs.
fn update_submodules(session: &Session<'_>, repo: &Repository) -> Result<(), GitError> {
    let submodules = repo
        .submodules()
        .map_err(|e| session.operation(format!("reading submodules: {}", e.message())))?;
    for mut sm in submodules {
        let path = sm.path().display().to_string();
        let mut opts = git2::SubmoduleUpdateOptions::new();
        opts.fetch(session.fetch_options());
        sm.update(true, Some(&mut opts)).map_err(|e| {
            let err = session.error(e);
            session.operation(format!("submodule '{path}': {err}"))
        })?;
        let sub = sm
            .open()
            .map_err(|e| session.operation(format!("submodule '{path}': {}", e.message())))?;
        update_submodules(session, &sub)?;
    }
    Ok(())
}

fn commit_revision(commit: &str, branch: Option<&str>) -> String {
    match branch {
        Some(b) => revision::for_branch(b, commit),
        None => revision::for_commit(commit),
    }
}

fn revision_for(reference: &Reference, ref_name: &str, id: &str) -> String {
    match reference {
        Reference::Branch(b) => revision::for_branch(b, id),
        Reference::Tag(t) => revision::for_tag(t, id),
        Reference::Semver(_) => revision::for_tag(ref_name, id),
        Reference::Name(n) => revision::for_ref_name(n, id),
        Reference::Commit { branch, .. } => commit_revision(id, branch.as_deref()),
    }
}

fn qualified(name: &str, prefix: &str) -> String {
    if name.starts_with("refs/") {
        name.to_owned()
    } else {
        format!("{prefix}{name}")
    }
}

// The commit a listed ref points to: the peeled entry (`^{}`) for annotated tags.
fn lookup(heads: &[(String, Oid)], name: &str) -> Option<Oid> {
    let peeled = format!("{name}^{{}}");
    heads
        .iter()
        .find(|(n, _)| *n == peeled)
        .or_else(|| heads.iter().find(|(n, _)| n == name))
        .map(|(_, oid)| *oid)
}

fn parse_range(session: &Session<'_>, range: &str) -> Result<Range, GitError> {
    Range::parse(range).map_err(|e| session.operation(e.to_string()))
}

fn resolve_listed(session: &Session<'_>, heads: &[(String, Oid)]) -> Result<Resolved, GitError> {
    let not_found = |what: String| session.operation(format!("{what} not found"));
    let (ref_name, oid) = match &session.req.reference {
        Reference::Branch(b) => {
            let name = qualified(b, "refs/heads/");
            let oid = lookup(heads, &name).ok_or_else(|| not_found(format!("branch '{b}'")))?;
            (name, oid)
        }
        Reference::Tag(t) => {
            let name = qualified(t, "refs/tags/");
            let oid = lookup(heads, &name).ok_or_else(|| not_found(format!("tag '{t}'")))?;
            (name, oid)
        }
        Reference::Name(n) => {
            let oid = lookup(heads, n).ok_or_else(|| not_found(format!("reference '{n}'")))?;
            (n.clone(), oid)
        }
        Reference::Semver(r) => {
            let range = parse_range(session, r)?;
            let tags = heads
                .iter()
                .filter_map(|(n, _)| n.strip_prefix("refs/tags/"))
                .filter(|t| !t.ends_with("^{}"));
            let tag = range
                .highest(tags)
                .ok_or_else(|| not_found(format!("no tag matching semver range '{r}'; tag")))?;
            let name = format!("refs/tags/{tag}");
            let oid = lookup(heads, &name).ok_or_else(|| not_found(format!("tag '{tag}'")))?;
            (name, oid)
        }
        Reference::Commit { commit, branch } => {
            if let Some(b) = branch {
                let name = qualified(b, "refs/heads/");
                lookup(heads, &name).ok_or_else(|| not_found(format!("branch '{b}'")))?;
            }
            let oid = Oid::from_str(commit)
                .map_err(|_| session.operation(format!("'{commit}' is not a commit id")))?;
            (String::new(), oid)
        }
    };
    Ok(Resolved { ref_name, oid })
}

fn refspecs(reference: &Reference, resolved: &Resolved) -> Vec<String> {
    let force = |name: &str| format!("+{name}:{name}");
    match reference {
        Reference::Commit {
            branch: Some(b), ..
        } => vec![force(&qualified(b, "refs/heads/"))],
        Reference::Commit { branch: None, .. } => vec![
            "+refs/heads/*:refs/heads/*".into(),
            "+refs/tags/*:refs/tags/*".into(),
        ],
        _ => vec![force(&resolved.ref_name)],
    }
}

// After the fetch: the commit to check out. Annotated tags were listed peeled, but the fetched
// ref points at the tag object, so refs are peeled locally.
fn resolve_local(
    session: &Session<'_>,
    repo: &Repository,
    resolved: Resolved,
) -> Result<(String, Oid), GitError> {
    if resolved.ref_name.is_empty() {
        return Ok((resolved.ref_name, resolved.oid));
    }
    let oid = repo
        .find_reference(&resolved.ref_name)
        .and_then(|r| r.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| {
            session.operation(format!(
                "reference '{}' not found: {}",
                resolved.ref_name,
                e.message()
            ))
        })?;
    Ok((resolved.ref_name, oid))
}

/// Splits `scheme://[user@]host[:port]/path` into scheme, host, port and user.
fn parse_url(url: &str) -> Option<(String, String, u16, Option<String>)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        "ssh" => 22,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next().unwrap_or(u).to_owned()), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = rest.strip_prefix(':').map(str::parse).transpose().ok()?;
        (h.to_owned(), port.unwrap_or(default_port))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (hostport.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), host, port, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_follows_flux() {
        let r = |f: fn(&mut GitRepositoryRef)| {
            let mut g = GitRepositoryRef {
                branch: Some("dev".into()),
                tag: Some("v1".into()),
                semver: Some(">=1".into()),
                name: Some("refs/pull/1/head".into()),
                commit: Some("abc".into()),
            };
            f(&mut g);
            Reference::from_spec(Some(&g))
        };
        assert_eq!(
            r(|_| {}),
            Reference::Commit {
                commit: "abc".into(),
                branch: Some("dev".into())
            }
        );
        assert_eq!(
            r(|g| g.commit = None),
            Reference::Name("refs/pull/1/head".into())
        );
        assert_eq!(
            r(|g| {
                g.commit = None;
                g.name = None
            }),
            Reference::Semver(">=1".into())
        );
        assert_eq!(
            r(|g| {
                g.commit = None;
                g.name = None;
                g.semver = None
            }),
            Reference::Tag("v1".into())
        );
        assert_eq!(
            Reference::from_spec(None),
            Reference::Branch("master".into())
        );
        assert_eq!(
            Reference::from_spec(Some(&GitRepositoryRef::default())),
            Reference::Branch("master".into())
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ssh://git@127.0.0.1:2222/repo.git"),
            Some(("ssh".into(), "127.0.0.1".into(), 2222, Some("git".into())))
        );
        assert_eq!(
            parse_url("https://github.com/org/repo"),
            Some(("https".into(), "github.com".into(), 443, None))
        );
        assert_eq!(parse_url("git@github.com:org/repo"), None);
        assert_eq!(parse_url("ftp://x/y"), None);
    }

    #[test]
    fn revisions_per_reference_kind() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            revision_for(&Reference::Branch("main".into()), "refs/heads/main", id),
            format!("main@sha1:{id}")
        );
        assert_eq!(
            revision_for(&Reference::Semver("1.x".into()), "refs/tags/v1.2.0", id),
            format!("v1.2.0@sha1:{id}")
        );
        assert_eq!(
            revision_for(
                &Reference::Commit {
                    commit: id.into(),
                    branch: None
                },
                "",
                id
            ),
            format!("sha1:{id}")
        );
    }
}

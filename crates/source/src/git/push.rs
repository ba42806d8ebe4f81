//! Commit and push for image automation: check out a branch, let the caller edit the work tree,
//! commit, push, and on a lost race start again from the new tip.
//!
//! [`commit_and_push`] follows Flux's image-automation-controller:
//! - the checkout reference is resolved as a GitRepository's (`branch`, `tag`, `semver`, `name`,
//!   `commit`), with the same credentials, known_hosts, CA and proxy as [`fetch`](super::fetch);
//! - the push branch defaults to the checkout branch; a different push branch that does not exist
//!   yet is created from the checked-out commit, and one that exists is checked out at its remote
//!   tip so the new commit goes on top of it (Flux's `GitAllBranchReferences`, on by default);
//! - author and committer are the given identity (Flux leaves the committer equal to the author);
//! - the branch is pushed first, then `refspec` (e.g. `refs/heads/main:refs/heads/auto-update`
//!   or Gerrit's `HEAD:refs/for/main`), with `push.options` as git push options.
//!
//! Unlike Flux, the push branch is never force-pushed: the commit is always made on the remote
//! tip, so a push fails only when someone else pushed in between, and then the edit is redone on
//! their tip and pushed again at once (up to [`PushRequest::max_attempts`] times) instead of
//! overwriting their commit. Everything here blocks: call it from `spawn_blocking`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gantry_core::source::revision;
use git2::{ErrorCode, Oid, PushOptions, Repository, Signature};

use super::{
    AUTHENTICATION_FAILED, FetchRequest, GIT_OPERATION_FAILED, GitError, Reference, Session,
    list_remote, lookup, refspecs, resolve_listed,
};
use crate::git::Credentials;

/// Attempts when the caller does not say: Flux gives up after five as well.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// One commit-and-push to perform.
#[derive(Clone, Debug)]
pub struct PushRequest {
    /// `http://`, `https://` or `ssh://` URL (the GitRepository's).
    pub url: String,
    /// What to check out: `git.checkout.ref`, else the GitRepository's `spec.ref`.
    pub checkout: Reference,
    /// `git.push.branch`; `None` pushes to the checkout branch.
    pub push_branch: Option<String>,
    /// `git.push.refspec`, pushed after the branch.
    pub refspec: Option<String>,
    /// `git.push.options`: sent as `key=value` (or `key` when the value is empty) push options.
    pub push_options: BTreeMap<String, String>,
    /// Credentials from the GitRepository's secret.
    pub credentials: Credentials,
    /// HTTP(S) proxy URL, credentials in its user info.
    pub proxy: Option<String>,
    /// Limit for the whole operation, retries included.
    pub timeout: Duration,
    /// How often to try when the branch moved under us (at least 1).
    pub max_attempts: u32,
}

impl PushRequest {
    /// A request with Flux's defaults: push to the checkout branch, no refspec or options, a
    /// one-minute timeout and [`DEFAULT_MAX_ATTEMPTS`].
    pub fn new(url: impl Into<String>, checkout: Reference, credentials: Credentials) -> Self {
        PushRequest {
            url: url.into(),
            checkout,
            push_branch: None,
            refspec: None,
            push_options: BTreeMap::new(),
            credentials,
            proxy: None,
            timeout: Duration::from_secs(60),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// What the edit callback decided to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPlan {
    /// The whole commit message.
    pub message: String,
    /// `git.commit.author.name`.
    pub author_name: String,
    /// `git.commit.author.email`.
    pub author_email: String,
}

/// What a commit-and-push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The edit changed nothing (or said so): no commit, no push.
    NothingToCommit {
        /// Revision of the commit the edit ran on, e.g. `main@sha1:<hex>`.
        revision: String,
    },
    /// A commit was made and pushed.
    Pushed(Pushed),
}

/// A pushed commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// 40-hex id of the new commit.
    pub id: String,
    /// The branch it was pushed to.
    pub branch: String,
    /// Flux revision string of the pushed commit, `<branch>@sha1:<hex>`.
    pub revision: String,
    /// Revision of the checked-out reference the edit started from (Flux's
    /// `observedSourceRevision` when the push branch differs from the checkout branch).
    pub checkout_revision: String,
    /// The refspec also pushed, if any.
    pub refspec: Option<String>,
    /// Attempts it took (1 when nobody pushed in between).
    pub attempts: u32,
}

/// Why a commit-and-push failed. Messages name the URL and the cause.
#[derive(Debug, thiserror::Error)]
pub enum PushError<E: std::error::Error + 'static> {
    /// Cloning or fetching failed (unreachable, credentials refused, missing reference, ...).
    #[error(transparent)]
    Fetch(#[from] GitError),
    /// The server does not let these credentials push (HTTP 403, SSH permission denied).
    #[error("permission denied pushing to '{url}': {cause}")]
    Denied { url: String, cause: String },
    /// The server refused the update (a hook, a protected branch, ...).
    #[error("push to '{url}' rejected for '{reference}': {cause}")]
    Rejected {
        url: String,
        reference: String,
        cause: String,
    },
    /// Other writers kept moving the branch; every attempt lost the race.
    #[error(
        "push to '{url}' failed: branch '{branch}' moved during each of {attempts} attempts: {cause}"
    )]
    Conflict {
        url: String,
        branch: String,
        attempts: u32,
        cause: String,
    },
    /// Any other failure of the push itself.
    #[error("unable to push to '{url}': {cause}")]
    Push { url: String, cause: String },
    /// What to push cannot be worked out from the spec.
    #[error("{0}")]
    InvalidSpec(String),
    /// A local git operation (checkout, index, commit) failed.
    #[error("git operation in the work tree failed: {0}")]
    Local(String),
    /// The caller's edit failed; nothing was pushed.
    #[error("{0}")]
    Edit(#[source] E),
}

impl<E: std::error::Error + 'static> PushError<E> {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Fetch(e) => e.reason(),
            PushError::Denied { .. } => AUTHENTICATION_FAILED,
            _ => GIT_OPERATION_FAILED,
        }
    }
}

// How one push attempt ended when it did not succeed.
enum Failure {
    // The remote branch is not where we built on: fetch and redo.
    Moved(String),
    Denied(String),
    Rejected { reference: String, cause: String },
    Other(String),
}

/// Checks `req.checkout` out into `workdir` (empty, or a work tree an earlier call left), lets
/// `edit` change files there, commits what changed and pushes it, retrying from the new remote
/// tip when another writer pushed first. `edit` runs once per attempt, each time on a clean
/// checkout; it returns `None` when there is nothing to commit.
pub fn commit_and_push<E, F>(
    req: &PushRequest,
    workdir: &Path,
    mut edit: F,
) -> Result<PushOutcome, PushError<E>>
where
    E: std::error::Error + 'static,
    F: FnMut(&Path) -> Result<Option<CommitPlan>, E>,
{
    let checkout_branch = match &req.checkout {
        Reference::Branch(b) => Some(b.clone()),
        _ => None,
    };
    let push_branch = match req.push_branch.as_deref().filter(|b| !b.is_empty()) {
        Some(b) => b.trim_start_matches("refs/heads/").to_owned(),
        None => checkout_branch.clone().ok_or_else(|| {
            PushError::InvalidSpec(
                "push spec not provided, and cannot be inferred from the checkout reference \
                 (it is not a branch): set git.push.branch"
                    .into(),
            )
        })?,
    };
    let switch_branch = checkout_branch.as_deref() != Some(push_branch.as_str());
    let fetch_req = FetchRequest {
        url: req.url.clone(),
        reference: req.checkout.clone(),
        credentials: req.credentials.clone(),
        timeout: req.timeout,
        last_revision: None,
        recurse_submodules: false,
        proxy: req.proxy.clone(),
    };
    let session = Session::new(&fetch_req)?;
    let span = tracing::debug_span!("git_push", url = %req.url, branch = %push_branch);
    let _enter = span.enter();
    let local = |e: git2::Error| PushError::Local(e.message().to_owned());

    let repo = match Repository::open(workdir) {
        Ok(r) => r,
        Err(_) => Repository::init(workdir).map_err(local)?,
    };
    let push_ref = format!("refs/heads/{push_branch}");
    let tracking = format!("refs/remotes/origin/{push_branch}");
    let max_attempts = req.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut remote = repo.remote_anonymous(&req.url).map_err(local)?;
        let heads = list_remote(&session, &mut remote)?;
        let resolved = resolve_listed(&session, &heads)?;
        let remote_push_tip = lookup(&heads, &push_ref);

        let mut specs = refspecs(&req.checkout, &resolved);
        let build_on_push_branch = switch_branch && remote_push_tip.is_some();
        if build_on_push_branch {
            specs.push(format!("+{push_ref}:{tracking}"));
        }
        let mut fo = session.fetch_options();
        if !matches!(req.checkout, Reference::Commit { .. }) {
            // The edit needs the tip only; history is not sent back either.
            fo.depth(1);
        }
        remote
            .fetch(&specs, Some(&mut fo), None)
            .map_err(|e| session.error(e))?;
        drop(remote);

        let (ref_name, checkout_oid) = super::resolve_local(&session, &repo, resolved)?;
        let checkout_revision =
            super::revision_for(&req.checkout, &ref_name, &checkout_oid.to_string());
        let base = if build_on_push_branch {
            repo.find_reference(&tracking)
                .and_then(|r| r.peel_to_commit())
                .map_err(local)?
        } else {
            repo.find_commit(checkout_oid).map_err(local)?
        };

        // A clean checkout of the base on the push branch: earlier attempts leave edits behind.
        repo.reference(&push_ref, base.id(), true, "gantry: checkout")
            .map_err(local)?;
        let mut checkout = git2::build::CheckoutBuilder::new();
        checkout.force().remove_untracked(true);
        repo.checkout_tree(base.as_object(), Some(&mut checkout))
            .map_err(local)?;
        repo.set_head(&push_ref).map_err(local)?;

        let Some(plan) = edit(workdir).map_err(PushError::Edit)? else {
            return Ok(PushOutcome::NothingToCommit {
                revision: checkout_revision,
            });
        };
        let Some(commit_id) = commit(&repo, &base, &push_ref, &plan).map_err(local)? else {
            return Ok(PushOutcome::NothingToCommit {
                revision: checkout_revision,
            });
        };

        let branch_spec = format!("{push_ref}:{push_ref}");
        match push(&session, &repo, req, &branch_spec) {
            Ok(()) => {}
            Err(Failure::Moved(cause)) if attempt < max_attempts => {
                tracing::info!(attempt, %cause, "push lost a race, redoing the edit on the new tip");
                continue;
            }
            Err(failure) => {
                return Err(into_error(req, &push_branch, attempt, failure));
            }
        }
        if let Some(spec) = req.refspec.as_deref().filter(|s| !s.is_empty()) {
            push(&session, &repo, req, spec)
                .map_err(|f| into_error(req, &push_branch, attempt, f))?;
        }
        let id = commit_id.to_string();
        tracing::debug!(commit = %id, attempts = attempt, "pushed");
        return Ok(PushOutcome::Pushed(Pushed {
            revision: revision::for_branch(&push_branch, &id),
            id,
            branch: push_branch,
            checkout_revision,
            refspec: req.refspec.clone().filter(|s| !s.is_empty()),
            attempts: attempt,
        }));
    }
}

fn into_error<E: std::error::Error + 'static>(
    req: &PushRequest,
    branch: &str,
    attempts: u32,
    failure: Failure,
) -> PushError<E> {
    let url = req.url.clone();
    match failure {
        Failure::Moved(cause) => PushError::Conflict {
            url,
            branch: branch.to_owned(),
            attempts,
            cause,
        },
        Failure::Denied(cause) => PushError::Denied { url, cause },
        Failure::Rejected { reference, cause } => PushError::Rejected {
            url,
            reference,
            cause,
        },
        Failure::Other(cause) => PushError::Push { url, cause },
    }
}

// Stages everything in the work tree and commits it on `push_ref`; `None` when the tree is the
// base's (the edit reported a change that is not one).
fn commit(
    repo: &Repository,
    base: &git2::Commit<'_>,
    push_ref: &str,
    plan: &CommitPlan,
) -> Result<Option<Oid>, git2::Error> {
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    // Files the edit deleted.
    index.update_all(["*"], None)?;
    index.write()?;
    let tree_id = index.write_tree()?;
    if tree_id == base.tree_id() {
        return Ok(None);
    }
    let tree = repo.find_tree(tree_id)?;
    let author = Signature::now(&plan.author_name, &plan.author_email)?;
    let id = repo.commit(
        Some(push_ref),
        &author,
        &author,
        &plan.message,
        &tree,
        &[base],
    )?;
    Ok(Some(id))
}

// One push of one refspec; per-reference refusals come back through the callback.
fn push(
    session: &Session<'_>,
    repo: &Repository,
    req: &PushRequest,
    refspec: &str,
) -> Result<(), Failure> {
    let refused: RefCell<Vec<(String, String)>> = RefCell::new(Vec::new());
    // What hooks print (`remote: ...` lines): the reason a server gives for a refusal.
    let remote_says: RefCell<String> = RefCell::new(String::new());
    let mut remote = repo
        .remote_anonymous(&req.url)
        .map_err(|e| Failure::Other(e.message().to_owned()))?;
    let mut cb = session.callbacks();
    let deadline = session.deadline;
    cb.sideband_progress(|text| {
        let mut said = remote_says.borrow_mut();
        if said.len() < 4096 {
            said.push_str(&String::from_utf8_lossy(text));
        }
        std::time::Instant::now() < deadline
    });
    cb.push_update_reference(|reference, status| {
        if let Some(status) = status {
            refused
                .borrow_mut()
                .push((reference.to_owned(), status.to_owned()));
        }
        Ok(())
    });
    let mut po = PushOptions::new();
    po.remote_callbacks(cb);
    if let Some(proxy) = session.proxy_options() {
        po.proxy_options(proxy);
    }
    let header;
    if let Some(token) = &req.credentials.bearer_token {
        header = format!("Authorization: Bearer {token}");
        po.custom_headers(&[&header]);
    }
    let options: Vec<String> = req
        .push_options
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    if !options.is_empty() {
        po.remote_push_options(&options);
    }
    let result = remote.push(&[refspec], Some(&mut po));
    drop(po);
    drop(remote);
    if let Err(err) = result {
        return Err(classify_error(session, err));
    }
    let refused = refused.into_inner();
    match refused.into_iter().next() {
        None => Ok(()),
        Some((reference, cause)) if is_race(&cause) => {
            Err(Failure::Moved(format!("'{reference}': {cause}")))
        }
        Some((reference, cause)) => {
            let said = remote_says.into_inner();
            let said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let cause = if said.is_empty() {
                cause
            } else {
                format!("{cause}: {}", said.join("; "))
            };
            Err(Failure::Rejected { reference, cause })
        }
    }
}

fn classify_error(session: &Session<'_>, err: git2::Error) -> Failure {
    // libgit2 checks fast-forwards itself, before sending anything.
    if err.code() == ErrorCode::NotFastForward {
        return Failure::Moved(err.message().to_owned());
    }
    let message = err.message().trim().to_owned();
    // HTTP 403, or what SSH servers print for a read-only key (GitHub: "Permission to o/r.git
    // denied to deploy key", GitLab: "You are not allowed to push code to this project").
    let lower = message.to_ascii_lowercase();
    let denied = lower.contains("403")
        || (lower.contains("permission") && lower.contains("denied"))
        || lower.contains("not allowed")
        || lower.contains("read-only")
        || lower.contains("read only");
    match session.error(err) {
        _ if message.contains("403") => Failure::Denied(format!(
            "{message} (HTTP 403 Forbidden: these credentials may not push to this repository)"
        )),
        _ if denied => Failure::Denied(message),
        GitError::Authentication { cause, .. } => Failure::Denied(cause),
        other @ GitError::Timeout { .. } => Failure::Other(other.to_string()),
        GitError::Operation { cause, .. } => Failure::Other(cause),
    }
}

// Statuses git-receive-pack reports when the reference moved between advertisement and update.
fn is_race(status: &str) -> bool {
    let s = status.to_ascii_lowercase();
    [
        "non-fast-forward",
        "fetch first",
        "cannot lock",
        "failed to lock",
        "stale info",
        "failed to update ref",
    ]
    .iter()
    .any(|p| s.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn races_are_told_from_refusals() {
        assert!(is_race("non-fast-forward"));
        assert!(is_race("failed to update ref"));
        assert!(is_race(
            "cannot lock ref 'refs/heads/main': is at 1234 but expected 5678"
        ));
        assert!(!is_race("pre-receive hook declined"));
        assert!(!is_race("protected branch hook declined"));
    }

    #[test]
    fn a_tag_checkout_needs_a_push_branch() {
        let req = PushRequest::new(
            "http://127.0.0.1:1/x.git",
            Reference::Tag("v1".into()),
            Credentials::default(),
        );
        let dir = tempfile::tempdir().unwrap();
        let err = commit_and_push(&req, dir.path(), |_| Ok::<_, std::io::Error>(None)).unwrap_err();
        assert!(matches!(err, PushError::InvalidSpec(_)), "{err}");
        assert_eq!(err.reason(), GIT_OPERATION_FAILED);
        assert!(err.to_string().contains("git.push.branch"), "{err}");
    }
}

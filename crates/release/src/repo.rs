//! Reading a repository's release history, planning the next release and tagging it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_core::release::{
    self, Analysis, Channel, Commit, TagFormat, TagMatch, VersionError, render_notes,
};
use git2::{BranchType, ErrorCode, Oid, Repository, Signature, Sort};
use semver::Version;
use thiserror::Error;

use crate::config::{ConfigError, ReleaseConfig};

#[derive(Debug, Error)]
pub enum RepoError {
    #[error("{0} is not inside a git repository")]
    NotARepository(PathBuf, #[source] git2::Error),
    #[error("{0} is a bare repository; run gantry in a checkout")]
    Bare(PathBuf),
    #[error("the repository has no commits yet: there is nothing to version")]
    NoCommits,
    #[error(
        "HEAD is detached, so the branch (and with it the release channel) is unknown; \
         pass --branch"
    )]
    DetachedHead,
    #[error("branch `{branch}` exists neither locally nor as `{remote}/{branch}`")]
    UnknownBranch { branch: String, remote: String },
    #[error(
        "this is a shallow clone and no release tag is reachable from {branch}: the last \
         release cannot be found. Fetch the full history and the tags (`git fetch --unshallow \
         --tags`, or `fetch-depth: 0` with actions/checkout)"
    )]
    ShallowWithoutTag { branch: String },
    #[error(
        "tag `{tag}` matches tag_format `{format}` but {reason}; delete or rename the tag, or \
         change tag_format in .gantry/release.toml"
    )]
    MalformedTag {
        tag: String,
        format: String,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(
        "no committer identity for the tag: set GIT_COMMITTER_NAME and GIT_COMMITTER_EMAIL, or \
         git config user.name and user.email"
    )]
    NoIdentity,
    #[error("tag `{tag}` already exists on another commit ({existing}); refusing to move it")]
    TagElsewhere { tag: String, existing: String },
    #[error("cannot run `git push` (is git installed?)")]
    GitCli(#[source] std::io::Error),
    #[error("`git push {remote} {refspec}` failed:\n{stderr}")]
    Push {
        remote: String,
        refspec: String,
        stderr: String,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// A release tag and the commit it marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTag {
    pub name: String,
    pub version: Version,
    pub commit: Oid,
}

/// Everything `release next`, `notes` and `tag` need, computed once.
#[derive(Debug, Clone)]
pub struct Plan {
    pub branch: String,
    pub channel: Channel,
    /// The commit being released: the branch tip.
    pub target: Oid,
    /// The release the next one follows, if any.
    pub last: Option<ReleaseTag>,
    /// A release tag of this channel already on `target`: the release is done.
    pub released: Option<ReleaseTag>,
    /// Non-merge commits since the last release, newest first.
    pub commits: Vec<Commit>,
    pub analysis: Analysis,
    /// `None` when nothing is to be released.
    pub next: Option<Version>,
    pub tag_name: Option<String>,
}

impl Plan {
    /// One line for logs: why this version, or why none.
    pub fn summary(&self) -> String {
        let since = match &self.last {
            Some(tag) => format!("since {}", tag.name),
            None => "since the first commit".to_string(),
        };
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let counted = format!(
            "{} {since} on {}: {}, {} not conventional, {} cancelled by reverts",
            plural(self.commits.len(), "commit"),
            self.branch,
            plural(self.analysis.changes.len(), "conventional change"),
            self.analysis.non_conventional.len(),
            self.analysis.cancelled.len(),
        );
        match (&self.next, self.analysis.bump(), &self.released) {
            (Some(next), _, _) if self.last.is_none() => format!("{counted}; first release {next}"),
            (Some(next), Some(bump), _) => format!("{counted}; {bump} release {next}"),
            (_, _, Some(tag)) => format!("{} is already released as {}", self.branch, tag.name),
            _ if self.commits.is_empty() => format!("no commits {since} on {}", self.branch),
            _ => format!(
                "{counted}; none is a feat, fix, perf, revert or breaking change \
                 (Conventional Commits), so there is nothing to release"
            ),
        }
    }

    pub fn notes(&self, date: Option<&str>) -> Option<String> {
        let name = self.tag_name.as_deref()?;
        Some(render_notes(name, date, &self.analysis.changes, 7))
    }
}

/// A tag in the release format whose version does not parse: name, reason, commit.
type MalformedTag = (String, String, Oid);

/// What `tag` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    Created(String),
    /// The target commit already carries this channel's release tag; nothing was changed.
    AlreadyTagged(String),
}

impl TagOutcome {
    pub fn name(&self) -> &str {
        match self {
            TagOutcome::Created(name) | TagOutcome::AlreadyTagged(name) => name,
        }
    }
}

pub struct ReleaseRepo {
    repo: Repository,
    workdir: PathBuf,
    pub config: ReleaseConfig,
}

impl ReleaseRepo {
    /// Opens the repository containing `dir` and its `.gantry/release.toml`.
    pub fn open(dir: &Path) -> Result<Self, RepoError> {
        let repo = Repository::discover(dir)
            .map_err(|e| RepoError::NotARepository(dir.to_path_buf(), e))?;
        let workdir = repo
            .workdir()
            .ok_or_else(|| RepoError::Bare(dir.to_path_buf()))?
            .to_path_buf();
        let config = ReleaseConfig::load(&workdir)?;
        Ok(Self {
            repo,
            workdir,
            config,
        })
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The full id of HEAD.
    pub fn head_sha(&self) -> Result<String, RepoError> {
        Ok(self.head_commit()?.to_string())
    }

    fn head_commit(&self) -> Result<Oid, RepoError> {
        match self.repo.head() {
            Ok(head) => Ok(head.peel_to_commit()?.id()),
            Err(e) if e.code() == ErrorCode::UnbornBranch => Err(RepoError::NoCommits),
            Err(e) => Err(e.into()),
        }
    }

    /// The branch and the commit to release: `--branch` names a local branch or, in CI
    /// checkouts that only have remote-tracking branches, `<remote>/<branch>`.
    fn target(&self, branch: Option<&str>) -> Result<(String, Oid), RepoError> {
        let head = self.head_commit()?;
        let Some(branch) = branch else {
            let head_ref = self.repo.head()?;
            if !head_ref.is_branch() {
                return Err(RepoError::DetachedHead);
            }
            let name = head_ref.shorthand().map_err(|_| RepoError::DetachedHead)?;
            return Ok((name.to_string(), head));
        };
        let remote_name = format!("{}/{branch}", self.config.remote);
        let found = self
            .repo
            .find_branch(branch, BranchType::Local)
            .or_else(|_| self.repo.find_branch(&remote_name, BranchType::Remote));
        match found {
            Ok(b) => Ok((branch.to_string(), b.get().peel_to_commit()?.id())),
            Err(_) => Err(RepoError::UnknownBranch {
                branch: branch.to_string(),
                remote: self.config.remote.clone(),
            }),
        }
    }

    /// Every tag in the repository that matches the tag format, with malformed ones kept
    /// apart so they can be reported when they matter.
    fn tags(&self, format: &TagFormat) -> Result<(Vec<ReleaseTag>, Vec<MalformedTag>), RepoError> {
        let mut releases = Vec::new();
        let mut malformed = Vec::new();
        // Tag names that are not UTF-8 cannot match a textual format; skip them.
        for name in self
            .repo
            .tag_names(None)?
            .iter()
            .filter_map(|n| n.ok().flatten())
        {
            let class = format.classify(name);
            if class == TagMatch::Other {
                continue;
            }
            // Tags on trees or blobs cannot mark a release; skip rather than fail.
            let Ok(commit) = self
                .repo
                .find_reference(&format!("refs/tags/{name}"))
                .and_then(|r| r.peel_to_commit())
            else {
                continue;
            };
            match class {
                TagMatch::Release(version) => releases.push(ReleaseTag {
                    name: name.to_string(),
                    version,
                    commit: commit.id(),
                }),
                TagMatch::Malformed { reason } => {
                    malformed.push((name.to_string(), reason, commit.id()))
                }
                TagMatch::Other => {}
            }
        }
        Ok((releases, malformed))
    }

    fn reachable(&self, from: Oid) -> Result<HashSet<Oid>, RepoError> {
        let mut walk = self.repo.revwalk()?;
        walk.push(from)?;
        Ok(walk.collect::<Result<_, _>>()?)
    }

    /// Works out the next release of `branch` (default: the checked-out branch).
    pub fn plan(&self, branch: Option<&str>) -> Result<Plan, RepoError> {
        let format = self.config.tag_format()?;
        let rules = self.config.rules()?;
        let (branch, target) = self.target(branch)?;
        let channel = self.config.channel_for(&branch)?;

        let (tags, malformed) = self.tags(&format)?;
        let reachable = self.reachable(target)?;
        if let Some((tag, reason, _)) = malformed
            .into_iter()
            .find(|(_, _, c)| reachable.contains(c))
        {
            return Err(RepoError::MalformedTag {
                tag,
                format: self.config.tag_format.clone(),
                reason,
            });
        }
        let ours: Vec<&ReleaseTag> = tags
            .iter()
            .filter(|t| reachable.contains(&t.commit) && channel.includes(&t.version))
            .collect();
        if ours.is_empty() && self.repo.is_shallow() {
            return Err(RepoError::ShallowWithoutTag { branch });
        }
        let last = ours
            .iter()
            .max_by(|a, b| a.version.cmp(&b.version))
            .map(|t| (*t).clone());
        let released = ours
            .iter()
            .filter(|t| t.commit == target)
            .max_by(|a, b| a.version.cmp(&b.version))
            .map(|t| (*t).clone());

        // Every earlier release is hidden, not just the last one: after merges a commit can be
        // reachable from HEAD without being behind the last tag, yet have shipped already.
        let mut walk = self.repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)?;
        walk.push(target)?;
        for tag in &ours {
            walk.hide(tag.commit)?;
        }
        let mut commits = Vec::new();
        for oid in walk {
            let commit = self.repo.find_commit(oid?)?;
            // Merge commits only join histories; the commits they bring are walked anyway.
            if commit.parent_count() > 1 {
                continue;
            }
            commits.push(Commit {
                sha: commit.id().to_string(),
                message: String::from_utf8_lossy(commit.message_bytes()).into_owned(),
            });
        }
        let analysis = release::analyze(&commits);

        let next = match analysis.bump() {
            Some(bump) if released.is_none() => {
                let reachable_versions: Vec<Version> =
                    ours.iter().map(|t| t.version.clone()).collect();
                let existing: Vec<Version> = tags.iter().map(|t| t.version.clone()).collect();
                Some(release::next_version(
                    &reachable_versions,
                    &existing,
                    bump,
                    &channel,
                    &rules,
                )?)
            }
            _ => None,
        };
        let tag_name = next.as_ref().map(|v| format.tag_name(v));
        Ok(Plan {
            branch,
            channel,
            target,
            last,
            released,
            commits,
            analysis,
            next,
            tag_name,
        })
    }

    /// Creates the annotated tag for `plan` with `message`, or reports the release tag the
    /// target already has. Returns `None` when there is nothing to release.
    pub fn tag(&self, plan: &Plan, message: &str) -> Result<Option<TagOutcome>, RepoError> {
        if let Some(done) = &plan.released {
            return Ok(Some(TagOutcome::AlreadyTagged(done.name.clone())));
        }
        let Some(name) = &plan.tag_name else {
            return Ok(None);
        };
        if let Ok(existing) = self.repo.find_reference(&format!("refs/tags/{name}")) {
            let existing = existing.peel_to_commit()?.id();
            if existing == plan.target {
                return Ok(Some(TagOutcome::AlreadyTagged(name.clone())));
            }
            return Err(RepoError::TagElsewhere {
                tag: name.clone(),
                existing: existing.to_string(),
            });
        }
        let signature = self.signature()?;
        let target = self.repo.find_object(plan.target, None)?;
        self.repo.tag(name, &target, &signature, message, false)?;
        Ok(Some(TagOutcome::Created(name.clone())))
    }

    /// CI sets the identity through the environment more often than through config, and
    /// libgit2 reads only config, so the environment is consulted first, as git does.
    fn signature(&self) -> Result<Signature<'static>, RepoError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let (Some(name), Some(email)) = (env("GIT_COMMITTER_NAME"), env("GIT_COMMITTER_EMAIL")) {
            return Ok(Signature::now(&name, &email)?);
        }
        self.repo.signature().map_err(|_| RepoError::NoIdentity)
    }

    /// Pushes one tag to the configured remote.
    ///
    /// This runs the `git` CLI rather than libgit2: CI checkouts hand credentials to git
    /// through `http.<url>.extraheader` and credential helpers, which libgit2 ignores, so
    /// only git itself pushes "with the repository's credentials". Pushing a tag the remote
    /// already has at the same object succeeds without change, which keeps retries safe.
    pub fn push_tag(&self, tag: &str) -> Result<(), RepoError> {
        let remote = &self.config.remote;
        let refspec = format!("refs/tags/{tag}:refs/tags/{tag}");
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.workdir)
            .args(["push", "--quiet", remote, &refspec])
            .output()
            .map_err(RepoError::GitCli)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(RepoError::Push {
                remote: remote.clone(),
                refspec,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

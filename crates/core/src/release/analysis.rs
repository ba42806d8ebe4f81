//! From the commits since the last release to the kind of release they call for.

use super::commit::{self, ConventionalCommit};

/// How far a set of changes moves the version. Ordered: the largest bump of a range wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bump {
    Patch,
    Minor,
    Major,
}

impl std::fmt::Display for Bump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bump::Patch => "patch",
            Bump::Minor => "minor",
            Bump::Major => "major",
        })
    }
}

/// A commit as read from the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Full hexadecimal object id.
    pub sha: String,
    pub message: String,
}

/// One conventional message that counts towards the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub sha: String,
    pub commit: ConventionalCommit,
}

impl Change {
    pub fn bump(&self) -> Option<Bump> {
        bump_for(&self.commit)
    }
}

/// The release rules of Conventional Commits: breaking is major, `feat` minor, `fix`/`perf`
/// patch; a `revert` whose target is outside the range also ships as a patch.
pub fn bump_for(commit: &ConventionalCommit) -> Option<Bump> {
    if commit.breaking {
        return Some(Bump::Major);
    }
    match commit.kind.as_str() {
        "feat" => Some(Bump::Minor),
        "fix" | "perf" | "revert" => Some(Bump::Patch),
        _ => None,
    }
}

/// What a range of commits amounts to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Conventional changes that count, newest commit first.
    pub changes: Vec<Change>,
    /// Commits cancelled by a revert in the same range (both the revert and its target).
    pub cancelled: Vec<String>,
    /// Commits with no conventional message (merges are not passed in at all).
    pub non_conventional: Vec<String>,
}

impl Analysis {
    /// `None` means nothing to release.
    pub fn bump(&self) -> Option<Bump> {
        self.changes.iter().filter_map(Change::bump).max()
    }
}

/// Analyses `commits`, newest first, as the history walk yields them.
///
/// Walking newest first lets a revert cancel its target before the target is seen, and lets a
/// revert of a revert cancel the first revert, which then no longer cancels anything.
pub fn analyze(commits: &[Commit]) -> Analysis {
    let mut cancelled = vec![false; commits.len()];
    let mut analysis = Analysis::default();
    for (i, c) in commits.iter().enumerate() {
        if cancelled[i] {
            continue;
        }
        if let Some(targets) = commit::revert_targets(&c.message) {
            let mut hit = false;
            for target in &targets {
                // Short shas are prefixes; a revert never targets itself or anything newer.
                if let Some(j) = (i + 1..commits.len()).find(|&j| {
                    !cancelled[j] && commits[j].sha.to_ascii_lowercase().starts_with(target)
                }) {
                    cancelled[j] = true;
                    hit = true;
                }
            }
            if hit {
                cancelled[i] = true;
                continue;
            }
        }
        let entries = commit::parse_all(&c.message);
        let entries = if entries.is_empty() {
            commit::git_revert_as_conventional(&c.message)
                .into_iter()
                .collect()
        } else {
            entries
        };
        if entries.is_empty() {
            analysis.non_conventional.push(c.sha.clone());
        }
        analysis
            .changes
            .extend(entries.into_iter().map(|commit| Change {
                sha: c.sha.clone(),
                commit,
            }));
    }
    analysis.cancelled = commits
        .iter()
        .zip(&cancelled)
        .filter(|(_, cancelled)| **cancelled)
        .map(|(c, _)| c.sha.clone())
        .collect();
    analysis
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(messages: &[(&str, &str)]) -> Vec<Commit> {
        messages
            .iter()
            .map(|(sha, message)| Commit {
                sha: sha.to_string(),
                message: message.to_string(),
            })
            .collect()
    }

    #[test]
    fn bump_table() {
        let cases: &[(&[&str], Option<Bump>)] = &[
            (&[], None),
            (&["docs: correct spelling of CHANGELOG"], None),
            (
                &[
                    "chore: deps",
                    "style: fmt",
                    "refactor: x",
                    "test: y",
                    "build: z",
                    "ci: w",
                ],
                None,
            ),
            (&["Update README", "wip"], None),
            (&["fix: a"], Some(Bump::Patch)),
            (&["perf: a"], Some(Bump::Patch)),
            (
                &["feat(lang): add Polish language", "fix: a"],
                Some(Bump::Minor),
            ),
            (
                &[
                    "fix: a",
                    "feat!: send an email to the customer when a product is shipped",
                ],
                Some(Bump::Major),
            ),
            (&["feat(api)!: send an email"], Some(Bump::Major)),
            (
                &[
                    "chore!: drop support for Node 6\n\nBREAKING CHANGE: use JavaScript features not available in Node 6.",
                ],
                Some(Bump::Major),
            ),
            (
                &["docs: x\n\nBREAKING-CHANGE: docs can break too"],
                Some(Bump::Major),
            ),
            (&["refactor!: rename flags"], Some(Bump::Major)),
            (
                &[
                    "revert: let us never again speak of the noodle incident\n\nRefs: 676104e, a215868",
                ],
                Some(Bump::Patch),
            ),
            (
                &["Add exporter (#3)\n\n* docs: a\n* feat: b"],
                Some(Bump::Minor),
            ),
        ];
        for (messages, expected) in cases {
            let list: Vec<(String, &str)> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("{i:040x}"), *m))
                .collect();
            let input: Vec<Commit> = list
                .iter()
                .map(|(sha, m)| Commit {
                    sha: sha.clone(),
                    message: m.to_string(),
                })
                .collect();
            assert_eq!(analyze(&input).bump(), *expected, "{messages:?}");
        }
    }

    #[test]
    fn revert_in_range_cancels_its_target() {
        let a = analyze(&commits(&[
            ("cccccccc", "fix: small thing"),
            (
                "bbbbbbbb",
                "Revert \"feat!: big change\"\n\nThis reverts commit aaaaaaaa.",
            ),
            ("aaaaaaaa", "feat!: big change"),
        ]));
        assert_eq!(a.bump(), Some(Bump::Patch));
        assert_eq!(a.cancelled, vec!["bbbbbbbb", "aaaaaaaa"]);
    }

    #[test]
    fn revert_by_short_sha_prefix() {
        let a = analyze(&commits(&[
            ("bbbbbbbbbbbb", "revert: drop the feature\n\nRefs: aaaaaaa"),
            ("aaaaaaaaaaaa", "feat: the feature"),
        ]));
        assert_eq!(a.bump(), None);
        assert!(a.changes.is_empty());
    }

    #[test]
    fn revert_outside_range_is_a_patch() {
        let a = analyze(&commits(&[(
            "bbbbbbbb",
            "Revert \"feat: released last time\"\n\nThis reverts commit 1234567.",
        )]));
        assert_eq!(a.bump(), Some(Bump::Patch));
        assert_eq!(a.changes[0].commit.kind, "revert");
        assert!(a.non_conventional.is_empty());
    }

    #[test]
    fn revert_of_revert_restores_the_original() {
        let a = analyze(&commits(&[
            (
                "cccccccc",
                "Revert \"Revert \"feat: x\"\"\n\nThis reverts commit bbbbbbbb.",
            ),
            (
                "bbbbbbbb",
                "Revert \"feat: x\"\n\nThis reverts commit aaaaaaaa.",
            ),
            ("aaaaaaaa", "feat: x"),
        ]));
        assert_eq!(a.bump(), Some(Bump::Minor));
        let kinds: Vec<&str> = a.changes.iter().map(|c| c.commit.kind.as_str()).collect();
        assert_eq!(kinds, vec!["feat"]);
    }

    proptest::proptest! {
        /// Any text, however malformed, is analysed without panicking.
        #[test]
        fn arbitrary_messages_never_panic(messages in proptest::collection::vec(".*(\n.*){0,6}", 0..8)) {
            let input: Vec<Commit> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| Commit { sha: format!("{i:07x}é"), message: m.clone() })
                .collect();
            let analysis = analyze(&input);
            let _ = crate::release::render_notes("v1.0.0", None, &analysis.changes, 7);
        }

        /// More commits on top (that revert nothing) never lower the release.
        #[test]
        fn adding_commits_never_lowers_the_bump(
            older in proptest::collection::vec(message_strategy(), 0..6),
            newer in proptest::collection::vec(message_strategy(), 1..6),
        ) {
            let to_commits = |list: &[String], offset: usize| -> Vec<Commit> {
                list.iter()
                    .enumerate()
                    .map(|(i, m)| Commit { sha: format!("{:040x}", i + offset), message: m.clone() })
                    .collect()
            };
            let before = analyze(&to_commits(&older, 0)).bump();
            // Newest first: the new commits come before the old ones.
            let mut all = to_commits(&newer, 100);
            all.extend(to_commits(&older, 0));
            proptest::prop_assert!(analyze(&all).bump() >= before);
        }
    }

    fn message_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kind = prop::sample::select(vec![
            "feat", "fix", "perf", "docs", "chore", "refactor", "Update",
        ]);
        (kind, any::<bool>(), any::<bool>()).prop_map(|(kind, bang, footer)| {
            let bang = if bang { "!" } else { "" };
            let footer = if footer {
                "\n\nBREAKING CHANGE: changed"
            } else {
                ""
            };
            format!("{kind}{bang}: change{footer}")
        })
    }

    #[test]
    fn reapply_of_a_released_revert_counts_as_the_change() {
        let a = analyze(&commits(&[(
            "cccccccc",
            "Reapply \"feat: x\"\n\nThis reverts commit 1234567.",
        )]));
        assert_eq!(a.bump(), Some(Bump::Minor));
        // In range, a reapply cancels the revert and the original stands.
        let a = analyze(&commits(&[
            (
                "cccccccc",
                "Reapply \"fix: x\"\n\nThis reverts commit bbbbbbbb.",
            ),
            (
                "bbbbbbbb",
                "Revert \"fix: x\"\n\nThis reverts commit aaaaaaaa.",
            ),
            ("aaaaaaaa", "fix: x"),
        ]));
        assert_eq!(a.bump(), Some(Bump::Patch));
        assert_eq!(a.cancelled, vec!["cccccccc", "bbbbbbbb"]);
    }

    #[test]
    fn non_conventional_commits_are_listed() {
        let a = analyze(&commits(&[("b", "Update README"), ("a", "docs: fix typo")]));
        assert_eq!(a.bump(), None);
        assert_eq!(a.non_conventional, vec!["b"]);
        assert_eq!(a.changes.len(), 1);
    }
}

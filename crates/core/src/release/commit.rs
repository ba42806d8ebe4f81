//! Conventional Commits 1.0 parsing: header, scope, `!`, body, footers, breaking changes and
//! reverts, plus the squash-merge bodies that carry several conventional messages.

use thiserror::Error;

/// Why a commit message is not a conventional commit. Not fatal: such commits are simply not
/// counted, but the reason is worth showing when nothing is released.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("empty commit message")]
    Empty,
    #[error("header has no `: ` after the type (expected `type(scope)!: description`)")]
    MissingSeparator,
    #[error("type `{0}` is not a single word of letters, digits or `-`")]
    InvalidType(String),
    #[error("scope is empty or not closed with `)`")]
    InvalidScope,
    #[error("description after `: ` is empty")]
    EmptyDescription,
}

/// One footer: `Token: value` or `Token #value`. The value may span several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub token: String,
    pub value: String,
}

impl Footer {
    /// `BREAKING CHANGE` and its synonym `BREAKING-CHANGE` are the only case-sensitive tokens.
    pub fn is_breaking(&self) -> bool {
        self.token == "BREAKING CHANGE" || self.token == "BREAKING-CHANGE"
    }
}

/// A parsed conventional commit message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConventionalCommit {
    /// The type, lower-cased: the specification makes types case-insensitive.
    pub kind: String,
    pub scope: Option<String>,
    pub description: String,
    pub body: Option<String>,
    pub footers: Vec<Footer>,
    /// `!` before the colon, or a `BREAKING CHANGE` footer.
    pub breaking: bool,
}

impl ConventionalCommit {
    /// What the release notes say under "Breaking changes": the footers' text, or the
    /// description when only `!` marked the change.
    pub fn breaking_notes(&self) -> Vec<&str> {
        if !self.breaking {
            return Vec::new();
        }
        let notes: Vec<&str> = self
            .footers
            .iter()
            .filter(|f| f.is_breaking())
            .map(|f| f.value.as_str())
            .collect();
        if notes.is_empty() {
            vec![self.description.as_str()]
        } else {
            notes
        }
    }

    pub fn footer(&self, token: &str) -> Option<&str> {
        self.footers
            .iter()
            .find(|f| f.token.eq_ignore_ascii_case(token))
            .map(|f| f.value.as_str())
    }
}

/// Types from the Angular convention that Conventional Commits builds on. A type outside this
/// list is still valid in a header, but squash-merge bodies only split on these so that
/// footers such as `Reviewed-by: Z` are never mistaken for a commit.
pub const KNOWN_TYPES: &[&str] = &[
    "feat", "fix", "perf", "revert", "docs", "style", "refactor", "test", "build", "ci", "chore",
];

struct Header {
    kind: String,
    scope: Option<String>,
    bang: bool,
    description: String,
}

fn parse_header(line: &str) -> Result<Header, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let colon = line.find(": ").ok_or(ParseError::MissingSeparator)?;
    let (prefix, rest) = (&line[..colon], &line[colon + 2..]);
    let description = rest.trim();
    let (prefix, bang) = match prefix.strip_suffix('!') {
        Some(p) => (p, true),
        None => (prefix, false),
    };
    let (kind, scope) = match prefix.find('(') {
        Some(open) => {
            let scope = prefix[open + 1..]
                .strip_suffix(')')
                .filter(|s| !s.trim().is_empty() && !s.contains(['(', ')']))
                .ok_or(ParseError::InvalidScope)?;
            (&prefix[..open], Some(scope.trim().to_string()))
        }
        None => (prefix, None),
    };
    let valid_kind = kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid_kind {
        return Err(ParseError::InvalidType(kind.to_string()));
    }
    if description.is_empty() {
        return Err(ParseError::EmptyDescription);
    }
    Ok(Header {
        kind: kind.to_ascii_lowercase(),
        scope,
        bang,
        description: description.to_string(),
    })
}

/// `Token: value` / `Token #value`, where a token is a word with `-` for spaces, except
/// `BREAKING CHANGE` which keeps its space.
fn footer_start(line: &str) -> Option<(&str, &str)> {
    for breaking in ["BREAKING CHANGE: ", "BREAKING-CHANGE: "] {
        if let Some(value) = line.strip_prefix(breaking) {
            return Some((&breaking[..breaking.len() - 2], value));
        }
    }
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(line.len());
    let token = &line[..end];
    if token.is_empty() || !token.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let rest = &line[end..];
    if let Some(value) = rest.strip_prefix(": ") {
        Some((token, value))
    } else if rest.starts_with(" #") {
        Some((token, &rest[1..]))
    } else {
        None
    }
}

/// Parses one conventional commit message (header, optional body, optional footers).
pub fn parse(message: &str) -> Result<ConventionalCommit, ParseError> {
    let message = message.replace("\r\n", "\n");
    let mut lines = message.lines();
    let header = parse_header(lines.next().ok_or(ParseError::Empty)?)?;
    let rest: Vec<&str> = lines.collect();

    // Footers start at the first paragraph whose first line is a footer; everything before it
    // is the body.
    let footer_at = (0..rest.len())
        .find(|&i| (i == 0 || rest[i - 1].trim().is_empty()) && footer_start(rest[i]).is_some());
    let (body_lines, footer_lines) = rest.split_at(footer_at.unwrap_or(rest.len()));
    let body = body_lines.join("\n").trim().to_string();

    let mut footers: Vec<Footer> = Vec::new();
    for line in footer_lines {
        match (footer_start(line), footers.last_mut()) {
            (Some((token, value)), _) => footers.push(Footer {
                token: token.to_string(),
                value: value.to_string(),
            }),
            (None, Some(last)) => {
                last.value.push('\n');
                last.value.push_str(line);
            }
            (None, None) => unreachable!("footer lines start with a footer"),
        }
    }
    for footer in &mut footers {
        footer.value = footer.value.trim().to_string();
    }

    let breaking = header.bang || footers.iter().any(Footer::is_breaking);
    Ok(ConventionalCommit {
        kind: header.kind,
        scope: header.scope,
        description: header.description,
        body: (!body.is_empty()).then_some(body),
        footers,
        breaking,
    })
}

/// A line that starts another conventional message inside a squash-merge body: a bullet
/// (`* feat: ...`, GitHub's squash format) or an indented header after a blank line (the
/// `Squashed commit of the following:` format of `git merge --squash`). Only known types count.
fn entry_start(lines: &[&str], i: usize) -> Option<usize> {
    let line = lines[i];
    let trimmed = line.trim_start();
    let indent = line.len() - trimmed.len();
    let (candidate, is_entry_shape) = match trimmed
        .strip_prefix("* ")
        .or_else(|| trimmed.strip_prefix("- "))
    {
        Some(after) => (after, true),
        None => (
            trimmed,
            indent >= 4 && i > 0 && lines[i - 1].trim().is_empty(),
        ),
    };
    let header = parse_header(candidate).ok().filter(|_| is_entry_shape)?;
    KNOWN_TYPES
        .contains(&header.kind.as_str())
        .then_some(line.len() - candidate.len())
}

/// Every conventional message in a commit: the commit itself and, for squash merges, each
/// conventional message listed in its body. An unparseable header with conventional body
/// entries (GitHub's `Title (#12)` squash title) yields just the entries.
pub fn parse_all(message: &str) -> Vec<ConventionalCommit> {
    let message = message.replace("\r\n", "\n");
    let lines: Vec<&str> = message.lines().collect();
    let starts: Vec<(usize, usize)> = (1..lines.len())
        .filter_map(|i| entry_start(&lines, i).map(|cut| (i, cut)))
        .collect();

    let mut entries = Vec::new();
    for (n, &(start, cut)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(lines.len(), |&(next, _)| next);
        let text: Vec<&str> = std::iter::once(&lines[start][cut..])
            .chain(lines[start + 1..end].iter().map(|l| l.trim_start()))
            .collect();
        if let Ok(entry) = parse(&text.join("\n")) {
            entries.push(entry);
        }
    }

    let head_end = starts.first().map_or(lines.len(), |&(i, _)| i);
    if let Ok(head) = parse(&lines[..head_end].join("\n")) {
        // GitHub titles a squash with the PR title plus ` (#12)`; when the title repeats one
        // of the listed commits it is the same change, not another one.
        let same = |e: &ConventionalCommit| {
            e.kind == head.kind
                && e.scope == head.scope
                && e.description == strip_pr_number(&head.description)
        };
        if !entries.iter().any(same) {
            entries.insert(0, head);
        }
    }
    entries
}

fn strip_pr_number(description: &str) -> &str {
    description
        .rsplit_once(" (#")
        .filter(|(_, n)| {
            n.strip_suffix(')')
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or(description, |(d, _)| d)
}

/// The commits a revert undoes, or `None` when the message is not a revert. Recognises the
/// `revert:` type (with `This reverts commit <sha>.` or the `Refs:` footer the specification
/// suggests) and git's own `Revert "<header>"` messages, as well as `Reapply "<header>"`, which
/// git 2.43+ writes when a revert is reverted.
pub fn revert_targets(message: &str) -> Option<Vec<String>> {
    let header = message.lines().next()?.trim();
    let conventional = parse(message).ok().filter(|c| c.kind == "revert");
    let git_style = header.starts_with("Revert \"") || header.starts_with("Reapply \"");
    if conventional.is_none() && !git_style {
        return None;
    }
    let is_sha =
        |s: &str| s.len() >= 7 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut targets: Vec<String> = message
        .lines()
        .filter_map(|l| l.trim().strip_prefix("This reverts commit "))
        .map(|rest| rest.trim_end_matches(['.', ','].as_slice()).trim())
        .filter(|s| is_sha(s))
        .map(str::to_ascii_lowercase)
        .collect();
    if let Some(refs) = conventional.as_ref().and_then(|c| c.footer("Refs")) {
        targets.extend(
            refs.split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|s| is_sha(s))
                .map(str::to_ascii_lowercase),
        );
    }
    Some(targets)
}

/// git's default revert message, `Revert "feat: x"`, as a conventional `revert` commit so the
/// notes and the bump treat both spellings alike. `Reapply "feat: x"` (a revert of a revert
/// released earlier) brings the change back, so it counts as the reapplied message itself.
pub fn git_revert_as_conventional(message: &str) -> Option<ConventionalCommit> {
    let header = message.lines().next()?.trim();
    if let Some(quoted) = header
        .strip_prefix("Reapply \"")
        .and_then(|h| h.strip_suffix('"'))
    {
        return parse(quoted).ok();
    }
    let quoted = header.strip_prefix("Revert \"")?.strip_suffix('"')?;
    Some(ConventionalCommit {
        kind: "revert".to_string(),
        scope: None,
        description: quoted.to_string(),
        body: None,
        footers: Vec::new(),
        breaking: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        message: &'static str,
        kind: &'static str,
        scope: Option<&'static str>,
        breaking: bool,
        footers: &'static [(&'static str, &'static str)],
    }

    /// The examples of the Conventional Commits 1.0.0 specification.
    #[test]
    fn specification_examples() {
        let cases = [
            Case {
                message: "feat: allow provided config object to extend other configs\n\nBREAKING CHANGE: `extends` key in config file is now used for extending other config files",
                kind: "feat",
                scope: None,
                breaking: true,
                footers: &[(
                    "BREAKING CHANGE",
                    "`extends` key in config file is now used for extending other config files",
                )],
            },
            Case {
                message: "feat!: send an email to the customer when a product is shipped",
                kind: "feat",
                scope: None,
                breaking: true,
                footers: &[],
            },
            Case {
                message: "feat(api)!: send an email to the customer when a product is shipped",
                kind: "feat",
                scope: Some("api"),
                breaking: true,
                footers: &[],
            },
            Case {
                message: "chore!: drop support for Node 6\n\nBREAKING CHANGE: use JavaScript features not available in Node 6.",
                kind: "chore",
                scope: None,
                breaking: true,
                footers: &[(
                    "BREAKING CHANGE",
                    "use JavaScript features not available in Node 6.",
                )],
            },
            Case {
                message: "docs: correct spelling of CHANGELOG",
                kind: "docs",
                scope: None,
                breaking: false,
                footers: &[],
            },
            Case {
                message: "feat(lang): add Polish language",
                kind: "feat",
                scope: Some("lang"),
                breaking: false,
                footers: &[],
            },
            Case {
                message: "fix: prevent racing of requests\n\nIntroduce a request id and a reference to latest request. Dismiss\nincoming responses other than from latest request.\n\nRemove timeouts which were used to mitigate the racing issue but are\nobsolete now.\n\nReviewed-by: Z\nRefs: #123",
                kind: "fix",
                scope: None,
                breaking: false,
                footers: &[("Reviewed-by", "Z"), ("Refs", "#123")],
            },
            Case {
                message: "revert: let us never again speak of the noodle incident\n\nRefs: 676104e, a215868",
                kind: "revert",
                scope: None,
                breaking: false,
                footers: &[("Refs", "676104e, a215868")],
            },
            Case {
                message: "FEAT(Parser): upper-case types are the same type\n\nBREAKING-CHANGE: synonym footer",
                kind: "feat",
                scope: Some("Parser"),
                breaking: true,
                footers: &[("BREAKING-CHANGE", "synonym footer")],
            },
            Case {
                message: "fix: footer with hash\n\nFixes #42\nbreaking change: lower case is not the breaking token",
                kind: "fix",
                scope: None,
                breaking: false,
                footers: &[(
                    "Fixes",
                    "#42\nbreaking change: lower case is not the breaking token",
                )],
            },
        ];
        for case in cases {
            let parsed = parse(case.message).unwrap_or_else(|e| panic!("{:?}: {e}", case.message));
            assert_eq!(parsed.kind, case.kind, "{}", case.message);
            assert_eq!(parsed.scope.as_deref(), case.scope, "{}", case.message);
            assert_eq!(parsed.breaking, case.breaking, "{}", case.message);
            let footers: Vec<(&str, &str)> = parsed
                .footers
                .iter()
                .map(|f| (f.token.as_str(), f.value.as_str()))
                .collect();
            assert_eq!(footers, case.footers, "{}", case.message);
        }
    }

    #[test]
    fn body_is_separated_from_footers() {
        let c = parse("fix: prevent racing of requests\n\nIntroduce a request id.\n\nRemove timeouts.\n\nReviewed-by: Z\nRefs: #123").unwrap();
        assert_eq!(
            c.body.as_deref(),
            Some("Introduce a request id.\n\nRemove timeouts.")
        );
        assert_eq!(c.description, "prevent racing of requests");
    }

    #[test]
    fn multi_line_breaking_footer() {
        let c = parse("feat: x\n\nBREAKING CHANGE: first line\ncontinues here\nRefs: #1").unwrap();
        assert_eq!(c.breaking_notes(), vec!["first line\ncontinues here"]);
        assert_eq!(c.footer("refs"), Some("#1"));
    }

    #[test]
    fn bang_without_footer_uses_description_as_note() {
        let c = parse("feat(api)!: remove v1 endpoints").unwrap();
        assert_eq!(c.breaking_notes(), vec!["remove v1 endpoints"]);
    }

    #[test]
    fn rejects_non_conventional_headers() {
        let cases = [
            ("", ParseError::Empty),
            ("Update README", ParseError::MissingSeparator),
            ("feat:no space", ParseError::MissingSeparator),
            ("feat(: x", ParseError::InvalidScope),
            ("feat(): x", ParseError::InvalidScope),
            ("feat(a)(b): x", ParseError::InvalidScope),
            ("two words: x", ParseError::InvalidType("two words".into())),
            ("1fix: x", ParseError::InvalidType("1fix".into())),
            (": x", ParseError::InvalidType(String::new())),
            ("feat:  ", ParseError::EmptyDescription),
            (
                "Merge branch 'feature' into main",
                ParseError::MissingSeparator,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(parse(message).unwrap_err(), expected, "{message:?}");
        }
    }

    #[test]
    fn github_squash_body_counts_each_entry() {
        let message = "Add exporter (#12)\n\n* feat(export): add CSV exporter\n\n* fix: escape quotes\n\nBREAKING CHANGE: quotes are now doubled\n\n* docs: explain exporter\n";
        let entries = parse_all(message);
        let kinds: Vec<(&str, bool)> = entries
            .iter()
            .map(|e| (e.kind.as_str(), e.breaking))
            .collect();
        assert_eq!(kinds, vec![("feat", false), ("fix", true), ("docs", false)]);
        assert_eq!(entries[0].scope.as_deref(), Some("export"));
    }

    #[test]
    fn squash_title_repeating_an_entry_is_not_counted_twice() {
        let message = "feat: add exporter (#12)\n\n* feat: add exporter\n* fix: escape quotes";
        let kinds: Vec<String> = parse_all(message).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec!["feat", "fix"]);
    }

    #[test]
    fn squash_title_distinct_from_entries_is_counted() {
        let message = "feat: exporter\n\n* fix: escape quotes";
        let kinds: Vec<String> = parse_all(message).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec!["feat", "fix"]);
    }

    #[test]
    fn git_merge_squash_format_counts_each_entry() {
        let message = "Squashed commit of the following:\n\ncommit 0123456789abcdef0123456789abcdef01234567\nAuthor: A <a@example.com>\nDate:   Mon Jan 5 10:00:00 2026 +0000\n\n    perf: cache parsed tags\n\ncommit 1123456789abcdef0123456789abcdef01234567\nAuthor: A <a@example.com>\nDate:   Mon Jan 5 09:00:00 2026 +0000\n\n    feat!: new tag format\n";
        let entries = parse_all(message);
        let kinds: Vec<(&str, bool)> = entries
            .iter()
            .map(|e| (e.kind.as_str(), e.breaking))
            .collect();
        assert_eq!(kinds, vec![("perf", false), ("feat", true)]);
    }

    #[test]
    fn footers_are_not_mistaken_for_squashed_commits() {
        let entries = parse_all("fix: x\n\nReviewed-by: Z\nRefs: #123\nBREAKING-CHANGE: y");
        assert_eq!(entries.len(), 1);
        assert!(entries[0].breaking);
    }

    #[test]
    fn non_conventional_message_yields_nothing() {
        assert!(parse_all("Update README\n\nfix: typo in a sentence, not an entry").is_empty());
    }

    #[test]
    fn revert_targets_from_all_spellings() {
        let git = "Revert \"feat: add x\"\n\nThis reverts commit 0123456789abcdef0123456789abcdef01234567.\n";
        assert_eq!(
            revert_targets(git),
            Some(vec!["0123456789abcdef0123456789abcdef01234567".to_string()])
        );
        let spec =
            "revert: let us never again speak of the noodle incident\n\nRefs: 676104e, a215868";
        assert_eq!(
            revert_targets(spec),
            Some(vec!["676104e".to_string(), "a215868".to_string()])
        );
        let conventional = "revert: feat: add x\n\nThis reverts commit ABCDEF1.";
        assert_eq!(
            revert_targets(conventional),
            Some(vec!["abcdef1".to_string()])
        );
        assert_eq!(revert_targets("revert: something old"), Some(vec![]));
        assert_eq!(revert_targets("fix: This reverts commit abcdef1."), None);
        let reapply = "Reapply \"feat(ui): dark mode\"\n\nThis reverts commit abcdef1234.";
        assert_eq!(
            revert_targets(reapply),
            Some(vec!["abcdef1234".to_string()])
        );
        let c = git_revert_as_conventional(reapply).unwrap();
        assert_eq!((c.kind.as_str(), c.scope.as_deref()), ("feat", Some("ui")));
        let c = git_revert_as_conventional(git).unwrap();
        assert_eq!(
            (c.kind.as_str(), c.description.as_str()),
            ("revert", "feat: add x")
        );
    }
}

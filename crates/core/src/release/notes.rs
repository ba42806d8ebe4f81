//! Release notes in Markdown: breaking changes first, then one section per released type.

use std::fmt::Write;

use super::analysis::Change;

/// Sections in the order they are shown. Types not listed (docs, chore, ...) do not release,
/// so they stay out of the notes unless they are breaking.
const SECTIONS: &[(&str, &str)] = &[
    ("feat", "Features"),
    ("fix", "Bug fixes"),
    ("perf", "Performance improvements"),
    ("revert", "Reverts"),
];

/// Renders the notes for one release. `title` is usually the version or tag name and `date`
/// an ISO date; the shas are shortened to `sha_length`.
pub fn render_notes(
    title: &str,
    date: Option<&str>,
    changes: &[Change],
    sha_length: usize,
) -> String {
    let mut out = String::new();
    match date {
        Some(date) => writeln!(out, "## {title} ({date})"),
        None => writeln!(out, "## {title}"),
    }
    .expect("writing to a String");

    let line = |change: &Change| {
        let sha: String = change.sha.chars().take(sha_length).collect();
        match &change.commit.scope {
            Some(scope) => format!("* **{scope}:** {} ({sha})", change.commit.description),
            None => format!("* {} ({sha})", change.commit.description),
        }
    };

    let breaking: Vec<&Change> = changes.iter().filter(|c| c.commit.breaking).collect();
    if !breaking.is_empty() {
        out.push_str("\n### ⚠ Breaking changes\n\n");
        for change in breaking {
            out.push_str(&line(change));
            out.push('\n');
            for note in change.commit.breaking_notes() {
                if note != change.commit.description {
                    for l in note.lines() {
                        writeln!(out, "  {l}").expect("writing to a String");
                    }
                }
            }
        }
    }
    for (kind, heading) in SECTIONS {
        let listed: Vec<String> = changes
            .iter()
            .filter(|c| c.commit.kind == *kind)
            .map(line)
            .collect();
        if !listed.is_empty() {
            write!(out, "\n### {heading}\n\n{}\n", listed.join("\n")).expect("writing to a String");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::analysis::{Commit, analyze};

    #[test]
    fn groups_by_type_with_breaking_first() {
        let commits: Vec<Commit> = [
            ("1111111111", "fix(parser): accept CRLF"),
            ("2222222222", "docs: explain tags"),
            ("3333333333", "feat(api)!: remove v1\n\nBREAKING CHANGE: clients must use /v2.\nSee the migration guide."),
            ("4444444444", "feat: add CSV export"),
            ("5555555555", "perf: cache tags"),
            ("6666666666", "chore!: drop Node 6"),
        ]
        .iter()
        .map(|(sha, message)| Commit { sha: sha.to_string(), message: message.to_string() })
        .collect();
        let notes = render_notes("v2.0.0", Some("2026-11-26"), &analyze(&commits).changes, 7);
        let expected = "\
## v2.0.0 (2026-11-26)

### ⚠ Breaking changes

* **api:** remove v1 (3333333)
  clients must use /v2.
  See the migration guide.
* drop Node 6 (6666666)

### Features

* **api:** remove v1 (3333333)
* add CSV export (4444444)

### Bug fixes

* **parser:** accept CRLF (1111111)

### Performance improvements

* cache tags (5555555)
";
        assert_eq!(notes, expected);
    }

    #[test]
    fn title_without_date() {
        assert_eq!(render_notes("1.0.0", None, &[], 7), "## 1.0.0\n");
    }
}

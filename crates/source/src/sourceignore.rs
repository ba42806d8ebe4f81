//! Which files of a checkout go into the artifact: Flux's `.sourceignore` rules.
//!
//! Flux (fluxcd/pkg `sourceignore`, source-controller's `SourceIgnoreFilter`) always excludes the
//! VCS files; its default exclusions (images, archives, CI configuration, a few tool files) apply
//! only when the user gave no patterns at all, neither in `.sourceignore` files nor in
//! `spec.ignore`. A `.sourceignore` in a subdirectory applies below that directory only, and
//! `spec.ignore` comes last so it wins. Patterns use .gitignore syntax; the last matching pattern
//! decides, and `!pattern` re-includes.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Name of the per-directory ignore file.
pub const IGNORE_FILE: &str = ".sourceignore";

/// Always excluded (Flux's `ExcludeVCS`).
pub const VCS_PATTERNS: &[&str] = &[".git/", ".gitignore", ".gitmodules", ".gitattributes"];

/// Excluded when no user pattern exists (Flux's `ExcludeExt`, `ExcludeCI`, `ExcludeExtra`).
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.png",
    "*.wmv",
    "*.flv",
    "*.tar.gz",
    "*.zip",
    ".github/",
    ".circleci/",
    ".travis.yml",
    ".gitlab-ci.yml",
    "appveyor.yml",
    ".drone.yml",
    "cloudbuild.yaml",
    "codeship-services.yml",
    "codeship-steps.yml",
    "**/.goreleaser.yml",
    "**/.sops.yaml",
    "**/.flux.yaml",
];

/// Errors while reading ignore files or compiling patterns.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// An ignore file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pattern is not valid .gitignore syntax.
    #[error("invalid ignore pattern '{pattern}': {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: ignore::Error,
    },
}

/// A user pattern and the directory (relative to the root, `""` for the root) it applies in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// Directory the pattern was read in, with `/` separators.
    pub domain: String,
    /// The pattern line as written.
    pub line: String,
}

/// The compiled exclusion rules for one checkout.
#[derive(Clone, Debug)]
pub struct SourceIgnore {
    matcher: Gitignore,
    // `spec.sparseCheckout`: when non-empty, only these directories (root-relative).
    only: Vec<PathBuf>,
}

impl SourceIgnore {
    /// Rules from user patterns (in priority order, lowest first) plus Flux's fixed ones.
    pub fn from_patterns(user: &[Pattern]) -> Result<Self, IgnoreError> {
        Self::build(user, user.is_empty())
    }

    /// Only the VCS rules and `user`, never the default exclusions: what `flux push artifact
    /// --ignore-paths` leaves out.
    pub fn vcs_and(user: &[Pattern]) -> Result<Self, IgnoreError> {
        Self::build(user, false)
    }

    fn build(user: &[Pattern], defaults: bool) -> Result<Self, IgnoreError> {
        let mut builder = GitignoreBuilder::new("");
        let mut add = |line: &str| {
            builder
                .add_line(None, line)
                .map(|_| ())
                .map_err(|source| IgnoreError::Pattern {
                    pattern: line.to_owned(),
                    source,
                })
        };
        for p in VCS_PATTERNS {
            add(p)?;
        }
        if defaults {
            for p in DEFAULT_PATTERNS {
                add(p)?;
            }
        }
        for p in user {
            add(&scope(&p.domain, &p.line))?;
        }
        let matcher = builder.build().map_err(|source| IgnoreError::Pattern {
            pattern: "<all>".into(),
            source,
        })?;
        Ok(SourceIgnore {
            matcher,
            only: Vec::new(),
        })
    }

    /// Rules for the checkout in `dir`: its `.sourceignore` files, then `spec_ignore`.
    pub fn load(dir: &Path, spec_ignore: Option<&str>) -> Result<Self, IgnoreError> {
        let mut patterns = Vec::new();
        collect_ignore_files(dir, "", &mut patterns)?;
        if let Some(spec) = spec_ignore {
            patterns.extend(read_patterns(spec, ""));
        }
        Self::from_patterns(&patterns)
    }

    /// Whether `rel` (relative to the checkout root) is excluded; files below an excluded
    /// directory are excluded unless a later pattern re-includes them.
    pub fn is_ignored(&self, rel: &Path, is_dir: bool) -> bool {
        if !self.only.is_empty() {
            let inside = self.only.iter().any(|d| rel.starts_with(d));
            // Directories on the way to a kept one stay, so the tree keeps its shape.
            let on_the_way = is_dir && self.only.iter().any(|d| d.starts_with(rel));
            if !inside && !on_the_way {
                return true;
            }
        }
        self.matcher
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
    }

    /// Keeps only what lies in `dirs` (Flux's `spec.sparseCheckout`); empty keeps everything.
    pub fn only_in(mut self, dirs: &[String]) -> Self {
        self.only = dirs
            .iter()
            .map(|d| {
                d.trim_start_matches("./")
                    .trim_matches('/')
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .collect::<PathBuf>()
            })
            .collect();
        // `.` or `/` means the whole tree.
        if self.only.iter().any(|d| d.as_os_str().is_empty()) {
            self.only.clear();
        }
        self
    }
}

/// The pattern lines of an ignore file: blank lines and `#` comments dropped.
pub fn read_patterns(text: &str, domain: &str) -> Vec<Pattern> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| Pattern {
            domain: domain.to_owned(),
            line: l.to_owned(),
        })
        .collect()
}

// Reads `.sourceignore` in `dir`, then in its subdirectories in name order (Flux's order).
fn collect_ignore_files(
    dir: &Path,
    domain: &str,
    out: &mut Vec<Pattern>,
) -> Result<(), IgnoreError> {
    let file = dir.join(IGNORE_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => out.extend(read_patterns(&text, domain)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(IgnoreError::Read { path: file, source }),
    }
    let read_err = |source| IgnoreError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != ".git" && entry.file_type().map_err(read_err)?.is_dir() {
            subdirs.push(name);
        }
    }
    subdirs.sort();
    for name in subdirs {
        let sub = if domain.is_empty() {
            name.clone()
        } else {
            format!("{domain}/{name}")
        };
        collect_ignore_files(&dir.join(&name), &sub, out)?;
    }
    Ok(())
}

// Rewrites a pattern read in `domain` so that it matches root-relative paths below it only.
fn scope(domain: &str, line: &str) -> String {
    if domain.is_empty() {
        return line.to_owned();
    }
    let (neg, pat) = match line.strip_prefix('!') {
        Some(rest) => ("!", rest),
        None => ("", line),
    };
    // A slash other than a trailing one anchors the pattern to its directory.
    let anchored = pat.trim_end_matches('/').contains('/');
    if anchored {
        format!("{neg}/{domain}/{}", pat.trim_start_matches('/'))
    } else {
        format!("{neg}/{domain}/**/{pat}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(rules: &SourceIgnore, path: &str) -> bool {
        rules.is_ignored(Path::new(path), false)
    }

    #[test]
    fn defaults_apply_without_user_patterns() {
        let rules = SourceIgnore::from_patterns(&[]).unwrap();
        for p in [
            ".git/config",
            ".gitignore",
            "logo.png",
            "a/b/pic.jpg",
            "bundle.tar.gz",
            ".github/workflows/ci.yml",
            ".travis.yml",
            "deep/.sops.yaml",
            ".flux.yaml",
        ] {
            assert!(ignored(&rules, p), "{p} is excluded by default");
        }
        for p in [
            "deploy.yaml",
            "kustomization.yaml",
            "apps/app.yaml",
            "README.md",
        ] {
            assert!(!ignored(&rules, p), "{p} is kept");
        }
    }

    #[test]
    fn user_patterns_replace_defaults_but_not_vcs() {
        let rules = SourceIgnore::from_patterns(&read_patterns("*.md\n# comment\n\n", "")).unwrap();
        assert!(ignored(&rules, "README.md"));
        assert!(ignored(&rules, ".git/HEAD"), "VCS files stay excluded");
        assert!(!ignored(&rules, "logo.png"), "defaults are replaced");
    }

    #[test]
    fn negation_and_directories() {
        let rules =
            SourceIgnore::from_patterns(&read_patterns("/*\n!/deploy\nsecret/\n", "")).unwrap();
        assert!(ignored(&rules, "README.md"));
        assert!(!ignored(&rules, "deploy/app.yaml"));
        assert!(ignored(&rules, "deploy/secret/key.yaml"));
    }

    #[test]
    fn sparse_checkout_keeps_only_the_listed_directories() {
        let rules = SourceIgnore::from_patterns(&[])
            .unwrap()
            .only_in(&["./apps/prod/".into(), "infra".into()]);
        assert!(!ignored(&rules, "apps/prod/app.yaml"));
        assert!(!ignored(&rules, "infra/x/y.yaml"));
        assert!(ignored(&rules, "apps/dev/app.yaml"));
        assert!(ignored(&rules, "README.md"));
        assert!(
            !rules.is_ignored(Path::new("apps"), true),
            "directory on the way"
        );
        assert!(
            ignored(&rules, "apps/prod/logo.png"),
            "ignore rules still apply"
        );
        let all = SourceIgnore::from_patterns(&[])
            .unwrap()
            .only_in(&["./".into()]);
        assert!(!ignored(&all, "README.md"));
    }

    #[test]
    fn nested_files_apply_below_their_directory_only() {
        let mut ps = read_patterns("*.txt\n/local.yaml\n", "apps");
        ps.extend(read_patterns("keep.txt", ""));
        let rules = SourceIgnore::from_patterns(&ps).unwrap();
        assert!(ignored(&rules, "apps/notes.txt"));
        assert!(ignored(&rules, "apps/x/notes.txt"));
        assert!(!ignored(&rules, "notes.txt"), "outside the domain");
        assert!(ignored(&rules, "apps/local.yaml"));
        assert!(!ignored(&rules, "apps/x/local.yaml"), "anchored to apps/");
        assert!(ignored(&rules, "keep.txt"));
    }
}

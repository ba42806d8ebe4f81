//! Source revision strings exactly as Flux writes them into `status.artifact.revision`.
//!
//! Flux's format is `<reference>@<algorithm>:<hash>`: `main@sha1:<40 hex>` for a branch,
//! `v1.0.0@sha1:<hex>` for a tag, `refs/pull/1/head@sha1:<hex>` for `spec.ref.name` (the full
//! reference is kept there), and just `sha1:<hex>` for a bare commit. Consumers (Kustomizations,
//! the `flux` CLI, notification metadata) compare and display these strings, so they must match
//! byte for byte. Flux before v2 wrote `<reference>/<hash>`; [`Revision::parse`] still reads it.

use std::fmt;

/// The hash algorithm of git's object ids today.
pub const SHA1: &str = "sha1";

/// A parsed revision: an optional reference name and the commit digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Revision {
    /// `main`, `v1.0.0`, `refs/pull/1/head`; `None` for a bare commit.
    pub reference: Option<String>,
    /// Digest algorithm, `sha1` for git.
    pub algorithm: String,
    /// Lower-case hex object id of the commit.
    pub hash: String,
}

/// Why a string is not a revision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    /// Nothing to parse.
    #[error("empty revision")]
    Empty,
    /// The digest part is not `<algorithm>:<hex>` (or legacy `<ref>/<hex>`).
    #[error("revision '{0}' has no valid '<algorithm>:<hex>' digest")]
    InvalidDigest(String),
}

impl Revision {
    /// A revision of a SHA-1 commit under an (already shortened or full) reference name.
    pub fn sha1(reference: Option<&str>, hash: &str) -> Self {
        Revision {
            reference: reference.filter(|r| !r.is_empty()).map(str::to_owned),
            algorithm: SHA1.to_owned(),
            hash: hash.to_ascii_lowercase(),
        }
    }

    /// The `<algorithm>:<hash>` part, e.g. `sha1:0a1b...`.
    pub fn digest(&self) -> String {
        format!("{}:{}", self.algorithm, self.hash)
    }

    /// Parses Flux's current format and the legacy `<ref>/<hex>` one.
    pub fn parse(s: &str) -> Result<Self, RevisionError> {
        if s.is_empty() {
            return Err(RevisionError::Empty);
        }
        // The digest never contains '@', a reference name may: split at the last one.
        let (reference, digest) = match s.rsplit_once('@') {
            Some((r, d)) => (Some(r), d),
            None => (None, s),
        };
        if let Some((algorithm, hash)) = digest.split_once(':')
            && is_algorithm(algorithm)
            && is_hex(hash)
        {
            return Ok(Revision {
                reference: reference.filter(|r| !r.is_empty()).map(str::to_owned),
                algorithm: algorithm.to_owned(),
                hash: hash.to_ascii_lowercase(),
            });
        }
        // Legacy: `main/<40 hex>` or a bare hex id.
        if reference.is_none() {
            match s.rsplit_once('/') {
                Some((r, hash)) if hash.len() == 40 && is_hex(hash) => {
                    return Ok(Revision::sha1(Some(r), hash));
                }
                None if s.len() == 40 && is_hex(s) => return Ok(Revision::sha1(None, s)),
                _ => {}
            }
        }
        Err(RevisionError::InvalidDigest(s.to_owned()))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Some(r) => write!(f, "{r}@{}:{}", self.algorithm, self.hash),
            None => write!(f, "{}:{}", self.algorithm, self.hash),
        }
    }
}

/// Flux's short form of a full reference: everything after the second `/`
/// (`refs/heads/main` -> `main`, `refs/tags/release/v1` -> `release/v1`); a name with fewer
/// slashes is returned unchanged.
pub fn short_reference(full: &str) -> &str {
    let mut slashes = full.match_indices('/');
    match (slashes.next(), slashes.next()) {
        (Some(_), Some((i, _))) => &full[i + 1..],
        _ => full,
    }
}

/// The revision of `hash` checked out through branch `branch`: `<branch>@sha1:<hash>`.
pub fn for_branch(branch: &str, hash: &str) -> String {
    Revision::sha1(Some(short_reference(&qualify(branch, "refs/heads/"))), hash).to_string()
}

/// The revision of `hash` checked out through tag `tag`: `<tag>@sha1:<hash>`.
pub fn for_tag(tag: &str, hash: &str) -> String {
    Revision::sha1(Some(short_reference(&qualify(tag, "refs/tags/"))), hash).to_string()
}

/// The revision of `hash` checked out through the full reference `name`: kept whole
/// (`refs/pull/1/head@sha1:<hash>`).
pub fn for_ref_name(name: &str, hash: &str) -> String {
    Revision::sha1(Some(name), hash).to_string()
}

/// The revision of a bare commit: `sha1:<hash>`.
pub fn for_commit(hash: &str) -> String {
    Revision::sha1(None, hash).to_string()
}

fn qualify(name: &str, prefix: &str) -> String {
    if name.starts_with("refs/") {
        name.to_owned()
    } else {
        format!("{prefix}{name}")
    }
}

fn is_algorithm(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn formats_like_flux() {
        assert_eq!(for_branch("main", H), format!("main@sha1:{H}"));
        assert_eq!(
            for_branch("refs/heads/feature/x", H),
            format!("feature/x@sha1:{H}")
        );
        assert_eq!(for_tag("v1.0.0", H), format!("v1.0.0@sha1:{H}"));
        assert_eq!(for_tag("release/v2", H), format!("release/v2@sha1:{H}"));
        assert_eq!(
            for_ref_name("refs/pull/1/head", H),
            format!("refs/pull/1/head@sha1:{H}")
        );
        assert_eq!(for_commit(H), format!("sha1:{H}"));
        assert_eq!(for_commit(&H.to_uppercase()), format!("sha1:{H}"));
    }

    #[test]
    fn parses_what_it_formats_and_legacy_forms() {
        for s in [
            format!("main@sha1:{H}"),
            format!("refs/pull/1/head@sha1:{H}"),
            format!("sha1:{H}"),
        ] {
            assert_eq!(Revision::parse(&s).unwrap().to_string(), s);
        }
        let r = Revision::parse(&format!("main/{H}")).unwrap();
        assert_eq!(r.reference.as_deref(), Some("main"));
        assert_eq!(r.hash, H);
        assert_eq!(Revision::parse(H).unwrap().to_string(), format!("sha1:{H}"));
        let at = Revision::parse(&format!("we@ird@sha1:{H}")).unwrap();
        assert_eq!(at.reference.as_deref(), Some("we@ird"));
        assert_eq!(at.digest(), format!("sha1:{H}"));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Revision::parse(""), Err(RevisionError::Empty));
        assert!(Revision::parse("main").is_err());
        assert!(Revision::parse("main@sha1:xyz").is_err());
        assert!(Revision::parse("main@:abc").is_err());
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(
            reference in proptest::option::of("[a-zA-Z0-9._/@-]{1,40}"),
            hash in "[0-9a-f]{40}",
        ) {
            let rev = Revision::sha1(reference.as_deref(), &hash);
            proptest::prop_assert_eq!(Revision::parse(&rev.to_string()), Ok(rev));
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = Revision::parse(&s);
        }
    }

    #[test]
    fn short_reference_follows_flux() {
        assert_eq!(short_reference("refs/heads/main"), "main");
        assert_eq!(short_reference("refs/pull/1/head"), "1/head");
        assert_eq!(short_reference("main"), "main");
        assert_eq!(short_reference("refs/main"), "refs/main");
    }
}

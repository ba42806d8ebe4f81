//! Semver ranges in Masterminds syntax (what Flux's `spec.ref.semver` takes), evaluated with the
//! `semver` crate's version ordering.
//!
//! The `semver` crate parses Cargo's syntax only, so ranges are parsed here: comparators
//! separated by spaces or commas (AND), alternatives by `||`, operators `=`, `!=`, `>`, `>=`,
//! `<`, `<=`, `~`/`~>`, `^`, hyphen ranges `1.2 - 1.4.5`, wildcards `x`/`X`/`*` and partial
//! versions (`1.2` means `1.2.x`), an optional `v` prefix. As in Masterminds, a pre-release
//! version matches only when a comparator of the same alternative names a pre-release.

use semver::{BuildMetadata, Prerelease, Version};

/// Why a range or a version does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The range string is malformed.
    #[error("invalid semver range '{range}': {reason}")]
    Invalid { range: String, reason: String },
}

/// A parsed range: any alternative whose comparators all hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    alternatives: Vec<Vec<Comparator>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Comparator {
    Eq(Version),
    Ne(Version),
    Gt(Version),
    Ge(Version),
    Lt(Version),
    Le(Version),
    // `!=` with a wildcard: outside [lo, hi).
    NotIn(Version, Version),
    Any,
}

impl Comparator {
    fn holds(&self, v: &Version) -> bool {
        match self {
            Comparator::Eq(c) => v == c,
            Comparator::Ne(c) => v != c,
            Comparator::Gt(c) => v > c,
            Comparator::Ge(c) => v >= c,
            Comparator::Lt(c) => v < c,
            Comparator::Le(c) => v <= c,
            Comparator::NotIn(lo, hi) => v < lo || v >= hi,
            Comparator::Any => true,
        }
    }

    fn has_prerelease(&self) -> bool {
        match self {
            Comparator::Eq(c)
            | Comparator::Ne(c)
            | Comparator::Gt(c)
            | Comparator::Ge(c)
            | Comparator::Lt(c)
            | Comparator::Le(c) => !c.pre.is_empty(),
            Comparator::NotIn(lo, _) => !lo.pre.is_empty(),
            Comparator::Any => false,
        }
    }
}

impl Range {
    /// Parses a Masterminds-style range.
    pub fn parse(range: &str) -> Result<Self, RangeError> {
        let err = |reason: String| RangeError::Invalid {
            range: range.to_owned(),
            reason,
        };
        let mut alternatives = Vec::new();
        for alt in range.split("||") {
            let tokens = tokenize(alt);
            if tokens.is_empty() {
                return Err(err("empty alternative".into()));
            }
            let mut comparators = Vec::new();
            let mut i = 0;
            while i < tokens.len() {
                if tokens.get(i + 1).is_some_and(|t| t == "-") {
                    let hi = tokens
                        .get(i + 2)
                        .ok_or_else(|| err("hyphen range without upper bound".into()))?;
                    let lo = Partial::parse(&tokens[i]).map_err(&err)?;
                    let hi = Partial::parse(hi).map_err(&err)?;
                    comparators.push(Comparator::Ge(lo.floor()));
                    comparators.push(upper_inclusive(&hi));
                    i += 3;
                    continue;
                }
                expand(&tokens[i], &mut comparators).map_err(&err)?;
                i += 1;
            }
            alternatives.push(comparators);
        }
        Ok(Range { alternatives })
    }

    /// Whether `version` lies in the range.
    pub fn matches(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|alt| {
            (version.pre.is_empty() || alt.iter().any(Comparator::has_prerelease))
                && alt.iter().all(|c| c.holds(version))
        })
    }
}

/// Parses a tag as a version the way Masterminds' `NewVersion` does: optional `v`, one to three
/// numeric parts (missing ones are 0), optional pre-release and build metadata.
pub fn parse_version(tag: &str) -> Option<Version> {
    let p = Partial::parse(tag).ok()?;
    if p.major.is_none() || p.wildcard {
        return None;
    }
    Some(p.floor())
}

// Splits on spaces and commas, gluing a lone operator to the version after it.
fn tokenize(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for raw in s.split(|c: char| c.is_whitespace() || c == ',') {
        if raw.is_empty() {
            continue;
        }
        if raw.chars().all(|c| "<>=!~^".contains(c)) {
            pending_op.push_str(raw);
            continue;
        }
        out.push(format!("{pending_op}{raw}"));
        pending_op.clear();
    }
    if !pending_op.is_empty() {
        out.push(pending_op);
    }
    out
}

#[derive(Debug)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
    build: BuildMetadata,
    // An explicit x/X/* (as opposed to a missing part).
    wildcard: bool,
}

impl Partial {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => (r, b),
            None => (s, ""),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, p),
            None => (rest, ""),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("'{s}' is not a version"));
        }
        let mut nums = [None; 3];
        let mut wildcard = false;
        for (i, part) in parts.iter().enumerate() {
            if matches!(*part, "x" | "X" | "*") {
                wildcard = true;
                continue;
            }
            if wildcard {
                return Err(format!("'{s}': a number after a wildcard"));
            }
            let n = part
                .parse::<u64>()
                .map_err(|_| format!("'{part}' in '{s}' is not a number"))?;
            nums[i] = Some(n);
        }
        // A missing part after a wildcard stays missing: `1.x` == `1.x.x`.
        Ok(Partial {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
            pre: Prerelease::new(pre).map_err(|e| format!("pre-release '{pre}': {e}"))?,
            build: BuildMetadata::new(build).map_err(|e| format!("build '{build}': {e}"))?,
            wildcard,
        })
    }

    fn is_partial(&self) -> bool {
        self.major.is_none() || self.minor.is_none() || self.patch.is_none()
    }

    // The lowest version the partial stands for.
    fn floor(&self) -> Version {
        Version {
            major: self.major.unwrap_or(0),
            minor: self.minor.unwrap_or(0),
            patch: self.patch.unwrap_or(0),
            pre: self.pre.clone(),
            build: self.build.clone(),
        }
    }

    // The first version above everything the partial stands for; `None` for `*`.
    fn ceiling(&self) -> Option<Version> {
        match (self.major, self.minor, self.patch) {
            (None, _, _) => None,
            (Some(m), None, _) => Some(Version::new(m.saturating_add(1), 0, 0)),
            (Some(m), Some(n), None) => Some(Version::new(m, n.saturating_add(1), 0)),
            (Some(m), Some(n), Some(p)) => Some(Version::new(m, n, p.saturating_add(1))),
        }
    }
}

fn upper_inclusive(p: &Partial) -> Comparator {
    if p.is_partial() {
        match p.ceiling() {
            Some(c) => Comparator::Lt(c),
            None => Comparator::Any,
        }
    } else {
        Comparator::Le(p.floor())
    }
}

fn expand(token: &str, out: &mut Vec<Comparator>) -> Result<(), String> {
    let split = token
        .find(|c: char| !"<>=!~^".contains(c))
        .ok_or_else(|| format!("operator '{token}' without a version"))?;
    let (op, version) = token.split_at(split);
    let p = Partial::parse(version)?;
    let floor = p.floor();
    match op {
        "" | "=" => match (p.is_partial(), p.ceiling()) {
            (false, _) => out.push(Comparator::Eq(floor)),
            (true, Some(c)) => out.extend([Comparator::Ge(floor), Comparator::Lt(c)]),
            (true, None) => out.push(Comparator::Any),
        },
        "!=" => match (p.is_partial(), p.ceiling()) {
            (false, _) => out.push(Comparator::Ne(floor)),
            (true, Some(c)) => out.push(Comparator::NotIn(floor, c)),
            (true, None) => out.push(Comparator::Lt(Version::new(0, 0, 0))),
        },
        ">" => match (p.is_partial(), p.ceiling()) {
            (false, _) => out.push(Comparator::Gt(floor)),
            (true, Some(c)) => out.push(Comparator::Ge(c)),
            (true, None) => out.push(Comparator::Lt(Version::new(0, 0, 0))),
        },
        ">=" | "=>" => out.push(Comparator::Ge(floor)),
        "<" => out.push(Comparator::Lt(floor)),
        "<=" | "=<" => out.push(upper_inclusive(&p)),
        "~" | "~>" => {
            out.push(Comparator::Ge(floor));
            match (p.major, p.minor) {
                (None, _) => {}
                (Some(m), None) => {
                    out.push(Comparator::Lt(Version::new(m.saturating_add(1), 0, 0)))
                }
                (Some(m), Some(n)) => {
                    out.push(Comparator::Lt(Version::new(m, n.saturating_add(1), 0)))
                }
            }
        }
        "^" => {
            out.push(Comparator::Ge(floor));
            let upper = match (p.major, p.minor, p.patch) {
                (None, _, _) => None,
                (Some(m), _, _) if m > 0 => Some(Version::new(m.saturating_add(1), 0, 0)),
                (Some(m), None, _) => Some(Version::new(m.saturating_add(1), 0, 0)),
                (Some(_), Some(n), _) if n > 0 => Some(Version::new(0, n.saturating_add(1), 0)),
                (Some(_), Some(n), None) => Some(Version::new(0, n.saturating_add(1), 0)),
                (Some(_), Some(_), Some(pt)) => Some(Version::new(0, 0, pt.saturating_add(1))),
            };
            out.extend(upper.map(Comparator::Lt));
        }
        other => return Err(format!("unknown operator '{other}'")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(range: &str, yes: &[&str], no: &[&str]) {
        let r = Range::parse(range).unwrap_or_else(|e| panic!("{e}"));
        for v in yes {
            assert!(
                r.matches(&parse_version(v).unwrap()),
                "{range} should match {v}"
            );
        }
        for v in no {
            assert!(
                !r.matches(&parse_version(v).unwrap()),
                "{range} should not match {v}"
            );
        }
    }

    #[test]
    fn masterminds_ranges() {
        check(">=1.0.0 <2.0.0", &["1.0.0", "1.9.9"], &["0.9.0", "2.0.0"]);
        check(">= 1.0.0, < 2.0.0", &["1.5.0"], &["2.0.0"]);
        check("^1.2.3", &["1.2.3", "1.9.0"], &["1.2.2", "2.0.0"]);
        check("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0"]);
        check("^0.0.3", &["0.0.3"], &["0.0.4"]);
        check("^0", &["0.9.9"], &["1.0.0"]);
        check("~1.2.3", &["1.2.3", "1.2.9"], &["1.3.0"]);
        check("~1", &["1.0.0", "1.9.0"], &["2.0.0"]);
        check("~> 2.3", &["2.3.5"], &["2.4.0"]);
        check("1.2.x", &["1.2.0", "1.2.7"], &["1.3.0"]);
        check("1.2", &["1.2.7"], &["1.3.0"]);
        check("*", &["0.0.1", "9.9.9"], &["1.0.0-rc.1"]);
        check("<=2.x", &["2.9.0"], &["3.0.0"]);
        check(">1.x", &["2.0.0"], &["1.9.9"]);
        check("1.2 - 1.4.5", &["1.2.0", "1.4.5"], &["1.4.6", "1.1.9"]);
        check("1.x || >=3.0.0", &["1.5.0", "3.1.0"], &["2.0.0"]);
        check("v1.0.0", &["1.0.0"], &["1.0.1"]);
        check("!=1.0.0 >=0.9", &["0.9.0", "1.0.1"], &["1.0.0"]);
        // No overflow at the edge of u64.
        check("~18446744073709551615", &[], &["1.0.0"]);
    }

    #[test]
    fn prereleases_only_when_asked_for() {
        check(">=1.0.0", &["1.2.0"], &["1.2.0-rc.1"]);
        check(">=1.0.0-0", &["1.2.0-rc.1", "1.0.0"], &[]);
        check(
            "^2.0.0-alpha",
            &["2.0.0-beta.1", "2.1.0"],
            &["3.0.0", "1.9.0"],
        );
    }

    #[test]
    fn tags_parse_leniently() {
        assert_eq!(parse_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(parse_version("1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(parse_version("v2"), Some(Version::new(2, 0, 0)));
        assert!(parse_version("1.2.3-rc.1+b5").is_some());
        for bad in ["latest", "1.x", "1..2", "1.2.3.4", "release-1"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        // Where Masterminds and Cargo agree (comparison operators, caret and tilde on full
        // versions, no pre-releases), the answers must be Cargo's.
        #[test]
        fn agrees_with_cargo_on_the_common_subset(
            op in proptest::sample::select(vec![">=", ">", "<", "<=", "^", "~"]),
            (a, b, c) in (0u64..4, 0u64..4, 0u64..4),
            (x, y, z) in (0u64..5, 0u64..5, 0u64..5),
        ) {
            let range = format!("{op}{a}.{b}.{c}");
            let ours = Range::parse(&range).unwrap();
            let cargo = semver::VersionReq::parse(&range).unwrap();
            let v = Version::new(x, y, z);
            proptest::prop_assert_eq!(ours.matches(&v), cargo.matches(&v), "{} vs {}", range, v);
        }

        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = Range::parse(&s);
            let _ = parse_version(&s);
        }
    }

    #[test]
    fn bad_ranges_are_errors() {
        for bad in ["", ">=", "1.2.3 -", "foo", "1.2.3 || "] {
            assert!(Range::parse(bad).is_err(), "{bad}");
        }
    }
}

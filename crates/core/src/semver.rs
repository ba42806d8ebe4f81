//! Semver ranges and versions the way Flux reads them: Masterminds/semver v3 syntax and rules.
//!
//! Flux takes semver ranges in two places, `GitRepository.spec.ref.semver` and
//! `ImagePolicy.spec.policy.semver.range`; both parse the range with Masterminds'
//! `NewConstraint` and keep the tags that Flux's `version.ParseVersion` accepts (a strict
//! `MAJOR.MINOR.PATCH[-PRE][+BUILD]`, optionally after one lowercase `v`). The `semver` crate
//! only speaks Cargo's syntax, so ranges are parsed and evaluated here, rule for rule:
//!
//! - alternatives separated by `||`; within one, comparators separated by whitespace or a comma
//!   (AND); whitespace between an operator and its version is allowed;
//! - operators `=` (or none), `!=`, `>`, `>=`/`=>`, `<`, `<=`/`=<`, `~`/`~>`, `^`;
//! - hyphen ranges `A - B` (both bare versions) mean `>= A, <= B`;
//! - partial versions and wildcards (`1`, `1.2`, `1.x`, `1.2.*`, `*`): each operator treats the
//!   missing part as Masterminds does (`>1.2` means `>=1.3.0`, `<=1.2` means `<1.3.0`, `1.2` means
//!   `~1.2`);
//! - a pre-release version is considered by an alternative only when one of that alternative's
//!   comparators names a pre-release (any major.minor.patch: `>=1.0.0-0 <2` admits `1.5.0-rc.1`);
//! - build metadata never affects ordering; equal versions compare equal (`1.0.0` and `v1.0.0`).
//!
//! Like Masterminds (v3.4), a range longer than [`MAX_RANGE_LEN`] bytes or with more than
//! [`MAX_ALTERNATIVES`] alternatives is rejected, which also bounds the work per tag.

use std::cmp::Ordering;

use ::semver::{BuildMetadata, Prerelease, Version};

/// The longest range string accepted.
pub const MAX_RANGE_LEN: usize = 512;
/// The most `||` alternatives accepted.
pub const MAX_ALTERNATIVES: usize = 32;

/// Why a range does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The range string is malformed.
    #[error("invalid semver range '{range}': {reason}")]
    Invalid { range: String, reason: String },
}

/// A parsed range: a version matches when every comparator of some alternative holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    alternatives: Vec<Alternative>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Alternative {
    comparators: Vec<Comparator>,
    // Whether a comparator names a pre-release, which lets pre-release versions in.
    prerelease: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    // No operator or `=`: equality, or `~` when the version has a wildcard.
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Tilde,
    Caret,
}

// Which part of the comparator's version was a wildcard or missing (the rest is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wild {
    None,
    Patch,
    Minor,
    Major,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Comparator {
    op: Op,
    // The version with wildcards and missing parts as 0.
    v: Version,
    wild: Wild,
}

fn precedence(a: &Version, b: &Version) -> Ordering {
    a.cmp_precedence(b)
}

impl Comparator {
    fn holds(&self, v: &Version) -> bool {
        let c = &self.v;
        let dirty = self.wild != Wild::None;
        let minor_dirty = self.wild == Wild::Minor;
        let patch_dirty = self.wild == Wild::Patch;
        match self.op {
            Op::Eq if dirty => self.tilde(v),
            Op::Eq => precedence(v, c).is_eq(),
            Op::Ne => {
                if dirty {
                    if c.major != v.major {
                        return true;
                    }
                    if c.minor != v.minor && !minor_dirty {
                        return true;
                    }
                    if minor_dirty {
                        return false;
                    }
                    if c.patch != v.patch && !patch_dirty {
                        return true;
                    }
                    if patch_dirty {
                        return (!v.pre.is_empty() || !c.pre.is_empty()) && v.pre != c.pre;
                    }
                }
                !precedence(v, c).is_eq()
            }
            Op::Gt => {
                if !dirty {
                    return precedence(v, c).is_gt();
                }
                match v.major.cmp(&c.major) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal if minor_dirty => false,
                    Ordering::Equal if patch_dirty => v.minor > c.minor,
                    Ordering::Equal => precedence(v, c).is_gt(),
                }
            }
            Op::Lt => precedence(v, c).is_lt(),
            Op::Ge => !precedence(v, c).is_lt(),
            Op::Le => {
                if !dirty {
                    return !precedence(v, c).is_gt();
                }
                !(v.major > c.major || (v.major == c.major && v.minor > c.minor && !minor_dirty))
            }
            Op::Tilde => self.tilde(v),
            Op::Caret => {
                if precedence(v, c).is_lt() {
                    return false;
                }
                if c.major > 0 || minor_dirty {
                    return v.major == c.major;
                }
                if v.major > 0 {
                    return false;
                }
                if c.minor > 0 || patch_dirty {
                    return v.minor == c.minor;
                }
                if v.minor > 0 {
                    return false;
                }
                v.patch == c.patch
            }
        }
    }

    fn tilde(&self, v: &Version) -> bool {
        let c = &self.v;
        if precedence(v, c).is_lt() {
            return false;
        }
        // `~0.0.0`, `~*` and `*`: anything.
        let zero = c.major == 0 && c.minor == 0 && c.patch == 0;
        if zero && !matches!(self.wild, Wild::Minor | Wild::Patch) {
            return true;
        }
        v.major == c.major && (v.minor == c.minor || self.wild == Wild::Minor)
    }
}

impl Range {
    /// Parses a range in Masterminds syntax.
    pub fn parse(range: &str) -> Result<Self, RangeError> {
        let err = |reason: String| RangeError::Invalid {
            range: range.to_owned(),
            reason,
        };
        if range.len() > MAX_RANGE_LEN {
            return Err(err(format!("longer than {MAX_RANGE_LEN} bytes")));
        }
        let parts: Vec<&str> = range.split("||").collect();
        if parts.len() > MAX_ALTERNATIVES {
            return Err(err(format!("more than {MAX_ALTERNATIVES} alternatives")));
        }
        let alternatives = parts
            .into_iter()
            .map(|alt| {
                let comparators = parse_alternative(alt).map_err(&err)?;
                let prerelease = comparators.iter().any(|c| !c.v.pre.is_empty());
                Ok(Alternative {
                    comparators,
                    prerelease,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Range { alternatives })
    }

    /// Whether `version` lies in the range.
    pub fn matches(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|alt| {
            (version.pre.is_empty() || alt.prerelease)
                && alt.comparators.iter().all(|c| c.holds(version))
        })
    }

    /// The highest tag (by [`parse_tag`]) in the range; the first of equal versions wins, as in
    /// Flux. Streams: nothing but the current winner is kept.
    pub fn highest<I>(&self, tags: I) -> Option<I::Item>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut best: Option<(Version, I::Item)> = None;
        for tag in tags {
            let Some(v) = parse_tag_inner(tag.as_ref(), false) else {
                continue;
            };
            if !self.matches(&v) {
                continue;
            }
            if best.as_ref().is_none_or(|(b, _)| precedence(&v, b).is_gt()) {
                best = Some((v, tag));
            }
        }
        best.map(|(_, t)| t)
    }
}

/// Like [`parse_tag`], without keeping the build metadata (which never affects matching or
/// ordering): what choosing among many tags needs.
pub fn parse_tag_for_precedence(tag: &str) -> Option<Version> {
    parse_tag_inner(tag, false)
}

/// Parses a tag the way Flux's `version.ParseVersion` does: one optional lowercase `v`, then a
/// strict semantic version (exactly three numeric parts without leading zeros, a valid
/// pre-release and build metadata).
pub fn parse_tag(tag: &str) -> Option<Version> {
    parse_tag_inner(tag, true)
}

// Build metadata never takes part in matching or ordering; leaving it out (after validating it)
// spares an allocation per tag with long metadata when choosing among many tags.
fn parse_tag_inner(tag: &str, keep_build: bool) -> Option<Version> {
    let s = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = s.splitn(3, '.');
    let (major, minor, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (rest, build) = match rest.split_once('+') {
        Some((r, b)) if !b.is_empty() => (r, build_metadata(b, keep_build)?),
        Some(_) => return None,
        None => (rest, BuildMetadata::EMPTY),
    };
    let (patch, pre) = match rest.split_once('-') {
        Some((p, pre)) if !pre.is_empty() => (p, Prerelease::new(pre).ok()?),
        Some(_) => return None,
        None => (rest, Prerelease::EMPTY),
    };
    let num = |p: &str| {
        let strict = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || !p.starts_with('0'));
        strict.then(|| p.parse::<u64>().ok()).flatten()
    };
    Some(Version {
        major: num(major)?,
        minor: num(minor)?,
        patch: num(patch)?,
        pre,
        build,
    })
}

fn build_metadata(b: &str, keep: bool) -> Option<BuildMetadata> {
    let valid = b
        .split('.')
        .all(|id| !id.is_empty() && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    match (valid, keep) {
        (false, _) => None,
        (true, true) => BuildMetadata::new(b).ok(),
        (true, false) => Some(BuildMetadata::EMPTY),
    }
}

/// Parses a version the way Masterminds' lenient `NewVersion` does: optional `v`, one to three
/// numeric parts (missing ones are 0), optional pre-release and build metadata.
pub fn parse_version(s: &str) -> Option<Version> {
    let end = scan_version(s.as_bytes(), 0)?;
    if end != s.len() {
        return None;
    }
    let p = Partial::parse(s).ok()?;
    (!p.has_x).then_some(p.v)
}

// One alternative: comparators separated by whitespace or a comma.
fn parse_alternative(s: &str) -> Result<Vec<Comparator>, String> {
    let b = s.as_bytes();
    let mut i = skip_ws(b, 0);
    if i == b.len() {
        return Err("empty alternative".into());
    }
    let mut out = Vec::new();
    // Whether the separator before this comparator was whitespace only.
    let mut after_space = false;
    loop {
        let start = i;
        let (op, op_end) = scan_op(b, i);
        let v_start = skip_ws(b, op_end);
        let v_end = scan_version(b, v_start)
            .ok_or_else(|| format!("expected a version at '{}'", &s[start..]))?;
        i = v_end;
        // `A - B`: Masterminds rewrites it to `>= A, <= B` before anything else, which swallows
        // the whitespace before A; a hyphen range after an operator or after a separator of
        // whitespace alone therefore never parses there.
        let hyphen = hyphen_upper(b, i);
        if let Some((hi_start, hi_end)) = hyphen {
            if !op.is_empty() || after_space {
                return Err(format!("misplaced hyphen range at '{}'", &s[start..]));
            }
            out.push(comparator(">=", &s[v_start..v_end])?);
            out.push(comparator("<=", &s[hi_start..hi_end])?);
            i = hi_end;
        } else {
            out.push(comparator(op, &s[v_start..v_end])?);
        }
        let ws_end = skip_ws(b, i);
        let had_space = ws_end > i;
        i = ws_end;
        if i == b.len() {
            break;
        }
        if b[i] == b',' {
            i = skip_ws(b, i + 1);
            after_space = false;
            if i == b.len() {
                return Err("trailing comma".into());
            }
        } else if had_space {
            after_space = hyphen.is_none();
        } else {
            return Err(format!("unexpected '{}'", &s[i..]));
        }
    }
    Ok(out)
}

// After a bare version: `<ws>+ - <ws>+ VERSION`, returning the upper version's span.
fn hyphen_upper(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let dash = skip_ws(b, i);
    if dash == i || b.get(dash) != Some(&b'-') {
        return None;
    }
    let hi = skip_ws(b, dash + 1);
    if hi == dash + 1 {
        return None;
    }
    scan_version(b, hi).map(|end| (hi, end))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn scan_op(b: &[u8], i: usize) -> (&'static str, usize) {
    let two = b.get(i..i + 2);
    for op in ["!=", ">=", "=>", "<=", "=<", "~>"] {
        if two == Some(op.as_bytes()) {
            return (op, i + 2);
        }
    }
    match b.get(i) {
        Some(b'=') => ("=", i + 1),
        Some(b'>') => (">", i + 1),
        Some(b'<') => ("<", i + 1),
        Some(b'~') => ("~", i + 1),
        Some(b'^') => ("^", i + 1),
        _ => ("", i),
    }
}

// The end of the version starting at `i`: `v?P(.P)?(.P)?(-ID(.ID)*)?(+ID(.ID)*)?` with P of
// digits and `xX*`, ID of alphanumerics and `-` (Masterminds' grammar for range versions).
fn scan_version(b: &[u8], mut i: usize) -> Option<usize> {
    let part = |c: u8| c.is_ascii_digit() || matches!(c, b'x' | b'X' | b'*');
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    let run = |i: usize, f: &dyn Fn(u8) -> bool| {
        let mut j = i;
        while b.get(j).is_some_and(|&c| f(c)) {
            j += 1;
        }
        j
    };
    if b.get(i) == Some(&b'v') {
        i += 1;
    }
    let end = run(i, &part);
    if end == i {
        return None;
    }
    i = end;
    for _ in 0..2 {
        if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| part(c)) {
            i = run(i + 1, &part);
        } else {
            break;
        }
    }
    for sep in [b'-', b'+'] {
        if b.get(i) == Some(&sep) && b.get(i + 1).is_some_and(|&c| ident(c)) {
            i = run(i + 1, &ident);
            while b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| ident(c)) {
                i = run(i + 1, &ident);
            }
        }
    }
    Some(i)
}

fn comparator(op: &str, version: &str) -> Result<Comparator, String> {
    let op = match op {
        "" | "=" => Op::Eq,
        "!=" => Op::Ne,
        ">" => Op::Gt,
        ">=" | "=>" => Op::Ge,
        "<" => Op::Lt,
        "<=" | "=<" => Op::Le,
        "~" | "~>" => Op::Tilde,
        "^" => Op::Caret,
        other => return Err(format!("unknown operator '{other}'")),
    };
    let p = Partial::parse(version)?;
    Ok(Comparator {
        op,
        v: p.v,
        wild: p.wild,
    })
}

// A range version: parts after the first wildcard or missing part are ignored, as in
// Masterminds.
struct Partial {
    v: Version,
    wild: Wild,
    // An explicit `x`/`X`/`*` (not just a missing part).
    has_x: bool,
}

impl Partial {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => (r, b),
            None => (s, ""),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, p),
            None => (rest, ""),
        };
        let is_x = |p: &str| matches!(p, "x" | "X" | "*");
        let parts: Vec<&str> = core.split('.').collect();
        let wild_at = parts.iter().position(|p| is_x(p)).unwrap_or(parts.len());
        let wild = match wild_at.min(parts.len()) {
            0 => Wild::Major,
            1 => Wild::Minor,
            2 => Wild::Patch,
            _ => Wild::None,
        };
        let has_x = wild_at < parts.len();
        let mut nums = [0u64; 3];
        for (n, part) in nums.iter_mut().zip(&parts[..wild_at.min(3)]) {
            *n = part
                .parse::<u64>()
                .map_err(|_| format!("'{part}' in '{s}' is not a number"))?;
        }
        if rest.len() != core.len() && pre.is_empty() {
            return Err(format!("'{s}': empty pre-release"));
        }
        if s.len() != rest.len() && build.is_empty() {
            return Err(format!("'{s}': empty build metadata"));
        }
        let pre = Prerelease::new(pre).map_err(|e| format!("pre-release '{pre}': {e}"))?;
        // Masterminds drops the build metadata of a partial version.
        let build = if wild == Wild::None {
            BuildMetadata::new(build).map_err(|e| format!("build '{build}': {e}"))?
        } else {
            BuildMetadata::EMPTY
        };
        Ok(Partial {
            v: Version {
                major: nums[0],
                minor: nums[1],
                patch: nums[2],
                pre,
                build,
            },
            wild,
            has_x,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        parse_version(s).unwrap_or_else(|| panic!("{s} is not a version"))
    }

    fn check(range: &str, yes: &[&str], no: &[&str]) {
        let r = Range::parse(range).unwrap_or_else(|e| panic!("{e}"));
        for x in yes {
            assert!(r.matches(&v(x)), "{range} should match {x}");
        }
        for x in no {
            assert!(!r.matches(&v(x)), "{range} should not match {x}");
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
        check("^0.0", &["0.0.3"], &["0.1.4", "1.0.4"]);
        check("^1.x", &["1.1.1"], &["2.1.1", "0.9.0"]);
        check("~1.2.3", &["1.2.3", "1.2.9"], &["1.3.0", "1.2.2"]);
        check("~1", &["1.0.0", "1.9.0"], &["2.0.0"]);
        check("~> 2.3", &["2.3.5"], &["2.4.0"]);
        check("~*", &["2.1.1"], &[]);
        check("~0.0.0", &["1.2.3"], &[]);
        check("1.2.x", &["1.2.0", "1.2.7"], &["1.3.0"]);
        check("1.2", &["1.2.7"], &["1.3.0"]);
        check("=2.0", &["2.0.0", "2.0.1"], &["1.2.3"]);
        check("*", &["0.0.1", "9.9.9"], &["1.0.0-rc.1"]);
        check("<=2.x", &["2.9.0"], &["3.0.0"]);
        check("<=1.1", &["1.1.1", "0.1.0"], &["1.2.3"]);
        check("<1.1.x", &["1.0.500"], &["1.1.500", "1.2.1"]);
        check(">1.x", &["2.0.0"], &["1.9.9"]);
        check(">11.1", &["11.2.1"], &["11.1.0", "11.1.1"]);
        check("1.2 - 1.4.5", &["1.2.0", "1.4.5"], &["1.4.6", "1.1.9"]);
        check("1.1 - 2", &["1.1.1", "2.0.0"], &["3.0.0"]);
        // `1.1-3` is the version 1.1 with the pre-release `3`, not a hyphen range.
        check("1.1-3", &["1.1.0", "1.1.5-3"], &["4.3.2", "1.0.9"]);
        check("1.x || >=3.0.0", &["1.5.0", "3.1.0"], &["2.0.0"]);
        check(
            ">=1.1, <2, !=1.2.3 || > 3",
            &["4.1.2", "1.2.4"],
            &["1.2.3", "3.0.0"],
        );
        check("v1.0.0", &["1.0.0"], &["1.0.1"]);
        check("!=1.0.0 >=0.9", &["0.9.0", "1.0.1"], &["1.0.0"]);
        check("!=4.x", &["5.1.0"], &["4.1.0"]);
        check("!=4.2.x", &["4.3.0"], &["4.2.3"]);
        check("!=4.1-alpha", &["4.1.0"], &["4.1.0-alpha", "4.1.1-alpha"]);
        // No overflow at the edge of u64.
        check("~18446744073709551615", &[], &["1.0.0"]);
    }

    #[test]
    fn prereleases_only_when_the_alternative_names_one() {
        check(">=1.0.0", &["1.2.0"], &["1.2.0-rc.1"]);
        check(">=1.0.0-0", &["1.2.0-rc.1", "1.0.0"], &[]);
        // Any comparator of the alternative opens the door, for any major.minor.patch.
        // 2.0.0-rc.1 sorts below 2.0.0, so `<2.0.0` lets it in once pre-releases are.
        check(
            ">=1.0.0-0 <2.0.0",
            &["1.5.0-rc.1", "2.0.0-rc.1"],
            &["2.0.0"],
        );
        check(">=1.0.0-0 <2.0.0 || >=3", &[], &["3.1.0-rc.1"]);
        check(
            "^2.0.0-alpha",
            &["2.0.0-beta.1", "2.1.0"],
            &["3.0.0", "1.9.0"],
        );
        check(
            "~1.2.3-beta.2",
            &["1.2.3-beta.4", "1.2.4-beta.2"],
            &["1.3.4-beta.2"],
        );
        check("^1.2.0-alpha.2", &[], &["1.2.0-alpha.1"]);
        check(">0.0.0-0", &["0.0.0-alpha"], &[]);
        check("*-0", &["1.2.3-alpha.1"], &[]);
        check("<0-z", &["0.0.0-alpha"], &[]);
    }

    #[test]
    fn tags_are_strict_with_an_optional_v() {
        assert_eq!(parse_tag("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(parse_tag("1.2.3"), Some(Version::new(1, 2, 3)));
        assert!(parse_tag("1.2.3-rc.1+b5").is_some());
        assert!(parse_tag("0.0.0").is_some());
        for bad in [
            "latest",
            "1.2",
            "v2",
            "1.x.0",
            "1..2",
            "1.2.3.4",
            "release-1",
            "V1.2.3",
            "vv1.2.3",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-01",
            "1.2.3-a..b",
            "1.0.0p",
            "-1.2.3",
            "+1.2.3",
            " 1.2.3",
            "1.2.3 ",
            "18446744073709551616.0.0",
        ] {
            assert_eq!(parse_tag(bad), None, "{bad}");
        }
        // Leading zeros are fine in build metadata, not in numeric pre-release identifiers.
        assert!(parse_tag("1.2.3+001").is_some());
    }

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(parse_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(parse_version("1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(parse_version("v2"), Some(Version::new(2, 0, 0)));
        assert!(parse_version("1.2.3-rc.1+b5").is_some());
        for bad in ["latest", "1.x", "1..2", "1.2.3.4", "release-1", ""] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn highest_keeps_the_first_of_equal_versions() {
        let r = Range::parse(">=1").unwrap();
        assert_eq!(r.highest(["1.0.0", "v1.0.0"]), Some("1.0.0"));
        assert_eq!(r.highest(["v1.0.0", "1.0.0"]), Some("v1.0.0"));
        assert_eq!(r.highest(["1.0.0+a", "1.0.0+b"]), Some("1.0.0+a"));
        assert_eq!(
            r.highest(["1.0.0", "1.0.0.1", "1.0.0p", "1.0.1"]),
            Some("1.0.1")
        );
        assert_eq!(r.highest(Vec::<String>::new()), None);
        let owned = vec!["v1.2.0".to_string(), "1.10.0".to_string()];
        assert_eq!(r.highest(owned).as_deref(), Some("1.10.0"));
    }

    #[test]
    fn bad_ranges_are_errors() {
        for bad in [
            "",
            " ",
            ">=",
            "1.2.3 -",
            "foo",
            "1.2.3 || ",
            "|| 1",
            "1.0.0p",
            "1x",
            "x1",
            "-1",
            "a",
            "12.3.4.1234",
            "12.3.34~ 1.2.3",
            ">= bar",
            "BAR >= 1.2.3",
            ">=1.0 - 2.0",
            ">1 1.2 - 1.4",
            "1,,2",
            "1,",
            ",1",
            "1.2.3-",
            "V1.2.3",
            "18446744073709551616",
        ] {
            assert!(Range::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(Range::parse(&"1 ".repeat(300)).is_err());
        assert!(Range::parse(&vec!["1"; 33].join("||")).is_err());
        for good in [
            "1.0.x",
            "^1.0",
            "=1.0.0",
            "~1.0",
            ">=1.0",
            ">0,<2.0",
            ">40.50.60, < 50.70",
            ">= 1.2.3 < 2.0 || => 3.0 < 4",
            "3 - 4 || => 3.0, < 4",
            "12.3.34 ~1.2.3",
            ">1, 1.2 - 1.4",
            "1.2 - 1.4 <2",
            "v2.3.5-20161202202307-sha.e8fc5e5",
            "1.x.3",
        ] {
            assert!(Range::parse(good).is_ok(), "{good:?} should parse");
        }
    }

    proptest::proptest! {
        // Where Masterminds and Cargo agree (comparison operators, caret and tilde on full
        // versions, no pre-releases), the answers must be Cargo's.
        #[test]
        fn agrees_with_cargo_on_the_common_subset(
            op in proptest::sample::select(vec![">=", ">", "<", "<=", "^"]),
            (a, b, c) in (0u64..4, 0u64..4, 0u64..4),
            (x, y, z) in (0u64..5, 0u64..5, 0u64..5),
        ) {
            let range = format!("{op}{a}.{b}.{c}");
            let ours = Range::parse(&range).unwrap();
            let cargo = ::semver::VersionReq::parse(&range).unwrap();
            let v = Version::new(x, y, z);
            proptest::prop_assert_eq!(ours.matches(&v), cargo.matches(&v), "{} vs {}", range, v);
        }

        // A hyphen range is exactly its two comparators.
        #[test]
        fn hyphen_ranges_are_ge_and_le(
            (a, b, c) in (0u64..4, 0u64..4, 0u64..4),
            (d, e) in (0u64..4, 0u64..4),
            (x, y, z) in (0u64..5, 0u64..5, 0u64..5),
        ) {
            let hyphen = Range::parse(&format!("{a}.{b}.{c} - {d}.{e}")).unwrap();
            let pair = Range::parse(&format!(">= {a}.{b}.{c}, <= {d}.{e}")).unwrap();
            let v = Version::new(x, y, z);
            proptest::prop_assert_eq!(hyphen.matches(&v), pair.matches(&v));
        }

        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = Range::parse(&s);
            let _ = parse_version(&s);
            let _ = parse_tag(&s);
        }

        #[test]
        fn range_like_input_never_panics(s in "[ ,|<>=!~^vxX*0-9.+a-z-]{0,30}", t in "v?[0-9]\\.[0-9]\\.[0-9](-[a-z0-9.]{1,5})?") {
            if let Ok(r) = Range::parse(&s)
                && let Some(v) = parse_tag(&t)
            {
                let _ = r.matches(&v);
            }
        }
    }
}

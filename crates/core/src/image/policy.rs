//! ImagePolicy's choice of the latest tag, the same as Flux's image-reflector-controller makes.
//!
//! - `semver`: the highest tag that parses as a strict semantic version (an optional `v`) and lies
//!   in the range; of equal versions (`1.0.0`, `v1.0.0`, `1.0.0+build`) the first seen wins.
//! - `alphabetical`: byte-wise order; `asc` picks the maximum, `desc` the minimum.
//! - `numerical`: every candidate must parse as a float (Go's `ParseFloat`), else the whole
//!   choice fails; `asc` picks the maximum, `desc` the minimum; of equal values the last wins.
//! - `filterTags`: tags the pattern does not match are dropped; with an `extract` template the
//!   policy orders the expanded values (Go's `Regexp.Expand`: `$1`, `$name`, `${name}`, `$$`) and
//!   the choice is the original tag, the last one when several expand to the same value.
//!
//! The choice streams over the tags and keeps only the current winner, so a repository with
//! 100 000 tags costs no more memory than one with ten.

use std::cmp::Ordering;

use ::semver::Version;
use regex::{CaptureLocations, Regex};

use crate::semver::{Range, RangeError, parse_tag_for_precedence};

/// Why no tag could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No tag passed the filter and the policy.
    #[error("no tag matches the policy")]
    NoMatch,
    /// The semver range does not parse.
    #[error(transparent)]
    InvalidRange(#[from] RangeError),
    /// The filterTags pattern does not compile.
    #[error("invalid filterTags pattern '{pattern}': {source}")]
    InvalidRegex {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// A numerical policy met a candidate that is not a number.
    #[error("numerical policy: tag '{tag}' is not a number")]
    NotNumeric { tag: String },
    /// An order other than asc or desc.
    #[error("invalid order '{0}': must be asc or desc")]
    InvalidOrder(String),
}

impl PolicyError {
    /// Whether the error is in the policy itself (retrying cannot help) rather than in the tags.
    pub fn is_invalid_spec(&self) -> bool {
        matches!(
            self,
            PolicyError::InvalidRange(_)
                | PolicyError::InvalidRegex { .. }
                | PolicyError::InvalidOrder(_)
        )
    }
}

/// Which end of the order wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// The greatest value wins (Flux's default).
    #[default]
    Asc,
    /// The least value wins.
    Desc,
}

impl std::str::FromStr for Order {
    type Err = PolicyError;

    /// Case-insensitive `asc`/`desc`; empty means `asc`, as in Flux.
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.to_ascii_lowercase().as_str() {
            "" | "asc" => Ok(Order::Asc),
            "desc" => Ok(Order::Desc),
            _ => Err(PolicyError::InvalidOrder(s.to_owned())),
        }
    }
}

/// One of ImagePolicy's `spec.policy` choices.
#[derive(Clone, Debug)]
pub enum Policy {
    Semver(Range),
    Alphabetical(Order),
    Numerical(Order),
}

impl Policy {
    /// A semver policy from a Masterminds range.
    pub fn semver(range: &str) -> Result<Self, PolicyError> {
        Ok(Policy::Semver(Range::parse(range)?))
    }
}

/// ImagePolicy's `spec.filterTags`.
#[derive(Clone, Debug)]
pub struct TagFilter {
    pattern: Regex,
    extract: String,
}

impl TagFilter {
    /// Compiles the pattern; an empty `extract` orders the tags themselves.
    pub fn new(pattern: &str, extract: &str) -> Result<Self, PolicyError> {
        let compiled = Regex::new(pattern).map_err(|e| PolicyError::InvalidRegex {
            pattern: pattern.to_owned(),
            source: Box::new(e),
        })?;
        Ok(TagFilter {
            pattern: compiled,
            extract: extract.to_owned(),
        })
    }

    /// Writes the value the policy orders for `tag` into `out`; false when the pattern does not
    /// match (the tag is dropped).
    pub fn apply(&self, tag: &str, out: &mut String) -> bool {
        self.apply_with(&mut self.pattern.capture_locations(), tag, out)
    }

    // `apply` with the caller's capture slots, so a long run of tags allocates nothing.
    fn apply_with(&self, locs: &mut CaptureLocations, tag: &str, out: &mut String) -> bool {
        out.clear();
        if self.pattern.captures_read(locs, tag).is_none() {
            return false;
        }
        if self.extract.is_empty() {
            out.push_str(tag);
        } else {
            expand(&self.pattern, locs, tag, &self.extract, out);
        }
        true
    }
}

/// Chooses the tag `policy` picks among `tags` after `filter`; returns the original item.
///
/// Tags may be borrowed (`&str`) or owned (`String`, e.g. lines read one by one).
pub fn choose<I>(
    policy: &Policy,
    filter: Option<&TagFilter>,
    tags: I,
) -> Result<I::Item, PolicyError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut chooser = Chooser::new(policy);
    // Two buffers, swapped when the winner changes: no allocation per tag once warm.
    let mut scratch = String::new();
    let mut locs = filter.map(|f| f.pattern.capture_locations());
    for tag in tags {
        let key: &str = match (filter, locs.as_mut()) {
            (Some(f), Some(locs)) => {
                if !f.apply_with(locs, tag.as_ref(), &mut scratch) {
                    continue;
                }
                &scratch
            }
            _ => tag.as_ref(),
        };
        match chooser.consider(key, filter.is_some())? {
            Verdict::Lose => {}
            Verdict::SameKey => chooser.winner = Some(tag),
            Verdict::Win(value) => {
                if filter.is_some() {
                    std::mem::swap(&mut chooser.key, &mut scratch);
                }
                chooser.value = value;
                chooser.winner = Some(tag);
            }
        }
    }
    chooser.winner.ok_or(PolicyError::NoMatch)
}

enum Value {
    None,
    Version(Version),
    Number(f64),
}

enum Verdict {
    Lose,
    // The filter produced the winner's value again: the later original wins (Flux keeps the
    // last original per extracted value).
    SameKey,
    Win(Value),
}

struct Chooser<'p, T> {
    policy: &'p Policy,
    winner: Option<T>,
    // The winner's extracted value (only kept when a filter is in use).
    key: String,
    value: Value,
}

impl<'p, T: AsRef<str>> Chooser<'p, T> {
    fn new(policy: &'p Policy) -> Self {
        Chooser {
            policy,
            winner: None,
            key: String::new(),
            value: Value::None,
        }
    }

    fn winner_key(&self, filtered: bool) -> Option<&str> {
        let w = self.winner.as_ref()?;
        Some(if filtered { &self.key } else { w.as_ref() })
    }

    fn consider(&self, key: &str, filtered: bool) -> Result<Verdict, PolicyError> {
        let current = self.winner_key(filtered);
        if filtered && current == Some(key) {
            // Numerical still has to reject a non-number, but an equal key parsed before.
            return Ok(Verdict::SameKey);
        }
        Ok(match self.policy {
            Policy::Semver(range) => {
                let Some(v) = parse_tag_for_precedence(key).filter(|v| range.matches(v)) else {
                    return Ok(Verdict::Lose);
                };
                match &self.value {
                    Value::Version(best) if v.cmp_precedence(best) != Ordering::Greater => {
                        Verdict::Lose
                    }
                    _ => Verdict::Win(Value::Version(v)),
                }
            }
            Policy::Alphabetical(order) => match current {
                None => Verdict::Win(Value::None),
                Some(best) => {
                    let better = match order {
                        Order::Asc => key.as_bytes() > best.as_bytes(),
                        Order::Desc => key.as_bytes() < best.as_bytes(),
                    };
                    if better {
                        Verdict::Win(Value::None)
                    } else {
                        Verdict::Lose
                    }
                }
            },
            Policy::Numerical(order) => {
                let n = parse_float(key).ok_or_else(|| PolicyError::NotNumeric {
                    tag: key.to_owned(),
                })?;
                // Flux walks the list keeping the later value unless it is strictly worse, so
                // ties go to the last; NaN compares false both ways and therefore wins too.
                let worse = match (&self.value, order) {
                    (Value::Number(best), Order::Asc) => n < *best,
                    (Value::Number(best), Order::Desc) => n > *best,
                    _ => false,
                };
                if worse {
                    Verdict::Lose
                } else {
                    Verdict::Win(Value::Number(n))
                }
            }
        })
    }
}

// Go's `strconv.ParseFloat(s, 64)` for decimal input: Rust accepts the same decimal syntax
// (signs, exponents, `inf`, `infinity`, `nan` in any case), but turns an out-of-range value into
// infinity where Go reports an error.
fn parse_float(s: &str) -> Option<f64> {
    let n: f64 = s.parse().ok()?;
    if n.is_infinite() {
        let t = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if t != "inf" && t != "infinity" {
            return None;
        }
    }
    Some(n)
}

/// Go's `Regexp.Expand`: `$name` or `${name}` where a name is a run of letters, digits and `_`
/// (a number without a leading zero is a group index), `$$` is a `$`; a group that does not
/// exist or did not take part expands to nothing, and a malformed reference stays literal.
pub fn expand(
    re: &Regex,
    locs: &CaptureLocations,
    haystack: &str,
    template: &str,
    out: &mut String,
) {
    let group = |i: usize| locs.get(i).map(|(s, e)| &haystack[s..e]);
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let Some((name, after)) = reference(rest) else {
            out.push('$');
            continue;
        };
        rest = after;
        let value = match group_number(name) {
            Some(i) => group(i),
            None => re
                .capture_names()
                .position(|n| n == Some(name))
                .and_then(group),
        };
        if let Some(v) = value {
            out.push_str(v);
        }
    }
    out.push_str(rest);
}

// The name after a `$` and what follows it.
fn reference(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let end = body
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    if braced {
        let after = body[end..].strip_prefix('}')?;
        return Some((name, after));
    }
    Some((name, &body[end..]))
}

// Go takes a name as a group number when it is all ASCII digits, has no leading zero and stays
// below 1e8.
fn group_number(name: &str) -> Option<usize> {
    if !name.bytes().all(|b| b.is_ascii_digit()) || (name.len() > 1 && name.starts_with('0')) {
        return None;
    }
    name.parse::<usize>().ok().filter(|&n| n < 100_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semver::parse_tag;

    fn pick(policy: &Policy, filter: Option<&TagFilter>, tags: &[&str]) -> Result<String, String> {
        choose(policy, filter, tags.iter().copied())
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    }

    fn semver(r: &str) -> Policy {
        Policy::semver(r).unwrap()
    }

    #[test]
    fn semver_table() {
        let cases: &[(&str, &[&str], Result<&str, ()>)] = &[
            (
                "1.0.x",
                &["1.0.0", "1.0.0.1", "1.0.0p", "1.0.1", "1.2.0", "0.1.0"],
                Ok("1.0.1"),
            ),
            ("1.0.x", &["v1.2.3", "v1.0.0", "v0.1.0"], Ok("v1.0.0")),
            ("1.0.x", &["b1.2.3", "b1.0.0", "b0.1.0"], Err(())),
            ("1.0.x", &[], Err(())),
            ("1.0.x", &["1.2.0"], Err(())),
            (">=1.0.0", &["1.0.0", "v1.0.0"], Ok("1.0.0")),
            (">=1.0.0", &["v1.0.0", "1.0.0"], Ok("v1.0.0")),
            (">=1.0.0", &["1.2.0-rc.1", "1.1.0"], Ok("1.1.0")),
            (">=1.0.0-0", &["1.2.0-rc.1", "1.1.0"], Ok("1.2.0-rc.1")),
            ("^1", &["1.9.0", "1.10.0", "2.0.0", "1.2"], Ok("1.10.0")),
            (
                "~1.2 || ^3",
                &["1.2.9", "1.3.0", "3.4.5", "4.0.0"],
                Ok("3.4.5"),
            ),
            (
                "*",
                &["latest", "main", "1.0.0+sha.1", "1.0.0+sha.2"],
                Ok("1.0.0+sha.1"),
            ),
        ];
        for (range, tags, want) in cases {
            let got = pick(&semver(range), None, tags);
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{range} over {tags:?}"),
                Err(()) => assert!(got.is_err(), "{range} over {tags:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn alphabetical_table() {
        let tags = ["xenial", "yakkety", "zesty", "artful", "bionic"];
        assert_eq!(
            pick(&Policy::Alphabetical(Order::Asc), None, &tags).unwrap(),
            "zesty"
        );
        assert_eq!(
            pick(&Policy::Alphabetical(Order::Desc), None, &tags).unwrap(),
            "artful"
        );
        // Byte-wise: uppercase sorts before lowercase, digits before both.
        let mixed = ["a", "B", "1", "b"];
        assert_eq!(
            pick(&Policy::Alphabetical(Order::Asc), None, &mixed).unwrap(),
            "b"
        );
        assert_eq!(
            pick(&Policy::Alphabetical(Order::Desc), None, &mixed).unwrap(),
            "1"
        );
        let ts = [
            "RELEASE.2017-12-12T20-38-39Z",
            "RELEASE.2023-01-02T03-04-05Z",
            "RELEASE.2020-06-06T00-00-00Z",
        ];
        assert_eq!(
            pick(&Policy::Alphabetical(Order::Asc), None, &ts).unwrap(),
            "RELEASE.2023-01-02T03-04-05Z"
        );
        assert!(pick(&Policy::Alphabetical(Order::Asc), None, &[]).is_err());
    }

    #[test]
    fn numerical_table() {
        let asc = Policy::Numerical(Order::Asc);
        let desc = Policy::Numerical(Order::Desc);
        let tags = ["-62", "-88", "73", "72", "15", "16", "15", "1e1", "0.5"];
        assert_eq!(pick(&asc, None, &tags).unwrap(), "73");
        assert_eq!(pick(&desc, None, &tags).unwrap(), "-88");
        // Equal values: the last one wins.
        assert_eq!(pick(&asc, None, &["1", "1.0", "01"]).unwrap(), "01");
        assert_eq!(pick(&desc, None, &["1", "1.0", "01"]).unwrap(), "01");
        let err = pick(&asc, None, &["1", "2", "v3", "4"]).unwrap_err();
        assert_eq!(err, "numerical policy: tag 'v3' is not a number");
        // Out of range is an error in Go, as is hexadecimal without an exponent.
        assert!(pick(&asc, None, &["1e400"]).is_err());
        assert_eq!(pick(&asc, None, &["Inf", "5"]).unwrap(), "Inf");
        assert!(pick(&asc, None, &[]).is_err());
    }

    #[test]
    fn filters_extract_named_and_numbered_groups() {
        let tags = [
            "main-a1b2c3d-1700000000",
            "main-e4f5a6b-1700000500",
            "feature-0000000-1800000000",
            "main-9999999-1600000000",
            "latest",
        ];
        let named = TagFilter::new(r"^main-[a-f0-9]+-(?P<ts>[0-9]+)$", "$ts").unwrap();
        let braced = TagFilter::new(r"^main-[a-f0-9]+-(?P<ts>[0-9]+)$", "${ts}").unwrap();
        let numbered = TagFilter::new(r"^main-[a-f0-9]+-([0-9]+)$", "$1").unwrap();
        for f in [&named, &braced, &numbered] {
            assert_eq!(
                pick(&Policy::Numerical(Order::Asc), Some(f), &tags).unwrap(),
                "main-e4f5a6b-1700000500"
            );
            assert_eq!(
                pick(&Policy::Alphabetical(Order::Desc), Some(f), &tags).unwrap(),
                "main-9999999-1600000000"
            );
        }
        // Without extract the tags themselves are ordered, minus those not matching.
        let plain = TagFilter::new("^main-", "").unwrap();
        assert_eq!(
            pick(&Policy::Alphabetical(Order::Asc), Some(&plain), &tags).unwrap(),
            "main-e4f5a6b-1700000500"
        );
        // Semver over an extracted version; the original tag is returned.
        let rel = TagFilter::new(r"^release-(?P<v>.*)$", "$v").unwrap();
        assert_eq!(
            pick(
                &semver("^1"),
                Some(&rel),
                &["release-1.2.0", "release-1.10.0", "1.11.0"]
            )
            .unwrap(),
            "release-1.10.0"
        );
        // Nothing passes the filter.
        let none = TagFilter::new("^nope$", "").unwrap();
        assert!(matches!(
            choose(&Policy::Alphabetical(Order::Asc), Some(&none), tags),
            Err(PolicyError::NoMatch)
        ));
    }

    #[test]
    fn same_extracted_value_keeps_the_last_original() {
        let f = TagFilter::new(r"^(?:a|b)-(\d+)$", "$1").unwrap();
        assert_eq!(
            pick(
                &Policy::Numerical(Order::Asc),
                Some(&f),
                &["a-5", "b-5", "a-3"]
            )
            .unwrap(),
            "b-5"
        );
        assert_eq!(
            pick(
                &Policy::Alphabetical(Order::Asc),
                Some(&f),
                &["a-5", "b-5", "a-3"]
            )
            .unwrap(),
            "b-5"
        );
        let f = TagFilter::new(r"^(?:a|b)-(.*)$", "$1").unwrap();
        assert_eq!(
            pick(&semver("*"), Some(&f), &["a-1.0.0", "b-1.0.0", "a-0.1.0"]).unwrap(),
            "b-1.0.0"
        );
        // Equal versions that are different strings: the first stays.
        assert_eq!(
            pick(&semver("*"), Some(&f), &["a-1.0.0", "b-v1.0.0"]).unwrap(),
            "a-1.0.0"
        );
    }

    #[test]
    fn invalid_specs() {
        assert!(matches!(
            Policy::semver(">= foo"),
            Err(PolicyError::InvalidRange(_))
        ));
        let e = TagFilter::new("(unclosed", "").unwrap_err();
        assert!(matches!(e, PolicyError::InvalidRegex { .. }));
        assert!(e.is_invalid_spec());
        assert!(e.to_string().contains("(unclosed"), "{e}");
        assert_eq!("DESC".parse::<Order>().unwrap(), Order::Desc);
        assert_eq!("".parse::<Order>().unwrap(), Order::Asc);
        assert!("up".parse::<Order>().is_err());
    }

    #[test]
    fn go_expand_rules() {
        let re = Regex::new(r"(?P<first>\w+)-(?P<second>\w+)(-(?P<opt>x))?").unwrap();
        let mut locs = re.capture_locations();
        re.captures_read(&mut locs, "ab-cd").unwrap();
        let exp = |t: &str| {
            let mut out = String::new();
            expand(&re, &locs, "ab-cd", t, &mut out);
            out
        };
        assert_eq!(exp("$second.$first"), "cd.ab");
        assert_eq!(exp("${second}x"), "cdx");
        // `$firstx` names a group that does not exist: empty, as in Go.
        assert_eq!(exp("$firstx"), "");
        // `$1_` is a name, not group 1.
        assert_eq!(exp("$1_$2"), "cd");
        assert_eq!(exp("${1}_${2}"), "ab_cd");
        assert_eq!(exp("$$1"), "$1");
        assert_eq!(exp("$"), "$");
        assert_eq!(exp("a$-b"), "a$-b");
        assert_eq!(exp("${first"), "${first");
        assert_eq!(exp("$opt|$9|$01"), "||");
        assert_eq!(exp("$0"), "ab-cd");
    }

    proptest::proptest! {
        // The streaming choice equals a sort of everything, Flux's way.
        #[test]
        fn alphabetical_is_max_or_min(tags in proptest::collection::vec("[ -~]{0,8}", 1..50)) {
            let asc = choose(&Policy::Alphabetical(Order::Asc), None, tags.iter()).unwrap();
            let desc = choose(&Policy::Alphabetical(Order::Desc), None, tags.iter()).unwrap();
            proptest::prop_assert_eq!(asc, tags.iter().max().unwrap());
            proptest::prop_assert_eq!(desc, tags.iter().min().unwrap());
        }

        #[test]
        fn semver_is_the_highest_match(tags in proptest::collection::vec("v?[0-3]\\.[0-3]\\.[0-3](-rc\\.[0-2])?", 1..40)) {
            let range = Range::parse(">=1.0.0-0 <3").unwrap();
            let got = choose(&Policy::Semver(range.clone()), None, tags.iter());
            let best = tags
                .iter()
                .filter_map(|t| parse_tag(t).filter(|v| range.matches(v)))
                .max_by(|a, b| a.cmp_precedence(b));
            match (got, best) {
                (Ok(t), Some(b)) => proptest::prop_assert_eq!(parse_tag(t).unwrap().cmp_precedence(&b), Ordering::Equal),
                (Err(PolicyError::NoMatch), None) => {}
                (g, b) => proptest::prop_assert!(false, "{:?} vs {:?}", g.cloned(), b),
            }
        }

        #[test]
        fn numerical_matches_a_fold(nums in proptest::collection::vec(-1000i32..1000, 1..40)) {
            let tags: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
            let asc = choose(&Policy::Numerical(Order::Asc), None, tags.iter()).unwrap();
            proptest::prop_assert_eq!(asc.parse::<i32>().unwrap(), *nums.iter().max().unwrap());
            let desc = choose(&Policy::Numerical(Order::Desc), None, tags.iter()).unwrap();
            proptest::prop_assert_eq!(desc.parse::<i32>().unwrap(), *nums.iter().min().unwrap());
        }

        #[test]
        fn never_panics(
            pattern in ".{0,12}",
            extract in "[$a-z0-9{}_]{0,8}",
            tags in proptest::collection::vec(".{0,10}", 0..10),
        ) {
            if let Ok(f) = TagFilter::new(&pattern, &extract) {
                for p in [Policy::Alphabetical(Order::Asc), Policy::Numerical(Order::Desc), Policy::semver("*").unwrap()] {
                    let _ = choose(&p, Some(&f), tags.iter());
                }
            }
        }
    }
}

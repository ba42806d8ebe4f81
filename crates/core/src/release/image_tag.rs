//! The staging image tag: `<sha>-<YYYYMMDDHHMM>` in UTC, so an ImagePolicy can order builds
//! of `main` by the numeric timestamp (shas do not sort).

use jiff::{Timestamp, tz::TimeZone};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageTagError {
    #[error("`{0}` is not a hexadecimal commit id")]
    InvalidSha(String),
    #[error("sha length {0} is out of range: use 4 to 40 characters")]
    InvalidLength(usize),
}

/// Formats the tag. `prefix` (e.g. `main-`) is put in front unchanged; it must itself be a
/// valid tag fragment, which the caller's configuration check guarantees.
pub fn image_tag(
    prefix: &str,
    sha: &str,
    sha_length: usize,
    time: Timestamp,
) -> Result<String, ImageTagError> {
    if !(4..=40).contains(&sha_length) {
        return Err(ImageTagError::InvalidLength(sha_length));
    }
    if sha.len() < sha_length || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageTagError::InvalidSha(sha.to_string()));
    }
    let stamp = time.to_zoned(TimeZone::UTC).strftime("%Y%m%d%H%M");
    Ok(format!(
        "{prefix}{}-{stamp}",
        sha[..sha_length].to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0f3a9c2be41d7e5f60718293a4b5c6d7e8f90123";

    #[test]
    fn formats_in_utc() {
        let t: Timestamp = "2026-11-26T09:05:59+02:00".parse().unwrap();
        assert_eq!(image_tag("", SHA, 7, t).unwrap(), "0f3a9c2-202611260705");
        assert_eq!(
            image_tag("main-", SHA, 12, t).unwrap(),
            "main-0f3a9c2be41d-202611260705"
        );
        assert_eq!(
            image_tag("", &SHA.to_uppercase(), 40, t).unwrap(),
            format!("{SHA}-202611260705")
        );
    }

    #[test]
    fn rejects_bad_input() {
        let t = Timestamp::UNIX_EPOCH;
        assert_eq!(
            image_tag("", SHA, 3, t),
            Err(ImageTagError::InvalidLength(3))
        );
        assert_eq!(
            image_tag("", SHA, 41, t),
            Err(ImageTagError::InvalidLength(41))
        );
        assert_eq!(
            image_tag("", "xyz1234", 7, t),
            Err(ImageTagError::InvalidSha("xyz1234".into()))
        );
        assert_eq!(
            image_tag("", "abc", 7, t),
            Err(ImageTagError::InvalidSha("abc".into()))
        );
    }

    /// The ImagePolicy filters documented in docs/releases.md, as Flux evaluates them: the
    /// pattern selects staging tags and `$ts` orders them numerically.
    #[test]
    fn documented_image_policy_patterns_select_and_order_the_tags() {
        let plain = regex::Regex::new(r"^[a-f0-9]+-(?P<ts>[0-9]{12})$").unwrap();
        let prefixed = regex::Regex::new(r"^main-[a-f0-9]+-(?P<ts>[0-9]{12})$").unwrap();
        let times = [
            "2026-02-01T00:00:00Z",
            "2026-01-31T23:59:00Z",
            "2027-01-01T00:00:00Z",
        ];
        let ts = |re: &regex::Regex, tag: &str| -> u64 {
            re.captures(tag)
                .unwrap_or_else(|| panic!("{tag} not matched"))["ts"]
                .parse()
                .unwrap()
        };
        for (re, prefix) in [(&plain, ""), (&prefixed, "main-")] {
            let tags: Vec<String> = times
                .iter()
                .map(|t| image_tag(prefix, SHA, 7, t.parse().unwrap()).unwrap())
                .collect();
            let latest = tags.iter().max_by_key(|tag| ts(re, tag)).unwrap();
            assert_eq!(latest, &format!("{prefix}0f3a9c2-202701010000"));
            // Release images and other branches' builds are not staging candidates.
            for other in ["1.2.3", "v1.2.3", "latest", "feature-0f3a9c2-202701010000"] {
                assert!(!re.is_match(other), "{other}");
            }
        }
    }

    #[test]
    fn tags_sort_by_time_numerically() {
        let earlier: Timestamp = "2026-01-31T23:59:00Z".parse().unwrap();
        let later: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        let stamp = |t| {
            image_tag("", SHA, 7, t)
                .unwrap()
                .rsplit_once('-')
                .unwrap()
                .1
                .parse::<u64>()
                .unwrap()
        };
        assert!(stamp(earlier) < stamp(later));
    }
}

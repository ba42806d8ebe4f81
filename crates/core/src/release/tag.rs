//! Release tag names: `v${version}` by default, any prefix and suffix around `${version}`.

use semver::Version;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagFormatError {
    #[error("tag format `{0}` must contain `${{version}}` exactly once")]
    Placeholder(String),
    #[error("tag format `{0}` contains characters git does not allow in tag names")]
    InvalidRefName(String),
}

/// How one tag relates to the release tag format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagMatch {
    /// Not a release tag (a different prefix, or not version-like at all).
    Other,
    Release(Version),
    /// Looks like a release tag (the format's prefix followed by a digit) but is not a valid
    /// semantic version. Guessing would risk releasing a lower version, so callers refuse.
    Malformed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFormat {
    prefix: String,
    suffix: String,
}

impl Default for TagFormat {
    fn default() -> Self {
        Self {
            prefix: "v".to_string(),
            suffix: String::new(),
        }
    }
}

impl TagFormat {
    pub fn parse(format: &str) -> Result<Self, TagFormatError> {
        const PLACEHOLDER: &str = "${version}";
        let (prefix, suffix) = format
            .split_once(PLACEHOLDER)
            .filter(|(_, suffix)| !suffix.contains(PLACEHOLDER))
            .ok_or_else(|| TagFormatError::Placeholder(format.to_string()))?;
        let forbidden = |s: &str| {
            s.contains("..")
                || s.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
        };
        if forbidden(prefix) || forbidden(suffix) {
            return Err(TagFormatError::InvalidRefName(format.to_string()));
        }
        Ok(Self {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    pub fn tag_name(&self, version: &Version) -> String {
        format!("{}{}{}", self.prefix, version, self.suffix)
    }

    pub fn classify(&self, tag: &str) -> TagMatch {
        let Some(middle) = tag
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_suffix(self.suffix.as_str()))
        else {
            return TagMatch::Other;
        };
        if !middle.starts_with(|c: char| c.is_ascii_digit()) {
            return TagMatch::Other;
        }
        match Version::parse(middle) {
            // Build metadata does not order versions, so two tags could tie; refuse it.
            Ok(v) if !v.build.is_empty() => TagMatch::Malformed {
                reason: "build metadata (`+...`) is not allowed in release tags".to_string(),
            },
            Ok(v) => TagMatch::Release(v),
            Err(e) => TagMatch::Malformed {
                reason: format!("`{middle}` is not a semantic version: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format() {
        let f = TagFormat::default();
        assert_eq!(f, TagFormat::parse("v${version}").unwrap());
        assert_eq!(f.tag_name(&Version::new(1, 2, 3)), "v1.2.3");
        let cases = [
            ("v1.2.3", TagMatch::Release(Version::new(1, 2, 3))),
            (
                "v2.0.0-beta.1",
                TagMatch::Release(Version::parse("2.0.0-beta.1").unwrap()),
            ),
            ("1.2.3", TagMatch::Other),
            ("vendor-drop", TagMatch::Other),
            ("v", TagMatch::Other),
        ];
        for (tag, expected) in cases {
            assert_eq!(f.classify(tag), expected, "{tag}");
        }
        for malformed in ["v1.2", "v1.2.3.4", "v01.2.3", "v1.2.3+build.5", "v1.x"] {
            assert!(
                matches!(f.classify(malformed), TagMatch::Malformed { .. }),
                "{malformed}"
            );
        }
    }

    #[test]
    fn custom_format() {
        let f = TagFormat::parse("app/${version}-release").unwrap();
        assert_eq!(f.tag_name(&Version::new(1, 0, 0)), "app/1.0.0-release");
        assert_eq!(
            f.classify("app/1.0.0-release"),
            TagMatch::Release(Version::new(1, 0, 0))
        );
        assert_eq!(f.classify("v1.0.0"), TagMatch::Other);
        assert_eq!(
            TagFormat::parse("${version}").unwrap().classify("3.1.4"),
            TagMatch::Release(Version::new(3, 1, 4))
        );
    }

    #[test]
    fn bad_formats() {
        for bad in ["v", "v${version}${version}", "v{version}"] {
            assert_eq!(
                TagFormat::parse(bad),
                Err(TagFormatError::Placeholder(bad.to_string()))
            );
        }
        for bad in ["release ${version}", "v..${version}", "v:${version}"] {
            assert_eq!(
                TagFormat::parse(bad),
                Err(TagFormatError::InvalidRefName(bad.to_string()))
            );
        }
    }
}

//! `.gantry/release.toml`: optional, and every key has a default, so the common case (tags
//! `v1.2.3`, first release 1.0.0, `beta`/`alpha` pre-release branches) needs no file at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_core::release::{Channel, TagFormat, TagFormatError, VersionError, VersionRules};
use semver::Version;
use serde::Deserialize;
use thiserror::Error;

/// Where the configuration lives, relative to the repository's working directory.
pub const CONFIG_PATH: &str = ".gantry/release.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid tag_format")]
    TagFormat(#[from] TagFormatError),
    #[error("initial_version `{0}` must be a plain semantic version such as 1.0.0 or 0.1.0")]
    InitialVersion(String),
    #[error("invalid pre-release channel for branch `{branch}`")]
    Channel {
        branch: String,
        #[source]
        source: VersionError,
    },
    #[error("image_tag.sha_length {0} is out of range: use 4 to 40")]
    ShaLength(usize),
    #[error("image_tag.prefix `{0}` may only contain letters, digits, `.`, `_` and `-`")]
    Prefix(String),
}

/// The file's contents. Unknown keys are rejected so a typo does not silently fall back to a
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReleaseConfig {
    /// Release tag names; `${version}` is replaced by the version.
    pub tag_format: String,
    /// The first release when there is no release tag yet.
    pub initial_version: String,
    /// While at 0.x, breaking changes bump the minor version instead of releasing 1.0.0.
    pub breaking_bumps_minor_before_1_0: bool,
    /// Branch name to pre-release channel; any other branch releases stable versions.
    pub prerelease_branches: BTreeMap<String, String>,
    /// The remote `gantry release tag --push` pushes to.
    pub remote: String,
    pub image_tag: ImageTagConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageTagConfig {
    /// Characters of the commit id in the tag.
    pub sha_length: usize,
    /// Put before the sha, e.g. `main-` to tell branches apart in one repository.
    pub prefix: String,
}

impl Default for ImageTagConfig {
    fn default() -> Self {
        Self {
            sha_length: 7,
            prefix: String::new(),
        }
    }
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        Self {
            tag_format: "v${version}".to_string(),
            initial_version: "1.0.0".to_string(),
            breaking_bumps_minor_before_1_0: false,
            prerelease_branches: [("alpha", "alpha"), ("beta", "beta")]
                .into_iter()
                .map(|(b, c)| (b.to_string(), c.to_string()))
                .collect(),
            remote: "origin".to_string(),
            image_tag: ImageTagConfig::default(),
        }
    }
}

impl ReleaseConfig {
    /// Reads `<workdir>/.gantry/release.toml`, or the defaults when the file does not exist.
    pub fn load(workdir: &Path) -> Result<Self, ConfigError> {
        let path = workdir.join(CONFIG_PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path, source },
            other => other,
        })
    }

    /// Parses and validates the file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from(CONFIG_PATH),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.tag_format()?;
        self.rules()?;
        for branch in self.prerelease_branches.keys() {
            self.channel_for(branch)?;
        }
        if !(4..=40).contains(&self.image_tag.sha_length) {
            return Err(ConfigError::ShaLength(self.image_tag.sha_length));
        }
        let prefix_ok = self
            .image_tag
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !prefix_ok {
            return Err(ConfigError::Prefix(self.image_tag.prefix.clone()));
        }
        Ok(())
    }

    pub fn tag_format(&self) -> Result<TagFormat, ConfigError> {
        Ok(TagFormat::parse(&self.tag_format)?)
    }

    pub fn rules(&self) -> Result<VersionRules, ConfigError> {
        let initial = Version::parse(&self.initial_version)
            .ok()
            .filter(|v| v.pre.is_empty() && v.build.is_empty())
            .ok_or_else(|| ConfigError::InitialVersion(self.initial_version.clone()))?;
        Ok(VersionRules {
            initial,
            breaking_bumps_minor_before_1_0: self.breaking_bumps_minor_before_1_0,
        })
    }

    pub fn channel_for(&self, branch: &str) -> Result<Channel, ConfigError> {
        match self.prerelease_branches.get(branch) {
            None => Ok(Channel::Stable),
            Some(name) => Channel::prerelease(name).map_err(|source| ConfigError::Channel {
                branch: branch.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(
            ReleaseConfig::from_toml("").unwrap(),
            ReleaseConfig::default()
        );
        let d = ReleaseConfig::default();
        assert_eq!(d.channel_for("main").unwrap(), Channel::Stable);
        assert_eq!(
            d.channel_for("beta").unwrap(),
            Channel::Prerelease("beta".into())
        );
        assert_eq!(d.rules().unwrap(), VersionRules::default());
    }

    #[test]
    fn every_key() {
        let c = ReleaseConfig::from_toml(
            r#"
tag_format = "release-${version}"
initial_version = "0.1.0"
breaking_bumps_minor_before_1_0 = true
remote = "upstream"

[prerelease_branches]
next = "rc"

[image_tag]
sha_length = 12
prefix = "main-"
"#,
        )
        .unwrap();
        assert_eq!(
            c.channel_for("next").unwrap(),
            Channel::Prerelease("rc".into())
        );
        // Setting the table replaces the default branches rather than merging into them.
        assert_eq!(c.channel_for("beta").unwrap(), Channel::Stable);
        assert_eq!(c.rules().unwrap().initial, Version::new(0, 1, 0));
        assert_eq!(
            (c.image_tag.sha_length, c.image_tag.prefix.as_str()),
            (12, "main-")
        );
        assert_eq!(c.remote, "upstream");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            (
                "tag_fromat = \"v${version}\"",
                "invalid .gantry/release.toml",
            ),
            ("tag_format = \"v\"", "invalid tag_format"),
            ("initial_version = \"1.0\"", "initial_version `1.0`"),
            (
                "initial_version = \"1.0.0-rc.1\"",
                "initial_version `1.0.0-rc.1`",
            ),
            ("[prerelease_branches]\nbeta = \"be ta\"", "branch `beta`"),
            ("[image_tag]\nsha_length = 2", "sha_length 2"),
            ("[image_tag]\nprefix = \"main/\"", "prefix `main/`"),
        ];
        for (text, expected) in cases {
            let err = ReleaseConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}

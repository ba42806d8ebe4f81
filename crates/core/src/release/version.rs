//! Choosing the next version from the versions already released and the bump, on a stable
//! branch or a pre-release channel.

use semver::{Prerelease, Version};
use thiserror::Error;

use super::analysis::Bump;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VersionError {
    #[error(
        "version {0} is already released elsewhere (its tag is not reachable from this branch); \
         merge that release into this branch first"
    )]
    AlreadyReleased(Version),
    #[error("pre-release channel `{0}` must be letters, digits and `-` (it becomes `-{0}.N`)")]
    InvalidChannel(String),
}

/// The line of versions a branch releases on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Plain `X.Y.Z` versions.
    Stable,
    /// `X.Y.Z-<name>.N` versions, counting `N` from 1.
    Prerelease(String),
}

impl Channel {
    pub fn prerelease(name: &str) -> Result<Self, VersionError> {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.bytes().all(|b| b.is_ascii_digit());
        if valid {
            Ok(Channel::Prerelease(name.to_string()))
        } else {
            Err(VersionError::InvalidChannel(name.to_string()))
        }
    }

    /// Whether a released version belongs to this channel's history: stable versions count
    /// everywhere, pre-releases only on their own channel.
    pub fn includes(&self, version: &Version) -> bool {
        match self {
            Channel::Stable => version.pre.is_empty(),
            Channel::Prerelease(name) => {
                version.pre.is_empty() || prerelease_number(version, name).is_some()
            }
        }
    }
}

/// `N` of `X.Y.Z-<channel>.N`.
fn prerelease_number(version: &Version, channel: &str) -> Option<u64> {
    let (name, n) = version.pre.as_str().rsplit_once('.')?;
    (name == channel).then(|| n.parse().ok()).flatten()
}

/// Rules a project may change; the defaults follow semantic-release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRules {
    /// The first release when no release tag exists (default `1.0.0`).
    pub initial: Version,
    /// While the major version is 0, a breaking change bumps the minor version instead of
    /// releasing 1.0.0 (semver's "anything may change" for 0.x).
    pub breaking_bumps_minor_before_1_0: bool,
}

impl Default for VersionRules {
    fn default() -> Self {
        Self {
            initial: Version::new(1, 0, 0),
            breaking_bumps_minor_before_1_0: false,
        }
    }
}

/// Applies a bump to a released stable version; pre-release parts are dropped.
pub fn bump_version(v: &Version, bump: Bump, rules: &VersionRules) -> Version {
    let bump = if bump == Bump::Major && v.major == 0 && rules.breaking_bumps_minor_before_1_0 {
        Bump::Minor
    } else {
        bump
    };
    match bump {
        Bump::Major => Version::new(v.major + 1, 0, 0),
        Bump::Minor => Version::new(v.major, v.minor + 1, 0),
        Bump::Patch => Version::new(v.major, v.minor, v.patch + 1),
    }
}

/// The release the next one follows: the highest version in `reachable` that belongs to
/// `channel`. Versions never go backwards along a branch, so highest is also latest.
pub fn last_release<'a>(reachable: &'a [Version], channel: &Channel) -> Option<&'a Version> {
    reachable.iter().filter(|v| channel.includes(v)).max()
}

/// The next version.
///
/// - `reachable`: versions of release tags reachable from the branch head;
/// - `existing`: versions of every release tag in the repository, so a pre-release number is
///   never reused when another branch already took it.
///
/// On a pre-release channel the semantic-release rule applies: after `2.0.0-beta.1` comes
/// `2.0.0-beta.2`, unless the bump since the last stable release calls for a higher base.
pub fn next_version(
    reachable: &[Version],
    existing: &[Version],
    bump: Bump,
    channel: &Channel,
    rules: &VersionRules,
) -> Result<Version, VersionError> {
    let last = last_release(reachable, channel);
    let next = match channel {
        Channel::Stable => {
            let bumped = match last {
                None => rules.initial.clone(),
                Some(last) => bump_version(last, bump, rules),
            };
            // A pre-release merged into this branch promised its base version; releasing
            // below it would make the version go backwards.
            reachable
                .iter()
                .filter(|p| !p.pre.is_empty() && last.is_none_or(|last| *p > last))
                .map(base_of)
                .fold(bumped, Version::max)
        }
        Channel::Prerelease(name) => {
            let first_of = |base: Version| with_prerelease(base, name, 1);
            match last {
                None => first_of(rules.initial.clone()),
                Some(last) if last.pre.is_empty() => first_of(bump_version(last, bump, rules)),
                Some(last) => {
                    let n = prerelease_number(last, name).unwrap_or(0);
                    let same_base = with_prerelease(base_of(last), name, n + 1);
                    let latest_stable = last_release(reachable, &Channel::Stable);
                    let new_base = first_of(match latest_stable {
                        Some(stable) => bump_version(stable, bump, rules),
                        None => rules.initial.clone(),
                    });
                    same_base.max(new_base)
                }
            }
        }
    };
    avoid_existing(next, existing, channel)
}

fn base_of(v: &Version) -> Version {
    Version::new(v.major, v.minor, v.patch)
}

fn with_prerelease(mut v: Version, channel: &str, n: u64) -> Version {
    v.pre = Prerelease::new(&format!("{channel}.{n}"))
        .expect("channel validated by Channel::prerelease");
    v
}

fn avoid_existing(
    mut next: Version,
    existing: &[Version],
    channel: &Channel,
) -> Result<Version, VersionError> {
    match channel {
        Channel::Stable if existing.contains(&next) => Err(VersionError::AlreadyReleased(next)),
        Channel::Stable => Ok(next),
        Channel::Prerelease(name) => {
            while existing.contains(&next) {
                let n = prerelease_number(&next, name).unwrap_or(0);
                next = with_prerelease(base_of(&next), name, n + 1);
            }
            Ok(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn vs(list: &[&str]) -> Vec<Version> {
        list.iter().map(|s| v(s)).collect()
    }

    #[test]
    fn stable_table() {
        let zero_minor = VersionRules {
            breaking_bumps_minor_before_1_0: true,
            ..VersionRules::default()
        };
        let initial_010 = VersionRules {
            initial: v("0.1.0"),
            ..VersionRules::default()
        };
        let cases: &[(&[&str], Bump, &VersionRules, &str)] = &[
            (&[], Bump::Patch, &VersionRules::default(), "1.0.0"),
            (&[], Bump::Major, &VersionRules::default(), "1.0.0"),
            (&[], Bump::Minor, &initial_010, "0.1.0"),
            (&["1.0.0"], Bump::Patch, &VersionRules::default(), "1.0.1"),
            (
                &["1.0.0", "1.2.3"],
                Bump::Minor,
                &VersionRules::default(),
                "1.3.0",
            ),
            (&["1.2.3"], Bump::Major, &VersionRules::default(), "2.0.0"),
            (&["0.4.2"], Bump::Major, &VersionRules::default(), "1.0.0"),
            (&["0.4.2"], Bump::Major, &zero_minor, "0.5.0"),
            (&["0.4.2"], Bump::Minor, &zero_minor, "0.5.0"),
            (&["1.4.2"], Bump::Major, &zero_minor, "2.0.0"),
            // A merged pre-release does not count on a stable branch.
            (
                &["1.2.3", "2.0.0-beta.4"],
                Bump::Major,
                &VersionRules::default(),
                "2.0.0",
            ),
            (
                &["1.2.3", "1.3.0-beta.1"],
                Bump::Patch,
                &VersionRules::default(),
                "1.3.0",
            ),
        ];
        for (reachable, bump, rules, expected) in cases {
            let next = next_version(
                &vs(reachable),
                &vs(reachable),
                *bump,
                &Channel::Stable,
                rules,
            );
            assert_eq!(next, Ok(v(expected)), "{reachable:?} {bump}");
        }
    }

    #[test]
    fn prerelease_table() {
        let beta = Channel::prerelease("beta").unwrap();
        let rules = VersionRules::default();
        let cases: &[(&[&str], &[&str], Bump, &str)] = &[
            (&[], &[], Bump::Minor, "1.0.0-beta.1"),
            (&["1.2.3"], &[], Bump::Major, "2.0.0-beta.1"),
            (&["1.2.3", "2.0.0-beta.1"], &[], Bump::Patch, "2.0.0-beta.2"),
            (&["1.2.3", "2.0.0-beta.1"], &[], Bump::Major, "2.0.0-beta.2"),
            // The last beta was a minor; a breaking change needs a new base.
            (&["1.2.3", "1.3.0-beta.2"], &[], Bump::Major, "2.0.0-beta.1"),
            // Another channel's pre-releases are not this channel's history.
            (
                &["1.2.3", "2.0.0-alpha.7"],
                &[],
                Bump::Major,
                "2.0.0-beta.1",
            ),
            // A number already taken by a tag on another branch is skipped.
            (
                &["1.2.3"],
                &["2.0.0-beta.1", "2.0.0-beta.2"],
                Bump::Major,
                "2.0.0-beta.3",
            ),
        ];
        for (reachable, elsewhere, bump, expected) in cases {
            let mut existing = vs(reachable);
            existing.extend(vs(elsewhere));
            let next = next_version(&vs(reachable), &existing, *bump, &beta, &rules);
            assert_eq!(next, Ok(v(expected)), "{reachable:?} {elsewhere:?} {bump}");
        }
    }

    #[test]
    fn stable_version_taken_elsewhere_is_an_error() {
        let next = next_version(
            &vs(&["1.0.0"]),
            &vs(&["1.0.0", "1.1.0"]),
            Bump::Minor,
            &Channel::Stable,
            &VersionRules::default(),
        );
        assert_eq!(next, Err(VersionError::AlreadyReleased(v("1.1.0"))));
    }

    #[test]
    fn channel_names_are_validated() {
        assert!(Channel::prerelease("rc-1").is_ok());
        for bad in ["", "be ta", "beta.1", "123"] {
            assert!(Channel::prerelease(bad).is_err(), "{bad:?}");
        }
    }

    fn bump_strategy() -> impl Strategy<Value = Bump> {
        prop_oneof![Just(Bump::Patch), Just(Bump::Minor), Just(Bump::Major)]
    }

    fn rules_strategy() -> impl Strategy<Value = VersionRules> {
        (0u64..3, 0u64..3, 0u64..3, any::<bool>()).prop_map(|(ma, mi, pa, zero)| VersionRules {
            initial: Version::new(ma, mi, pa),
            breaking_bumps_minor_before_1_0: zero,
        })
    }

    proptest! {
        /// Whatever was released and whatever the bump, the next version is higher than every
        /// release on the channel's history.
        #[test]
        fn next_is_always_higher(
            released in prop::collection::vec((0u64..4, 0u64..4, 0u64..4, prop::option::of(1u64..4)), 0..6),
            bump in bump_strategy(),
            beta in any::<bool>(),
            rules in rules_strategy(),
        ) {
            let channel = if beta { Channel::prerelease("beta").unwrap() } else { Channel::Stable };
            let reachable: Vec<Version> = released
                .iter()
                .map(|&(ma, mi, pa, pre)| {
                    let base = Version::new(ma, mi, pa);
                    match pre {
                        Some(n) => with_prerelease(base, "beta", n),
                        None => base,
                    }
                })
                .collect();
            if let Ok(next) = next_version(&reachable, &reachable, bump, &channel, &rules) {
                if let Some(last) = last_release(&reachable, &channel) {
                    prop_assert!(&next > last, "{} after {}", next, last);
                }
                prop_assert!(channel.includes(&next));
                prop_assert!(!reachable.contains(&next));
            }
        }

        /// Releasing repeatedly along one branch, each version is higher than the one before.
        #[test]
        fn a_branch_history_only_moves_forward(
            steps in prop::collection::vec((bump_strategy(), any::<bool>()), 1..20),
            rules in rules_strategy(),
        ) {
            let beta = Channel::prerelease("beta").unwrap();
            let mut released: Vec<Version> = Vec::new();
            for (bump, on_beta) in steps {
                let channel = if on_beta { beta.clone() } else { Channel::Stable };
                let next = next_version(&released, &released, bump, &channel, &rules).unwrap();
                if let Some(previous) = released.last() {
                    prop_assert!(&next > previous, "{} after {}", next, previous);
                }
                released.push(next);
            }
        }
    }
}

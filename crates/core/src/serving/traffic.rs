//! `spec.traffic` resolved as Knative's route reconciler does: `latestRevision` becomes the
//! latest ready Revision's name, every target names a Revision that exists and is ready, shares
//! add up to 100, tags are unique.

/// One `spec.traffic` entry, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub tag: Option<String>,
    pub revision_name: Option<String>,
    pub latest_revision: Option<bool>,
    pub percent: Option<i64>,
}

/// One `status.traffic` entry: a concrete Revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tag: Option<String>,
    pub revision_name: String,
    /// Whether the target followed the latest ready Revision.
    pub latest_revision: bool,
    pub percent: Option<i64>,
}

/// What a Revision named in the traffic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionState {
    Missing,
    NotReady,
    Failed,
    Ready,
}

/// Why the traffic cannot be routed (yet). [`Error::waiting`] tells "not yet" from "wrong".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "spec.traffic[{index}]: exactly one of revisionName and latestRevision: true is required"
    )]
    Ambiguous { index: usize },
    #[error("spec.traffic[{index}].percent: {percent} is not between 0 and 100")]
    PercentRange { index: usize, percent: i64 },
    #[error("spec.traffic: the percentages add up to {sum}, not 100")]
    PercentSum { sum: i64 },
    #[error("spec.traffic: tag '{tag}' is used more than once")]
    DuplicateTag { tag: String },
    #[error("Configuration \"{service}\" is waiting for a Revision to become ready.")]
    NoReadyRevision { service: String },
    #[error("Revision \"{name}\" referenced in traffic not found.")]
    Missing { name: String },
    #[error("Revision \"{name}\" referenced in traffic is not ready yet.")]
    NotReady { name: String },
    #[error("Revision \"{name}\" referenced in traffic failed.")]
    Failed { name: String },
}

impl Error {
    /// A state that resolves by itself (a Revision still starting): Unknown, not False.
    pub fn waiting(&self) -> bool {
        matches!(self, Error::NoReadyRevision { .. } | Error::NotReady { .. })
    }

    /// A spec Knative's webhook would have refused.
    pub fn invalid_spec(&self) -> bool {
        matches!(
            self,
            Error::Ambiguous { .. }
                | Error::PercentRange { .. }
                | Error::PercentSum { .. }
                | Error::DuplicateTag { .. }
        )
    }
}

/// The traffic of Service `service`: `spec` (empty means 100 % to the latest ready Revision)
/// resolved against `latest_ready` and the state of the Revisions it names.
pub fn resolve(
    service: &str,
    spec: &[Target],
    latest_ready: Option<&str>,
    state: impl Fn(&str) -> RevisionState,
) -> Result<Vec<Resolved>, Error> {
    validate(spec)?;
    let default = [Target {
        latest_revision: Some(true),
        percent: Some(100),
        ..Target::default()
    }];
    let spec = if spec.is_empty() { &default[..] } else { spec };
    let mut out = Vec::with_capacity(spec.len());
    for target in spec {
        let (name, latest) = match &target.revision_name {
            Some(name) => (name.clone(), false),
            None => (
                latest_ready
                    .ok_or_else(|| Error::NoReadyRevision {
                        service: service.to_owned(),
                    })?
                    .to_owned(),
                true,
            ),
        };
        match state(&name) {
            RevisionState::Ready => {}
            RevisionState::Missing => return Err(Error::Missing { name }),
            RevisionState::NotReady => return Err(Error::NotReady { name }),
            RevisionState::Failed => return Err(Error::Failed { name }),
        }
        out.push(Resolved {
            tag: target.tag.clone(),
            revision_name: name,
            latest_revision: latest,
            percent: target.percent,
        });
    }
    Ok(out)
}

/// Knative's webhook rules for `spec.traffic`.
pub fn validate(spec: &[Target]) -> Result<(), Error> {
    let mut tags = std::collections::BTreeSet::new();
    let mut sum = 0;
    for (index, target) in spec.iter().enumerate() {
        let latest = target.latest_revision.unwrap_or(false);
        if latest == target.revision_name.is_some() {
            return Err(Error::Ambiguous { index });
        }
        let percent = target.percent.unwrap_or(0);
        if !(0..=100).contains(&percent) {
            return Err(Error::PercentRange { index, percent });
        }
        sum += percent;
        if let Some(tag) = &target.tag
            && !tags.insert(tag.as_str())
        {
            return Err(Error::DuplicateTag { tag: tag.clone() });
        }
    }
    if !spec.is_empty() && sum != 100 {
        return Err(Error::PercentSum { sum });
    }
    Ok(())
}

/// Whether `revision` is routed: it has a share or a tag (Knative's `routingState: active`).
pub fn routes_to(traffic: &[Resolved], revision: &str) -> bool {
    traffic
        .iter()
        .any(|t| t.revision_name == revision && (t.percent.unwrap_or(0) > 0 || t.tag.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(_: &str) -> RevisionState {
        RevisionState::Ready
    }

    fn target(rev: Option<&str>, percent: i64, tag: Option<&str>) -> Target {
        Target {
            tag: tag.map(str::to_owned),
            revision_name: rev.map(str::to_owned),
            latest_revision: rev.is_none().then_some(true),
            percent: Some(percent),
        }
    }

    #[test]
    fn no_traffic_means_all_to_the_latest_ready() {
        let t = resolve("hello", &[], Some("hello-00002"), ready).unwrap();
        assert_eq!(
            t,
            [Resolved {
                tag: None,
                revision_name: "hello-00002".into(),
                latest_revision: true,
                percent: Some(100),
            }]
        );
        assert!(routes_to(&t, "hello-00002"));
        assert!(!routes_to(&t, "hello-00001"));
    }

    #[test]
    fn a_split_with_a_tag() {
        let spec = [
            target(None, 80, None),
            target(Some("hello-00001"), 20, Some("old")),
            target(Some("hello-00003"), 0, Some("next")),
        ];
        let t = resolve("hello", &spec, Some("hello-00002"), ready).unwrap();
        assert_eq!(t[0].revision_name, "hello-00002");
        assert!(t[0].latest_revision);
        assert_eq!(t[1].revision_name, "hello-00001");
        assert!(!t[1].latest_revision);
        assert_eq!(t[1].tag.as_deref(), Some("old"));
        assert!(routes_to(&t, "hello-00003"), "a tag alone routes");
    }

    #[test]
    fn waiting_and_missing_revisions() {
        let e = resolve("hello", &[], None, ready).unwrap_err();
        assert!(e.waiting());
        assert_eq!(
            e.to_string(),
            "Configuration \"hello\" is waiting for a Revision to become ready."
        );
        let spec = [target(Some("gone"), 100, None)];
        let e = resolve("hello", &spec, None, |_| RevisionState::Missing).unwrap_err();
        assert!(!e.waiting() && !e.invalid_spec());
        let e = resolve("hello", &spec, None, |_| RevisionState::NotReady).unwrap_err();
        assert!(e.waiting());
        let e = resolve("hello", &spec, None, |_| RevisionState::Failed).unwrap_err();
        assert!(!e.waiting());
    }

    #[test]
    fn knatives_validation() {
        let sum = [target(None, 50, None), target(Some("a"), 20, None)];
        assert_eq!(validate(&sum), Err(Error::PercentSum { sum: 70 }));
        let both = [Target {
            revision_name: Some("a".into()),
            latest_revision: Some(true),
            percent: Some(100),
            tag: None,
        }];
        assert_eq!(validate(&both), Err(Error::Ambiguous { index: 0 }));
        let neither = [Target {
            percent: Some(100),
            ..Target::default()
        }];
        assert_eq!(validate(&neither), Err(Error::Ambiguous { index: 0 }));
        let tags = [
            target(None, 50, Some("x")),
            target(Some("a"), 50, Some("x")),
        ];
        assert!(matches!(validate(&tags), Err(Error::DuplicateTag { .. })));
        let range = [target(None, 120, None)];
        assert!(validate(&range).unwrap_err().invalid_spec());
    }
}

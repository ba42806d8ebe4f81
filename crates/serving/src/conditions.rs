//! Knative's conditions: `severity` (empty for the conditions that make up `Ready`, `Info` for
//! the others, e.g. a Revision's `Active`), a transition time that changes only with `status`,
//! and `Ready` as the worst of its dependents.

use gantry_api::serving::{Condition, READY, severity};

/// Sets condition `type_`, keeping its `lastTransitionTime` unless `status` changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    severity: &str,
) {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let new = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        severity: severity.to_owned(),
        last_transition_time: Some(now.to_string()),
        reason: reason.to_owned(),
        message: message.to_owned(),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(old) => {
            let time = if old.status == status {
                old.last_transition_time.take()
            } else {
                None
            };
            *old = Condition {
                last_transition_time: time.or(new.last_transition_time.clone()),
                ..new
            };
        }
        None => conditions.push(new),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Sets `Ready` from the conditions it depends on: `False` if one is, else `Unknown` if one
/// is, else `True`, with the first such condition's reason and message.
pub fn set_ready(conditions: &mut Vec<Condition>, dependents: &[&str]) {
    let find = |status: &str| {
        dependents.iter().find_map(|t| {
            conditions
                .iter()
                .find(|c| c.type_ == *t && c.status == status)
                .map(|c| (c.reason.clone(), c.message.clone()))
        })
    };
    let (status, (reason, message)) = if let Some(why) = find("False") {
        ("False", why)
    } else if let Some(why) = find("Unknown").or_else(|| {
        // A dependent not reported yet counts as Unknown.
        dependents
            .iter()
            .any(|t| !conditions.iter().any(|c| c.type_ == *t))
            .then(Default::default)
    }) {
        ("Unknown", why)
    } else {
        ("True", Default::default())
    };
    set(
        conditions,
        READY,
        status,
        &reason,
        &message,
        severity::ERROR,
    );
}

/// The status of condition `type_`, if present.
pub fn status<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    status(conditions, type_) == Some("True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_the_worst_dependent_and_times_move_only_with_status() {
        let mut cs = Vec::new();
        set(&mut cs, "A", "True", "", "", severity::ERROR);
        set_ready(&mut cs, &["A", "B"]);
        assert_eq!(status(&cs, READY), Some("Unknown"));
        set(
            &mut cs,
            "B",
            "False",
            "Broken",
            "b is broken",
            severity::ERROR,
        );
        set_ready(&mut cs, &["A", "B"]);
        let ready = cs.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Broken")
        );
        cs.iter_mut()
            .for_each(|c| c.last_transition_time = Some("then".into()));
        set(&mut cs, "A", "True", "", "again", severity::ERROR);
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("then"));
        set(&mut cs, "B", "True", "", "", severity::ERROR);
        set_ready(&mut cs, &["A", "B"]);
        assert!(is_true(&cs, READY));
        let ready = cs.iter().find(|c| c.type_ == READY).unwrap();
        assert_ne!(ready.last_transition_time.as_deref(), Some("then"));
    }
}

//! Status conditions as Flux writes them.
//!
//! Flux follows kstatus: `Ready` is always present; `Reconciling` and `Stalled` exist only while
//! they are `True`. A condition's `lastTransitionTime` changes only when its status changes, which
//! is what `kubectl wait` and the `flux` CLI rely on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

// The names are the API's (`gantry_api::meta`), written down once.
use gantry_api::meta::{
    PROGRESSING_REASON, PROGRESSING_WITH_RETRY_REASON, READY_CONDITION as READY,
    RECONCILING_CONDITION as RECONCILING, STALLED_CONDITION as STALLED,
};

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Sets a condition, keeping its transition time when the status did not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Status,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let now = Time(jiff::Timestamp::now());
    let new = Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message: truncate(message),
        observed_generation: generation,
        last_transition_time: now,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let transition = if existing.status == new.status {
                existing.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *existing = Condition {
                last_transition_time: transition,
                ..new
            };
        }
        None => conditions.push(new),
    }
    // Flux lists Ready first; keeping an order also keeps status patches minimal.
    conditions.sort_by_key(|c| (c.type_ != READY, c.type_.clone()));
}

pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// A reconciliation started: `Reconciling=True`, `Ready=Unknown`, both with reason `Progressing`.
pub fn progressing(conditions: &mut Vec<Condition>, generation: Option<i64>, message: &str) {
    set(
        conditions,
        RECONCILING,
        Status::True,
        PROGRESSING_REASON,
        message,
        generation,
    );
    set(
        conditions,
        READY,
        Status::Unknown,
        PROGRESSING_REASON,
        message,
        generation,
    );
}

/// A reconciliation succeeded: `Ready=True`; `Reconciling` and `Stalled` removed.
pub fn succeeded(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
) {
    set(conditions, READY, Status::True, reason, message, generation);
    remove(conditions, RECONCILING);
    remove(conditions, STALLED);
}

/// A reconciliation failed. A retryable failure keeps `Reconciling=True` with reason
/// `ProgressingWithRetry`; a terminal one (bad input that only a spec change can fix) sets
/// `Stalled=True` instead, as Flux does.
pub fn failed(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
    terminal: bool,
) {
    set(
        conditions,
        READY,
        Status::False,
        reason,
        message,
        generation,
    );
    if terminal {
        remove(conditions, RECONCILING);
        set(
            conditions,
            STALLED,
            Status::True,
            reason,
            message,
            generation,
        );
    } else {
        remove(conditions, STALLED);
        set(
            conditions,
            RECONCILING,
            Status::True,
            PROGRESSING_WITH_RETRY_REASON,
            message,
            generation,
        );
    }
}

/// The API server caps condition messages at 32 KiB; keep well inside it on a char boundary.
fn truncate(message: &str) -> String {
    const MAX: usize = 8 * 1024;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// Whether a failure with `message` is news against the `previous` conditions: Flux announces
/// a failure once per change of the Ready condition, not once per retry.
pub fn failure_is_news(previous: &[Condition], message: &str) -> bool {
    get(previous, READY).is_none_or(|c| c.status != "False" || c.message != message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_removes_reconciling_and_stalled_and_puts_ready_first() {
        let mut cs = Vec::new();
        progressing(&mut cs, Some(3), "reconciliation in progress");
        assert!(is_true(&cs, RECONCILING));
        assert_eq!(get(&cs, READY).unwrap().status, "Unknown");

        succeeded(
            &mut cs,
            Some(3),
            gantry_api::kustomize::v1::RECONCILIATION_SUCCEEDED_REASON,
            "Applied revision: main@sha1:abc",
        );
        assert_eq!(cs.len(), 1);
        let ready = &cs[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "True", "ReconciliationSucceeded")
        );
        assert_eq!(ready.observed_generation, Some(3));
    }

    #[test]
    fn retryable_failure_keeps_reconciling_terminal_failure_stalls() {
        let mut cs = Vec::new();
        failed(
            &mut cs,
            Some(1),
            "BuildFailed",
            "kustomize build failed",
            false,
        );
        assert!(is_true(&cs, RECONCILING));
        assert!(get(&cs, STALLED).is_none());
        assert_eq!(
            get(&cs, RECONCILING).unwrap().reason,
            "ProgressingWithRetry"
        );

        failed(&mut cs, Some(1), "InvalidPath", "path not found", true);
        assert!(is_true(&cs, STALLED));
        assert!(get(&cs, RECONCILING).is_none());
        assert_eq!(get(&cs, READY).unwrap().reason, "InvalidPath");
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut cs = Vec::new();
        set(&mut cs, READY, Status::False, "A", "first", None);
        let first = get(&cs, READY).unwrap().last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut cs, READY, Status::False, "B", "second", None);
        assert_eq!(get(&cs, READY).unwrap().last_transition_time, first);
        assert_eq!(get(&cs, READY).unwrap().message, "second");
        set(&mut cs, READY, Status::True, "C", "third", None);
        assert_ne!(get(&cs, READY).unwrap().last_transition_time, first);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(10_000);
        let mut cs = Vec::new();
        set(&mut cs, READY, Status::False, "R", &long, None);
        let msg = &get(&cs, READY).unwrap().message;
        assert!(msg.len() < long.len() && msg.ends_with("..."));
    }

    #[test]
    fn a_failure_is_news_once_per_change_of_ready() {
        let mut cs = Vec::new();
        assert!(failure_is_news(&cs, "down"), "nothing said yet");
        set(&mut cs, READY, Status::True, "Succeeded", "fine", None);
        assert!(failure_is_news(&cs, "down"), "was ready");
        set(&mut cs, READY, Status::False, "Failed", "down", None);
        assert!(!failure_is_news(&cs, "down"), "the same failure again");
        assert!(failure_is_news(&cs, "another cause"));
    }
}

//! Revision names and the initial scale of a Revision.

/// Longest Kubernetes object name Knative allows for a Revision (a DNS label).
pub const MAX_NAME_LENGTH: usize = 63;

/// The name Knative gives the Revision stamped out by `generation` of a Service's configuration:
/// `<service>-<generation, zero-padded to 5 digits>`, or the template's own name when set.
pub fn revision_name(service: &str, generation: i64, template_name: Option<&str>) -> String {
    match template_name {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => format!("{service}-{generation:05}"),
    }
}

/// The Deployment backing a Revision.
pub fn deployment_name(revision: &str) -> String {
    format!("{revision}-deployment")
}

/// Whether `name` is a valid Revision name (a DNS-1035 label, as Knative validates it).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LENGTH
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

/// Replicas a new Revision's Deployment starts with: `initial-scale` (default 1, Knative's
/// `config-autoscaler`), raised to `min-scale`. Unparseable values are refused earlier
/// ([`super::supported`]); here they count as unset.
pub fn initial_replicas(initial_scale: Option<&str>, min_scale: Option<&str>) -> i32 {
    let initial = initial_scale
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(1);
    let min = min_scale
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(0);
    initial.max(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_and_chosen_names() {
        assert_eq!(revision_name("hello", 1, None), "hello-00001");
        assert_eq!(revision_name("hello", 12, Some("")), "hello-00012");
        assert_eq!(revision_name("hello", 123456, None), "hello-123456");
        assert_eq!(revision_name("hello", 2, Some("hello-v2")), "hello-v2");
        assert_eq!(deployment_name("hello-00001"), "hello-00001-deployment");
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("hello-00001"));
        for bad in ["", "Hello", "1abc", "a_b", "abc-", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn initial_scale_defaults_to_one_and_min_scale_raises_it() {
        assert_eq!(initial_replicas(None, None), 1);
        assert_eq!(initial_replicas(Some("0"), None), 0);
        assert_eq!(initial_replicas(Some("3"), None), 3);
        assert_eq!(initial_replicas(Some("0"), Some("2")), 2);
        assert_eq!(initial_replicas(None, Some("4")), 4);
        assert_eq!(initial_replicas(Some("5"), Some("2")), 5);
    }
}

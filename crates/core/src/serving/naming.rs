//! Revision names and the initial scale of a Revision.

use md5::Digest as _;

/// Longest Kubernetes object name Knative allows for a Revision (a DNS label).
pub const MAX_NAME_LENGTH: usize = 63;

/// The name Knative gives the Revision stamped out by `generation` of a Service's configuration:
/// `<service>-<generation, zero-padded to 5 digits>` (shortened by [`child_name`] when longer
/// than 63 characters), or the template's own name when set.
pub fn revision_name(service: &str, generation: i64, template_name: Option<&str>) -> String {
    match template_name {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => child_name(service, &format!("-{generation:05}")),
    }
}

/// The Deployment backing a Revision: `<revision>-deployment`, shortened as Knative does.
pub fn deployment_name(revision: &str) -> String {
    child_name(revision, "-deployment")
}

/// Knative's `kmeta.ChildName`: `parent + suffix` when that fits in 63 characters; otherwise
/// the head of `parent` and the hex MD5 of the whole `parent`, then `suffix`, so long parents
/// still get distinct, valid names (a Service name of 58+ characters, a Revision name of 53+).
pub fn child_name(parent: &str, suffix: &str) -> String {
    const HASH_LEN: usize = 32;
    const HEAD: usize = MAX_NAME_LENGTH - HASH_LEN;
    let prefix = |s: &str, n: usize| s.get(..n.min(s.len())).unwrap_or(s).to_owned();
    if parent.len() + suffix.len() <= MAX_NAME_LENGTH {
        return format!("{parent}{suffix}");
    }
    let name = if suffix.len() < HEAD {
        let digest = md5::Md5::digest(parent.as_bytes());
        format!(
            "{}{}{suffix}",
            prefix(parent, HEAD - suffix.len()),
            hex::encode(digest)
        )
    } else {
        // A suffix too long to keep: hash both, pad with the suffix's start.
        let digest = md5::Md5::digest(format!("{parent}{suffix}").as_bytes());
        let mut name = format!("{}{}", prefix(parent, HEAD), hex::encode(digest));
        name.push_str(&prefix(suffix, MAX_NAME_LENGTH.saturating_sub(name.len())));
        name
    };
    // A DNS label ends with a letter or digit.
    name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
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
    fn long_names_are_shortened_as_knative_does() {
        // 60 characters: `-00001` would make 66. Expected values from Knative's formula
        // (head of the name, hex MD5 of the whole name, suffix), computed independently.
        let service = "a-very-long-service-name-that-a-team-chose-for-its-app-12345";
        assert_eq!(service.len(), 60);
        let rev = revision_name(service, 1, None);
        assert_eq!(
            rev,
            "a-very-long-service-name-390cdbbc373890ea3ad077a9917fbafb-00001"
        );
        assert_eq!(rev.len(), 63);
        assert!(valid_name(&rev));
        assert_ne!(rev, revision_name(&format!("{service}x"), 1, None));
        assert_eq!(
            deployment_name(&rev),
            "a-very-long-service-f8a2aba5fd2ef69e24545654e6b56426-deployment"
        );
        // Exactly 63 stays as it is.
        let fits = "b".repeat(57);
        assert_eq!(revision_name(&fits, 1, None), format!("{fits}-00001"));
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

//! The routing table's plain types: what the cluster side fills in and the proxy reads.
//!
//! Nothing here knows about Kubernetes: a host maps to weighted Revision targets, a Revision has
//! its serving settings and the addresses of its pods. Tests fill these by hand with loopback
//! stand-in servers.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use gantry_core::serving::autoscale::Settings;

/// A Revision: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionKey {
    pub namespace: String,
    pub name: String,
}

impl RevisionKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        RevisionKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for RevisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One weighted target of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub revision: RevisionKey,
    /// Share of the route's requests, in percent (Knative's `traffic[].percent`).
    pub percent: u32,
}

/// How the router checks that a pod can take requests.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Probe {
    /// Knative's default: a TCP connect to the serving port.
    #[default]
    Tcp,
    /// `GET <path>` on the serving port must answer 2xx.
    Http { path: String },
}

/// What the router needs to know about a Revision.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionConfig {
    /// `containerConcurrency`: the most requests one pod gets at once; 0 means unlimited.
    pub container_concurrency: u32,
    /// `timeoutSeconds`: the whole wait for a response to start, cold start included.
    pub timeout: Duration,
    /// The serving port speaks HTTP/2 without TLS (a port named `h2c`).
    pub h2c: bool,
    /// Readiness probe the router runs against each pod.
    pub probe: Probe,
    /// Autoscaler settings (global flags merged with the Revision's annotations).
    pub autoscale: Settings,
}

impl Default for RevisionConfig {
    fn default() -> Self {
        RevisionConfig {
            container_concurrency: 0,
            timeout: Duration::from_secs(300),
            h2c: false,
            probe: Probe::Tcp,
            autoscale: Settings::default(),
        }
    }
}

/// A pod of a Revision as the cluster reports it: its address (pod IP and serving port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
}

/// Host name as routes are keyed: lower-case, without a port or a trailing dot.
pub fn normalize_host(host: &str) -> String {
    host_key(host).into_owned()
}

/// [`normalize_host`] without allocating when the host is already in that form (what clients
/// send almost always): the request path looks routes up with it.
pub fn host_key(host: &str) -> Cow<'_, str> {
    let host = match host.rsplit_once(':') {
        // Keep IPv6 literals intact: only strip a port after `]` or from a name.
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("Hello.Default.Example.com:8080"),
            "hello.default.example.com"
        );
        assert_eq!(
            normalize_host("hello.default.svc.cluster.local."),
            "hello.default.svc.cluster.local"
        );
        assert_eq!(normalize_host("hello"), "hello");
        assert!(matches!(
            host_key("hello.default.example.com:80"),
            Cow::Borrowed("hello.default.example.com")
        ));
        assert_eq!(host_key("[::1]:8080"), "[::1]");
    }
}

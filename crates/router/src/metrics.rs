//! The data path's Prometheus metrics, registered into Gantry's one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::table::RevisionKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub namespace: String,
    pub revision: String,
}

impl From<&RevisionKey> for RevisionLabels {
    fn from(k: &RevisionKey) -> Self {
        RevisionLabels {
            namespace: k.namespace.clone(),
            revision: k.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `scale_request`, `pod_scheduled`, `pod_ready`, `first_byte`: each measured from the
    /// moment the first request found the Revision at zero.
    pub phase: String,
}

/// Every series of the router. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RouterMetrics {
    pub cold_start: Family<PhaseLabels, Histogram>,
    /// Requests that had to wait for a pod (at zero or at `containerConcurrency`).
    pub requests_held: Family<RevisionLabels, Counter>,
    /// Requests waiting for a pod now.
    pub queue_depth: Family<RevisionLabels, Gauge>,
    pub wakes: Family<RevisionLabels, Counter>,
    pub sleeps: Family<RevisionLabels, Counter>,
    pub in_flight: Family<RevisionLabels, Gauge>,
    pub desired_replicas: Family<RevisionLabels, Gauge>,
    /// Answers the router made itself: 503 (queue full), 504 (timeout), 502 (backend error).
    pub rejected: Family<RevisionLabels, Counter>,
    pub dial_refused: Counter,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        RouterMetrics {
            cold_start: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
            }),
            requests_held: Family::default(),
            queue_depth: Family::default(),
            wakes: Family::default(),
            sleeps: Family::default(),
            in_flight: Family::default(),
            desired_replicas: Family::default(),
            rejected: Family::default(),
            dial_refused: Counter::default(),
        }
    }
}

impl RouterMetrics {
    /// Registers every series under `gantry_serving_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("gantry_serving");
        r.register(
            "cold_start_seconds",
            "Time from the first request at zero to each cold-start phase.",
            self.cold_start.clone(),
        );
        r.register(
            "requests_held",
            "Requests that waited for a pod.",
            self.requests_held.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a pod now.",
            self.queue_depth.clone(),
        );
        r.register("wakes", "Scale-ups from zero.", self.wakes.clone());
        r.register("sleeps", "Scale-downs to zero.", self.sleeps.clone());
        r.register(
            "in_flight",
            "Requests in flight, held ones included.",
            self.in_flight.clone(),
        );
        r.register(
            "desired_replicas",
            "Replicas the autoscaler wants.",
            self.desired_replicas.clone(),
        );
        r.register(
            "rejected",
            "Requests answered by the router with 502, 503 or 504.",
            self.rejected.clone(),
        );
        r.register(
            "dial_refused",
            "Backend connections refused by the loopback guard.",
            self.dial_refused.clone(),
        );
    }
}

//! The autoscaler loop: every tick, each Revision's exact in-flight area (or requests started)
//! since the last tick goes into its windows, the KPA decides, and changed replica counts go to
//! the [`Scaler`](crate::Scaler). Only the leader decides; every replica wakes Revisions.
//!
//! The leader first asks the other replicas for their counts ([`crate::peers`]) and decides from
//! the sum: their area and requests join its own in the windows, their in-flight requests and
//! latest activity join its own in the idle rule. While a live replica has not reported yet,
//! nothing is scaled down.
//!
//! Scaling to zero takes two ticks: the first marks the Revision draining and remembers its
//! last-activity reading; the second scales to zero only if nothing started or finished in
//! between. A request in the meantime cancels the scale-down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use gantry_core::serving::autoscale::{Metric, PeerTick, bounded, is_idle, merge_activity};

use crate::metrics::RevisionLabels;
use crate::revision::Revision;
use crate::table::RevisionKey;
use crate::{Router, ScaleReason};

/// Knative's autoscaler ticks every 2 s; the router's counts are exact, so a shorter tick costs
/// little and reacts sooner.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// One decision of a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub revision: crate::table::RevisionKey,
    pub replicas: u32,
    pub reason: ScaleReason,
}

/// At zero, with no `min-scale` and nothing started, in flight or finished since a previous tick
/// that already recorded it: the decision can only be "stay at zero" (requests wake it, not the
/// autoscaler), the windows would only get zeros (a missing bucket is a zero) and the gauges
/// already say 0. Such ticks are skipped, so 1000 sleeping Revisions cost next to nothing.
fn asleep_and_untouched(
    rev: &Revision,
    s: &gantry_core::serving::autoscale::Settings,
    st: &crate::revision::ScaleState,
    area: u64,
    started: u64,
) -> bool {
    s.min_scale == 0
        && st.draining.is_none()
        && st.last_area == Some(area)
        && st.last_started == started
        && rev.in_flight.load(Ordering::SeqCst) == 0
        && rev.replicas.load(Ordering::SeqCst) == 0
}

impl Router {
    /// Records this tick's measurements (this replica's alone) and returns the scale changes to
    /// make.
    pub fn autoscale_tick(&self) -> Vec<Decision> {
        self.autoscale_tick_with(&PeerTick::default())
    }

    /// Records this tick's measurements, this replica's plus the other replicas' `peers`, and
    /// returns the scale changes to make.
    pub fn autoscale_tick_with(&self, peers: &PeerTick<RevisionKey>) -> Vec<Decision> {
        let mut out = Vec::new();
        let now = std::time::Instant::now();
        for rev in self.revisions() {
            // Every replica ticks: each closes its own connections idle for too long.
            for pod in rev.pods().iter() {
                pod.conns.prune(now);
            }
            if let Some(d) = self.decide(&rev, peers) {
                out.push(d);
            }
        }
        out
    }

    fn decide(&self, rev: &Arc<Revision>, peers: &PeerTick<RevisionKey>) -> Option<Decision> {
        let others = peers.loads.get(&rev.key).copied().unwrap_or_default();
        let config = rev.config();
        let s = &config.autoscale;
        let now = rev.now();
        let mut st = rev.scale.lock().unwrap_or_else(PoisonError::into_inner);
        let area = rev.area_us();
        let started = rev.started.load(Ordering::Relaxed);
        // A Revision another replica reported activity for is never skipped.
        if !peers.loads.contains_key(&rev.key) && asleep_and_untouched(rev, s, &st, area, started) {
            // Idle cost: a sleeping Revision costs a few atomic reads per tick, not a decision.
            return None;
        }
        let delta = st
            .last_area
            .map_or(0, |a| area.wrapping_sub(a))
            .saturating_add(others.area_us);
        st.last_area = Some(area);
        let delta_started = started
            .wrapping_sub(st.last_started)
            .saturating_add(others.started);
        st.last_started = started;
        let value = match s.metric {
            Metric::Concurrency => delta as f64 / 1e6,
            Metric::Rps => delta_started as f64,
        };
        st.buckets.record(now, value);
        let stable = st.buckets.average(now, s.stable_window);
        let panic = st.buckets.average(now, s.panic_window());
        let ready = rev.ready_pods();
        let kpa = st.decider.desired(s, now, stable, panic, ready);
        let activity = merge_activity(&rev.activity(), &others);
        let idle = is_idle(s, &activity, now);
        let want = bounded(s, kpa, idle);
        let labels = RevisionLabels::from(&rev.key);
        let m = &self.inner.metrics;
        m.in_flight
            .get_or_create(&labels)
            .set(activity.in_flight as i64);
        m.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(want));
        let current = rev.replicas.load(Ordering::SeqCst);
        if current < 0 {
            return None; // not reported by the cluster yet
        }
        if current == 0 {
            st.draining = None;
            // Requests wake a sleeping Revision themselves; only `min-scale` raises it here, so a
            // restarted router leaves sleeping Revisions asleep.
            return (s.min_scale > 0).then(|| Decision {
                revision: rev.key.clone(),
                replicas: want,
                reason: ScaleReason::Autoscale,
            });
        }
        if peers.unsure && i64::from(want) < current {
            // A replica's load is unknown until it reports (or is dropped as stale).
            st.draining = None;
            return None;
        }
        if want == 0 {
            // Any start or finish here or on another replica changes the mark.
            let mark = rev.last_active_raw().wrapping_add(others.mark);
            match st.draining {
                Some(m) if m == mark && activity.in_flight == 0 => {
                    st.draining = None;
                    return Some(Decision {
                        revision: rev.key.clone(),
                        replicas: 0,
                        reason: ScaleReason::Sleep,
                    });
                }
                Some(_) => {
                    tracing::debug!(revision = %rev.key, "scale to zero cancelled by a request");
                    st.draining = None;
                }
                None => {
                    tracing::debug!(revision = %rev.key, "idle: draining before scaling to zero");
                    st.draining = Some(mark);
                }
            }
            return None;
        }
        st.draining = None;
        (i64::from(want) != current).then(|| Decision {
            revision: rev.key.clone(),
            replicas: want,
            reason: ScaleReason::Autoscale,
        })
    }

    /// Applies decisions through the scaler; the replica count is updated at once so the next
    /// tick does not repeat a decision the cluster has not reported back yet.
    pub async fn apply(&self, decisions: Vec<Decision>) {
        for d in decisions {
            let result = self
                .inner
                .scaler
                .scale(&d.revision, d.replicas, d.reason)
                .await;
            match result {
                Ok(()) => {
                    self.revision(&d.revision)
                        .replicas
                        .store(i64::from(d.replicas), Ordering::SeqCst);
                    if d.reason == ScaleReason::Sleep {
                        self.inner
                            .metrics
                            .sleeps
                            .get_or_create(&RevisionLabels::from(&d.revision))
                            .inc();
                        tracing::info!(revision = %d.revision, "scaled to zero");
                    } else {
                        tracing::info!(revision = %d.revision, replicas = d.replicas, "scaled");
                    }
                }
                Err(err) => {
                    tracing::warn!(revision = %d.revision, replicas = d.replicas, %err, "scaling failed")
                }
            }
        }
    }

    /// Runs the autoscaler every `tick` until `shutdown`; while `is_leader()` says so it asks the
    /// other replicas for their counts and applies its decisions. A standby keeps its own
    /// windows current, so that it decides well the moment it leads.
    pub async fn run_autoscaler(
        self,
        tick: Duration,
        is_leader: impl Fn() -> bool,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = &mut shutdown => return,
            }
            if is_leader() {
                let peers = self.scrape_peers().await;
                let decisions = self.autoscale_tick_with(&peers);
                self.apply(decisions).await;
            } else {
                self.autoscale_tick();
            }
        }
    }
}

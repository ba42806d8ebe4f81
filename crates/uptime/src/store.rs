//! The history store (`gantry-uptime-store`: SQLite or Postgres) as the engine's
//! [`Recorder`]: every result is written (buffered while the database is away), the last
//! state comes back after a restart, so a recovery is announced even by a new process, and the
//! uptime and response-time figures of the status come from the store's windows (the same ones
//! the status page shows, loaded from the aggregates at start). Alerts go through its outbox.

use gantry_core::uptime::state::State;
use gantry_uptime_store::{MonitorInfo, MonitorKey, Sample, Store};
use jiff::Timestamp;

use crate::alert::Queued;
use crate::check::CheckResult;
use crate::engine::{AlertId, Figures, Recorder};
use crate::history::Uptime;
use crate::plan::{Key, Plan};

fn key_of(key: &Key) -> MonitorKey {
    MonitorKey::new(key.namespace.clone(), key.name.clone())
}

fn state_to(state: State) -> gantry_uptime_store::State {
    match state {
        State::Up => gantry_uptime_store::State::Up,
        State::Down => gantry_uptime_store::State::Down,
        State::Pending => gantry_uptime_store::State::Pending,
        State::Maintenance => gantry_uptime_store::State::Maintenance,
    }
}

fn state_from(state: gantry_uptime_store::State) -> State {
    match state {
        gantry_uptime_store::State::Up => State::Up,
        gantry_uptime_store::State::Down => State::Down,
        gantry_uptime_store::State::Pending => State::Pending,
        gantry_uptime_store::State::Maintenance => State::Maintenance,
    }
}

impl Recorder for Store {
    fn register(&self, plan: &Plan) {
        self.upsert_monitor(MonitorInfo {
            key: key_of(&plan.key),
            display_name: plan.display_name.clone(),
            group: plan.group.clone().unwrap_or_default(),
            kind: plan.type_.as_str().to_string(),
            target: if plan.heartbeat_path.is_some() {
                String::new()
            } else {
                plan.endpoint.clone()
            },
        });
    }

    fn recovered(&self, key: &Key) -> Option<(State, Timestamp)> {
        let last = self.last_state(&key_of(key))?;
        let since = Timestamp::from_millisecond(last.since).ok()?;
        Some((state_from(last.state), since))
    }

    fn record(
        &self,
        plan: &Plan,
        at: Timestamp,
        state: State,
        result: &CheckResult,
        alert: Option<&Queued>,
    ) -> Option<AlertId> {
        let sample = Sample {
            key: key_of(&plan.key),
            at: at.as_millisecond(),
            state: state_to(state),
            success: result.success,
            response_us: i32::try_from(result.response_time.as_micros()).ok(),
            http_status: None,
            message: (!result.success).then(|| result.message.chars().take(512).collect()),
        };
        let payload = alert.and_then(|a| match serde_json::to_string(a) {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::error!(monitor = %plan.key, %err, "alert not kept in the outbox");
                None
            }
        });
        match payload {
            Some(payload) => Some(self.record_alerting(sample, payload)),
            None => {
                Store::record(self, sample);
                None
            }
        }
    }

    fn alert_sent(&self, id: &AlertId) {
        Store::alert_sent(self, id);
    }

    fn pending_alerts(&self) -> Vec<(AlertId, Queued)> {
        self.take_pending_alerts()
            .into_iter()
            .filter_map(|(id, payload)| match serde_json::from_str(&payload) {
                Ok(queued) => Some((id, queued)),
                Err(err) => {
                    // Written by another version: dropped rather than sent malformed.
                    tracing::warn!(monitor = %id.key, %err, "unreadable alert in the outbox dropped");
                    Store::alert_sent(self, &id);
                    None
                }
            })
            .collect()
    }

    fn persisted(&self) -> futures::future::BoxFuture<'static, ()> {
        let store = self.clone();
        Box::pin(async move {
            if let Err(err) = store.flush().await {
                tracing::warn!(%err, "uptime history not stored before an alert");
            }
        })
    }

    fn figures(&self, key: &Key) -> Option<Figures> {
        let s = Store::figures(self, &key_of(key))?;
        let ms = |v: f64| v.max(0.0).round() as u64;
        Some(Figures {
            uptime: Uptime {
                day: s.uptime_24h,
                week: s.uptime_7d,
                month: s.uptime_30d,
            },
            response_times: match (s.p50_ms, s.p95_ms, s.p99_ms) {
                (Some(a), Some(b), Some(c)) => Some((ms(a), ms(b), ms(c))),
                _ => None,
            },
        })
    }

    fn forget(&self, key: &Key) {
        let store = self.clone();
        let key = key_of(key);
        tokio::spawn(async move {
            if let Err(err) = store.remove_monitor(&key).await {
                tracing::warn!(monitor = %key, %err, "removing the monitor's history");
            }
        });
    }
}

//! The Monitor controller: the reconcile compiles the spec (its Secrets read) into a plan and
//! hands it to the [`Engine`]; the engine's reports are written back as status and Kubernetes
//! Events by one writer task ([`StatusWriter`]).
//!
//! Status is written on every state change and otherwise at most every
//! [`STATUS_REFRESH`] per Monitor (uptime figures move slowly; ten thousand Monitors must not
//! write ten thousand statuses per interval). Alerts are sent by the engine itself, and the
//! engine only runs in the process holding the leader Lease, so each alert is sent once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_api::meta::{FAILED_REASON, INVALID_SPEC_REASON, RECONCILE_REQUEST_ANNOTATION};
use gantry_api::notification::v1beta3::{Alert, Provider};
use gantry_api::uptime::v1alpha1::{
    LastResult, MONITOR_DOWN_REASON, MONITOR_MAINTENANCE_REASON, MONITOR_PENDING_REASON,
    MONITOR_UP_REASON, MONITORING_REASON, Monitor, MonitorStatus, ResponseTimes, STATE_DOWN_REASON,
    STATE_MAINTENANCE_REASON, STATE_PENDING_REASON, STATE_UP_REASON, UP_CONDITION, UptimeFigures,
};
use gantry_core::uptime::state::State;
use gantry_runtime::conditions::{self, Status};
use gantry_runtime::controller::{Controller, Cx, Reconciler, Shared};
use gantry_runtime::events::Severity;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::{Delivery, Directory, Notifier};
use crate::engine::{Engine, Report, Sink, Snapshot};
use crate::history::percent;
use crate::plan::{self, AlertTargets, Clients, Key, PlanError, Secrets};

/// Field manager of status writes and reporter of events.
pub const CONTROLLER: &str = "uptime-controller";
/// Longest time between two status writes of a Monitor whose state does not change.
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// Secrets are re-read this often (a rotated token or certificate is picked up).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Ready reason: a Secret the Monitor names is missing or incomplete.
pub const SECRET_REASON: &str = "SecretNotFound";

/// Why a Monitor could not be scheduled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Plan(PlanError::InvalidSpec(_)) => INVALID_SPEC_REASON,
            Error::Plan(PlanError::Secret { .. }) => SECRET_REASON,
            Error::Status(_) => FAILED_REASON,
        }
    }
}

/// The Monitor controller's domain steps.
pub struct Monitors {
    engine: Engine,
    clients: Clients,
}

impl Monitors {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            clients: Clients::default(),
        }
    }
}

async fn read_secrets(
    client: &Client,
    namespace: &str,
    names: &[String],
) -> Result<Secrets, PlanError> {
    let mut secrets = Secrets::new();
    for name in names {
        let data = gantry_runtime::secrets::data(client, namespace, name)
            .await
            .map_err(|e| PlanError::Secret {
                name: name.clone(),
                reason: gantry_runtime::secrets::api_message(&e),
            })?;
        secrets.insert(name.clone(), data);
    }
    Ok(secrets)
}

impl Reconciler for Monitors {
    type Object = Monitor;
    type Error = Error;
    const CONTROLLER: &'static str = CONTROLLER;

    async fn reconcile(&self, monitor: Arc<Monitor>, cx: &Cx<Monitor>) -> Result<Action, Error> {
        let key = Key::of(&monitor);
        let planned =
            match read_secrets(cx.client(), &key.namespace, &plan::secret_names(&monitor)).await {
                Ok(secrets) => plan::compile(&monitor, &secrets, &self.clients),
                Err(e) => Err(e),
            };
        match planned {
            Ok(plan) => {
                let message = format!(
                    "checking {} every {}",
                    plan.endpoint_label(),
                    gantry_core::uptime::state::human(plan.interval)
                );
                self.engine.upsert(plan);
                let snapshot = self.engine.snapshot(&key);
                let status = status_for(&monitor, snapshot.as_ref(), Ok(&message));
                cx.write_status(&monitor, &status)
                    .await
                    .map_err(Error::Status)?;
                Ok(Action::requeue(RESYNC))
            }
            Err(err) => {
                // Nothing half-applied: a Monitor that cannot be planned is not checked at all.
                self.engine.remove(&key);
                let err = Error::Plan(err);
                let status = status_for(
                    &monitor,
                    None,
                    Err((err.reason(), &err.to_string(), !Self::retryable(&err))),
                );
                cx.report_failure(&monitor, &status, err.reason(), &err.to_string())
                    .await
                    .map_err(Error::Status)?;
                Err(err)
            }
        }
    }

    async fn cleanup(&self, monitor: Arc<Monitor>, _cx: &Cx<Monitor>) -> Result<(), Error> {
        self.engine.remove(&Key::of(&monitor));
        Ok(())
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::Plan(PlanError::InvalidSpec(_)))
    }
}

impl plan::Plan {
    /// The endpoint as the Ready message names it.
    pub fn endpoint_label(&self) -> String {
        match &self.heartbeat_path {
            Some(path) => format!("heartbeats at {path}"),
            None => self.endpoint.clone(),
        }
    }
}

/// The whole status: Ready from the reconcile (`Ok(message)` or `Err((reason, message,
/// terminal))`), the rest from the engine's snapshot.
pub fn status_for(
    monitor: &Monitor,
    snapshot: Option<&Snapshot>,
    ready: Result<&str, (&str, &str, bool)>,
) -> MonitorStatus {
    let generation = monitor.metadata.generation;
    let mut status = monitor.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.last_handled_reconcile_at = monitor
        .annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .cloned()
        .or(status.last_handled_reconcile_at);
    match ready {
        Ok(message) => conditions::succeeded(
            &mut status.conditions,
            generation,
            MONITORING_REASON,
            message,
        ),
        Err((reason, message, terminal)) => {
            conditions::failed(
                &mut status.conditions,
                generation,
                reason,
                message,
                terminal,
            );
            conditions::set(
                &mut status.conditions,
                UP_CONDITION,
                Status::Unknown,
                reason,
                "not checked",
                generation,
            );
            status.state = None;
            status.heartbeat_path = None;
            return status;
        }
    }
    if let Some(s) = snapshot {
        apply_snapshot(&mut status, s, generation);
    } else {
        conditions::set(
            &mut status.conditions,
            UP_CONDITION,
            Status::Unknown,
            STATE_PENDING_REASON,
            "not checked yet",
            generation,
        );
    }
    status
}

fn apply_snapshot(status: &mut MonitorStatus, s: &Snapshot, generation: Option<i64>) {
    let message = s
        .last
        .as_ref()
        .map(|l| l.message.clone())
        .unwrap_or_else(|| "not checked yet".into());
    let (cond, reason) = match s.state {
        State::Up => (Status::True, STATE_UP_REASON),
        State::Down => (Status::False, STATE_DOWN_REASON),
        State::Pending => (Status::Unknown, STATE_PENDING_REASON),
        State::Maintenance => (Status::Unknown, STATE_MAINTENANCE_REASON),
    };
    conditions::set(
        &mut status.conditions,
        UP_CONDITION,
        cond,
        reason,
        &message,
        generation,
    );
    status.state = Some(s.state.as_str().to_string());
    status.last_change = s.last_change.map(|t| t.to_string());
    status.last_result = s.last.as_ref().map(|l| LastResult {
        time: l.time.to_string(),
        success: l.success,
        response_time: Some(format!("{}ms", l.response_ms)),
        message: Some(l.message.chars().take(512).collect()),
    });
    status.uptime = Some(UptimeFigures {
        last24h: s.uptime.day.map(percent),
        last7d: s.uptime.week.map(percent),
        last30d: s.uptime.month.map(percent),
    });
    status.response_times = s
        .response_times
        .map(|(p50, p95, p99)| ResponseTimes { p50, p95, p99 });
    status.heartbeat_path = s.heartbeat_path.clone();
}

/// A sink feeding the status writer (never blocks a check: a full queue drops the report; the
/// next one carries the same state).
pub struct StatusSink(mpsc::Sender<Report>);

impl Sink for StatusSink {
    fn report(&self, report: Report) {
        if let Err(mpsc::error::TrySendError::Full(r)) = self.0.try_send(report) {
            tracing::debug!(monitor = %r.snapshot.key, "status queue full; report dropped");
        }
    }
}

/// Writes the engine's reports as Monitor status and Events.
pub struct StatusWriter {
    rx: mpsc::Receiver<Report>,
    cx: Cx<Monitor>,
    api_client: Client,
}

/// The sink for the engine, and the writer task that drains it.
pub fn status_channel(shared: &Shared) -> (Arc<dyn Sink>, StatusWriter) {
    let (tx, rx) = mpsc::channel(16 * 1024);
    (
        Arc::new(StatusSink(tx)),
        StatusWriter {
            rx,
            cx: Cx::new(shared.clone(), CONTROLLER),
            api_client: shared.client.clone(),
        },
    )
}

impl StatusWriter {
    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut written: HashMap<Key, tokio::time::Instant> = HashMap::new();
        loop {
            let report = tokio::select! {
                r = self.rx.recv() => match r { Some(r) => r, None => return },
                _ = shutdown.cancelled() => return,
            };
            let key = report.snapshot.key.clone();
            let due = written
                .get(&key)
                .is_none_or(|at| at.elapsed() >= STATUS_REFRESH);
            if !report.step.changed() && !due {
                continue;
            }
            let api: Api<Monitor> = Api::namespaced(self.api_client.clone(), &key.namespace);
            // The object as it is now (its generation, conditions and annotations), so the
            // status written is whole and current.
            let monitor = match api.get_opt(&key.name).await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(monitor = %key, %err, "reading the Monitor for its status");
                    continue;
                }
            };
            if monitor.metadata.generation != report.snapshot.generation {
                // A newer spec is being planned; its reconcile writes the status.
                continue;
            }
            let ready = conditions::get(
                monitor
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default(),
                gantry_api::meta::READY_CONDITION,
            )
            .map(|c| c.message.clone())
            .unwrap_or_default();
            let status = status_for(&monitor, Some(&report.snapshot), Ok(&ready));
            if let Err(err) = self.cx.write_status(&monitor, &status).await {
                tracing::warn!(monitor = %key, %err, "writing Monitor status");
                continue;
            }
            written.insert(key, tokio::time::Instant::now());
            if report.step.changed() {
                let (severity, reason) = match report.step.to {
                    State::Up => (Severity::Info, MONITOR_UP_REASON),
                    State::Down => (Severity::Error, MONITOR_DOWN_REASON),
                    State::Pending => (Severity::Info, MONITOR_PENDING_REASON),
                    State::Maintenance => (Severity::Info, MONITOR_MAINTENANCE_REASON),
                };
                let detail = report
                    .snapshot
                    .last
                    .as_ref()
                    .map(|l| l.message.as_str())
                    .unwrap_or("");
                let message = format!("{} → {}: {detail}", report.step.from, report.step.to);
                self.cx
                    .event(&monitor, severity, reason, &message, None)
                    .await;
            }
        }
    }
}

/// Providers and Alerts read from the cluster when an alert is sent.
pub struct ClusterDirectory {
    pub client: Client,
}

impl Directory for ClusterDirectory {
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        targets: &'a AlertTargets,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Delivery>, String>> {
        Box::pin(async move {
            let providers: Api<Provider> = Api::namespaced(self.client.clone(), namespace);
            let mut wanted: Vec<(
                String,
                std::collections::BTreeMap<String, String>,
                Option<String>,
            )> = targets
                .providers
                .iter()
                .map(|p| (p.clone(), Default::default(), None))
                .collect();
            if let Some(alert) = &targets.alert {
                let alerts: Api<Alert> = Api::namespaced(self.client.clone(), namespace);
                let alert = alerts
                    .get_opt(alert)
                    .await
                    .map_err(|e| format!("reading Alert '{alert}': {e}"))?
                    .ok_or_else(|| format!("Alert '{namespace}/{alert}' not found"))?;
                if !alert.spec.suspend {
                    wanted.push((
                        alert.spec.provider_ref.name.clone(),
                        alert.spec.event_metadata.clone(),
                        alert.spec.summary.clone(),
                    ));
                }
            }
            let mut out = Vec::new();
            for (name, metadata, summary) in wanted {
                let provider = providers
                    .get_opt(&name)
                    .await
                    .map_err(|e| format!("reading Provider '{name}': {e}"))?
                    .ok_or_else(|| format!("Provider '{namespace}/{name}' not found"))?;
                if provider.spec.suspend {
                    continue;
                }
                let client = self.client.clone();
                let ns = namespace.to_string();
                let read = move |secret: String| {
                    let client = client.clone();
                    let ns = ns.clone();
                    async move {
                        gantry_runtime::secrets::data(&client, &ns, &secret)
                            .await
                            .map(|d| {
                                d.into_iter()
                                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                                    .collect()
                            })
                            .map_err(|e| {
                                format!(
                                    "secret '{secret}': {}",
                                    gantry_runtime::secrets::api_message(&e)
                                )
                            })
                    }
                };
                let (config, http, headers) =
                    gantry_notification::dispatch::prepare_provider(&provider, read).await?;
                out.push(Delivery {
                    name: format!("{namespace}/{name}"),
                    config,
                    http,
                    headers,
                    metadata,
                    summary,
                });
            }
            Ok(out)
        })
    }
}

/// Settings of the Monitor controller in `gantry run`.
#[derive(Clone)]
pub struct Settings {
    pub namespace: Option<String>,
    pub concurrency: u16,
    /// Checks at once.
    pub check_concurrency: usize,
    /// Where results are kept and states recovered from.
    pub recorder: Option<Arc<dyn crate::engine::Recorder>>,
}

/// Runs the Monitor controller, the engine and the status writer until `shutdown`; returns the
/// engine (for the heartbeat endpoint) through `started` as soon as it exists.
pub async fn run(
    shared: Shared,
    settings: Settings,
    started: Option<tokio::sync::oneshot::Sender<Engine>>,
    shutdown: CancellationToken,
) {
    let (sink, writer) = status_channel(&shared);
    let notifier = Notifier::new(Arc::new(ClusterDirectory {
        client: shared.client.clone(),
    }));
    let mut engine = Engine::new(
        notifier,
        sink,
        Some(shared.metrics.uptime().clone()),
        settings.check_concurrency,
    );
    if let Some(recorder) = settings.recorder.clone() {
        engine = engine.with_recorder(recorder);
    }
    if let Some(tx) = started {
        let _ = tx.send(engine.clone());
    }
    let controller = Controller::new(Monitors::new(engine.clone()), shared)
        .namespace(settings.namespace.as_deref())
        .concurrency(settings.concurrency);
    let stop = shutdown.clone();
    tokio::join!(
        controller.run(async move { stop.cancelled().await }),
        engine.run(shutdown.clone()),
        writer.run(shutdown),
    );
}

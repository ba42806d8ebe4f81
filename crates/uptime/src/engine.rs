//! The scheduler and the state of every Monitor in the process.
//!
//! One timer queue (a binary heap of due times) and one task that sleeps until the earliest
//! one, rather than a sleeping task per Monitor: a check is spawned when due, bounded by a
//! semaphore, and schedules its successor from its *intended* time, so intervals do not drift
//! with check durations. First checks are spread over the interval by a hash of the Monitor's
//! key, so ten thousand Monitors created at once do not fire together; Monitors added before
//! the scheduler runs (a configuration read at start) count that offset from when it starts. How late each check
//! starts is kept as a histogram ([`Engine::jitter`]) for the benchmark.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_core::uptime::state::{Machine, Outcome, State, Step};
use gantry_runtime::metrics::{MonitorSeries, UptimeMetrics};
use jiff::Timestamp;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alert::{Notifier, Queued};
use crate::check::{self, CheckResult};
use crate::history::{History, Uptime};
use crate::plan::{Key, Plan};

/// The last check, as the status and the status page show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastCheck {
    pub time: Timestamp,
    pub success: bool,
    pub response_ms: u64,
    pub message: String,
}

/// A Monitor's state as seen from outside.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub key: Key,
    pub display_name: String,
    pub group: Option<String>,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub endpoint: String,
    pub generation: Option<i64>,
    pub state: State,
    pub last_change: Option<Timestamp>,
    pub last: Option<LastCheck>,
    #[serde(skip)]
    pub uptime: Uptime,
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub uptime_30d: Option<f64>,
    /// p50, p95, p99 in milliseconds.
    pub response_times: Option<(u64, u64, u64)>,
    pub heartbeat_path: Option<String>,
}

/// One check's consequences, for whoever writes status or events.
#[derive(Debug, Clone)]
pub struct Report {
    pub snapshot: Snapshot,
    pub step: Step,
}

/// Where reports go (the Monitor status writer, or the standalone log). Must not block.
pub trait Sink: Send + Sync + 'static {
    fn report(&self, report: Report);
}

/// Uptime and response times of one Monitor, as its status shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub uptime: Uptime,
    /// p50, p95, p99 in milliseconds.
    pub response_times: Option<(u64, u64, u64)>,
}

/// Where every result is kept and where the last state comes back from after a restart (the
/// history store; see [`crate::store`]).
pub trait Recorder: Send + Sync + 'static {
    /// A Monitor is (again) scheduled.
    fn register(&self, plan: &Plan);
    /// The state recorded before this process started: the state and since when.
    fn recovered(&self, key: &Key) -> Option<(State, Timestamp)>;
    /// One check's result and the state it left, and the alert it raised if any: kept with
    /// the state change (an outbox) until [`alert_sent`](Self::alert_sent), so a process
    /// killed before sending it leaves it to the next one. Returns the alert's id then.
    fn record(
        &self,
        plan: &Plan,
        at: Timestamp,
        state: State,
        result: &CheckResult,
        alert: Option<&Queued>,
    ) -> Option<AlertId>;
    /// The alert's deliveries are over: it leaves the outbox.
    fn alert_sent(&self, _id: &AlertId) {}
    /// Alerts a previous process (or leader) recorded and did not send; each returned once.
    fn pending_alerts(&self) -> Vec<(AlertId, Queued)> {
        Vec::new()
    }
    /// The Monitor is gone.
    fn forget(&self, key: &Key);
    /// Resolves once what was recorded so far is stored where the next leader (or the next
    /// process) recovers it from. An alert waits for it (bounded by [`PERSIST_WAIT`]), so the
    /// state it announces is never announced again after a leader change or a restart.
    fn persisted(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// Its uptime and response times from the kept history (results included as soon as
    /// [`record`](Self::record) returns), so status agrees with the status page and survives a
    /// restart. `None` before any result.
    fn figures(&self, key: &Key) -> Option<Figures>;
}

/// Which alert of the outbox.
pub type AlertId = gantry_uptime_store::AlertId;

/// How long an alert waits for its state to be stored before it is sent anyway: a database
/// that is away must not silence alerts (it then risks a repeat after a leader change).
pub const PERSIST_WAIT: Duration = Duration::from_secs(10);

/// A sink that only logs state changes.
pub struct LogSink;

impl Sink for LogSink {
    fn report(&self, report: Report) {
        if report.step.changed() {
            tracing::info!(
                monitor = %report.snapshot.key,
                from = %report.step.from,
                to = %report.step.to,
                message = report.snapshot.last.as_ref().map(|l| l.message.as_str()).unwrap_or(""),
                "monitor state changed"
            );
        }
    }
}

#[derive(Default)]
struct Runtime {
    machine: Machine,
    /// Only without a [`Recorder`] (its history is then the only one).
    history: History,
    last: Option<LastCheck>,
    last_beat: Option<std::time::Instant>,
}

#[derive(Clone)]
struct Entry {
    plan: Arc<Plan>,
    epoch: u64,
    runtime: Arc<Mutex<Runtime>>,
    /// The labels of its metrics.
    series: MonitorSeries,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    seq: u64,
    key: Key,
    epoch: u64,
    /// A one-off check (a heartbeat arriving while down) that schedules no successor.
    oneshot: bool,
}

/// Lateness histogram: 1 ms buckets to 1 s, then 100 ms buckets to 100 s.
const JITTER_BUCKETS: usize = 1000 + 990;

struct Inner {
    monitors: Mutex<HashMap<Key, Entry>>,
    heartbeats: Mutex<HashMap<String, Key>>,
    queue: Mutex<BinaryHeap<Reverse<Due>>>,
    wake: Notify,
    seq: AtomicU64,
    limit: Arc<Semaphore>,
    notifier: Notifier,
    sink: Arc<dyn Sink>,
    metrics: Option<UptimeMetrics>,
    recorder: Mutex<Option<Arc<dyn Recorder>>>,
    /// First checks of Monitors added before [`Engine::run`] started (offset, key, epoch);
    /// `None` once it runs. Their offsets count from the start of the scheduler, not from
    /// the upsert: plans compiled during a slow start must not all be due at once.
    before_start: Mutex<Option<Vec<(Duration, Key, u64)>>>,
    jitter: Vec<AtomicU32>,
    checks: AtomicU64,
}

/// Every Monitor of the process, scheduled and checked. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// How many checks may run at once by default.
pub const DEFAULT_CONCURRENCY: usize = 1024;

impl Engine {
    pub fn new(
        notifier: Notifier,
        sink: Arc<dyn Sink>,
        metrics: Option<UptimeMetrics>,
        concurrency: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                monitors: Mutex::default(),
                heartbeats: Mutex::default(),
                queue: Mutex::default(),
                wake: Notify::new(),
                seq: AtomicU64::new(0),
                limit: Arc::new(Semaphore::new(concurrency.max(1))),
                notifier,
                sink,
                metrics,
                recorder: Mutex::new(None),
                before_start: Mutex::new(Some(Vec::new())),
                jitter: (0..JITTER_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
                checks: AtomicU64::new(0),
            }),
        }
    }

    /// Keeps every result in `recorder` and recovers states from it (call before the first
    /// [`upsert`](Self::upsert)).
    pub fn with_recorder(self, recorder: Arc<dyn Recorder>) -> Self {
        *lock(&self.inner.recorder) = Some(recorder);
        self
    }

    fn recorder(&self) -> Option<Arc<dyn Recorder>> {
        lock(&self.inner.recorder).clone()
    }

    /// Schedules a Monitor, or takes its new plan. The state and history carry over; a new
    /// generation is checked again soon, the same one keeps its schedule (a periodic
    /// reconcile re-reading Secrets must not shift checks).
    pub fn upsert(&self, plan: Plan) {
        let key = plan.key.clone();
        let plan = Arc::new(plan);
        let series = || UptimeMetrics::series(&key.namespace, &key.name, plan.type_.as_str());
        let mut monitors = lock(&self.inner.monitors);
        let (entry, first) = match monitors.get(&key) {
            Some(old) => {
                let same = old.plan.generation.is_some() && old.plan.generation == plan.generation;
                let epoch = if same { old.epoch } else { old.epoch + 1 };
                let series = if old.plan.type_ == plan.type_ {
                    old.series.clone()
                } else {
                    if let Some(m) = &self.inner.metrics {
                        m.remove(&old.series);
                    }
                    series()
                };
                let entry = Entry {
                    plan: plan.clone(),
                    epoch,
                    runtime: old.runtime.clone(),
                    series,
                };
                (
                    entry,
                    (!same).then(|| Duration::from_millis(spread(&key, Duration::from_secs(2)))),
                )
            }
            None => (
                Entry {
                    plan: plan.clone(),
                    epoch: 1,
                    runtime: Arc::new(Mutex::new(self.recovered(&plan))),
                    series: series(),
                },
                Some(Duration::from_millis(spread(&key, plan.interval))),
            ),
        };
        let epoch = entry.epoch;
        if let Some(r) = self.recorder() {
            r.register(&plan);
        }
        if let Some(old) = monitors.insert(key.clone(), entry)
            && old.plan.heartbeat_path != plan.heartbeat_path
            && let Some(path) = &old.plan.heartbeat_path
        {
            lock(&self.inner.heartbeats).remove(path);
        }
        drop(monitors);
        if let Some(path) = &plan.heartbeat_path {
            lock(&self.inner.heartbeats).insert(path.clone(), key.clone());
        }
        if let Some(after) = first {
            let mut waiting = lock(&self.inner.before_start);
            match waiting.as_mut() {
                Some(waiting) => waiting.push((after, key, epoch)),
                None => {
                    drop(waiting);
                    self.schedule(Instant::now() + after, key, epoch, false);
                }
            }
        }
    }

    /// The runtime of a Monitor new to this process: its state from before a restart, so an
    /// outage announced by the previous process is still announced when it ends.
    fn recovered(&self, plan: &Plan) -> Runtime {
        let mut runtime = Runtime::default();
        let Some((state, since)) = self.recorder().and_then(|r| r.recovered(&plan.key)) else {
            return runtime;
        };
        let m = &mut runtime.machine;
        m.last_change = Some(since);
        match state {
            State::Down => {
                m.state = State::Down;
                m.underlying = State::Down;
                m.failures = plan.settings.failure_threshold;
                m.down_since = Some(since);
                m.failing_since = Some(since);
                m.announced_down = true;
                m.last_alert = Some(Timestamp::now());
            }
            State::Up => {
                m.state = State::Up;
                m.underlying = State::Up;
            }
            State::Pending | State::Maintenance => {}
        }
        tracing::info!(monitor = %plan.key, %state, %since, "state recovered");
        runtime
    }

    /// Restores a Monitor's state machine (recovered after a restart) before its first check.
    pub fn restore(&self, key: &Key, machine: Machine) {
        if let Some(entry) = lock(&self.inner.monitors).get(key) {
            lock(&entry.runtime).machine = machine;
        }
    }

    /// Stops checking a Monitor and forgets it.
    pub fn remove(&self, key: &Key) {
        let Some(entry) = lock(&self.inner.monitors).remove(key) else {
            return;
        };
        if let Some(path) = &entry.plan.heartbeat_path {
            lock(&self.inner.heartbeats).remove(path);
        }
        if let Some(m) = &self.inner.metrics {
            m.remove(&entry.series);
        }
        if let Some(r) = self.recorder() {
            r.forget(key);
        }
    }

    /// Records a heartbeat call at `path`; `false` when no Monitor listens there. A Monitor
    /// that is not UP is checked at once, so a recovery does not wait for the interval.
    pub fn beat(&self, path: &str) -> bool {
        let Some(key) = lock(&self.inner.heartbeats).get(path).cloned() else {
            return false;
        };
        let Some(entry) = lock(&self.inner.monitors).get(&key).cloned() else {
            return false;
        };
        let up = {
            let mut rt = lock(&entry.runtime);
            rt.last_beat = Some(std::time::Instant::now());
            rt.machine.state == State::Up
        };
        if !up {
            self.schedule(Instant::now(), key, entry.epoch, true);
        }
        true
    }

    /// The state of one Monitor.
    pub fn snapshot(&self, key: &Key) -> Option<Snapshot> {
        let entry = lock(&self.inner.monitors).get(key).cloned()?;
        let recorder = self.recorder();
        let rt = lock(&entry.runtime);
        Some(snapshot(
            &entry.plan,
            &rt,
            Timestamp::now(),
            recorder.as_deref(),
        ))
    }

    /// The state of every Monitor, sorted by key.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let entries: Vec<Entry> = lock(&self.inner.monitors).values().cloned().collect();
        let now = Timestamp::now();
        let recorder = self.recorder();
        let mut all: Vec<Snapshot> = entries
            .iter()
            .map(|e| snapshot(&e.plan, &lock(&e.runtime), now, recorder.as_deref()))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Monitors scheduled.
    pub fn len(&self) -> usize {
        lock(&self.inner.monitors).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks started since the process began.
    pub fn checks(&self) -> u64 {
        self.inner.checks.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0..1) of how late checks started, and how many were measured.
    pub fn jitter(&self, q: f64) -> (Duration, u64) {
        let counts: Vec<u64> = self
            .inner
            .jitter
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return (Duration::ZERO, 0);
        }
        let target = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                let ms = if i < 1000 {
                    i as u64
                } else {
                    1000 + (i as u64 - 1000) * 100
                };
                return (Duration::from_millis(ms), total);
            }
        }
        (Duration::from_secs(100), total)
    }

    /// Forgets the lateness measured so far (the benchmark's warm-up).
    pub fn reset_jitter(&self) {
        for c in &self.inner.jitter {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn schedule(&self, at: Instant, key: Key, epoch: u64, oneshot: bool) {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let mut queue = lock(&self.inner.queue);
        let earliest = queue.peek().is_none_or(|Reverse(d)| at < d.at);
        queue.push(Reverse(Due {
            at,
            seq,
            key,
            epoch,
            oneshot,
        }));
        drop(queue);
        if earliest {
            self.inner.wake.notify_one();
        }
    }

    /// Runs the scheduler until `shutdown`. Alerts a previous process recorded without sending
    /// them (killed in between, or a leader replaced) are sent first.
    pub async fn run(&self, shutdown: CancellationToken) {
        if let Some(recorder) = self.recorder() {
            let pending = recorder.pending_alerts();
            if !pending.is_empty() {
                tracing::info!(
                    alerts = pending.len(),
                    "sending the alerts a previous process recorded but did not send"
                );
            }
            for (id, queued) in pending {
                let r = recorder.clone();
                self.inner.notifier.send_queued(
                    queued,
                    None,
                    Some(Box::new(move || r.alert_sent(&id))),
                );
            }
        }
        let waiting = lock(&self.inner.before_start).take().unwrap_or_default();
        let start = Instant::now();
        for (after, key, epoch) in waiting {
            self.schedule(start + after, key, epoch, false);
        }
        loop {
            let next = lock(&self.inner.queue).peek().map(|Reverse(d)| d.at);
            let now = Instant::now();
            match next {
                Some(at) if at <= now => {
                    let mut due = Vec::new();
                    {
                        let mut queue = lock(&self.inner.queue);
                        while queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
                            if let Some(Reverse(d)) = queue.pop() {
                                due.push(d);
                            }
                        }
                    }
                    for d in due {
                        let this = self.clone();
                        tokio::spawn(async move { this.execute(d).await });
                    }
                }
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.inner.wake.notified() => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                None => {
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn execute(&self, due: Due) {
        let Ok(_permit) = self.inner.limit.clone().acquire_owned().await else {
            return;
        };
        let Some(entry) = lock(&self.inner.monitors).get(&due.key).cloned() else {
            return;
        };
        if entry.epoch != due.epoch {
            return;
        }
        let late = Instant::now().saturating_duration_since(due.at);
        if !due.oneshot {
            self.record_jitter(late);
        }
        self.inner.checks.fetch_add(1, Ordering::Relaxed);
        let plan = entry.plan.clone();
        let last_beat = lock(&entry.runtime).last_beat;
        let result = check::run(&plan, last_beat).await;
        // The Monitor may have changed or gone while the check ran: its result is then stale.
        let current = lock(&self.inner.monitors)
            .get(&due.key)
            .is_some_and(|e| e.epoch == due.epoch && Arc::ptr_eq(&e.runtime, &entry.runtime));
        if !current {
            return;
        }
        let step = self.apply(&plan, &entry, &result);
        if !due.oneshot {
            let wait = if step.retry_soon && result.connection_error {
                plan.retry_interval.min(plan.interval)
            } else {
                plan.interval
            };
            let mut next = due.at + wait;
            let now = Instant::now();
            if next < now {
                // Overran (a slow check or an overloaded process): skip, never burst.
                next =
                    now + Duration::from_millis(spread(&due.key, wait.min(Duration::from_secs(1))));
            }
            self.schedule(next, due.key, due.epoch, false);
        }
    }

    fn apply(&self, plan: &Plan, entry: &Entry, result: &CheckResult) -> Step {
        let now = Timestamp::now();
        let maintenance = plan.in_maintenance(now);
        let outcome = Outcome {
            success: result.success,
            response_time: result.response_time,
            message: result.message.clone(),
        };
        let recorder = self.recorder();
        let step = {
            let mut rt = lock(&entry.runtime);
            let step = rt
                .machine
                .observe(&plan.settings, &outcome, maintenance, now);
            if recorder.is_none() {
                rt.history.record(now, result.success, result.response_time);
            }
            rt.last = Some(LastCheck {
                time: now,
                success: result.success,
                response_ms: u64::try_from(result.response_time.as_millis()).unwrap_or(u64::MAX),
                message: result.message.clone(),
            });
            step
        };
        let queued = step
            .alert
            .as_ref()
            .and_then(|alert| Queued::new(plan, alert, now));
        // Recorded before the snapshot, so its figures count this result; the alert with it.
        let alert_id = recorder
            .as_ref()
            .and_then(|r| r.record(plan, now, step.to, result, queued.as_ref()));
        let snap = snapshot(plan, &lock(&entry.runtime), now, recorder.as_deref());
        if let Some(m) = &self.inner.metrics {
            m.observe_check(
                &entry.series,
                result.success,
                result.response_time,
                result.certificate_seconds.map(|s| s as f64),
            );
            m.set_up(
                &entry.series,
                match step.to {
                    State::Up => Some(true),
                    State::Down => Some(false),
                    State::Pending | State::Maintenance => None,
                },
            );
        }
        if let Some(queued) = queued {
            // Stored first, with the alert in the outbox: a leader killed after this leaves its
            // successor the state it announced and the alert if unsent, so the successor
            // neither repeats it nor misses it (nor the recovery).
            let stored = recorder.as_ref().map(|r| r.persisted());
            let done = match (&recorder, alert_id) {
                (Some(r), Some(id)) => {
                    let r = r.clone();
                    Some(Box::new(move || r.alert_sent(&id)) as crate::alert::Done)
                }
                _ => None,
            };
            self.inner.notifier.send_queued(queued, stored, done);
        }
        self.inner.sink.report(Report {
            snapshot: snap,
            step: step.clone(),
        });
        step
    }

    fn record_jitter(&self, late: Duration) {
        let ms = late.as_millis() as usize;
        let i = if ms < 1000 {
            ms
        } else {
            (1000 + (ms - 1000) / 100).min(JITTER_BUCKETS - 1)
        };
        self.inner.jitter[i].fetch_add(1, Ordering::Relaxed);
    }
}

fn snapshot(
    plan: &Plan,
    rt: &Runtime,
    now: Timestamp,
    recorder: Option<&dyn Recorder>,
) -> Snapshot {
    let figures = match recorder {
        Some(r) => r.figures(&plan.key).unwrap_or_default(),
        None => Figures {
            uptime: rt.history.uptime(now),
            response_times: rt.history.percentiles(),
        },
    };
    let uptime = figures.uptime;
    Snapshot {
        key: plan.key.clone(),
        display_name: plan.display_name.clone(),
        group: plan.group.clone(),
        type_: plan.type_.as_str(),
        endpoint: if plan.heartbeat_path.is_some() {
            String::new()
        } else {
            plan.endpoint.clone()
        },
        generation: plan.generation,
        state: rt.machine.state,
        last_change: rt.machine.last_change,
        last: rt.last.clone(),
        uptime,
        uptime_24h: uptime.day,
        uptime_7d: uptime.week,
        uptime_30d: uptime.month,
        response_times: figures.response_times,
        heartbeat_path: plan.heartbeat_path.clone(),
    }
}

/// A stable offset in `0..within` (milliseconds) for `key`.
fn spread(key: &Key, within: Duration) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let ms = within.as_millis().max(1) as u64;
    h.finish() % ms
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

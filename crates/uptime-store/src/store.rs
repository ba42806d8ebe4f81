//! The history store: SQLite (an embedded file, the default) or Postgres (what replicas share),
//! through sqlx, with the same schema on both (`migrations/<backend>/`).
//!
//! Writes never wait for the database: [`Store::record`] updates the in-memory state (last
//! state per monitor, open incidents) and queues the sample; a background task writes the queue
//! in batches, one transaction each: the samples (`ON CONFLICT DO NOTHING`, so a retried batch
//! adds nothing twice), the per-hour and per-day aggregates of exactly the samples that were new
//! (`RETURNING`), the monitors' last states and incident changes. While the database is away the
//! queue holds up to [`StoreConfig::buffer_capacity`] samples, dropping the oldest (counted in
//! [`Health::dropped`]), and [`Store::health`] says what failed.
//!
//! Alerts go through an outbox: [`Store::record_alerting`] queues the alert with the result that
//! raised it, so the state change and the alert are committed in the same transaction;
//! [`Store::alert_sent`] deletes it once sent. Alerts a killed process left behind are loaded
//! when the store opens ([`Store::take_pending_alerts`]) and sent by the next checker. At the
//! end, [`Store::close_within`] keeps trying to write what is queued for a bounded time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use tokio::sync::Notify;

use crate::model::{
    Aggregate, AlertId, BUCKETS, DAY_MS, DayBar, HOUR_MS, Incident, LastState, Millis, MonitorInfo,
    MonitorKey, ResponsePoint, Sample, State, Summary, now_ms,
};
use crate::window::{self, Windows};

/// Recent incidents kept in memory (open ones are always kept as well).
pub const RECENT_INCIDENTS: usize = 50;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported database URL {0:?}: use postgres://… (or postgresql://…), or no URL for SQLite under the storage path"
    )]
    UnsupportedUrl(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("creating the storage directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the {backend} database schema: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("{backend} database: {source}")]
    Database {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{lost} results not written to the history within {bound:?} of stopping: {error}")]
    NotWritten {
        lost: usize,
        bound: Duration,
        error: String,
    },
    #[error("the database holds state code {0}, which this version does not know")]
    UnknownState(i16),
}

/// Where the history lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

/// The SQLite file's name under `--storage-path`.
pub const SQLITE_FILE: &str = "uptime.sqlite";

impl Location {
    /// From the command line: `--database-url` when given (Postgres), else an SQLite file under
    /// `--storage-path`.
    pub fn from_flags(storage_path: &Path, database_url: Option<&str>) -> Result<Self, Error> {
        match database_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(Location::Sqlite(storage_path.join(SQLITE_FILE))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.to_string()))
            }
            Some(url) if url.starts_with("sqlite://") => Ok(Location::Sqlite(PathBuf::from(
                url.trim_start_matches("sqlite://"),
            ))),
            Some(url) => Err(Error::UnsupportedUrl(redact(url))),
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            Location::Sqlite(_) => "sqlite",
            Location::Postgres(_) => "postgres",
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// How the store keeps and writes history.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub location: Location,
    /// Raw samples older than this are deleted (default 7 days).
    pub raw_retention: Duration,
    /// Hourly and daily aggregates and closed incidents older than this are deleted (1 year).
    pub aggregate_retention: Duration,
    /// Samples held in memory while the database is unreachable; beyond it the oldest are
    /// dropped (default 200 000: 10 minutes of 10 000 monitors at 30 s).
    pub buffer_capacity: usize,
    /// How often queued samples are written (default 1 s).
    pub flush_interval: Duration,
    /// How often the retention job runs (default 1 hour).
    pub retention_interval: Duration,
}

impl StoreConfig {
    pub fn new(location: Location) -> Self {
        Self {
            location,
            raw_retention: Duration::from_secs(7 * 24 * 3600),
            aggregate_retention: Duration::from_secs(365 * 24 * 3600),
            buffer_capacity: 200_000,
            flush_interval: Duration::from_secs(1),
            retention_interval: Duration::from_secs(3600),
        }
    }
}

/// Whether history reaches the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// False while writes fail.
    pub available: bool,
    /// The last write error while unavailable.
    pub error: Option<String>,
    /// Since when writes fail.
    pub since: Option<Millis>,
    /// Samples waiting in memory.
    pub buffered: usize,
    /// Samples dropped (oldest first) because the buffer was full, since start.
    pub dropped: u64,
}

/// What [`Store::run_retention`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub samples: u64,
    pub hourly: u64,
    pub daily: u64,
    pub incidents: u64,
}

/// What the status page shows, read from memory ([`Store::page`]).
#[derive(Debug, Clone)]
pub struct Page {
    pub now: Millis,
    pub health: Health,
    /// Sorted by key.
    pub monitors: Vec<PageMonitor>,
    /// Recent incidents (open ones included), newest first.
    pub incidents: Vec<Incident>,
}

/// One monitor on the status page.
#[derive(Debug, Clone)]
pub struct PageMonitor {
    pub info: MonitorInfo,
    pub state: Option<LastState>,
    pub summary: Summary,
    pub bars: Vec<DayBar>,
    /// Hourly mean and p95 over the last 24 hours.
    pub response: Vec<ResponsePoint>,
}

/// The database pool of either backend.
#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the pool of whichever backend is open: the SQL is the same on
/// both (standard `ON CONFLICT`, `RETURNING`, `CAST`), only the types differ.
macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

/// Rows per multi-row statement: under SQLite's 32 766 and Postgres's 65 535 bound parameters.
/// These statements are not kept prepared (`persistent(false)`): their text differs with every
/// row count, so sqlx's per-connection cache (100 statements) would fill with compiled
/// multi-row statements of every size, each as large as its hundreds of bound values.
const CHUNK: usize = 500;
/// Samples per write transaction.
const MAX_BATCH: usize = 20_000;

/// A change to an incident, queued with the samples.
#[derive(Debug, Clone)]
enum IncidentOp {
    Open(Incident),
    Close {
        key: MonitorKey,
        started_at: Millis,
        ended_at: Millis,
    },
}

/// A change to the alert outbox, queued with the samples and written in order.
#[derive(Debug, Clone)]
enum OutboxOp {
    Add { id: AlertId, payload: String },
    Done(AlertId),
}

impl OutboxOp {
    fn key(&self) -> &MonitorKey {
        match self {
            OutboxOp::Add { id, .. } | OutboxOp::Done(id) => &id.key,
        }
    }
}

impl IncidentOp {
    fn key(&self) -> &MonitorKey {
        match self {
            IncidentOp::Open(incident) => &incident.key,
            IncidentOp::Close { key, .. } => key,
        }
    }
}

#[derive(Debug, Default)]
struct Mem {
    buffer: VecDeque<Sample>,
    infos: HashMap<MonitorKey, MonitorInfo>,
    dirty_infos: HashSet<MonitorKey>,
    ids: HashMap<MonitorKey, i64>,
    states: HashMap<MonitorKey, LastState>,
    dirty_states: HashSet<MonitorKey>,
    open: HashMap<MonitorKey, Incident>,
    incident_ops: VecDeque<IncidentOp>,
    outbox_ops: VecDeque<OutboxOp>,
    /// Alerts found in the outbox when the store opened (left by a previous process).
    pending_alerts: Vec<(AlertId, String)>,
    failing_since: Option<Millis>,
    last_error: Option<String>,
    /// Samples taken by the writer and not yet committed.
    in_flight: usize,
    /// Each monitor's recent aggregates, updated with every sample (what status shows).
    windows: HashMap<MonitorKey, Windows>,
    /// The most recent incidents, newest first.
    recent: VecDeque<Incident>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    config: StoreConfig,
    mem: Mutex<Mem>,
    /// One writer at a time (the background task or an explicit [`Store::flush`]).
    writer: tokio::sync::Mutex<()>,
    /// Outside `Inner` so the background tasks can wait on it without keeping the store alive.
    wake: Arc<Notify>,
    dropped: AtomicU64,
    /// Bumped after every write that changed something; the status page's cache key.
    generation: AtomicU64,
}

/// The uptime history. Cheap to clone; the background writer and retention tasks stop when the
/// last clone is dropped (call [`Store::close`] to write what is queued first).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The schema, embedded: sqlx's `migrate!` needs its macros, which this crate does not build.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_core_box::BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        (*description).into(),
                        MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// sqlx's `BoxFuture` without depending on `futures-core` for one type.
mod futures_core_box {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "outbox",
        include_str!("../migrations/sqlite/0002_outbox.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "fillfactor",
        include_str!("../migrations/postgres/0002_fillfactor.sql"),
    ),
    (
        3,
        "outbox",
        include_str!("../migrations/postgres/0003_outbox.sql"),
    ),
];

impl Store {
    /// Connects (creating the SQLite file and its directory if needed), migrates the schema,
    /// loads the last states and open incidents, and starts the writer and retention tasks.
    /// Needs a Tokio runtime. Fails if the database cannot be reached now.
    pub async fn open(config: StoreConfig) -> Result<Store, Error> {
        let backend = config.location.backend();
        let db = match &config.location {
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    // WAL: readers (the status page) never block the writer; NORMAL is
                    // durable across process crashes, which is what matters here.
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(|source| Error::Connect { backend, source })?;
                Db::Sqlite(pool)
            }
            Location::Postgres(url) => {
                let options = PgConnectOptions::from_str(url).map_err(Error::InvalidUrl)?;
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    // Fail fast while the server is away: the writer retries, the page says so.
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await
                    .map_err(|source| Error::Connect { backend, source })?;
                Db::Postgres(pool)
            }
        };
        let migrations = match db {
            Db::Sqlite(_) => SQLITE_MIGRATIONS,
            Db::Postgres(_) => POSTGRES_MIGRATIONS,
        };
        let migrator = Migrator::new(Embedded(migrations))
            .await
            .map_err(|source| Error::Migrate { backend, source })?;
        on_db!(&db, p => migrator.run(p).await)
            .map_err(|source| Error::Migrate { backend, source })?;

        let mem = load(&db, backend).await?;
        let inner = Arc::new(Inner {
            db,
            config,
            mem: Mutex::new(mem),
            writer: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
            dropped: AtomicU64::new(0),
            generation: AtomicU64::new(1),
        });
        tokio::spawn(writer_task(Arc::downgrade(&inner), inner.wake.clone()));
        tokio::spawn(retention_task(
            Arc::downgrade(&inner),
            inner.config.retention_interval,
        ));
        Ok(Store { inner })
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        self.inner
            .mem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn backend(&self) -> &'static str {
        self.inner.config.location.backend()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Sets what the status page shows about a monitor (written with the next batch).
    pub fn upsert_monitor(&self, info: MonitorInfo) {
        let mut mem = self.mem();
        if mem.infos.get(&info.key) != Some(&info) {
            mem.dirty_infos.insert(info.key.clone());
            mem.infos.insert(info.key.clone(), info);
        }
    }

    /// Every monitor known (from the database at start, and upserted or sampled since).
    pub fn monitors(&self) -> Vec<MonitorInfo> {
        let mut all: Vec<MonitorInfo> = self.mem().infos.values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Queues one check result. Never waits for the database: the last state and incidents are
    /// updated in memory at once (a DOWN after anything else opens an incident whose cause is
    /// the sample's message; UP closes it).
    pub fn record(&self, sample: Sample) {
        self.record_many(std::iter::once(sample));
    }

    /// [`Store::record`] for many samples under one lock.
    pub fn record_many(&self, samples: impl IntoIterator<Item = Sample>) {
        let mut dropped = 0;
        let wake = {
            let mut mem = self.mem();
            for sample in samples {
                dropped += self.push_locked(&mut mem, sample);
            }
            mem.buffer.len() >= MAX_BATCH / 2
        };
        self.recorded(dropped, wake);
    }

    /// Tracks and queues one sample; returns how many old ones the bound dropped.
    fn push_locked(&self, mem: &mut Mem, sample: Sample) -> u64 {
        let capacity = self.inner.config.buffer_capacity.max(1);
        let mut dropped = 0;
        mem.track(&sample);
        if mem.buffer.len() >= capacity {
            mem.buffer.pop_front();
            dropped += 1;
        }
        mem.buffer.push_back(sample);
        dropped
    }

    fn recorded(&self, dropped: u64, wake: bool) {
        // The windows changed: the status page's cache is stale.
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        if dropped > 0 {
            self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                "uptime history buffer full: dropped the oldest samples"
            );
        }
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// [`Store::record`] for a result that raised an alert: the alert (`payload`, opaque to the
    /// store) goes into the outbox in the same transaction as the result's state change, and
    /// stays there until [`Store::alert_sent`].
    pub fn record_alerting(&self, sample: Sample, payload: String) -> AlertId {
        let id = AlertId {
            key: sample.key.clone(),
            at: sample.at,
        };
        let (dropped, wake) = {
            // Under the lock of the sample's state change, so no batch takes one without the
            // other.
            let mut mem = self.mem();
            mem.outbox_ops.push_back(OutboxOp::Add {
                id: id.clone(),
                payload,
            });
            let dropped = self.push_locked(&mut mem, sample);
            (dropped, mem.buffer.len() >= MAX_BATCH / 2)
        };
        self.recorded(dropped, wake);
        id
    }

    /// The alert was sent (or will never be: its Provider refused it for good): removed from
    /// the outbox, at once if it was not written yet, else with a prompt write.
    pub fn alert_sent(&self, id: &AlertId) {
        let mut mem = self.mem();
        let queued = mem
            .outbox_ops
            .iter()
            .position(|op| matches!(op, OutboxOp::Add { id: queued, .. } if queued == id));
        if let Some(i) = queued {
            mem.outbox_ops.remove(i);
            return;
        }
        mem.outbox_ops.push_back(OutboxOp::Done(id.clone()));
        drop(mem);
        // A prompt delete keeps the window in which a killed process repeats the alert short.
        self.inner.wake.notify_one();
    }

    /// Alerts left in the outbox by a process that stopped before sending them, oldest first;
    /// each is returned once (the caller sends them, then calls [`Store::alert_sent`]).
    pub fn take_pending_alerts(&self) -> Vec<(AlertId, String)> {
        std::mem::take(&mut self.mem().pending_alerts)
    }

    /// The last state of every monitor, from memory (loaded from the database at start): a
    /// restarted checker resumes from these, mid-outage included.
    pub fn last_states(&self) -> Vec<LastState> {
        let mut all: Vec<LastState> = self.mem().states.values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// The last state of one monitor.
    pub fn last_state(&self, key: &MonitorKey) -> Option<LastState> {
        self.mem().states.get(key).cloned()
    }

    /// Incidents still open (monitors DOWN), from memory.
    pub fn open_incidents(&self) -> Vec<Incident> {
        let mut all: Vec<Incident> = self.mem().open.values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Uptime and response-time percentiles of one monitor from its in-memory windows (loaded
    /// from the aggregates at start and updated with every result): what the Monitor status, the
    /// status page and its JSON API all show. `None` before its first result.
    pub fn figures(&self, key: &MonitorKey) -> Option<Summary> {
        let now = now_ms();
        self.mem().windows.get(key).map(|w| w.summary(now))
    }

    /// Everything the status page shows, from memory under one lock: no database read.
    pub fn page(&self, bar_days: i64) -> Page {
        let now = now_ms();
        let mem = self.mem();
        let mut monitors: Vec<PageMonitor> = mem
            .infos
            .values()
            .map(|info| {
                let w = mem.windows.get(&info.key);
                PageMonitor {
                    info: info.clone(),
                    state: mem.states.get(&info.key).cloned(),
                    summary: w.map(|w| w.summary(now)).unwrap_or_default(),
                    bars: w.map_or_else(
                        || Windows::default().bars(now, bar_days),
                        |w| w.bars(now, bar_days),
                    ),
                    response: w.map(|w| w.response(now)).unwrap_or_default(),
                }
            })
            .collect();
        let mut incidents: Vec<Incident> = mem.recent.iter().cloned().collect();
        for open in mem.open.values() {
            if !incidents
                .iter()
                .any(|i| i.key == open.key && i.started_at == open.started_at)
            {
                incidents.push(open.clone());
            }
        }
        drop(mem);
        monitors.sort_by(|a, b| a.info.key.cmp(&b.info.key));
        incidents.sort_by_key(|i| std::cmp::Reverse(i.started_at));
        Page {
            now,
            health: self.health(),
            monitors,
            incidents,
        }
    }

    /// Whether history reaches the database.
    pub fn health(&self) -> Health {
        let mem = self.mem();
        Health {
            backend: self.backend(),
            available: mem.failing_since.is_none(),
            error: mem.last_error.clone(),
            since: mem.failing_since,
            buffered: mem.buffer.len() + mem.in_flight,
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }

    /// Changes whenever a result arrived, a write changed the database or the health changed.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// Writes everything queued now. On failure what was taken goes back to the queue (within
    /// its bound) and the error is returned; the background writer keeps retrying.
    pub async fn flush(&self) -> Result<(), Error> {
        let _writer = self.inner.writer.lock().await;
        loop {
            let batch = self.mem().take_batch();
            if batch.is_empty() {
                return Ok(());
            }
            match write_batch(&self.inner.db, &batch).await {
                Ok(ids) => {
                    let mut mem = self.mem();
                    mem.in_flight = 0;
                    mem.ids.extend(ids);
                    if mem.failing_since.take().is_some() {
                        tracing::info!(
                            backend = self.backend(),
                            "uptime history database reachable again"
                        );
                    }
                    mem.last_error = None;
                    drop(mem);
                    self.inner.generation.fetch_add(1, Ordering::Relaxed);
                }
                Err(source) => {
                    let error = Error::Database {
                        backend: self.backend(),
                        source,
                    };
                    let capacity = self.inner.config.buffer_capacity.max(1);
                    let mut mem = self.mem();
                    mem.in_flight = 0;
                    let dropped = mem.put_back(batch, capacity);
                    if mem.failing_since.is_none() {
                        mem.failing_since = Some(now_ms());
                        tracing::warn!(%error, "uptime history not written; buffering in memory");
                    }
                    mem.last_error = Some(error.to_string());
                    drop(mem);
                    self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
                    self.inner.generation.fetch_add(1, Ordering::Relaxed);
                    return Err(error);
                }
            }
        }
    }

    /// Writes what is queued, then re-reads monitors, last states and open incidents from the
    /// database: what a replica does when it becomes the leader, since the previous leader
    /// wrote them.
    pub async fn reload(&self) -> Result<(), Error> {
        self.flush().await?;
        let _writer = self.inner.writer.lock().await;
        let fresh = load(&self.inner.db, self.backend()).await?;
        let mut mem = self.mem();
        mem.infos = fresh.infos;
        mem.ids = fresh.ids;
        mem.states = fresh.states;
        mem.open = fresh.open;
        mem.recent = fresh.recent;
        mem.windows = fresh.windows;
        // What the previous leader did not send; this one sends it.
        mem.pending_alerts = fresh.pending_alerts;
        // Results queued since the flush are not in the database yet: count them again.
        let queued: Vec<(MonitorKey, Millis, State, Option<i32>)> = mem
            .buffer
            .iter()
            .map(|s| (s.key.clone(), s.at, s.state, s.response_us))
            .collect();
        for (key, at, state, rt) in queued {
            mem.windows.entry(key).or_default().add(at, state, rt);
        }
        drop(mem);
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes what is queued and stops the background tasks' work (they end with the last clone).
    pub async fn close(self) -> Result<(), Error> {
        let result = self.flush().await;
        on_db!(&self.inner.db, p => p.close().await);
        result
    }

    /// [`Store::close`] at the end of a process: while the database is away (results were
    /// waiting in memory, or it went away just now) the write is retried until it succeeds or
    /// `bound` has passed; what is still queued then is lost, and the error says how much.
    pub async fn close_within(self, bound: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut wait = Duration::from_millis(100);
        let mut last = None;
        let written = tokio::time::timeout_at(deadline, async {
            loop {
                match self.flush().await {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::warn!(%err, "writing the uptime history before exiting; retrying");
                        last = Some(err.to_string());
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        })
        .await;
        let lost = self.health().buffered;
        on_db!(&self.inner.db, p => p.close().await);
        match written {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::NotWritten {
                lost,
                bound,
                error: last.unwrap_or_else(|| "the database did not answer".into()),
            }),
        }
    }

    fn db_error(&self, source: sqlx::Error) -> Error {
        Error::Database {
            backend: self.backend(),
            source,
        }
    }

    /// Uptime and response-time percentiles of every monitor with history, read from the
    /// database's aggregates (three grouped queries, no raw scan). What status shows comes from
    /// memory instead ([`Store::figures`]); this is the same figures from the tables.
    pub async fn summaries(&self) -> Result<HashMap<MonitorKey, Summary>, Error> {
        self.summaries_at(now_ms(), None).await
    }

    /// The [`Summary`] of one monitor.
    pub async fn summary(&self, key: &MonitorKey) -> Result<Summary, Error> {
        let Some(id) = self.id_of(key) else {
            return Ok(Summary::default());
        };
        let mut all = self.summaries_at(now_ms(), Some(id)).await?;
        Ok(all.remove(key).unwrap_or_default())
    }

    async fn summaries_at(
        &self,
        now: Millis,
        only: Option<i64>,
    ) -> Result<HashMap<MonitorKey, Summary>, Error> {
        let hour = now - now.rem_euclid(HOUR_MS);
        let day = now - now.rem_euclid(DAY_MS);
        let db = &self.inner.db;
        let h24 = window(db, "hourly", hour - 23 * HOUR_MS, only)
            .await
            .map_err(|e| self.db_error(e))?;
        let d7 = window(db, "daily", day - 6 * DAY_MS, only)
            .await
            .map_err(|e| self.db_error(e))?;
        let d30 = window(db, "daily", day - 29 * DAY_MS, only)
            .await
            .map_err(|e| self.db_error(e))?;
        let keys = self.keys_by_id();
        let mut out: HashMap<MonitorKey, Summary> = HashMap::new();
        for (id, agg) in &d30 {
            let Some(key) = keys.get(id) else { continue };
            let day = h24.get(id);
            out.insert(
                key.clone(),
                Summary {
                    uptime_24h: day.and_then(Aggregate::uptime),
                    uptime_7d: d7.get(id).and_then(Aggregate::uptime),
                    uptime_30d: agg.uptime(),
                    p50_ms: day.and_then(|a| a.percentile_ms(0.5)),
                    p95_ms: day.and_then(|a| a.percentile_ms(0.95)),
                    p99_ms: day.and_then(|a| a.percentile_ms(0.99)),
                },
            );
        }
        Ok(out)
    }

    fn id_of(&self, key: &MonitorKey) -> Option<i64> {
        self.mem().ids.get(key).copied()
    }

    fn keys_by_id(&self) -> HashMap<i64, MonitorKey> {
        self.mem()
            .ids
            .iter()
            .map(|(k, id)| (*id, k.clone()))
            .collect()
    }

    /// One bar per UTC day for the last `days` days (oldest first; days without samples have
    /// `total == 0`), for every monitor with history.
    pub async fn daily_bars(&self, days: i64) -> Result<HashMap<MonitorKey, Vec<DayBar>>, Error> {
        self.daily_bars_at(now_ms(), days, None).await
    }

    /// [`Store::daily_bars`] of one monitor.
    pub async fn daily_bars_of(&self, key: &MonitorKey, days: i64) -> Result<Vec<DayBar>, Error> {
        let Some(id) = self.id_of(key) else {
            return Ok(empty_bars(now_ms(), days));
        };
        let mut all = self.daily_bars_at(now_ms(), days, Some(id)).await?;
        Ok(all
            .remove(key)
            .unwrap_or_else(|| empty_bars(now_ms(), days)))
    }

    async fn daily_bars_at(
        &self,
        now: Millis,
        days: i64,
        only: Option<i64>,
    ) -> Result<HashMap<MonitorKey, Vec<DayBar>>, Error> {
        let days = days.clamp(1, 400);
        let first = now - now.rem_euclid(DAY_MS) - (days - 1) * DAY_MS;
        let sql = format!(
            "SELECT monitor_id, bucket, up, down, pending, maintenance FROM daily WHERE bucket >= $1{}",
            if only.is_some() {
                " AND monitor_id = $2"
            } else {
                ""
            }
        );
        let rows: Vec<(i64, i64, Aggregate)> = on_db!(&self.inner.db, p => {
            let mut q = sqlx::query(&sql).bind(first);
            if let Some(id) = only {
                q = q.bind(id);
            }
            let rows = q.fetch_all(p).await.map_err(|e| self.db_error(e))?;
            rows.iter().map(|r| -> Result<_, sqlx::Error> {
                let agg = Aggregate {
                    up: r.try_get(2)?, down: r.try_get(3)?,
                    pending: r.try_get(4)?, maintenance: r.try_get(5)?,
                    ..Aggregate::default()
                };
                Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?, agg))
            }).collect::<Result<Vec<_>, _>>().map_err(|e| self.db_error(e))?
        });
        let keys = self.keys_by_id();
        let mut out: HashMap<MonitorKey, Vec<DayBar>> = HashMap::new();
        for (id, bucket, agg) in rows {
            let Some(key) = keys.get(&id) else { continue };
            let bars = out
                .entry(key.clone())
                .or_insert_with(|| empty_bars(now, days));
            let index = (bucket - first) / DAY_MS;
            if let Some(bar) = usize::try_from(index).ok().and_then(|i| bars.get_mut(i)) {
                bar.uptime = agg.uptime();
                bar.down = agg.down;
                bar.total = agg.total();
            }
        }
        Ok(out)
    }

    /// Hourly response times (mean and p95 of each hour) since `since`, for every monitor.
    pub async fn hourly_response_times(
        &self,
        since: Millis,
    ) -> Result<HashMap<MonitorKey, Vec<ResponsePoint>>, Error> {
        self.hourly_response_times_of(since, None).await
    }

    async fn hourly_response_times_of(
        &self,
        since: Millis,
        only: Option<i64>,
    ) -> Result<HashMap<MonitorKey, Vec<ResponsePoint>>, Error> {
        let since = since - since.rem_euclid(HOUR_MS);
        let sql = format!(
            "SELECT monitor_id, bucket, rt_count, rt_sum_us, rt_max_us, {} FROM hourly \
             WHERE bucket >= $1 AND rt_count > 0{} ORDER BY monitor_id, bucket",
            histogram_columns(""),
            if only.is_some() {
                " AND monitor_id = $2"
            } else {
                ""
            }
        );
        let rows: Vec<(i64, i64, Aggregate)> = on_db!(&self.inner.db, p => {
            let mut q = sqlx::query(&sql).bind(since);
            if let Some(id) = only {
                q = q.bind(id);
            }
            let rows = q.fetch_all(p).await.map_err(|e| self.db_error(e))?;
            rows.iter().map(|r| -> Result<_, sqlx::Error> {
                let mut agg = Aggregate {
                    rt_count: r.try_get(2)?, rt_sum_us: r.try_get(3)?, rt_max_us: r.try_get(4)?,
                    ..Aggregate::default()
                };
                for (i, h) in agg.histogram.iter_mut().enumerate() {
                    *h = i64::from(r.try_get::<i32, _>(5 + i)?);
                }
                Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?, agg))
            }).collect::<Result<Vec<_>, _>>().map_err(|e| self.db_error(e))?
        });
        let keys = self.keys_by_id();
        let mut out: HashMap<MonitorKey, Vec<ResponsePoint>> = HashMap::new();
        for (id, bucket, agg) in rows {
            let Some(key) = keys.get(&id) else { continue };
            out.entry(key.clone()).or_default().push(ResponsePoint {
                at: bucket,
                ms: agg.mean_ms().unwrap_or_default(),
                p95_ms: agg.percentile_ms(0.95).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Raw response times of one monitor since `since` (within the raw retention), oldest first.
    pub async fn response_times(
        &self,
        key: &MonitorKey,
        since: Millis,
    ) -> Result<Vec<ResponsePoint>, Error> {
        let Some(id) = self.id_of(key) else {
            return Ok(Vec::new());
        };
        let sql = "SELECT at, response_us FROM samples WHERE monitor_id = $1 AND at >= $2 \
                   AND response_us IS NOT NULL ORDER BY at";
        on_db!(&self.inner.db, p => {
            let rows = sqlx::query(sql).bind(id).bind(since).fetch_all(p).await
                .map_err(|e| self.db_error(e))?;
            rows.iter().map(|r| -> Result<_, sqlx::Error> {
                let ms = f64::from(r.try_get::<i32, _>(1)?) / 1000.0;
                Ok(ResponsePoint { at: r.try_get(0)?, ms, p95_ms: ms })
            }).collect::<Result<Vec<_>, _>>().map_err(|e| self.db_error(e))
        })
    }

    /// The number of raw samples kept for one monitor (tests, benchmarks).
    pub async fn sample_count(&self, key: &MonitorKey) -> Result<i64, Error> {
        let Some(id) = self.id_of(key) else {
            return Ok(0);
        };
        on_db!(&self.inner.db, p => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM samples WHERE monitor_id = $1").bind(id).fetch_one(p).await)
        .map_err(|e| self.db_error(e))
    }

    /// The hourly aggregate of one monitor for the hour starting at `hour` (tests, benchmarks).
    pub async fn hourly(&self, key: &MonitorKey, hour: Millis) -> Result<Aggregate, Error> {
        let Some(id) = self.id_of(key) else {
            return Ok(Aggregate::default());
        };
        let hour = hour - hour.rem_euclid(HOUR_MS);
        let mut all = window(&self.inner.db, "hourly", hour, Some(id))
            .await
            .map_err(|e| self.db_error(e))?;
        // `window` is open-ended; subtract the hours after this one.
        let later = window(&self.inner.db, "hourly", hour + HOUR_MS, Some(id))
            .await
            .map_err(|e| self.db_error(e))?;
        let mut agg = all.remove(&id).unwrap_or_default();
        if let Some(later) = later.get(&id) {
            agg.up -= later.up;
            agg.down -= later.down;
            agg.pending -= later.pending;
            agg.maintenance -= later.maintenance;
            agg.ok -= later.ok;
            agg.rt_count -= later.rt_count;
            agg.rt_sum_us -= later.rt_sum_us;
            for (a, b) in agg.histogram.iter_mut().zip(later.histogram.iter()) {
                *a -= b;
            }
        }
        Ok(agg)
    }

    /// The most recent incidents of all monitors (open ones included), newest first.
    pub async fn recent_incidents(&self, limit: i64) -> Result<Vec<Incident>, Error> {
        self.incidents_of(None, limit).await
    }

    /// The most recent incidents of one monitor, newest first.
    pub async fn incidents(&self, key: &MonitorKey, limit: i64) -> Result<Vec<Incident>, Error> {
        let Some(id) = self.id_of(key) else {
            return Ok(Vec::new());
        };
        self.incidents_of(Some(id), limit).await
    }

    async fn incidents_of(&self, only: Option<i64>, limit: i64) -> Result<Vec<Incident>, Error> {
        let sql = format!(
            "SELECT monitor_id, started_at, ended_at, cause FROM incidents{} \
             ORDER BY started_at DESC LIMIT $1",
            if only.is_some() {
                " WHERE monitor_id = $2"
            } else {
                ""
            }
        );
        let rows: Vec<(i64, Millis, Option<Millis>, String)> = on_db!(&self.inner.db, p => {
            let mut q = sqlx::query(&sql).bind(limit.max(0));
            if let Some(id) = only {
                q = q.bind(id);
            }
            let rows = q.fetch_all(p).await.map_err(|e| self.db_error(e))?;
            rows.iter().map(|r| -> Result<_, sqlx::Error> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            }).collect::<Result<Vec<_>, _>>().map_err(|e| self.db_error(e))?
        });
        let keys = self.keys_by_id();
        Ok(rows
            .into_iter()
            .filter_map(|(id, started_at, ended_at, cause)| {
                Some(Incident {
                    key: keys.get(&id)?.clone(),
                    started_at,
                    ended_at,
                    cause,
                })
            })
            .collect())
    }

    /// Deletes a monitor and all its history (the Monitor was deleted).
    pub async fn remove_monitor(&self, key: &MonitorKey) -> Result<(), Error> {
        self.flush().await?;
        let id = {
            let mut mem = self.mem();
            mem.infos.remove(key);
            mem.states.remove(key);
            mem.open.remove(key);
            mem.windows.remove(key);
            mem.recent.retain(|i| &i.key != key);
            mem.ids.remove(key)
        };
        let Some(id) = id else { return Ok(()) };
        on_db!(&self.inner.db, p => {
            let mut tx = p.begin().await.map_err(|e| self.db_error(e))?;
            for table in ["samples", "hourly", "daily", "monitor_state", "incidents", "alert_outbox"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE monitor_id = $1"))
                    .bind(id).execute(&mut *tx).await.map_err(|e| self.db_error(e))?;
            }
            sqlx::query("DELETE FROM monitors WHERE id = $1").bind(id)
                .execute(&mut *tx).await.map_err(|e| self.db_error(e))?;
            tx.commit().await.map_err(|e| self.db_error(e))
        })?;
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies retention now: raw samples older than `raw_retention`, aggregates and closed
    /// incidents older than `aggregate_retention`. Freed space is reused by later writes
    /// (SQLite's free pages, Postgres's autovacuum), so the database stops growing.
    pub async fn run_retention(&self) -> Result<RetentionReport, Error> {
        self.run_retention_at(now_ms()).await
    }

    /// [`Store::run_retention`] as if the time were `now`.
    pub async fn run_retention_at(&self, now: Millis) -> Result<RetentionReport, Error> {
        let raw_cutoff = now - millis(self.inner.config.raw_retention);
        let agg_cutoff = now - millis(self.inner.config.aggregate_retention);
        let mut report = RetentionReport::default();
        on_db!(&self.inner.db, p => {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM monitors")
                .fetch_all(p).await.map_err(|e| self.db_error(e))?;
            // Per monitor, so each delete is a range on the primary key (no index on `at`
            // alone to maintain on every write).
            for id in ids {
                let done = sqlx::query("DELETE FROM samples WHERE monitor_id = $1 AND at < $2")
                    .bind(id).bind(raw_cutoff).execute(p).await.map_err(|e| self.db_error(e))?;
                report.samples += done.rows_affected();
            }
            report.hourly = sqlx::query("DELETE FROM hourly WHERE bucket < $1")
                .bind(agg_cutoff).execute(p).await.map_err(|e| self.db_error(e))?.rows_affected();
            report.daily = sqlx::query("DELETE FROM daily WHERE bucket < $1")
                .bind(agg_cutoff).execute(p).await.map_err(|e| self.db_error(e))?.rows_affected();
            report.incidents = sqlx::query(
                "DELETE FROM incidents WHERE ended_at IS NOT NULL AND ended_at < $1")
                .bind(agg_cutoff).execute(p).await.map_err(|e| self.db_error(e))?.rows_affected();
        });
        if report != RetentionReport::default() {
            self.inner.generation.fetch_add(1, Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Bytes per table (indexes included): SQLite's `dbstat`, Postgres's
    /// `pg_total_relation_size`. For the benchmark's growth figures.
    pub async fn table_sizes(&self) -> Result<Vec<(String, u64)>, Error> {
        const TABLES: [&str; 6] = [
            "monitors",
            "samples",
            "hourly",
            "daily",
            "monitor_state",
            "incidents",
        ];
        let mut out = Vec::new();
        for table in TABLES {
            let bytes: i64 = match &self.inner.db {
                Db::Sqlite(p) => sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(pgsize), 0) AS BIGINT) FROM dbstat WHERE name = $1 \
                     OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = $1)",
                )
                .bind(table)
                .fetch_one(p)
                .await
                .map_err(|e| self.db_error(e))?,
                Db::Postgres(p) => {
                    sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
                        .bind(table)
                        .fetch_one(p)
                        .await
                        .map_err(|e| self.db_error(e))?
                }
            };
            out.push((table.to_string(), u64::try_from(bytes).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Postgres: `VACUUM` the tables (what autovacuum does in the background), so that sizes
    /// measured afterwards are the steady state rather than the dead rows of the last updates.
    /// SQLite: nothing ([`Store::size_bytes`] already leaves free pages out).
    pub async fn vacuum(&self) -> Result<(), Error> {
        if let Db::Postgres(p) = &self.inner.db {
            sqlx::query(
                "VACUUM (ANALYZE) samples, hourly, daily, monitor_state, incidents, monitors",
            )
            .execute(p)
            .await
            .map_err(|e| self.db_error(e))?;
        }
        Ok(())
    }

    /// Bytes the database takes: the SQLite file (with its WAL) or the Postgres database.
    pub async fn size_bytes(&self) -> Result<u64, Error> {
        match &self.inner.db {
            Db::Sqlite(p) => {
                let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                    .fetch_one(p)
                    .await
                    .map_err(|e| self.db_error(e))?;
                let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
                    .fetch_one(p)
                    .await
                    .map_err(|e| self.db_error(e))?;
                let size: i64 = sqlx::query_scalar("PRAGMA page_size")
                    .fetch_one(p)
                    .await
                    .map_err(|e| self.db_error(e))?;
                Ok(u64::try_from((pages - free) * size).unwrap_or_default())
            }
            Db::Postgres(p) => {
                let size: i64 = sqlx::query_scalar(
                    "SELECT CAST(SUM(pg_total_relation_size(c)) AS BIGINT) FROM unnest(ARRAY[\
                     'monitors','samples','hourly','daily','monitor_state','incidents']) AS c",
                )
                .fetch_one(p)
                .await
                .map_err(|e| self.db_error(e))?;
                Ok(u64::try_from(size).unwrap_or_default())
            }
        }
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn empty_bars(now: Millis, days: i64) -> Vec<DayBar> {
    let days = days.clamp(1, 400);
    let first = now - now.rem_euclid(DAY_MS) - (days - 1) * DAY_MS;
    (0..days)
        .map(|i| DayBar {
            day: first + i * DAY_MS,
            uptime: None,
            down: 0,
            total: 0,
        })
        .collect()
}

fn histogram_columns(prefix: &str) -> String {
    (0..BUCKETS)
        .map(|i| format!("{prefix}h{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sums the aggregates of `table` from `since` on, per monitor.
async fn window(
    db: &Db,
    table: &str,
    since: Millis,
    only: Option<i64>,
) -> Result<HashMap<i64, Aggregate>, sqlx::Error> {
    let sums = [
        "up",
        "down",
        "pending",
        "maintenance",
        "ok",
        "rt_count",
        "rt_sum_us",
    ]
    .iter()
    .map(|c| c.to_string())
    .chain((0..BUCKETS).map(|i| format!("h{i}")))
    .map(|c| format!("CAST(SUM({c}) AS BIGINT)"))
    .collect::<Vec<_>>()
    .join(", ");
    let sql = format!(
        "SELECT monitor_id, MAX(rt_max_us), {sums} FROM {table} WHERE bucket >= $1{} GROUP BY monitor_id",
        if only.is_some() {
            " AND monitor_id = $2"
        } else {
            ""
        }
    );
    on_db!(db, p => {
        let mut q = sqlx::query(&sql).bind(since);
        if let Some(id) = only {
            q = q.bind(id);
        }
        let rows = q.fetch_all(p).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let mut agg = Aggregate {
                rt_max_us: r.try_get(1)?,
                up: r.try_get(2)?, down: r.try_get(3)?, pending: r.try_get(4)?,
                maintenance: r.try_get(5)?, ok: r.try_get(6)?, rt_count: r.try_get(7)?,
                rt_sum_us: r.try_get(8)?,
                ..Aggregate::default()
            };
            for (i, h) in agg.histogram.iter_mut().enumerate() {
                *h = r.try_get(9 + i)?;
            }
            out.insert(r.try_get::<i64, _>(0)?, agg);
        }
        Ok(out)
    })
}

impl Mem {
    /// Updates the in-memory state and incidents for a new sample.
    fn track(&mut self, sample: &Sample) {
        let key = &sample.key;
        match self.windows.get_mut(key) {
            Some(w) => w.add(sample.at, sample.state, sample.response_us),
            None => {
                let mut w = Windows::default();
                w.add(sample.at, sample.state, sample.response_us);
                self.windows.insert(key.clone(), w);
            }
        }
        if !self.infos.contains_key(key) {
            self.infos
                .insert(key.clone(), MonitorInfo::bare(key.clone()));
            self.dirty_infos.insert(key.clone());
        }
        let previous = self.states.get(key);
        if previous.is_some_and(|p| p.last_at > sample.at) {
            // An older result arriving late changes history, not the current state.
            return;
        }
        let since = match previous {
            Some(p) if p.state == sample.state => p.since,
            // A DOWN confirmed after PENDING failures began with the first of them, as the
            // checker's DOWN alert says: a new leader recovering it times the outage alike.
            Some(p) if sample.state == State::Down && p.state == State::Pending => p.since,
            _ => sample.at,
        };
        if sample.state == State::Down && !self.open.contains_key(key) {
            let incident = Incident {
                key: key.clone(),
                started_at: since,
                ended_at: None,
                cause: sample.message.clone().unwrap_or_default(),
            };
            self.open.insert(key.clone(), incident.clone());
            self.recent.push_front(incident.clone());
            self.recent.truncate(RECENT_INCIDENTS);
            self.incident_ops.push_back(IncidentOp::Open(incident));
        } else if sample.state == State::Up
            && let Some(open) = self.open.remove(key)
        {
            if let Some(i) = self
                .recent
                .iter_mut()
                .find(|i| &i.key == key && i.started_at == open.started_at)
            {
                i.ended_at = Some(sample.at);
            }
            self.incident_ops.push_back(IncidentOp::Close {
                key: key.clone(),
                started_at: open.started_at,
                ended_at: sample.at,
            });
        }
        self.states.insert(
            key.clone(),
            LastState {
                key: key.clone(),
                state: sample.state,
                since,
                last_at: sample.at,
                success: sample.success,
                response_us: sample.response_us,
                http_status: sample.http_status,
                message: sample.message.clone(),
            },
        );
        self.dirty_states.insert(key.clone());
    }

    fn take_batch(&mut self) -> Batch {
        let n = self.buffer.len().min(MAX_BATCH);
        let samples: Vec<Sample> = self.buffer.drain(..n).collect();
        self.in_flight = samples.len();
        let infos = self
            .dirty_infos
            .drain()
            .filter_map(|k| self.infos.get(&k).cloned())
            .collect();
        let states: Vec<LastState> = self
            .dirty_states
            .drain()
            .filter_map(|k| self.states.get(&k).cloned())
            .collect();
        let incidents: Vec<IncidentOp> = self.incident_ops.drain(..).collect();
        let outbox: Vec<OutboxOp> = self.outbox_ops.drain(..).collect();
        let mut known = HashMap::new();
        for key in samples
            .iter()
            .map(|s| &s.key)
            .chain(states.iter().map(|s: &LastState| &s.key))
            .chain(incidents.iter().map(IncidentOp::key))
            .chain(outbox.iter().map(OutboxOp::key))
        {
            if let Some(id) = self.ids.get(key) {
                known.insert(key.clone(), *id);
            }
        }
        Batch {
            samples,
            infos,
            states,
            incidents,
            outbox,
            known,
        }
    }

    /// Returns a failed batch to the queue, oldest samples first, dropping the oldest beyond
    /// `capacity`; returns how many were dropped.
    fn put_back(&mut self, batch: Batch, capacity: usize) -> u64 {
        let mut dropped = 0;
        for sample in batch.samples.into_iter().rev() {
            if self.buffer.len() >= capacity {
                dropped += 1;
                continue;
            }
            self.buffer.push_front(sample);
        }
        for info in batch.infos {
            self.dirty_infos.insert(info.key);
        }
        for state in batch.states {
            self.dirty_states.insert(state.key);
        }
        for op in batch.incidents.into_iter().rev() {
            self.incident_ops.push_front(op);
        }
        for op in batch.outbox.into_iter().rev() {
            self.outbox_ops.push_front(op);
        }
        dropped
    }
}

/// One write transaction's worth.
#[derive(Debug)]
struct Batch {
    samples: Vec<Sample>,
    infos: Vec<MonitorInfo>,
    states: Vec<LastState>,
    incidents: Vec<IncidentOp>,
    outbox: Vec<OutboxOp>,
    /// Database ids already known for the keys involved.
    known: HashMap<MonitorKey, i64>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.samples.is_empty()
            && self.infos.is_empty()
            && self.states.is_empty()
            && self.incidents.is_empty()
            && self.outbox.is_empty()
    }
}

/// Writes one batch in one transaction; returns the monitor ids it learnt.
async fn write_batch(db: &Db, batch: &Batch) -> Result<HashMap<MonitorKey, i64>, sqlx::Error> {
    on_db!(db, p => {
        let mut tx = p.begin().await?;
        let mut ids = batch.known.clone();
        let mut learnt = HashMap::new();
        for info in &batch.infos {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO monitors (namespace, name, display_name, group_name, kind, target) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (namespace, name) DO UPDATE SET \
                 display_name = excluded.display_name, group_name = excluded.group_name, \
                 kind = excluded.kind, target = excluded.target RETURNING id")
                .bind(&info.key.namespace).bind(&info.key.name).bind(&info.display_name)
                .bind(&info.group).bind(&info.kind).bind(&info.target)
                .fetch_one(&mut *tx).await?;
            ids.insert(info.key.clone(), id);
            learnt.insert(info.key.clone(), id);
        }
        let needed = batch.samples.iter().map(|s| &s.key)
            .chain(batch.states.iter().map(|s| &s.key))
            .chain(batch.incidents.iter().map(IncidentOp::key))
            .chain(batch.outbox.iter().map(OutboxOp::key));
        let missing: HashSet<&MonitorKey> = needed.filter(|k| !ids.contains_key(*k)).collect();
        for key in missing {
            // A monitor known only by its samples: a row without its display fields, which a
            // later upsert fills in; an existing row is left as it is.
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO monitors (namespace, name) VALUES ($1, $2) \
                 ON CONFLICT (namespace, name) DO UPDATE SET name = monitors.name RETURNING id")
                .bind(&key.namespace).bind(&key.name)
                .fetch_one(&mut *tx).await?;
            ids.insert(key.clone(), id);
            learnt.insert(key.clone(), id);
        }

        let mut hourly: HashMap<(i64, Millis), Aggregate> = HashMap::new();
        let mut daily: HashMap<(i64, Millis), Aggregate> = HashMap::new();
        for chunk in batch.samples.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO samples (monitor_id, at, state, success, response_us, http_status, message) ");
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(ids.get(&s.key).copied().unwrap_or_default())
                    .push_bind(s.at)
                    .push_bind(s.state.code())
                    .push_bind(s.success)
                    .push_bind(s.response_us)
                    .push_bind(s.http_status)
                    .push_bind(s.message.as_deref());
            });
            // Only rows really inserted come back: a batch written before (a commit whose
            // answer was lost) adds nothing to the aggregates.
            qb.push(" ON CONFLICT (monitor_id, at) DO NOTHING \
                      RETURNING monitor_id, at, state, success, response_us");
            let rows = qb.build().persistent(false).fetch_all(&mut *tx).await?;
            for r in &rows {
                let id: i64 = r.try_get(0)?;
                let at: i64 = r.try_get(1)?;
                let code: i16 = r.try_get(2)?;
                let state = State::from_code(code).unwrap_or(State::Down);
                let success: bool = r.try_get(3)?;
                let response_us: Option<i32> = r.try_get(4)?;
                hourly.entry((id, at - at.rem_euclid(HOUR_MS))).or_default()
                    .add_sample(state, success, response_us);
                daily.entry((id, at - at.rem_euclid(DAY_MS))).or_default()
                    .add_sample(state, success, response_us);
            }
        }
        for (table, aggs) in [("hourly", &hourly), ("daily", &daily)] {
            let aggs: Vec<(&(i64, Millis), &Aggregate)> = aggs.iter().collect();
            for chunk in aggs.chunks(CHUNK) {
                let mut qb = QueryBuilder::new(format!(
                    "INSERT INTO {table} (monitor_id, bucket, up, down, pending, maintenance, ok, \
                     rt_count, rt_sum_us, rt_max_us, {}) ", histogram_columns("")));
                qb.push_values(chunk, |mut b, ((id, bucket), a)| {
                    b.push_bind(*id).push_bind(*bucket).push_bind(a.up).push_bind(a.down)
                        .push_bind(a.pending).push_bind(a.maintenance).push_bind(a.ok)
                        .push_bind(a.rt_count).push_bind(a.rt_sum_us).push_bind(a.rt_max_us);
                    for h in a.histogram {
                        b.push_bind(i32::try_from(h).unwrap_or(i32::MAX));
                    }
                });
                let adds = ["up", "down", "pending", "maintenance", "ok", "rt_count", "rt_sum_us"]
                    .iter().map(|c| c.to_string())
                    .chain((0..BUCKETS).map(|i| format!("h{i}")))
                    .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
                    .collect::<Vec<_>>().join(", ");
                qb.push(format!(
                    " ON CONFLICT (monitor_id, bucket) DO UPDATE SET {adds}, rt_max_us = CASE \
                     WHEN excluded.rt_max_us > {table}.rt_max_us THEN excluded.rt_max_us \
                     ELSE {table}.rt_max_us END"));
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
        }
        for chunk in batch.states.chunks(CHUNK) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO monitor_state (monitor_id, state, since, last_at, success, \
                 response_us, http_status, message) ");
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(ids.get(&s.key).copied().unwrap_or_default())
                    .push_bind(s.state.code()).push_bind(s.since).push_bind(s.last_at)
                    .push_bind(s.success).push_bind(s.response_us).push_bind(s.http_status)
                    .push_bind(s.message.as_deref());
            });
            qb.push(" ON CONFLICT (monitor_id) DO UPDATE SET state = excluded.state, \
                     since = excluded.since, last_at = excluded.last_at, success = excluded.success, \
                     response_us = excluded.response_us, http_status = excluded.http_status, \
                     message = excluded.message WHERE excluded.last_at >= monitor_state.last_at");
            qb.build().persistent(false).execute(&mut *tx).await?;
        }
        for op in &batch.incidents {
            let id = ids.get(op.key()).copied().unwrap_or_default();
            match op {
                IncidentOp::Open(incident) => {
                    sqlx::query("INSERT INTO incidents (monitor_id, started_at, cause) \
                                 VALUES ($1, $2, $3) ON CONFLICT (monitor_id, started_at) DO NOTHING")
                        .bind(id).bind(incident.started_at).bind(&incident.cause)
                        .execute(&mut *tx).await?;
                }
                IncidentOp::Close { started_at, ended_at, .. } => {
                    sqlx::query("UPDATE incidents SET ended_at = $1 \
                                 WHERE monitor_id = $2 AND started_at = $3")
                        .bind(*ended_at).bind(id).bind(*started_at)
                        .execute(&mut *tx).await?;
                }
            }
        }
        // In queue order: an alert sent before its row was written is added, then deleted.
        for op in &batch.outbox {
            let id = ids.get(op.key()).copied().unwrap_or_default();
            match op {
                OutboxOp::Add { id: alert, payload } => {
                    sqlx::query("INSERT INTO alert_outbox (monitor_id, at, payload) \
                                 VALUES ($1, $2, $3) ON CONFLICT (monitor_id, at) DO NOTHING")
                        .bind(id).bind(alert.at).bind(payload)
                        .execute(&mut *tx).await?;
                }
                OutboxOp::Done(alert) => {
                    sqlx::query("DELETE FROM alert_outbox WHERE monitor_id = $1 AND at = $2")
                        .bind(id).bind(alert.at)
                        .execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(learnt)
    })
}

/// Reads monitors, last states and open incidents into memory.
async fn load(db: &Db, backend: &'static str) -> Result<Mem, Error> {
    let err = |source| Error::Database { backend, source };
    let mut mem = Mem::default();
    let mut keys: HashMap<i64, MonitorKey> = HashMap::new();
    on_db!(db, p => {
        let rows = sqlx::query(
            "SELECT id, namespace, name, display_name, group_name, kind, target FROM monitors")
            .fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let key = MonitorKey::new(
                r.try_get::<String, _>(1).map_err(err)?,
                r.try_get::<String, _>(2).map_err(err)?);
            let info = MonitorInfo {
                key: key.clone(),
                display_name: r.try_get(3).map_err(err)?,
                group: r.try_get(4).map_err(err)?,
                kind: r.try_get(5).map_err(err)?,
                target: r.try_get(6).map_err(err)?,
            };
            mem.infos.insert(key.clone(), info);
            mem.ids.insert(key.clone(), id);
            keys.insert(id, key);
        }
        let rows = sqlx::query(
            "SELECT monitor_id, state, since, last_at, success, response_us, http_status, message \
             FROM monitor_state").fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let Some(key) = keys.get(&id) else { continue };
            let code: i16 = r.try_get(1).map_err(err)?;
            let state = State::from_code(code).ok_or(Error::UnknownState(code))?;
            mem.states.insert(key.clone(), LastState {
                key: key.clone(),
                state,
                since: r.try_get(2).map_err(err)?,
                last_at: r.try_get(3).map_err(err)?,
                success: r.try_get(4).map_err(err)?,
                response_us: r.try_get(5).map_err(err)?,
                http_status: r.try_get(6).map_err(err)?,
                message: r.try_get(7).map_err(err)?,
            });
        }
        let now = now_ms();
        let since = now - now.rem_euclid(HOUR_MS) - (window::HOURS - 1) * HOUR_MS;
        let sql = format!(
            "SELECT monitor_id, bucket, up, down, pending, maintenance, rt_count, rt_sum_us, \
             rt_max_us, {} FROM hourly WHERE bucket >= $1", histogram_columns(""));
        let rows = sqlx::query(&sql).bind(since).fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let Some(key) = keys.get(&id) else { continue };
            let mut agg = Aggregate {
                up: r.try_get(2).map_err(err)?, down: r.try_get(3).map_err(err)?,
                pending: r.try_get(4).map_err(err)?, maintenance: r.try_get(5).map_err(err)?,
                rt_count: r.try_get(6).map_err(err)?, rt_sum_us: r.try_get(7).map_err(err)?,
                rt_max_us: r.try_get(8).map_err(err)?,
                ..Aggregate::default()
            };
            for (i, h) in agg.histogram.iter_mut().enumerate() {
                *h = i64::from(r.try_get::<i32, _>(9 + i).map_err(err)?);
            }
            let bucket: i64 = r.try_get(1).map_err(err)?;
            mem.windows.entry(key.clone()).or_default().set_hour(bucket, &agg);
        }
        let first_day = now - now.rem_euclid(DAY_MS) - (window::DAYS - 1) * DAY_MS;
        let rows = sqlx::query(
            "SELECT monitor_id, bucket, up, down, pending, maintenance FROM daily WHERE bucket >= $1")
            .bind(first_day).fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let Some(key) = keys.get(&id) else { continue };
            let agg = Aggregate {
                up: r.try_get(2).map_err(err)?, down: r.try_get(3).map_err(err)?,
                pending: r.try_get(4).map_err(err)?, maintenance: r.try_get(5).map_err(err)?,
                ..Aggregate::default()
            };
            let bucket: i64 = r.try_get(1).map_err(err)?;
            mem.windows.entry(key.clone()).or_default().set_day(bucket, &agg);
        }
        let rows = sqlx::query(
            "SELECT monitor_id, started_at, ended_at, cause FROM incidents \
             ORDER BY started_at DESC LIMIT $1")
            .bind(RECENT_INCIDENTS as i64).fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let Some(key) = keys.get(&id) else { continue };
            mem.recent.push_back(Incident {
                key: key.clone(),
                started_at: r.try_get(1).map_err(err)?,
                ended_at: r.try_get(2).map_err(err)?,
                cause: r.try_get(3).map_err(err)?,
            });
        }
        let rows = sqlx::query(
            "SELECT monitor_id, started_at, cause FROM incidents WHERE ended_at IS NULL")
            .fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let Some(key) = keys.get(&id) else { continue };
            mem.open.insert(key.clone(), Incident {
                key: key.clone(),
                started_at: r.try_get(1).map_err(err)?,
                ended_at: None,
                cause: r.try_get(2).map_err(err)?,
            });
        }
        let rows = sqlx::query("SELECT monitor_id, at, payload FROM alert_outbox ORDER BY at")
            .fetch_all(p).await.map_err(err)?;
        for r in &rows {
            let id: i64 = r.try_get(0).map_err(err)?;
            let Some(key) = keys.get(&id) else { continue };
            mem.pending_alerts.push((
                AlertId { key: key.clone(), at: r.try_get(1).map_err(err)? },
                r.try_get(2).map_err(err)?,
            ));
        }
    });
    Ok(mem)
}

/// Writes the queue every `flush_interval` (sooner when it fills), backing off while the
/// database is away. Ends when the store is dropped.
async fn writer_task(store: Weak<Inner>, wake: Arc<Notify>) {
    let mut backoff = Duration::ZERO;
    loop {
        let interval = match store.upgrade() {
            Some(inner) => inner.config.flush_interval,
            None => return,
        };
        let _ = tokio::time::timeout(interval.max(backoff), wake.notified()).await;
        let Some(inner) = store.upgrade() else { return };
        let store = Store { inner };
        match store.flush().await {
            Ok(()) => backoff = Duration::ZERO,
            Err(error) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
                tracing::debug!(%error, ?backoff, "uptime history write failed; retrying");
            }
        }
    }
}

/// Runs retention every `interval`. Ends when the store is dropped.
async fn retention_task(store: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = store.upgrade() else { return };
        match (Store { inner }).run_retention().await {
            Ok(report) => tracing::debug!(?report, "uptime history retention"),
            Err(error) => tracing::warn!(%error, "uptime history retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_confirmed_after_pending_failures_began_with_the_first() {
        let key = MonitorKey::new("prod", "web");
        let at = |secs: i64, state: State| Sample {
            key: key.clone(),
            at: secs * 1000,
            state,
            success: state == State::Up,
            response_us: None,
            http_status: None,
            message: None,
        };
        let mut mem = Mem::default();
        for (secs, state) in [
            (0, State::Up),
            (10, State::Pending),
            (12, State::Pending),
            (14, State::Down),
            (16, State::Down),
        ] {
            mem.track(&at(secs, state));
        }
        // As the checker's DOWN alert (`downSince`): the outage began with the first failure.
        assert_eq!(mem.states[&key].since, 10_000);
        assert_eq!(mem.open[&key].started_at, 10_000);
        mem.track(&at(20, State::Up));
        assert_eq!(mem.states[&key].since, 20_000);
        // A DOWN straight after UP (a threshold of one) begins with itself.
        mem.track(&at(30, State::Down));
        assert_eq!(mem.open[&key].started_at, 30_000);
    }

    #[test]
    fn locations_come_from_the_flags() {
        let dir = Path::new("/var/lib/gantry");
        assert_eq!(
            Location::from_flags(dir, None).unwrap(),
            Location::Sqlite(dir.join(SQLITE_FILE))
        );
        assert_eq!(
            Location::from_flags(dir, Some("postgres://u:p@127.0.0.1/db")).unwrap(),
            Location::Postgres("postgres://u:p@127.0.0.1/db".into())
        );
        let err = Location::from_flags(dir, Some("mysql://u:secret@h/db")).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("postgres://"), "{err}");
    }
}

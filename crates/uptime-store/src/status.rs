//! The status page: one server-rendered HTML page (inline SVG, no JavaScript), the JSON API
//! behind it and SVG badges, served on its own listener.
//!
//! Light on the server: the page is rendered from a [`Snapshot`] of the store's memory (each
//! monitor's windows of aggregates, updated as results arrive, its last state and the recent
//! incidents), never from a database read. A background task rebuilds it when results arrived
//! and it is at least `min_refresh` old (or older than `max_age`), while someone looks at it;
//! requests are served the cached HTML. So the page, the JSON API, the badges and the Monitor
//! status show the same figures, and they are right even while the database is away, which the
//! page says in a banner.
//! Every name on the page comes from users: all of it is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::model::{
    DayBar, HOUR_MS, Incident, LastState, Millis, MonitorKey, ResponsePoint, State, Summary, now_ms,
};
use crate::store::{Health, Store};

/// Days in the uptime bar.
pub const BAR_DAYS: i64 = 90;

/// How the page looks and how fresh it is kept.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// The page's heading.
    pub title: String,
    /// A new snapshot is built at most this often (default 2 s) ...
    pub min_refresh: Duration,
    /// ... and at least this often even without writes (default 60 s).
    pub max_age: Duration,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self {
            title: "Status".into(),
            min_refresh: Duration::from_secs(2),
            max_age: Duration::from_secs(60),
        }
    }
}

/// Everything the page shows, as the JSON API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub generated_at: Millis,
    pub health: Health,
    /// Set when the aggregates could not be read (the figures are then the last ones read).
    pub read_error: Option<String>,
    pub groups: Vec<Group>,
    pub recent_incidents: Vec<IncidentView>,
}

/// Monitors sharing a group name.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    pub monitors: Vec<MonitorView>,
}

/// One monitor on the page.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorView {
    pub namespace: String,
    pub name: String,
    pub title: String,
    pub kind: String,
    pub target: String,
    /// `None` before its first result.
    pub state: Option<State>,
    pub since: Option<Millis>,
    pub message: Option<String>,
    pub summary: Summary,
    pub bars: Vec<DayBar>,
    /// Hourly mean and p95 over the last 24 hours.
    pub response: Vec<ResponsePoint>,
}

/// An incident with the monitor's title.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    pub namespace: String,
    pub name: String,
    pub title: String,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub cause: String,
}

struct Cached {
    built: Instant,
    generation: u64,
    snapshot: Arc<Snapshot>,
    html: Arc<String>,
}

/// The status page over a [`Store`].
pub struct StatusPage {
    store: Store,
    options: StatusOptions,
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// When the page was last asked for: the background rebuild stops when nobody looks.
    asked: std::sync::Mutex<Option<Instant>>,
}

/// The background rebuild keeps going this long after the last request.
const KEEP_WARM: Duration = Duration::from_secs(600);

impl StatusPage {
    /// The page over `store`; with a Tokio runtime, also a task that rebuilds it in the
    /// background (at most every `min_refresh`, while it is being looked at), so requests are
    /// served from the cache. The task ends when the page is dropped.
    pub fn new(store: Store, options: StatusOptions) -> Arc<Self> {
        let page = Arc::new(Self {
            store,
            options,
            cache: tokio::sync::Mutex::new(None),
            asked: std::sync::Mutex::new(None),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh_task(Arc::downgrade(&page)));
        }
        page
    }

    fn stale(&self, cached: &Cached) -> bool {
        let age = cached.built.elapsed();
        let changed = cached.generation != self.store.generation();
        age >= self.options.max_age || (changed && age >= self.options.min_refresh)
    }

    /// The current snapshot and its HTML: the cached ones unless stale (then rebuilt here;
    /// the background task usually got there first).
    pub async fn current(&self) -> (Arc<Snapshot>, Arc<String>) {
        *self
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.refresh().await
    }

    /// The cached page, rebuilt first if stale.
    async fn refresh(&self) -> (Arc<Snapshot>, Arc<String>) {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && !self.stale(c)
        {
            return (c.snapshot.clone(), c.html.clone());
        }
        let generation = self.store.generation();
        let snapshot = Arc::new(self.build());
        let html = Arc::new(render_html(&self.options.title, &snapshot));
        *cache = Some(Cached {
            built: Instant::now(),
            generation,
            snapshot: snapshot.clone(),
            html: html.clone(),
        });
        (snapshot, html)
    }

    fn looked_at(&self) -> bool {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < KEEP_WARM)
    }

    /// A new snapshot from the store's memory (its windows, states and incidents): no
    /// database read, so it costs the same whether the database is there or not.
    pub fn build(&self) -> Snapshot {
        let page = self.store.page(BAR_DAYS);
        let now = page.now;
        let mut groups: BTreeMap<String, Vec<MonitorView>> = BTreeMap::new();
        let mut titles = std::collections::HashMap::new();
        for m in page.monitors {
            let info = m.info;
            let state = m.state.as_ref();
            titles.insert(info.key.clone(), info.title().to_string());
            let view = MonitorView {
                namespace: info.key.namespace.clone(),
                name: info.key.name.clone(),
                title: info.title().to_string(),
                kind: info.kind.clone(),
                target: info.target.clone(),
                state: state.map(|s| s.state),
                since: state.map(|s| s.since),
                message: state.and_then(|s| s.message.clone()),
                summary: m.summary,
                bars: m.bars,
                response: m.response,
            };
            groups.entry(info.group.clone()).or_default().push(view);
        }
        for monitors in groups.values_mut() {
            monitors.sort_by(|a, b| a.title.cmp(&b.title).then(a.name.cmp(&b.name)));
        }
        let recent_incidents = page
            .incidents
            .into_iter()
            .map(|i| IncidentView {
                title: titles
                    .get(&i.key)
                    .cloned()
                    .unwrap_or_else(|| i.key.name.clone()),
                namespace: i.key.namespace,
                name: i.key.name,
                started_at: i.started_at,
                ended_at: i.ended_at,
                cause: i.cause,
            })
            .collect();
        Snapshot {
            generated_at: now,
            health: page.health,
            read_error: None,
            // Named groups first, alphabetically; ungrouped monitors last.
            groups: {
                let mut named: Vec<Group> = Vec::new();
                let mut ungrouped = None;
                for (name, monitors) in groups {
                    if name.is_empty() {
                        ungrouped = Some(Group { name, monitors });
                    } else {
                        named.push(Group { name, monitors });
                    }
                }
                named.extend(ungrouped);
                named
            },
            recent_incidents,
        }
    }
}

/// Rebuilds the page when it is stale and someone looked at it lately. Ends with the page.
async fn refresh_task(page: std::sync::Weak<StatusPage>) {
    loop {
        let tick = match page.upgrade() {
            Some(p) => p.options.min_refresh.max(Duration::from_millis(500)),
            None => return,
        };
        tokio::time::sleep(tick).await;
        let Some(page) = page.upgrade() else { return };
        if page.looked_at() {
            page.refresh().await;
        }
    }
}

#[cfg(test)]
fn empty_bars(now: Millis, days: i64) -> Vec<DayBar> {
    use crate::model::DAY_MS;
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

/// The routes: `/` (HTML), `/api/status` (JSON), `/api/monitors/{namespace}/{name}` (one
/// monitor with its raw response times of the last 24 hours), `/badge/{namespace}/{name}.svg`
/// and `/badge/{name}.svg`.
pub fn router(page: Arc<StatusPage>) -> Router {
    Router::new()
        .route("/", get(html))
        .route("/api/status", get(json))
        .route("/api/monitors/{namespace}/{name}", get(monitor_json))
        .route("/badge/{file}", get(badge_by_name))
        .route("/badge/{namespace}/{file}", get(badge))
        .with_state(page)
}

/// Serves the page on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    page: Arc<StatusPage>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(page))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn html(AxumState(page): AxumState<Arc<StatusPage>>) -> Response {
    let (_, html) = page.current().await;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html.as_str().to_owned(),
    )
        .into_response()
}

async fn json(AxumState(page): AxumState<Arc<StatusPage>>) -> Response {
    let (snapshot, _) = page.current().await;
    axum::Json(snapshot.as_ref().clone()).into_response()
}

/// One monitor's detail, read directly (a single monitor's rows).
#[derive(Debug, Serialize)]
struct MonitorDetail {
    namespace: String,
    name: String,
    state: Option<LastState>,
    summary: Summary,
    bars: Vec<DayBar>,
    response_times: Vec<ResponsePoint>,
    incidents: Vec<Incident>,
}

async fn monitor_json(
    AxumState(page): AxumState<Arc<StatusPage>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = MonitorKey::new(namespace, name);
    let store = &page.store;
    if !store.monitors().iter().any(|m| m.key == key) {
        return (StatusCode::NOT_FOUND, "no such monitor\n").into_response();
    }
    let detail = async {
        Ok::<_, crate::store::Error>(MonitorDetail {
            state: store.last_state(&key),
            summary: store.figures(&key).unwrap_or_default(),
            bars: store.daily_bars_of(&key, BAR_DAYS).await?,
            response_times: store.response_times(&key, now_ms() - 24 * HOUR_MS).await?,
            incidents: store.incidents(&key, 20).await?,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        })
    };
    match detail.await {
        Ok(detail) => axum::Json(detail).into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("history database unreachable: {err}\n"),
        )
            .into_response(),
    }
}

async fn badge(
    AxumState(page): AxumState<Arc<StatusPage>>,
    Path((namespace, file)): Path<(String, String)>,
) -> Response {
    let Some(name) = file.strip_suffix(".svg") else {
        return (StatusCode::NOT_FOUND, "badges end in .svg\n").into_response();
    };
    badge_for(&page, Some(&namespace), name).await
}

async fn badge_by_name(
    AxumState(page): AxumState<Arc<StatusPage>>,
    Path(file): Path<String>,
) -> Response {
    let Some(name) = file.strip_suffix(".svg") else {
        return (StatusCode::NOT_FOUND, "badges end in .svg\n").into_response();
    };
    badge_for(&page, None, name).await
}

async fn badge_for(page: &StatusPage, namespace: Option<&str>, name: &str) -> Response {
    let (snapshot, _) = page.current().await;
    let found = snapshot
        .groups
        .iter()
        .flat_map(|g| &g.monitors)
        .find(|m| m.name == name && namespace.is_none_or(|ns| m.namespace == ns));
    let Some(monitor) = found else {
        return (StatusCode::NOT_FOUND, "no such monitor\n").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=30"),
        ],
        render_badge(monitor),
    )
        .into_response()
}

/// Escapes text for HTML and SVG, in content and in quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn state_class(state: Option<State>) -> &'static str {
    match state {
        Some(State::Up) => "up",
        Some(State::Down) => "down",
        Some(State::Pending) => "pending",
        Some(State::Maintenance) => "maintenance",
        None => "unknown",
    }
}

fn state_label(state: Option<State>) -> &'static str {
    state.map_or("NO DATA", State::as_str)
}

fn time(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn date(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "–".into(), |r| format!("{:.2}%", r * 100.0))
}

fn duration(ms: Millis) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// The bar's colour class for a day.
fn day_class(bar: &DayBar) -> &'static str {
    match bar.uptime {
        None if bar.total == 0 => "none",
        None => "maint",
        Some(u) if u >= 1.0 => "ok",
        Some(u) if u >= 0.99 => "minor",
        Some(_) => "major",
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:64rem;padding:1rem;color:#1b1f24;background:#f6f7f9}\
h1{margin:.2rem 0}h2{margin:1.5rem 0 .5rem;font-size:1.1rem}h3{margin:0;font-size:1rem;display:inline}\
.overall{padding:.8rem 1rem;border-radius:.4rem;color:#fff;font-weight:600}.overall.up{background:#1a7f37}.overall.down{background:#cf222e}.overall.unknown{background:#6e7781}\
.banner{padding:.8rem 1rem;border-radius:.4rem;background:#fff8c5;border:1px solid #d4a72c;margin:1rem 0}\
.monitor{background:#fff;border:1px solid #d0d7de;border-radius:.4rem;padding:.7rem 1rem;margin:.5rem 0}\
.state{font-weight:700;padding:.1rem .5rem;border-radius:.3rem;color:#fff;margin-left:.5rem;font-size:.8rem}\
.state.up{background:#1a7f37}.state.down{background:#cf222e}.state.pending{background:#bf8700}.state.maintenance{background:#0969da}.state.unknown{background:#6e7781}\
.meta{color:#57606a;font-size:.85rem;margin:.3rem 0}svg{display:block;width:100%}\
.ok{fill:#2da44e}.minor{fill:#d4a72c}.major{fill:#cf222e}.none{fill:#d0d7de}.maint{fill:#0969da}\
.mean{fill:#54aeff}.p95{fill:#24292f}\
.incidents{font-size:.85rem;margin:.3rem 0;padding-left:1.2rem}footer{color:#57606a;font-size:.8rem;margin-top:2rem}";

/// Renders the page. Public for the benchmark.
pub fn render_html(title: &str, snapshot: &Snapshot) -> String {
    let monitors: Vec<&MonitorView> = snapshot.groups.iter().flat_map(|g| &g.monitors).collect();
    let mut out = String::with_capacity(4096 + monitors.len() * 2048);
    let title = escape(title);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"60\"><title>{title}</title>\
         <style>{STYLE}</style></head><body><header><h1>{title}</h1>"
    );
    let down = monitors
        .iter()
        .filter(|m| m.state == Some(State::Down))
        .count();
    let (class, text) = match (down, monitors.len()) {
        (_, 0) => ("unknown", "No monitors yet".to_string()),
        (0, _) => ("up", "All systems operational".to_string()),
        (1, _) => ("down", "1 monitor is down".to_string()),
        (n, _) => ("down", format!("{n} monitors are down")),
    };
    let _ = write!(
        out,
        "<p class=\"overall {class}\" id=\"overall\">{text}</p></header>"
    );
    if !snapshot.health.available || snapshot.read_error.is_some() {
        let health = &snapshot.health;
        let error = health
            .error
            .as_deref()
            .or(snapshot.read_error.as_deref())
            .unwrap_or("unknown error");
        let since = health
            .since
            .map(|s| format!(" since {}", time(s)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<div class=\"banner\" id=\"database-error\" role=\"alert\"><strong>History database \
             ({backend}) unreachable{since}.</strong> Checks continue; current states are live, \
             history and uptime figures are as last read. {buffered} results wait in memory and \
             will be written when it is back{dropped}. Error: {error}</div>",
            backend = health.backend,
            buffered = health.buffered,
            dropped = if health.dropped > 0 {
                format!(" ({} oldest dropped: the buffer is full)", health.dropped)
            } else {
                String::new()
            },
            error = escape(error),
        );
    }
    for group in &snapshot.groups {
        let name = if group.name.is_empty() {
            "Other"
        } else {
            &group.name
        };
        let _ = write!(out, "<section class=\"group\"><h2>{}</h2>", escape(name));
        for m in &group.monitors {
            render_monitor(
                &mut out,
                m,
                &snapshot.recent_incidents,
                snapshot.generated_at,
            );
        }
        out.push_str("</section>");
    }
    out.push_str("<section id=\"incidents\"><h2>Incidents</h2>");
    if snapshot.recent_incidents.is_empty() {
        out.push_str("<p class=\"meta\">No incidents recorded.</p>");
    } else {
        out.push_str("<ul class=\"incidents\">");
        for i in snapshot.recent_incidents.iter().take(20) {
            render_incident(&mut out, i, true, snapshot.generated_at);
        }
        out.push_str("</ul>");
    }
    let _ = write!(
        out,
        "</section><footer>Updated {} · <a href=\"api/status\">JSON</a></footer></body></html>",
        time(snapshot.generated_at)
    );
    out
}

fn render_incident(out: &mut String, i: &IncidentView, with_title: bool, now: Millis) {
    let who = if with_title {
        format!("<strong>{}</strong>: ", escape(&i.title))
    } else {
        String::new()
    };
    let when = match i.ended_at {
        None => format!(
            "<strong>ongoing</strong> since {} ({})",
            time(i.started_at),
            duration(now - i.started_at)
        ),
        Some(end) => format!(
            "resolved, {} from {}",
            duration(end - i.started_at),
            time(i.started_at)
        ),
    };
    let _ = write!(
        out,
        "<li class=\"incident{}\">{who}{when}: {}</li>",
        if i.ended_at.is_none() { " open" } else { "" },
        escape(&i.cause)
    );
}

fn render_monitor(out: &mut String, m: &MonitorView, incidents: &[IncidentView], now: Millis) {
    let class = state_class(m.state);
    let key = escape(&format!("{}/{}", m.namespace, m.name));
    let _ = write!(
        out,
        "<article class=\"monitor\" data-monitor=\"{key}\" data-state=\"{label}\">\
         <h3>{title}</h3><span class=\"state {class}\">{label}</span>",
        title = escape(&m.title),
        label = state_label(m.state),
    );
    let since = m
        .since
        .map(|s| format!(" for {}", duration(now - s)))
        .unwrap_or_default();
    let response = match (m.summary.p50_ms, m.summary.p95_ms) {
        (Some(p50), Some(p95)) => format!(" · response p50 {p50:.0} ms, p95 {p95:.0} ms"),
        _ => String::new(),
    };
    let _ = write!(
        out,
        "<p class=\"meta\">{label}{since} · uptime 24h {} · 7d {} · 30d {}{response}</p>",
        percent(m.summary.uptime_24h),
        percent(m.summary.uptime_7d),
        percent(m.summary.uptime_30d),
        label = state_label(m.state),
    );
    if m.state == Some(State::Down)
        && let Some(message) = &m.message
    {
        let _ = write!(out, "<p class=\"meta cause\">{}</p>", escape(message));
    }
    render_bars(out, &m.bars);
    render_chart(out, &m.response, now);
    let mine: Vec<&IncidentView> = incidents
        .iter()
        .filter(|i| i.namespace == m.namespace && i.name == m.name)
        .take(3)
        .collect();
    if !mine.is_empty() {
        out.push_str("<ul class=\"incidents\">");
        for i in mine {
            render_incident(out, i, false, now);
        }
        out.push_str("</ul>");
    }
    out.push_str("</article>");
}

/// 90 days as one SVG: runs of full days (or days without data) are one rect each, other days
/// get their own rect with a tooltip, which keeps a page of 1000 monitors small.
fn render_bars(out: &mut String, bars: &[DayBar]) {
    const W: usize = 5;
    let width = bars.len() * W;
    let _ = write!(
        out,
        "<svg class=\"bars\" viewBox=\"0 0 {width} 24\" height=\"24\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"uptime per day, last {} days\">",
        bars.len()
    );
    let mut i = 0;
    while i < bars.len() {
        let class = day_class(&bars[i]);
        if class == "ok" || class == "none" {
            let start = i;
            while i < bars.len() && day_class(&bars[i]) == class {
                i += 1;
            }
            let what = if class == "ok" { "100%" } else { "no data" };
            let _ = write!(
                out,
                "<rect x=\"{}\" width=\"{}\" height=\"24\" class=\"{class}\"><title>{} – {}: {what}</title></rect>",
                start * W,
                (i - start) * W - 1,
                date(bars[start].day),
                date(bars[i - 1].day),
            );
        } else {
            let bar = &bars[i];
            let _ = write!(
                out,
                "<rect x=\"{}\" width=\"{}\" height=\"24\" class=\"{class}\"><title>{}: {} ({} down of {})</title></rect>",
                i * W,
                W - 1,
                date(bar.day),
                percent(bar.uptime),
                bar.down,
                bar.total,
            );
            i += 1;
        }
    }
    out.push_str("</svg>");
}

/// The last 24 hours of response times: one column per hour (its mean), with a tick at its p95.
fn render_chart(out: &mut String, points: &[ResponsePoint], now: Millis) {
    const SLOTS: i64 = 24;
    const SLOT_W: i64 = 20;
    const H: f64 = 48.0;
    if points.is_empty() {
        out.push_str("<p class=\"meta\">No response times in the last 24 hours.</p>");
        return;
    }
    let first = now - now.rem_euclid(HOUR_MS) - (SLOTS - 1) * HOUR_MS;
    let top = points
        .iter()
        .map(|p| p.p95_ms.max(p.ms))
        .fold(1.0_f64, f64::max);
    let height = |ms: f64| (ms / top * (H - 2.0)).clamp(1.0, H - 2.0);
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {H}\" height=\"48\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"response time per hour, last 24 hours, up to {top:.0} ms\">",
        w = SLOTS * SLOT_W,
    );
    // One path for the hourly means and one for the p95 ticks, no tooltip per hour: with a
    // thousand monitors, one element per hour was most of the page. The figures are in the
    // JSON API and the 24-hour percentiles in the text above the chart.
    let mut means = String::new();
    let mut ticks = String::new();
    for p in points {
        let slot = (p.at - first).div_euclid(HOUR_MS);
        if !(0..SLOTS).contains(&slot) {
            continue;
        }
        let x = slot * SLOT_W + 1;
        let mean = height(p.ms).round();
        let y95 = (H - height(p.p95_ms) - 2.0).max(0.0).round();
        let w = SLOT_W - 2;
        let _ = write!(means, "M{x} {H}v-{mean}h{w}v{mean}z");
        let _ = write!(ticks, "M{x} {y95}h{w}v2h-{w}z");
    }
    let _ = write!(
        out,
        "<path class=\"mean\" d=\"{means}\"/><path class=\"p95\" d=\"{ticks}\"/></svg>"
    );
}

/// A shields-style badge: the monitor's title and its state with the 24-hour uptime.
pub fn render_badge(m: &MonitorView) -> String {
    let label = &m.title;
    let value = match m.summary.uptime_24h {
        Some(u) => format!("{} {}", state_label(m.state), percent(Some(u))),
        None => state_label(m.state).to_string(),
    };
    let color = match m.state {
        Some(State::Up) => "#2da44e",
        Some(State::Down) => "#cf222e",
        Some(State::Pending) => "#bf8700",
        Some(State::Maintenance) => "#0969da",
        None => "#6e7781",
    };
    // About 7 px per character at 11 px Verdana; good enough without font metrics.
    let lw = 10 + 7 * label.chars().count();
    let vw = 10 + 7 * value.chars().count();
    let w = lw + vw;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"20\" role=\"img\" \
         aria-label=\"{l}: {v}\"><title>{l}: {v}</title><rect width=\"{lw}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{lw}\" width=\"{vw}\" height=\"20\" fill=\"{color}\"/>\
         <g fill=\"#fff\" font-family=\"Verdana,sans-serif\" font-size=\"11\">\
         <text x=\"5\" y=\"14\">{l}</text><text x=\"{vx}\" y=\"14\">{v}</text></g></svg>",
        l = escape(label),
        v = escape(&value),
        vx = lw + 5,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_user_named_is_escaped() {
        assert_eq!(
            escape("<b a=\"x\">'&'</b>"),
            "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;"
        );
        let hostile = "<script>alert(1)</script>";
        let view = MonitorView {
            namespace: hostile.into(),
            name: "\"><img src=x>".into(),
            title: hostile.into(),
            kind: "http".into(),
            target: hostile.into(),
            state: Some(State::Down),
            since: Some(0),
            message: Some(hostile.into()),
            summary: Summary::default(),
            bars: empty_bars(now_ms(), 90),
            response: Vec::new(),
        };
        let snapshot = Snapshot {
            generated_at: now_ms(),
            health: Health {
                backend: "sqlite",
                available: false,
                error: Some(hostile.into()),
                since: Some(0),
                buffered: 3,
                dropped: 0,
            },
            read_error: None,
            groups: vec![Group {
                name: hostile.into(),
                monitors: vec![view.clone()],
            }],
            recent_incidents: vec![IncidentView {
                namespace: hostile.into(),
                name: "\"><img src=x>".into(),
                title: hostile.into(),
                started_at: 0,
                ended_at: None,
                cause: hostile.into(),
            }],
        };
        let html = render_html(hostile, &snapshot);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("id=\"database-error\""));
        let badge = render_badge(&view);
        assert!(!badge.contains("<script>"), "{badge}");
    }

    #[test]
    fn full_days_share_one_rect_and_bad_days_get_their_own() {
        let mut bars = empty_bars(now_ms(), 90);
        for bar in &mut bars[10..] {
            bar.total = 10;
            bar.uptime = Some(1.0);
        }
        bars[50].uptime = Some(0.5);
        bars[50].down = 5;
        let mut out = String::new();
        render_bars(&mut out, &bars);
        // none (0..10), ok (10..50), major (50), ok (51..90).
        assert_eq!(out.matches("<rect").count(), 4, "{out}");
        assert!(out.contains("class=\"major\""));
        assert!(out.contains("50.00% (5 down of 10)"));
    }
}

//! The sandbox's uptime checks (issue 13): Monitors for staging and production, a loopback
//! stand-in for production that you can stop and start, and a loopback alert receiver behind a
//! `generic` Provider, so `cargo xtask sandbox stand-in production stop` shows a DOWN on the
//! status page and an alert arriving.
//!
//! Kept apart from the pipeline (`sandbox.rs`): `up` calls [`start`], [`apply`] and
//! [`wait_up`], `down` calls [`delete`], and the summary prints [`Record::print`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use gantry_api::notification::v1beta3::Provider;
use gantry_api::uptime::v1alpha1::Monitor;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use super::{MANAGER, NAMESPACE};
use crate::cluster::{self, process};

/// The Provider the Monitors alert through.
pub const PROVIDER: &str = "sandbox-alerts";
/// The Monitors, named after the environment they watch.
pub const MONITORS: [&str; 2] = ["production", "staging"];
/// How the stand-in's and the receiver's processes are recognised (`sandbox down`, a new `up`).
pub const STAND_IN_COMMAND: &str = "serve-stand-in";
pub const ALERTS_COMMAND: &str = "serve-alerts";

/// Where the uptime part of the sandbox is, kept in `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The status page of `gantry run`.
    pub status_page: String,
    /// The production stand-in's port on 127.0.0.1 (the Monitor checks `/healthz` there).
    pub production_port: u16,
    /// The alert receiver: `GET /` lists what it received.
    pub alerts_url: String,
    /// One JSON alert per line, as received.
    pub alerts_log: PathBuf,
    /// What the staging Monitor checks.
    pub staging_target: String,
}

impl Record {
    pub fn print(&self) {
        println!(
            "  status page  {}/ (Monitors flux-system/production and flux-system/staging)",
            self.status_page
        );
        println!(
            "  alerts       {}/ (Provider {NAMESPACE}/{PROVIDER}; also {})",
            self.alerts_url,
            self.alerts_log.display()
        );
    }

    pub fn print_try(&self) {
        println!(
            "  cargo xtask sandbox stand-in production stop     # production goes DOWN, an alert arrives"
        );
        println!(
            "  curl -s {}/                  # the alerts received",
            self.alerts_url
        );
        println!("  cargo xtask sandbox stand-in production start    # UP again, with the outage");
    }
}

/// Starts the production stand-in and the alert receiver, detached and tagged with `tag`.
/// `serving` is `gantry run`'s router listener (what the staging Monitor checks), `uptime` its
/// status page.
pub fn start(tag: &Path, dir: &Path, logs: &Path, serving: &str, uptime: &str) -> Result<Record> {
    let production_port = cluster::free_port()?;
    start_stand_in(tag, logs, "production", production_port)?;
    let alerts_port = cluster::free_port()?;
    let alerts_log = dir.join("alerts.jsonl");
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut receiver = process::spawn(
        tag,
        "alert-receiver",
        &exe,
        &[
            "sandbox".into(),
            ALERTS_COMMAND.into(),
            "--port".into(),
            alerts_port.to_string(),
            "--log".into(),
            alerts_log.display().to_string(),
        ],
        logs,
    )?;
    process::wait_until(&mut receiver, Duration::from_secs(15), || {
        cluster::port_open(alerts_port)
    })?;
    Ok(Record {
        status_page: uptime.to_string(),
        production_port,
        alerts_url: format!("http://127.0.0.1:{alerts_port}"),
        alerts_log,
        staging_target: serving.to_string(),
    })
}

fn start_stand_in(tag: &Path, logs: &Path, name: &str, port: u16) -> Result<()> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut server = process::spawn(
        tag,
        "stand-in",
        &exe,
        &[
            "sandbox".into(),
            STAND_IN_COMMAND.into(),
            "--name".into(),
            name.into(),
            "--port".into(),
            port.to_string(),
        ],
        logs,
    )?;
    process::wait_until(&mut server, Duration::from_secs(15), || {
        cluster::port_open(port)
    })
}

/// The stand-in processes of `name` running under `tag`.
fn stand_ins(tag: &Path, name: &str) -> Vec<u32> {
    process::find(tag)
        .into_iter()
        .filter(|(_, cmdline)| {
            cmdline.contains(STAND_IN_COMMAND) && cmdline.contains(&format!("--name {name} "))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// `cargo xtask sandbox stand-in production stop|start`.
pub fn stand_in(tag: &Path, logs: &Path, record: &Record, name: &str, running: bool) -> Result<()> {
    if name != "production" {
        bail!(
            "only production has a stand-in to stop (staging is checked on gantry's router, see \
             `cargo xtask sandbox` output)"
        );
    }
    let pids = stand_ins(tag, name);
    if running {
        if pids.is_empty() {
            start_stand_in(tag, logs, name, record.production_port)?;
        }
        println!(
            "The {name} stand-in answers on 127.0.0.1:{}; its Monitor goes UP at the next check \
             and a recovery alert arrives at {}/.",
            record.production_port, record.alerts_url
        );
    } else {
        for pid in pids {
            process::stop_pid(pid, Duration::from_secs(5));
        }
        println!(
            "The {name} stand-in is stopped; its Monitor goes DOWN after two failed checks \
             (see {}/) and the alert arrives at {}/.",
            record.status_page, record.alerts_url
        );
    }
    Ok(())
}

/// The Provider and the two Monitors.
fn objects(r: &Record) -> Vec<(ApiResource, serde_json::Value)> {
    use serde_json::json;
    let meta = |name: &str| json!({"name": name, "namespace": NAMESPACE});
    let monitor = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "uptime.gantry.dev/v1alpha1", "kind": "Monitor",
               "metadata": meta(name), "spec": spec})
    };
    let monitor_ar = ApiResource::erase::<Monitor>(&());
    let (host, port) = r
        .staging_target
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or_default()))
        .unwrap_or_default();
    vec![
        (
            ApiResource::erase::<Provider>(&()),
            json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Provider",
                   "metadata": meta(PROVIDER),
                   "spec": {"type": "generic", "address": format!("{}/alerts", r.alerts_url)}}),
        ),
        (
            monitor_ar.clone(),
            monitor(
                "production",
                json!({"type": "http", "interval": "5s", "retryInterval": "2s", "timeout": "2s",
                       "failureThreshold": 2,
                       "http": {"url": format!("http://127.0.0.1:{}/healthz", r.production_port)},
                       "conditions": ["[STATUS] == 200", "[BODY] == pat(*ok*)"],
                       "alerts": {"providerRefs": [{"name": PROVIDER}]},
                       "group": "Sandbox", "displayName": "Production"}),
            ),
        ),
        (
            monitor_ar,
            // Staging is scaled to zero when idle (a Knative Service behind gantry's router):
            // an HTTP check through the router would be a request that wakes it every interval.
            // A TCP connect to the router's listener says whether staging can be reached at all
            // without ever reaching the app, so it sleeps as it should.
            monitor(
                "staging",
                json!({"type": "tcp", "interval": "30s", "timeout": "2s",
                       "tcp": {"host": host, "port": port},
                       "conditions": ["[CONNECTED] == true"],
                       "alerts": {"providerRefs": [{"name": PROVIDER}]},
                       "group": "Sandbox", "displayName": "Staging (router)"}),
            ),
        ),
    ]
}

/// Applies the Provider and the Monitors (server-side apply, as the pipeline's objects).
pub async fn apply(client: &kube::Client, r: &Record) -> Result<()> {
    for (ar, object) in objects(r) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {} {NAMESPACE}/{name}", ar.kind))?;
    }
    Ok(())
}

/// Deletes the Provider and the Monitors (`down` on an existing cluster).
pub async fn delete(client: &kube::Client) -> Result<()> {
    let monitors: Api<Monitor> = Api::namespaced(client.clone(), NAMESPACE);
    let providers: Api<Provider> = Api::namespaced(client.clone(), NAMESPACE);
    for name in MONITORS {
        match monitors.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting Monitor {name}")),
        }
    }
    match providers
        .delete(PROVIDER, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).context("deleting the sandbox's Provider"),
    }
}

/// Waits until both Monitors are UP.
pub async fn wait_up(client: &kube::Client, timeout: Duration) -> Result<()> {
    let api: Api<Monitor> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + timeout;
    for name in MONITORS {
        loop {
            let monitor = api.get_opt(name).await?;
            let status = monitor.as_ref().and_then(|m| m.status.as_ref());
            if status.and_then(|s| s.state.as_deref()) == Some("UP") {
                break;
            }
            if Instant::now() > deadline {
                let said = status
                    .map(|s| format!("{:?}", s.conditions))
                    .unwrap_or_else(|| "no status".into());
                bail!("Monitor {NAMESPACE}/{name} is not UP within {timeout:?}: {said}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// `cargo xtask sandbox serve-stand-in`: the stand-in application, until killed.
pub fn serve_stand_in(name: &str, port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = format!("ok: {name}\n");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        println!("{name} stand-in on 127.0.0.1:{port}");
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { body }
        });
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// `cargo xtask sandbox serve-alerts`: receives the Provider's alerts, appends each to `log`
/// (one JSON per line) and lists them on `GET /`, until killed.
pub fn serve_alerts(port: u16, log: &Path) -> Result<()> {
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let list = seen.clone();
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || {
                    let list = list.clone();
                    async move {
                        let all = list.lock().map(|l| l.clone()).unwrap_or_default();
                        axum::Json(all)
                    }
                }),
            )
            .fallback(axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                let file = file.clone();
                async move {
                    let Ok(alert) = serde_json::from_slice::<serde_json::Value>(&body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    println!(
                        "{} {}: {}",
                        alert["reason"].as_str().unwrap_or("?"),
                        alert["involvedObject"]["name"].as_str().unwrap_or("?"),
                        alert["message"].as_str().unwrap_or("")
                    );
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{alert}");
                    }
                    if let Ok(mut s) = seen.lock() {
                        s.push(alert);
                    }
                    axum::http::StatusCode::OK
                }
            }));
        println!("alert receiver on 127.0.0.1:{port}, log {}", log.display());
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

//! Prometheus metrics compatible with Flux's dashboards and alerts.
//!
//! - `gotk_reconcile_duration_seconds{kind,name,namespace}`: histogram per reconciliation.
//! - `gotk_resource_info{customresource_group,customresource_kind,customresource_version,
//!   exported_namespace,name,ready,reason,suspended,revision}`: 1 per object (the series Flux's
//!   kube-state-metrics configuration produces).
//! - `gotk_reconcile_condition{kind,name,namespace,type,status}`: the older readiness gauge
//!   that many existing dashboards still query (`type="Ready"`), plus `type="Stalled"`,
//!   `status="True"` while an object is stalled (kstatus: absent otherwise), for alerts.
//! - `gantry_uptime_up{namespace,name,type}` (1 up, 0 down), `gantry_uptime_check_duration_seconds`,
//!   `gantry_uptime_certificate_expiry_seconds`, `gantry_uptime_checks_total{result}`: one series
//!   set per Monitor ([`UptimeMetrics`]).
//! - `process_*`: resident memory, CPU seconds, open fds, threads, start time (Linux `/proc`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: String,
    name: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    kind: String,
    name: String,
    namespace: String,
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    customresource_group: String,
    customresource_kind: String,
    customresource_version: String,
    exported_namespace: String,
    name: String,
    ready: String,
    reason: String,
    suspended: String,
    revision: String,
}

/// (kind, namespace, name).
type ObjectKey = (String, String, String);

/// What `gotk_resource_info` says about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: String,
    pub kind: String,
    pub version: String,
    pub namespace: String,
    pub name: String,
    /// `True`, `False` or `Unknown`.
    pub ready: String,
    pub reason: String,
    pub suspended: bool,
    pub revision: String,
}

/// Records the time from its creation to its drop into `gotk_reconcile_duration_seconds`.
#[must_use = "the duration is recorded when the timer is dropped"]
pub struct ReconcileTimer {
    histogram: Histogram,
    started: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// All of Gantry's metrics. Cheap to clone; every controller records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconcile_duration: Family<ObjectLabels, Histogram>,
    condition: Family<ConditionLabels, Gauge>,
    info: Family<InfoLabels, Gauge>,
    /// The label set currently exported per object, so a change replaces rather than adds.
    current: Arc<Mutex<HashMap<ObjectKey, (InfoLabels, ConditionLabels)>>>,
    /// Objects exported as `Stalled=True`.
    stalled: Arc<Mutex<std::collections::HashSet<ObjectKey>>>,
    uptime: UptimeMetrics,
}

/// One Monitor's labels (`namespace`, `name`, `type`), allocated once and shared by each of
/// its series: with 10 000 Monitors, owned strings per series and per family cost ~6 MiB.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct MonitorSeries(Arc<MonitorId>);

#[derive(Debug, Hash, PartialEq, Eq)]
struct MonitorId {
    namespace: String,
    name: String,
    r#type: &'static str,
}

impl EncodeLabelSet for MonitorSeries {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let id = &*self.0;
        [
            ("namespace", id.namespace.as_str()),
            ("name", id.name.as_str()),
            ("type", id.r#type),
        ]
        .encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckResult {
    result: &'static str,
}

/// Per-Monitor series of uptime checks, in the same registry as everything else.
#[derive(Clone, Debug)]
pub struct UptimeMetrics {
    up: Family<MonitorSeries, Gauge>,
    duration: Family<MonitorSeries, Histogram>,
    certificate_expiry: Family<MonitorSeries, Gauge<f64, std::sync::atomic::AtomicU64>>,
    checks: Family<(MonitorSeries, CheckResult), prometheus_client::metrics::counter::Counter>,
}

impl UptimeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = Self {
            up: Family::default(),
            // Check latencies: 5 ms to 30 s.
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
            certificate_expiry: Family::default(),
            checks: Family::default(),
        };
        registry.register(
            "gantry_uptime_up",
            "Whether the monitored endpoint is up (1) or down (0); absent while pending.",
            this.up.clone(),
        );
        registry.register(
            "gantry_uptime_check_duration_seconds",
            "How long each uptime check took.",
            this.duration.clone(),
        );
        registry.register(
            "gantry_uptime_certificate_expiry_seconds",
            "Seconds until the endpoint's TLS certificate expires (negative once expired).",
            this.certificate_expiry.clone(),
        );
        registry.register(
            "gantry_uptime_checks",
            "Uptime checks by result (success, failure).",
            this.checks.clone(),
        );
        this
    }

    /// The labels of a Monitor's series; keep it as long as the Monitor is checked.
    pub fn series(namespace: &str, name: &str, type_: &'static str) -> MonitorSeries {
        MonitorSeries(Arc::new(MonitorId {
            namespace: namespace.to_string(),
            name: name.to_string(),
            r#type: type_,
        }))
    }

    /// Records one check.
    pub fn observe_check(
        &self,
        series: &MonitorSeries,
        success: bool,
        took: Duration,
        certificate_expiry: Option<f64>,
    ) {
        self.duration
            .get_or_create(series)
            .observe(took.as_secs_f64());
        if let Some(seconds) = certificate_expiry {
            self.certificate_expiry.get_or_create(series).set(seconds);
        }
        let result = CheckResult {
            result: if success { "success" } else { "failure" },
        };
        self.checks.get_or_create(&(series.clone(), result)).inc();
    }

    /// Sets `gantry_uptime_up`: `Some(true)` up, `Some(false)` down, `None` unknown (removed).
    pub fn set_up(&self, series: &MonitorSeries, up: Option<bool>) {
        match up {
            Some(up) => {
                self.up.get_or_create(series).set(i64::from(up));
            }
            None => {
                self.up.remove(series);
            }
        }
    }

    /// Forgets a Monitor: every series that names it.
    pub fn remove(&self, series: &MonitorSeries) {
        self.up.remove(series);
        self.duration.remove(series);
        self.certificate_expiry.remove(series);
        for result in ["success", "failure"] {
            self.checks
                .remove(&(series.clone(), CheckResult { result }));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_registered(|_| {})
    }

    /// Gantry's metrics plus whatever `register` adds to the same registry (the serving
    /// router's series), so one `/metrics` endpoint serves them all.
    pub fn with_registered(register: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        register(&mut registry);
        // Flux's buckets (fluxcd/pkg runtime/metrics): 10 ms to 100 s, by powers of ten.
        let reconcile_duration = Family::<ObjectLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.1, 1.0, 10.0, 100.0])
        });
        let condition = Family::<ConditionLabels, Gauge>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "gotk_reconcile_duration_seconds",
            "The duration in seconds of a GitOps Toolkit resource reconciliation.",
            reconcile_duration.clone(),
        );
        registry.register(
            "gotk_reconcile_condition",
            "The current condition status of a GitOps Toolkit resource reconciliation.",
            condition.clone(),
        );
        registry.register(
            "gotk_resource_info",
            "The current state of a Flux resource.",
            info.clone(),
        );
        let uptime = UptimeMetrics::register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            uptime,
            registry: Arc::new(registry),
            reconcile_duration,
            condition,
            info,
            current: Arc::default(),
            stalled: Arc::default(),
        }
    }

    /// The uptime checks' series.
    pub fn uptime(&self) -> &UptimeMetrics {
        &self.uptime
    }

    /// Records how long one reconciliation of `kind` `namespace/name` took.
    pub fn observe_reconcile(&self, kind: &str, namespace: &str, name: &str, took: Duration) {
        self.reconcile_duration
            .get_or_create(&ObjectLabels {
                kind: kind.to_string(),
                name: name.to_string(),
                namespace: namespace.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Starts timing one reconciliation; the duration is recorded when the timer is dropped,
    /// however the reconciliation ends (success, error or cancellation).
    pub fn reconcile_timer(&self, kind: &str, namespace: &str, name: &str) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self
                .reconcile_duration
                .get_or_create(&ObjectLabels {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                })
                .clone(),
            started: std::time::Instant::now(),
        }
    }

    /// Publishes an object's current readiness, replacing what was exported for it before.
    pub fn set_resource(&self, info: &ResourceInfo) {
        let key = (info.kind.clone(), info.namespace.clone(), info.name.clone());
        let info_labels = InfoLabels {
            customresource_group: info.group.clone(),
            customresource_kind: info.kind.clone(),
            customresource_version: info.version.clone(),
            exported_namespace: info.namespace.clone(),
            name: info.name.clone(),
            ready: info.ready.clone(),
            reason: info.reason.clone(),
            suspended: info.suspended.to_string(),
            revision: info.revision.clone(),
        };
        let condition_labels = ConditionLabels {
            kind: info.kind.clone(),
            name: info.name.clone(),
            namespace: info.namespace.clone(),
            r#type: "Ready".to_string(),
            status: info.ready.clone(),
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old_info, old_condition)) = current.remove(&key) {
            self.info.remove(&old_info);
            self.condition.remove(&old_condition);
        }
        self.info.get_or_create(&info_labels).set(1);
        self.condition.get_or_create(&condition_labels).set(1);
        current.insert(key, (info_labels, condition_labels));
    }

    /// Exports `gotk_reconcile_condition{type="Stalled",status="True"}` for the object while
    /// `stalled`, and nothing otherwise (kstatus writes `Stalled` only while it is True).
    pub fn set_stalled(&self, kind: &str, namespace: &str, name: &str, stalled: bool) {
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        let labels = ConditionLabels {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            r#type: "Stalled".to_string(),
            status: "True".to_string(),
        };
        let mut set = self.stalled.lock().unwrap_or_else(PoisonError::into_inner);
        if stalled {
            self.condition.get_or_create(&labels).set(1);
            set.insert(key);
        } else if set.remove(&key) {
            self.condition.remove(&labels);
        }
    }

    /// Forgets a deleted object: every series that names it.
    pub fn remove_resource(&self, kind: &str, namespace: &str, name: &str) {
        self.set_stalled(kind, namespace, name, false);
        self.reconcile_duration.remove(&ObjectLabels {
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
        });
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        if let Some((info, condition)) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
        {
            self.info.remove(&info);
            self.condition.remove(&condition);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Process metrics read from `/proc/self` on every scrape (Linux; elsewhere they are omitted).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcStat::read() else {
            return Ok(());
        };
        let gauges: [(&str, &str, f64); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stat.rss_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.vsize_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                stat.start_time,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                stat.threads,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let gauge = ConstGauge::new(fds.count() as i64);
            gauge.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        Ok(())
    }
}

struct ProcStat {
    rss_bytes: f64,
    vsize_bytes: f64,
    cpu_seconds: f64,
    start_time: f64,
    threads: f64,
}

impl ProcStat {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may itself contain spaces and parentheses.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // Indices are the stat(5) field numbers minus 3 (pid, comm and state precede).
        let ticks = 100.0; // USER_HZ is 100 on every Linux platform Gantry runs on.
        let page = 4096.0;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        Some(Self {
            cpu_seconds: (num(11)? + num(12)?) / ticks,
            threads: num(17)?,
            start_time: boot_time + num(19)? / ticks,
            vsize_bytes: num(20)?,
            rss_bytes: num(21)? * page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ready: &str) -> ResourceInfo {
        ResourceInfo {
            group: "kustomize.toolkit.fluxcd.io".into(),
            kind: "Kustomization".into(),
            version: "v1".into(),
            namespace: "flux-system".into(),
            name: "apps".into(),
            ready: ready.into(),
            reason: "ReconciliationSucceeded".into(),
            suspended: false,
            revision: "main@sha1:0123".into(),
        }
    }

    #[test]
    fn a_monitors_series_carry_its_labels_and_are_all_forgotten_with_it() {
        let metrics = Metrics::new();
        let m = metrics.uptime();
        let web = UptimeMetrics::series("prod", "web", "http");
        let db = UptimeMetrics::series("prod", "db", "tcp");
        m.observe_check(&web, true, Duration::from_millis(20), Some(3600.0));
        m.observe_check(&web, false, Duration::from_millis(40), None);
        m.set_up(&web, Some(false));
        m.observe_check(&db, true, Duration::from_millis(1), None);
        m.set_up(&db, Some(true));
        let text = metrics.encode();
        for line in [
            r#"gantry_uptime_up{namespace="prod",name="web",type="http"} 0"#,
            r#"gantry_uptime_up{namespace="prod",name="db",type="tcp"} 1"#,
            r#"gantry_uptime_checks_total{namespace="prod",name="web",type="http",result="success"} 1"#,
            r#"gantry_uptime_checks_total{namespace="prod",name="web",type="http",result="failure"} 1"#,
            r#"gantry_uptime_check_duration_seconds_count{namespace="prod",name="web",type="http"} 2"#,
            r#"gantry_uptime_certificate_expiry_seconds{namespace="prod",name="web",type="http"} 3600.0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }

        // Pending: no `up` series; the others stay.
        m.set_up(&web, None);
        let text = metrics.encode();
        assert!(
            !text.contains(r#"gantry_uptime_up{namespace="prod",name="web""#),
            "{text}"
        );
        assert!(text.contains(r#"gantry_uptime_checks_total{namespace="prod",name="web""#));

        m.remove(&UptimeMetrics::series("prod", "web", "http"));
        let text = metrics.encode();
        assert!(!text.contains(r#"name="web""#), "{text}");
        assert!(text.contains(r#"gantry_uptime_up{namespace="prod",name="db",type="tcp"} 1"#));
    }

    #[test]
    fn exports_flux_series_and_replaces_an_objects_labels() {
        let metrics = Metrics::new();
        metrics.observe_reconcile(
            "Kustomization",
            "flux-system",
            "apps",
            Duration::from_millis(40),
        );
        metrics.set_resource(&info("False"));
        metrics.set_resource(&info("True"));
        let text = metrics.encode();

        assert!(text.contains(
            "gotk_reconcile_duration_seconds_bucket{le=\"0.1\",kind=\"Kustomization\",name=\"apps\",namespace=\"flux-system\"} 1"
        ), "{text}");
        assert!(text.contains("gotk_resource_info{customresource_group=\"kustomize.toolkit.fluxcd.io\",customresource_kind=\"Kustomization\",customresource_version=\"v1\",exported_namespace=\"flux-system\",name=\"apps\",ready=\"True\""), "{text}");
        assert!(
            !text.contains("ready=\"False\""),
            "the old readiness is gone: {text}"
        );
        assert!(text.contains("gotk_reconcile_condition{kind=\"Kustomization\",name=\"apps\",namespace=\"flux-system\",type=\"Ready\",status=\"True\"} 1"), "{text}");

        metrics.set_stalled("Kustomization", "flux-system", "apps", true);
        let stalled = "gotk_reconcile_condition{kind=\"Kustomization\",name=\"apps\",namespace=\"flux-system\",type=\"Stalled\",status=\"True\"} 1";
        assert!(metrics.encode().contains(stalled), "{}", metrics.encode());
        metrics.set_stalled("Kustomization", "flux-system", "apps", false);
        assert!(
            !metrics.encode().contains("Stalled"),
            "gone once it recovers"
        );
        metrics.set_stalled("Kustomization", "flux-system", "apps", true);

        metrics.remove_resource("Kustomization", "flux-system", "apps");
        let text = metrics.encode();
        assert!(
            !text.contains("name=\"apps\",ready"),
            "deleted objects disappear"
        );
        assert!(
            !text.contains("gotk_reconcile_condition{kind=\"Kustomization\",name=\"apps\""),
            "{text}"
        );
    }

    #[test]
    fn process_metrics_are_real() {
        let text = Metrics::new().encode();
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .expect("rss exported")
            .parse::<f64>()
            .unwrap();
        assert!(
            rss > 1_000_000.0,
            "a test process uses more than 1 MB: {rss}"
        );
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}

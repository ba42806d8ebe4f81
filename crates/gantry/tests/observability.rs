//! The observability assets in `deploy/`: the Prometheus alerting rules (checked and unit-tested
//! by `promtool` from Debian's `prometheus` package), the Grafana dashboard (every query only uses
//! series and labels Gantry exports), and a real Prometheus scraping a real `gantry run`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::meta::DependencyReference;
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_runtime::metrics::{Metrics, ResourceInfo};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
use gantry_testkit::{install_crds, with_namespace};
use kube::api::{Api, PostParams};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// A Debian `prometheus` package binary; a clear failure (never a skip) when it is missing.
fn prometheus_bin(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: `apt-get install --no-install-recommends prometheus`")
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let out = run(Command::new(prometheus_bin("promtool"))
        .args(["check", "rules"])
        .arg(deploy("prometheus/gantry-rules.yaml")));
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
}

#[test]
fn the_alert_rules_fire_on_the_series_of_their_unit_tests() {
    // Each alert firing, staying quiet before its `for`, and clearing (see the file).
    let out = run(Command::new(prometheus_bin("promtool"))
        .current_dir(deploy("prometheus"))
        .args(["test", "rules", "gantry-rules.test.yaml"]));
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---- the dashboard ----

/// Metric names (as Prometheus stores them) and their labels, from Gantry's own registry.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    let metrics = Metrics::new();
    metrics.observe_reconcile("Kustomization", "ns", "app", Duration::from_millis(5));
    metrics.set_resource(&ResourceInfo {
        group: "kustomize.toolkit.fluxcd.io".into(),
        kind: "Kustomization".into(),
        version: "v1".into(),
        namespace: "ns".into(),
        name: "app".into(),
        ready: "True".into(),
        reason: "ReconciliationSucceeded".into(),
        suspended: false,
        revision: "main@sha1:0".into(),
    });
    metrics.set_stalled("Kustomization", "ns", "other", true);
    parse_exposition(&metrics.encode())
}

fn parse_exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_owned()).or_default();
        // Prometheus adds these to every scraped series.
        labels.extend(["job".to_owned(), "instance".to_owned()]);
        if let Some(rest) = line[end..].strip_prefix('{') {
            for pair in rest.split("\",") {
                if let Some((name, _)) = pair.split_once('=') {
                    labels.insert(name.trim_start_matches(',').to_owned());
                }
            }
        }
    }
    series
}

/// `(metric, label names matched)` for every series selector in a PromQL expression.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Operators, and aggregations (which may be followed by `by (...)` before their arguments).
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let b = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    let skip_to = |i: usize, close: u8| -> usize {
        let mut j = i + 1;
        while j < b.len() && b[j] != close {
            if b[j] == b'\\' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    let next_non_space = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            i = skip_to(i, b'"');
        } else if c == b'[' {
            i = skip_to(i, b']');
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let ident = &expr[start..i];
            let next = next_non_space(i);
            if GROUPING.contains(&ident) {
                if next < b.len() && b[next] == b'(' {
                    i = skip_to(next, b')');
                }
            } else if KEYWORDS.contains(&ident) || (next < b.len() && b[next] == b'(') {
                // An operator, or a function / aggregation: its arguments are scanned on.
            } else {
                let mut labels = Vec::new();
                if next < b.len() && b[next] == b'{' {
                    let close = skip_to(next, b'}');
                    let mut j = next + 1;
                    while j < close - 1 {
                        if b[j] == b'"' {
                            j = skip_to(j, b'"');
                        } else if b[j].is_ascii_alphabetic() || b[j] == b'_' {
                            let s = j;
                            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                                j += 1;
                            }
                            labels.push(expr[s..j].to_owned());
                        } else {
                            j += 1;
                        }
                    }
                    i = close;
                }
                found.push((ident.to_owned(), labels));
            }
        } else {
            i += 1;
        }
    }
    found
}

/// What is wrong with `expr` given the exported series: unknown metrics or labels.
fn problems(expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let found = selectors(expr);
    let mut out = Vec::new();
    if found.is_empty() {
        out.push(format!("no series in `{expr}`"));
    }
    for (metric, labels) in found {
        let Some(known) = exported.get(&metric) else {
            out.push(format!(
                "`{metric}` is not exported by gantry (in `{expr}`)"
            ));
            continue;
        };
        for l in labels.iter().filter(|l| !known.contains(*l)) {
            out.push(format!("`{metric}` has no label `{l}` (in `{expr}`)"));
        }
    }
    out
}

fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(all_panels(nested));
        }
    }
    out
}

#[test]
fn the_dashboard_queries_only_series_and_labels_gantry_exports() {
    let path = deploy("grafana/gantry-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("reading the dashboard");
    let dash: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let exported = exported_series();
    for expected in [
        "gotk_reconcile_condition",
        "gotk_reconcile_duration_seconds_bucket",
        "gotk_resource_info",
        "process_cpu_seconds_total",
    ] {
        assert!(exported.contains_key(expected), "{exported:?}");
    }

    // The data source is a variable, so the dashboard imports into any Grafana.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());

    let mut problems_found = Vec::new();
    let mut ids = BTreeSet::new();
    let panels = all_panels(dash["panels"].as_array().expect("panels"));
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_i64()), "duplicate id: {title}");
        assert!(panel["gridPos"].is_object(), "{title}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
            let expr = t["expr"].as_str().expect("expr");
            problems_found.extend(
                problems(expr, &exported)
                    .into_iter()
                    .map(|p| format!("{title}: {p}")),
            );
        }
    }
    // Query variables: `label_values(metric, label)`.
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], ds_ref.as_str());
        let q = v["query"]["query"].as_str().expect("variable query");
        let args = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {q}"));
        let (metric, label) = args.split_once(',').expect("metric, label");
        let known = exported.get(metric.trim());
        assert!(
            known.is_some_and(|l| l.contains(label.trim())),
            "variable {q}: not exported"
        );
    }
    assert!(problems_found.is_empty(), "{problems_found:#?}");
}

#[test]
fn the_dashboard_check_catches_what_gantry_does_not_export() {
    let exported = exported_series();
    let ok = r#"histogram_quantile(0.99, sum by (kind, le) (rate(gotk_reconcile_duration_seconds_bucket{namespace=~"$ns"}[$__rate_interval]))) or vector(0)"#;
    assert_eq!(problems(ok, &exported), Vec::<String>::new());
    assert_eq!(
        selectors(r#"count(a{x="1"} == 1) or b / on (z) c{y!~"q,r"}"#),
        vec![
            ("a".to_owned(), vec!["x".to_owned()]),
            ("b".to_owned(), vec![]),
            ("c".to_owned(), vec!["y".to_owned()])
        ]
    );
    let unknown_metric = problems("rate(gotk_reconcile_total[5m])", &exported);
    assert_eq!(unknown_metric.len(), 1, "{unknown_metric:?}");
    let unknown_label = problems(r#"gotk_resource_info{namespace="x"}"#, &exported);
    assert!(
        unknown_label[0].contains("no label `namespace`"),
        "{unknown_label:?}"
    );
}

// ---- a real Prometheus scraping a real `gantry run` ----

/// `prometheus` on 127.0.0.1 with its own storage; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(scrape_port: u16) -> Self {
        let bin = prometheus_bin("prometheus");
        let dir = tempfile::Builder::new()
            .prefix("gantry-prometheus-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: gantry\n    static_configs:\n      - targets: ['127.0.0.1:{scrape_port}']\n",
                rules = deploy("prometheus/gantry-rules.yaml").display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let mut prom = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = prom.try_get("/-/ready") {
                return prom;
            }
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30s:\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    /// `GET /api/v1/<path>` as JSON `data`.
    fn api(&self, path: &str) -> Value {
        let (status, body) = self
            .try_get(&format!("/api/v1/{path}"))
            .unwrap_or_else(|| panic!("prometheus answers /api/v1/{path}"));
        assert_eq!(status, 200, "/api/v1/{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"].clone()
    }

    /// The instant vector of `query`.
    fn query(&self, query: &str) -> Vec<Value> {
        let data = self.api(&format!("query?query={}", encode(query)));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `gantry run` for one namespace; killed when dropped.
struct Gantry {
    child: Child,
    metrics_port: u16,
    _storage: tempfile::TempDir,
}

impl Gantry {
    fn start(namespace: &str) -> Self {
        let storage = tempfile::tempdir().unwrap();
        let metrics_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args([
                "run",
                "--leader-elect=false",
                "--watch-namespace",
                namespace,
            ])
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
            .arg("--serving-addr=127.0.0.1:0")
            .arg("--uptime-addr=127.0.0.1:0")
            .arg("--storage-addr=127.0.0.1:0")
            .arg("--storage-path")
            .arg(storage.path())
            .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gantry run");
        Gantry {
            child,
            metrics_port,
            _storage: storage,
        }
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `query` until `ok` accepts its result; returns it and how long that took.
fn wait_for_series(
    prom: &Prometheus,
    query: &str,
    mut ok: impl FnMut(&[Value]) -> bool,
) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    loop {
        let result = prom.query(query);
        if ok(&result) {
            return (result, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "`{query}` never matched; last result {result:#?}\nprometheus targets: {:#}",
            prom.api("targets")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_flux_series_from_gantry_run() {
    with_namespace("prometheus", |client, ns| async move {
        install_crds(&client).await;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write(
            "deploy/settings.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: blue\n",
        )
        .commit("initial");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);
        let revision = format!("main@sha1:{}", repo.head());

        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
        let git_spec = |url: &str| GitRepositorySpec {
            url: url.into(),
            interval: "1m".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        repos
            .create(
                &PostParams::default(),
                &GitRepository::new("app", git_spec(&server.url("app.git"))),
            )
            .await
            .unwrap();
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        kustomizations
            .create(
                &PostParams::default(),
                &Kustomization::new(
                    "app",
                    KustomizationSpec {
                        interval: "1m".into(),
                        path: Some("./deploy".into()),
                        prune: true,
                        target_namespace: Some(ns.clone()),
                        source_ref: CrossNamespaceSourceReference {
                            name: "app".into(),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        // A Kustomization that depends on itself: a cycle is Stalled, the alert's input.
        kustomizations
            .create(
                &PostParams::default(),
                &Kustomization::new(
                    "loop",
                    KustomizationSpec {
                        interval: "1m".into(),
                        path: Some("./deploy".into()),
                        source_ref: CrossNamespaceSourceReference {
                            name: "app".into(),
                            ..Default::default()
                        },
                        depends_on: vec![DependencyReference {
                            name: "loop".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();

        let gantry = Gantry::start(&ns);
        let started = Instant::now();
        let prom = Prometheus::start(gantry.metrics_port);
        let ns_ = ns.clone();
        let checks = tokio::task::spawn_blocking(move || {
            let ns = ns_;
            let (ready, t_ready) = wait_for_series(
                &prom,
                &format!(r#"gotk_reconcile_condition{{namespace="{ns}",type="Ready",status="True"}}"#),
                |r| r.len() == 2,
            );
            let kinds: BTreeSet<&str> = ready.iter().map(|s| label(s, "kind")).collect();
            assert_eq!(kinds, BTreeSet::from(["GitRepository", "Kustomization"]));
            for s in &ready {
                assert_eq!(label(s, "job"), "gantry");
                assert_eq!(label(s, "name"), "app");
                assert_eq!(s["value"][1], "1");
            }

            let (info, _) = wait_for_series(
                &prom,
                &format!(r#"gotk_resource_info{{exported_namespace="{ns}",name="app"}}"#),
                |r| r.len() == 2 && r.iter().all(|s| label(s, "ready") == "True"),
            );
            for s in &info {
                assert_eq!(label(s, "revision"), revision, "{s}");
                assert_eq!(label(s, "suspended"), "false");
                assert_eq!(label(s, "customresource_version"), "v1");
                let group = match label(s, "customresource_kind") {
                    "GitRepository" => "source.toolkit.fluxcd.io",
                    "Kustomization" => "kustomize.toolkit.fluxcd.io",
                    other => panic!("unexpected kind {other}"),
                };
                assert_eq!(label(s, "customresource_group"), group);
            }

            let (buckets, _) = wait_for_series(
                &prom,
                &format!(r#"gotk_reconcile_duration_seconds_bucket{{namespace="{ns}",name="app"}}"#),
                |r| r.len() == 12,
            );
            let les: BTreeSet<&str> = buckets.iter().map(|s| label(s, "le")).collect();
            assert_eq!(
                les,
                BTreeSet::from(["0.01", "0.1", "1.0", "10.0", "100.0", "+Inf"])
            );

            let (stalled, _) = wait_for_series(
                &prom,
                &format!(r#"gotk_reconcile_condition{{namespace="{ns}",type="Stalled",status="True"}}"#),
                |r| r.len() == 1,
            );
            assert_eq!(label(&stalled[0], "name"), "loop");
            assert_eq!(label(&stalled[0], "kind"), "Kustomization");

            // The shipped rules load into a real Prometheus and see the stalled object
            // (pending: its `for` is 2 minutes).
            let rules = prom.api("rules");
            let loaded: Vec<(String, String)> = rules["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap().to_owned(),
                        r["health"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            assert_eq!(loaded.len(), 5, "{rules:#}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let alerts = prom.api("alerts");
                let pending = alerts["alerts"].as_array().unwrap().iter().any(|a| {
                    a["labels"]["alertname"] == "GantryResourceStalled"
                        && a["labels"]["name"] == "loop"
                        && a["labels"]["namespace"] == ns.as_str()
                        && a["state"] == "pending"
                });
                if pending {
                    break;
                }
                assert!(Instant::now() < deadline, "no pending stall alert: {alerts:#}");
                std::thread::sleep(Duration::from_millis(250));
            }
            let rules = prom.api("rules");
            for r in rules["groups"][0]["rules"].as_array().unwrap() {
                assert_eq!(r["health"], "ok", "{r:#}");
            }
            t_ready
        });
        let t_ready = checks.await.unwrap();
        eprintln!(
            "Ready series in Prometheus {t_ready:?} after Prometheus was ready ({:?} after gantry started)",
            started.elapsed()
        );
        drop(gantry);
    })
    .await;
}

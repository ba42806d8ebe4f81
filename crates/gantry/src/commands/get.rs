//! `gantry get all` and `gantry tree`: what a person checks first.
//!
//! `get all` lists every Flux object Gantry serves (sources, kustomizations, image
//! repositories, policies and automations, receivers, alerts, providers, Knative Services and
//! Revisions) with Ready, the revision or latest value (a Knative Service's URL), suspension, when Ready last changed and the message. `tree` walks a
//! Kustomization's inventory, recursing into Kustomizations it applied, and shows each object's
//! health as the health checks judge it, and under a Knative Service its Revisions.
//!
//! Objects are read as untyped JSON through the dynamic API, so a kind whose CRD is not
//! installed is skipped rather than failing the listing.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gantry_core::kustomize::inventory::{Inventory, ObjectId};
use gantry_core::kustomize::kstatus;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde_json::Value;

/// A kind `get all` lists: group, version, kind, plural.
struct Kind(&'static str, &'static str, &'static str, &'static str);

const KINDS: &[Kind] = &[
    Kind(
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
        "gitrepositories",
    ),
    Kind(
        "source.toolkit.fluxcd.io",
        "v1",
        "OCIRepository",
        "ocirepositories",
    ),
    Kind(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    ),
    Kind(
        "image.toolkit.fluxcd.io",
        "v1",
        "ImageRepository",
        "imagerepositories",
    ),
    Kind(
        "image.toolkit.fluxcd.io",
        "v1",
        "ImagePolicy",
        "imagepolicies",
    ),
    Kind(
        "image.toolkit.fluxcd.io",
        "v1",
        "ImageUpdateAutomation",
        "imageupdateautomations",
    ),
    Kind(
        "notification.toolkit.fluxcd.io",
        "v1",
        "Receiver",
        "receivers",
    ),
    Kind(
        "notification.toolkit.fluxcd.io",
        "v1beta3",
        "Alert",
        "alerts",
    ),
    Kind(
        "notification.toolkit.fluxcd.io",
        "v1beta3",
        "Provider",
        "providers",
    ),
    Kind("serving.knative.dev", "v1", KSVC, "services"),
    Kind("serving.knative.dev", "v1", REVISION, "revisions"),
];

/// Knative's kinds as `get all` names them (`Service` alone would read as Kubernetes' own).
const KSVC: &str = "ksvc";
const REVISION: &str = "Revision";

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list: `all` (every kind Gantry serves) or `ksvc` (Knative Services and their URLs).
    #[arg(value_parser = ["all", "ksvc"])]
    pub what: String,
    /// Namespace to list.
    #[arg(
        short,
        long,
        default_value = "flux-system",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: String,
    /// List every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Debug, Args)]
pub struct TreeArgs {
    /// `kustomization` (optional, as in `flux tree kustomization NAME`) and the name.
    #[arg(num_args = 1..=2, required = true, value_name = "[kustomization] NAME")]
    pub target: Vec<String>,
    /// Namespace of the Kustomization.
    #[arg(short, long, default_value = "flux-system")]
    pub namespace: String,
}

pub fn run_get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = Client::try_default()
            .await
            .context("connecting to the cluster")?;
        let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
        let mut rows = Vec::new();
        for kind in KINDS.iter().filter(|k| args.what == "all" || k.2 == KSVC) {
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(kind.0, kind.1, kind.2),
                kind.3,
            );
            let api: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                // The CRD is not installed: nothing of that kind to show.
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("listing {}", kind.3));
                }
            };
            for obj in list {
                let json = serde_json::to_value(&obj).context("reading an object")?;
                rows.push(summarize(kind.2, &json, jiff::Timestamp::now()));
            }
        }
        if rows.is_empty() {
            let scope =
                namespace.map_or("any namespace".to_string(), |ns| format!("namespace {ns}"));
            println!("no Flux objects found in {scope}");
            return Ok(ExitCode::SUCCESS);
        }
        print!("{}", table(&rows, args.all_namespaces));
        // Like `kubectl wait`-style checks in scripts: non-zero when something is not Ready.
        let failing = rows.iter().any(|r| r.ready == "False");
        Ok(if failing {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

pub fn run_tree(args: &TreeArgs) -> anyhow::Result<ExitCode> {
    let name = match args.target.as_slice() {
        [name] => name.clone(),
        [kind, name] if kind.eq_ignore_ascii_case("kustomization") || kind == "ks" => name.clone(),
        [kind, _] => bail!("tree shows Kustomizations only, not {kind:?}"),
        _ => unreachable!("clap allows one or two values"),
    };
    block_on(async {
        let client = Client::try_default()
            .await
            .context("connecting to the cluster")?;
        let mut out = String::new();
        let root = ObjectId::new(
            args.namespace.as_str(),
            name.as_str(),
            "kustomize.toolkit.fluxcd.io",
            "Kustomization",
        );
        let ks = get_object(&client, &root, "v1")
            .await?
            .with_context(|| format!("Kustomization {}/{name} not found", args.namespace))?;
        let summary = summarize("Kustomization", &ks, jiff::Timestamp::now());
        writeln!(
            out,
            "Kustomization/{}/{}  Ready={}  {}",
            args.namespace, name, summary.ready, summary.message
        )?;
        walk(&client, &ks, "", &mut out, 0).await?;
        print!("{out}");
        Ok(ExitCode::SUCCESS)
    })
}

fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

// Prints the inventory of `ks` below `prefix`, recursing into Kustomizations it applied.
fn walk<'a>(
    client: &'a Client,
    ks: &'a Value,
    prefix: &'a str,
    out: &'a mut String,
    depth: usize,
) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move {
        // A Kustomization that applies itself (or a cycle) must not recurse forever.
        if depth > 16 {
            writeln!(out, "{prefix}└── (nesting deeper than 16 levels not shown)")?;
            return Ok(());
        }
        let entries = ks
            .pointer("/status/inventory/entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .filter_map(|e| Some((e.get("id")?.as_str()?, e.get("v")?.as_str()?)))
            .collect();
        let inventory = Inventory::parse(pairs).context("reading status.inventory")?;
        let count = inventory.entries.len();
        for (i, entry) in inventory.entries.iter().enumerate() {
            let last = i + 1 == count;
            let (branch, indent) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            let live = get_object(client, &entry.id, &entry.version).await?;
            let health = match &live {
                Some(obj) => kstatus::compute(obj),
                None => kstatus::Health::not_found(),
            };
            writeln!(
                out,
                "{prefix}{branch}{}  {}  {}",
                entry.id.display(),
                health.status,
                health.message
            )?;
            let nested =
                entry.id.group == "kustomize.toolkit.fluxcd.io" && entry.id.kind == "Kustomization";
            if let (true, Some(child)) = (nested, &live) {
                walk(client, child, &format!("{prefix}{indent}"), out, depth + 1).await?;
            }
            if entry.id.group == "serving.knative.dev" && entry.id.kind == "Service" {
                revisions(
                    client,
                    &entry.id,
                    live.as_ref(),
                    &format!("{prefix}{indent}"),
                    out,
                )
                .await?;
            }
        }
        Ok(())
    })
}

// Prints the Revisions of Knative Service `id` below `prefix`, with their share of the traffic.
async fn revisions(
    client: &Client,
    id: &ObjectId,
    live: Option<&Value>,
    prefix: &str,
    out: &mut String,
) -> anyhow::Result<()> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &id.namespace, &resource);
    let selector = format!("serving.knative.dev/service={}", id.name);
    let list = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(err) => return Err(err).context("listing Revisions"),
    };
    let traffic = live
        .and_then(|s| s.pointer("/status/traffic"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let count = list.items.len();
    for (i, rev) in list.items.into_iter().enumerate() {
        let json = serde_json::to_value(&rev)?;
        let row = summarize(REVISION, &json, jiff::Timestamp::now());
        let name = rev.metadata.name.unwrap_or_default();
        let percent: i64 = traffic
            .iter()
            .filter(|t| t.get("revisionName").and_then(Value::as_str) == Some(&name))
            .filter_map(|t| t.get("percent").and_then(Value::as_i64))
            .sum();
        let branch = if i + 1 == count {
            "└── "
        } else {
            "├── "
        };
        writeln!(
            out,
            "{prefix}{branch}Revision/{}/{name}  Ready={}  {percent}% traffic  {}",
            id.namespace, row.ready, row.revision
        )?;
    }
    Ok(())
}

// Reads one object as JSON; `None` when it does not exist (or its kind is gone).
async fn get_object(
    client: &Client,
    id: &ObjectId,
    version: &str,
) -> anyhow::Result<Option<Value>> {
    let gvk = GroupVersionKind::gvk(&id.group, version, &id.kind);
    let (resource, caps) = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(found) => found,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("discovering {}", id.display())),
    };
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), &id.namespace, &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    match api.get_opt(&id.name).await {
        Ok(Some(obj)) => Ok(Some(serde_json::to_value(obj)?)),
        Ok(None) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", id.display())),
    }
}

/// One line of `get all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub kind_name: String,
    pub ready: String,
    pub revision: String,
    pub suspended: bool,
    pub last_change: String,
    pub message: String,
}

/// What `get all` shows for one object of `kind`, with ages relative to `now`.
pub fn summarize(kind: &str, obj: &Value, now: jiff::Timestamp) -> Row {
    let text = |path: &str| {
        obj.pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let ready = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|conds| {
            conds
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        });
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    let (mut status, mut message, changed) = match ready {
        Some(c) => (
            c.get("status")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
                .to_string(),
            c.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            c.get("lastTransitionTime")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ),
        None => (
            "Unknown".to_string(),
            "waiting to be reconciled".to_string(),
            "",
        ),
    };
    // A Ready condition from an older generation says nothing about the current spec.
    if status == "True" && generation.is_some() && observed.is_some() && generation != observed {
        status = "Unknown".into();
        message = format!(
            "reconciling new generation {}",
            generation.unwrap_or_default()
        );
    }
    let revision = match kind {
        "GitRepository" | "OCIRepository" => text("/status/artifact/revision").to_string(),
        "Kustomization" => text("/status/lastAppliedRevision").to_string(),
        "ImageRepository" => match obj
            .pointer("/status/lastScanResult/tagCount")
            .and_then(Value::as_i64)
        {
            Some(n) => format!("{n} tags"),
            None => String::new(),
        },
        "ImagePolicy" => {
            let (image, tag) = (
                text("/status/latestRef/name"),
                text("/status/latestRef/tag"),
            );
            if tag.is_empty() {
                String::new()
            } else {
                format!("{image}:{tag}")
            }
        }
        "ImageUpdateAutomation" => text("/status/lastPushCommit").to_string(),
        "Receiver" => text("/status/webhookPath").to_string(),
        KSVC => text("/status/url").to_string(),
        REVISION => revision_replicas(obj),
        _ => String::new(),
    };
    Row {
        namespace: text("/metadata/namespace").to_string(),
        kind_name: format!("{kind}/{}", text("/metadata/name")),
        ready: status,
        revision,
        suspended: obj
            .pointer("/spec/suspend")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        last_change: age(changed, now),
        message: message.lines().next().unwrap_or_default().to_string(),
    }
}

/// A Revision's pods: `ready/desired replicas`.
fn revision_replicas(obj: &Value) -> String {
    let count = |path: &str| obj.pointer(path).and_then(Value::as_i64);
    match (
        count("/status/actualReplicas"),
        count("/status/desiredReplicas"),
    ) {
        (Some(actual), Some(desired)) => format!("{actual}/{desired} replicas"),
        _ => String::new(),
    }
}

/// `45s`, `3m`, `2h`, `5d` since `time` (RFC 3339); empty when unknown.
pub fn age(time: &str, now: jiff::Timestamp) -> String {
    let Ok(then) = time.parse::<jiff::Timestamp>() else {
        return String::new();
    };
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The rows as aligned columns.
pub fn table(rows: &[Row], with_namespace: bool) -> String {
    let mut lines: Vec<Vec<String>> = vec![];
    let mut header = vec![];
    if with_namespace {
        header.push("NAMESPACE");
    }
    header.extend([
        "NAME",
        "READY",
        "REVISION",
        "SUSPENDED",
        "LAST CHANGE",
        "MESSAGE",
    ]);
    lines.push(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        let mut cells = vec![];
        if with_namespace {
            cells.push(r.namespace.clone());
        }
        cells.extend([
            r.kind_name.clone(),
            r.ready.clone(),
            r.revision.clone(),
            r.suspended.to_string(),
            r.last_change.clone(),
            r.message.clone(),
        ]);
        lines.push(cells);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            if c + 1 == columns {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn knative_services_show_their_url_and_revisions_their_replicas() {
        let ksvc = json!({
            "metadata": { "name": "hello", "namespace": "team", "generation": 2 },
            "status": {
                "observedGeneration": 2,
                "url": "http://hello.team.svc.cluster.local",
                "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T11:59:00Z" }]
            }
        });
        let row = summarize(KSVC, &ksvc, now());
        assert_eq!(row.kind_name, "ksvc/hello");
        assert_eq!(row.revision, "http://hello.team.svc.cluster.local");
        assert_eq!(row.ready, "True");
        let rev = json!({
            "metadata": { "name": "hello-00001", "namespace": "team" },
            "status": { "actualReplicas": 0, "desiredReplicas": 0,
                "conditions": [{ "type": "Ready", "status": "True" }] }
        });
        assert_eq!(summarize(REVISION, &rev, now()).revision, "0/0 replicas");
    }

    #[test]
    fn summarizes_each_kind_by_its_own_revision_field() {
        let repo = json!({
            "metadata": {"name": "app", "namespace": "flux-system", "generation": 2},
            "spec": {"suspend": true},
            "status": {"observedGeneration": 2, "artifact": {"revision": "main@sha1:abc"},
                "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T11:57:00Z",
                    "message": "stored artifact for revision 'main@sha1:abc'\nsecond line"}]}
        });
        let row = summarize("GitRepository", &repo, now());
        assert_eq!(row.kind_name, "GitRepository/app");
        assert_eq!(row.ready, "True");
        assert_eq!(row.revision, "main@sha1:abc");
        assert!(row.suspended);
        assert_eq!(row.last_change, "3m");
        assert_eq!(row.message, "stored artifact for revision 'main@sha1:abc'");

        let oci = json!({"metadata": {"name": "manifests"},
            "status": {"artifact": {"revision": "v1@sha256:abc"}}});
        let row = summarize("OCIRepository", &oci, now());
        assert_eq!(
            (row.kind_name.as_str(), row.revision.as_str()),
            ("OCIRepository/manifests", "v1@sha256:abc")
        );

        let policy = json!({"metadata": {"name": "p"},
            "status": {"latestRef": {"name": "reg/app", "tag": "1.2.3"}}});
        let row = summarize("ImagePolicy", &policy, now());
        assert_eq!(row.revision, "reg/app:1.2.3");
        assert_eq!(row.ready, "Unknown");
        assert_eq!(row.message, "waiting to be reconciled");

        let repo =
            json!({"metadata": {"name": "r"}, "status": {"lastScanResult": {"tagCount": 42}}});
        assert_eq!(
            summarize("ImageRepository", &repo, now()).revision,
            "42 tags"
        );
    }

    #[test]
    fn a_ready_condition_of_an_older_generation_is_not_ready() {
        let ks = json!({
            "metadata": {"name": "apps", "generation": 3},
            "status": {"observedGeneration": 2, "conditions": [
                {"type": "Ready", "status": "True", "message": "Applied revision: x"}]}
        });
        let row = summarize("Kustomization", &ks, now());
        assert_eq!(row.ready, "Unknown");
        assert_eq!(row.message, "reconciling new generation 3");
    }

    #[test]
    fn ages_and_table_alignment() {
        assert_eq!(age("2026-01-01T11:59:30Z", now()), "30s");
        assert_eq!(age("2026-01-01T09:00:00Z", now()), "3h");
        assert_eq!(age("2026-01-01T11:30:00Z", now()), "30m");
        assert_eq!(age("2025-12-30T12:00:00Z", now()), "2d");
        assert_eq!(age("not a time", now()), "");
        let rows = vec![
            Row {
                namespace: "a".into(),
                kind_name: "GitRepository/x".into(),
                ready: "True".into(),
                revision: "r".into(),
                suspended: false,
                last_change: "1m".into(),
                message: "ok".into(),
            },
            Row {
                namespace: "bb".into(),
                kind_name: "Kustomization/longer-name".into(),
                ready: "False".into(),
                revision: String::new(),
                suspended: false,
                last_change: String::new(),
                message: "failed".into(),
            },
        ];
        let out = table(&rows, true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("READY").unwrap();
        assert_eq!(&lines[1][col..col + 4], "True");
        assert_eq!(&lines[2][col..col + 5], "False");
        assert!(lines[2].ends_with("failed"));
    }
}

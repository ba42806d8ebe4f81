//! The cluster side: fills the routing table from Knative Services, Revisions and their Pods,
//! and scales Revisions' Deployments through the `/scale` subresource.
//!
//! - Services: `status.url`, `status.address.url` and the cluster-local names
//!   (`{name}.{namespace}`, `.svc`, `.svc.cluster.local`) route to `status.traffic` (resolved by
//!   the serving controller); each tagged target's `url` routes to its Revision alone.
//! - Revisions: `containerConcurrency`, `timeoutSeconds`/`responseStartTimeoutSeconds`, an h2c
//!   port, the readiness probe's `httpGet.path`, the `autoscaling.knative.dev/` annotations.
//! - Pods labelled `serving.knative.dev/revision` with an IP and not terminating: endpoints
//!   `podIP:containerPort` (the router probes them itself before sending anything).
//! - Deployments `<revision>-deployment`: `spec.replicas` is what the router believes.
//!
//! Every replica of `gantry run` runs this and serves the data path; only the leader runs the
//! autoscaler. A standby that finds a Revision at zero wakes it itself (a wake only ever raises
//! the replica count), so it never answers 503 for not being the leader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use gantry_api::serving::v1::{Revision, Service};
use gantry_api::serving::{
    ACTIVATION_SCALE_ANNOTATION, MAX_SCALE_ANNOTATION, METRIC_ANNOTATION, MIN_SCALE_ANNOTATION,
    REVISION_LABEL, SCALE_TO_ZERO_POD_RETENTION_ANNOTATION, TARGET_ANNOTATION,
    TARGET_UTILIZATION_ANNOTATION, WINDOW_ANNOTATION,
};
use gantry_core::serving::autoscale::{Metric, Settings, resolve_target};
use gantry_runtime::events::{Events, Severity};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};

use crate::table::{Endpoint, Probe, RevisionConfig, RevisionKey, Target};
use crate::{Router, ScaleReason, Scaler};

/// Field manager of the router's `/scale` patches.
pub const FIELD_MANAGER: &str = "gantry-autoscaler";

/// Global autoscaler settings (`gantry run` flags, Knative's `config-autoscaler` defaults).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub stable_window: Duration,
    pub scale_to_zero_grace: Duration,
    pub enable_scale_to_zero: bool,
    /// Used when a Revision sets no `timeoutSeconds`.
    pub request_timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            stable_window: gantry_core::serving::autoscale::DEFAULT_STABLE_WINDOW,
            scale_to_zero_grace: gantry_core::serving::autoscale::DEFAULT_SCALE_TO_ZERO_GRACE,
            enable_scale_to_zero: true,
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// The Deployment serving a Revision (named by the serving controller, shortened as Knative
/// does when long).
pub fn deployment_name(revision: &str) -> String {
    gantry_core::serving::naming::deployment_name(revision)
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.filter(|v| *v > 0).map(|v| v as u64)
}

/// A Revision's router settings from its spec and annotations over the global defaults.
/// Annotation values the serving controller refuses (it reports them) fall back to defaults here.
pub fn revision_config(rev: &Revision, d: &Defaults) -> RevisionConfig {
    let ann = rev.annotations();
    let get = |k: &str| ann.get(k).map(String::as_str);
    let num = |k: &str| get(k).and_then(|v| v.trim().parse::<f64>().ok());
    let count = |k: &str| get(k).and_then(|v| v.trim().parse::<u32>().ok());
    let seconds = |k: &str| get(k).and_then(|v| gantry_api::meta::parse_duration(v.trim()).ok());
    let cc = rev
        .spec
        .container_concurrency
        .filter(|c| *c > 0)
        .map_or(0, |c| c as u32);
    let metric = get(METRIC_ANNOTATION)
        .and_then(Metric::parse)
        .unwrap_or_default();
    let utilization = num(TARGET_UTILIZATION_ANNOTATION).map(|p| p / 100.0);
    let (target, _) = resolve_target(metric, cc, num(TARGET_ANNOTATION), utilization);
    let autoscale = Settings {
        metric,
        target,
        stable_window: seconds(WINDOW_ANNOTATION).unwrap_or(d.stable_window),
        min_scale: count(MIN_SCALE_ANNOTATION).unwrap_or(0),
        max_scale: count(MAX_SCALE_ANNOTATION).unwrap_or(0),
        activation_scale: count(ACTIVATION_SCALE_ANNOTATION).unwrap_or(1).max(1),
        enable_scale_to_zero: d.enable_scale_to_zero,
        scale_to_zero_grace: d.scale_to_zero_grace,
        scale_to_zero_retention: seconds(SCALE_TO_ZERO_POD_RETENTION_ANNOTATION)
            .unwrap_or_default(),
        ..Settings::default()
    };
    let timeout = positive(rev.spec.timeout_seconds).map_or(d.request_timeout, Duration::from_secs);
    let timeout = positive(rev.spec.response_start_timeout_seconds)
        .map_or(timeout, |s| timeout.min(Duration::from_secs(s)));
    let container = rev.spec.container();
    let probe = container
        .and_then(|c| c.readiness_probe.as_ref())
        .and_then(|p| p.pointer("/httpGet/path"))
        .and_then(|p| p.as_str())
        .map_or(Probe::Tcp, |path| Probe::Http {
            path: path.to_string(),
        });
    RevisionConfig {
        container_concurrency: cc,
        timeout,
        h2c: container.is_some_and(|c| c.h2c()),
        probe,
        autoscale,
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| crate::table::normalize_host(host))
}

/// The hosts a Service answers on and where each sends its requests.
pub fn service_routes(svc: &Service) -> Vec<(String, Vec<Target>)> {
    let Some(status) = svc.status.as_ref() else {
        return Vec::new();
    };
    let namespace = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let key = |rev: &str| RevisionKey::new(namespace.clone(), rev);
    let main: Vec<Target> = status
        .traffic
        .iter()
        .filter_map(|t| {
            let percent = t.percent.filter(|p| *p > 0)? as u32;
            Some(Target {
                revision: key(t.revision_name.as_deref()?),
                percent,
            })
        })
        .collect();
    let mut out = Vec::new();
    if !main.is_empty() {
        let mut hosts: Vec<String> = [
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ]
        .into();
        hosts.extend(status.url.as_deref().and_then(url_host));
        hosts.extend(
            status
                .address
                .as_ref()
                .and_then(|a| a.url.as_deref())
                .and_then(url_host),
        );
        hosts.sort();
        hosts.dedup();
        out.extend(hosts.into_iter().map(|h| (h, main.clone())));
    }
    for t in &status.traffic {
        if let (Some(_), Some(url), Some(rev)) = (&t.tag, &t.url, &t.revision_name)
            && let Some(host) = url_host(url)
        {
            out.push((
                host,
                vec![Target {
                    revision: key(rev),
                    percent: 100,
                }],
            ));
        }
    }
    out
}

/// The pod's endpoint: its IP and the serving container's first port (8080 by default).
pub fn pod_endpoint(pod: &Pod) -> Option<(RevisionKey, Endpoint)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let revision = pod.labels().get(REVISION_LABEL)?;
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .first()
        .and_then(|c| c.ports.as_ref()?.first().map(|p| p.container_port))
        .unwrap_or(gantry_api::serving::DEFAULT_USER_PORT);
    let key = RevisionKey::new(pod.namespace().unwrap_or_default(), revision);
    Some((
        key,
        Endpoint {
            addr: SocketAddr::new(ip, u16::try_from(port).ok()?),
        },
    ))
}

fn watch_config() -> watcher::Config {
    watcher::Config::default()
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the four watches until the process stops (each restarts with backoff on errors).
pub async fn run(client: Client, router: Router, namespace: Option<String>, defaults: Defaults) {
    let ns = namespace.as_deref();
    tokio::join!(
        watch_services(api::<Service>(&client, ns), router.clone()),
        watch_revisions(api::<Revision>(&client, ns), router.clone(), defaults),
        watch_pods(api::<Pod>(&client, ns), router.clone()),
        watch_deployments(api::<Deployment>(&client, ns), router),
    );
}

/// One Service's hosts and their targets.
type HostRoutes = Vec<(String, Vec<Target>)>;

async fn watch_services(api: Api<Service>, router: Router) {
    let mut by_service: BTreeMap<(String, String), HostRoutes> = BTreeMap::new();
    let mut fresh = None;
    let mut events = watcher(api).boxed();
    while let Some(event) = next(&mut events, "Knative Services").await {
        let id = |s: &Service| (s.namespace().unwrap_or_default(), s.name_any());
        match event {
            Event::Apply(s) => {
                by_service.insert(id(&s), service_routes(&s));
            }
            Event::Delete(s) => {
                by_service.remove(&id(&s));
            }
            Event::Init => fresh = Some(BTreeMap::new()),
            Event::InitApply(s) => {
                if let Some(f) = fresh.as_mut() {
                    f.insert(id(&s), service_routes(&s));
                }
            }
            Event::InitDone => by_service = fresh.take().unwrap_or_default(),
        }
        if fresh.is_none() {
            let table: HashMap<String, Vec<Target>> =
                by_service.values().flatten().cloned().collect();
            router.replace_routes(&table);
        }
    }
}

async fn watch_revisions(api: Api<Revision>, router: Router, defaults: Defaults) {
    // A set: every status write of a Revision is another Apply of a key already known.
    let mut known: HashSet<RevisionKey> = HashSet::new();
    let mut fresh: Option<HashSet<RevisionKey>> = None;
    let mut events = watcher(api).boxed();
    while let Some(event) = next(&mut events, "Knative Revisions").await {
        let key = |r: &Revision| RevisionKey::new(r.namespace().unwrap_or_default(), r.name_any());
        match event {
            Event::Apply(r) | Event::InitApply(r) => {
                let k = key(&r);
                router.set_revision(&k, revision_config(&r, &defaults));
                fresh.as_mut().unwrap_or(&mut known).insert(k);
            }
            Event::Delete(r) => {
                let k = key(&r);
                known.remove(&k);
                router.remove_revision(&k);
            }
            Event::Init => fresh = Some(HashSet::new()),
            Event::InitDone => {
                let now = fresh.take().unwrap_or_default();
                for gone in known.difference(&now) {
                    router.remove_revision(gone);
                }
                known = now;
            }
        }
    }
}

async fn watch_pods(api: Api<Pod>, router: Router) {
    let api = api;
    let mut pods: HashMap<RevisionKey, BTreeMap<String, Endpoint>> = HashMap::new();
    let mut fresh: Option<HashMap<RevisionKey, BTreeMap<String, Endpoint>>> = None;
    let config = watch_config().labels(REVISION_LABEL);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let publish = |pods: &HashMap<RevisionKey, BTreeMap<String, Endpoint>>, key: &RevisionKey| {
        let list: Vec<Endpoint> = pods
            .get(key)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        router.set_endpoints(key, &list);
    };
    let pod_id = |p: &Pod| p.name_any();
    while let Some(event) = next(&mut events, "serving Pods").await {
        match event {
            Event::Apply(p) => {
                let name = pod_id(&p);
                // A pod may lose its IP or start terminating: drop it from wherever it was.
                let mut touched: Vec<RevisionKey> = pods
                    .iter_mut()
                    .filter_map(|(k, m)| m.remove(&name).map(|_| k.clone()))
                    .collect();
                if let Some((k, e)) = pod_endpoint(&p) {
                    pods.entry(k.clone()).or_default().insert(name, e);
                    touched.push(k);
                }
                for k in touched {
                    publish(&pods, &k);
                }
            }
            Event::Delete(p) => {
                let name = pod_id(&p);
                let touched: Vec<RevisionKey> = pods
                    .iter_mut()
                    .filter_map(|(k, m)| m.remove(&name).map(|_| k.clone()))
                    .collect();
                for k in touched {
                    publish(&pods, &k);
                }
            }
            Event::Init => fresh = Some(HashMap::new()),
            Event::InitApply(p) => {
                if let (Some(f), Some((k, e))) = (fresh.as_mut(), pod_endpoint(&p)) {
                    f.entry(k).or_default().insert(pod_id(&p), e);
                }
            }
            Event::InitDone => {
                let now = fresh.take().unwrap_or_default();
                let mut keys: Vec<RevisionKey> = pods.keys().chain(now.keys()).cloned().collect();
                keys.sort();
                keys.dedup();
                pods = now;
                for k in keys {
                    publish(&pods, &k);
                }
            }
        }
    }
}

async fn watch_deployments(api: Api<Deployment>, router: Router) {
    let config = watch_config().labels(REVISION_LABEL);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = next(&mut events, "serving Deployments").await {
        let (Event::Apply(d) | Event::InitApply(d)) = event else {
            continue;
        };
        let Some(rev) = d.labels().get(REVISION_LABEL).cloned() else {
            continue;
        };
        let key = RevisionKey::new(d.namespace().unwrap_or_default(), rev);
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        router.set_replicas(&key, i64::from(replicas));
    }
}

fn watcher<K>(api: Api<K>) -> futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watch_config())
        .default_backoff()
        .boxed()
}

async fn next<K>(
    events: &mut futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>,
    what: &str,
) -> Option<Event<K>> {
    loop {
        match events.try_next().await {
            Ok(Some(e)) => return Some(e),
            Ok(None) => return None,
            // The backoff wrapper retries; one log line per failure.
            Err(err) => tracing::warn!(%err, "watching {what}"),
        }
    }
}

/// Scales Revisions' Deployments through `/scale`, with an Event on the Revision for every wake,
/// sleep and failure.
pub struct KubeScaler {
    client: Client,
    events: Events,
}

impl KubeScaler {
    pub fn new(client: Client, events: Events) -> Arc<Self> {
        Arc::new(KubeScaler { client, events })
    }
}

fn revision_ref(key: &RevisionKey) -> ObjectReference {
    ObjectReference {
        api_version: Some("serving.knative.dev/v1".into()),
        kind: Some("Revision".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        ..Default::default()
    }
}

impl Scaler for KubeScaler {
    fn scale(
        &self,
        key: &RevisionKey,
        replicas: u32,
        reason: ScaleReason,
    ) -> BoxFuture<'static, Result<(), String>> {
        let client = self.client.clone();
        let events = self.events.clone();
        let key = key.clone();
        Box::pin(async move {
            let api: Api<Deployment> = Api::namespaced(client, &key.namespace);
            let name = deployment_name(&key.name);
            let result = async {
                if reason == ScaleReason::Wake {
                    // Several replicas may wake at once: only ever raise.
                    let current = api
                        .get_scale(&name)
                        .await?
                        .spec
                        .and_then(|s| s.replicas)
                        .unwrap_or(0);
                    if current >= replicas as i32 {
                        return Ok(false);
                    }
                }
                let patch = serde_json::json!({ "spec": { "replicas": replicas } });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                api.patch_scale(&name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| true)
            }
            .await;
            let object = revision_ref(&key);
            match (result, reason) {
                (Ok(true), ScaleReason::Wake) => {
                    let msg = format!("A request woke the revision: scaling to {replicas}");
                    events
                        .publish(object, Severity::Info, "Wake", &msg, BTreeMap::new())
                        .await;
                    Ok(())
                }
                (Ok(true), ScaleReason::Sleep) => {
                    let msg = "Idle for the stable window and grace period: scaled to zero";
                    events
                        .publish(object, Severity::Info, "Sleep", msg, BTreeMap::new())
                        .await;
                    Ok(())
                }
                (Ok(_), _) => Ok(()),
                (Err(err), _) => {
                    let msg = format!("Scaling deployment {name} to {replicas} failed: {err}");
                    events
                        .publish(
                            object,
                            Severity::Error,
                            "ScaleFailed",
                            &msg,
                            BTreeMap::new(),
                        )
                        .await;
                    Err(msg)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::serving::v1::{ServiceSpec, ServiceStatus, TrafficTarget};

    #[test]
    fn service_routes_cover_public_cluster_local_and_tag_hosts() {
        let mut svc = Service::new("hello", ServiceSpec::default());
        svc.metadata.namespace = Some("team".into());
        svc.status = Some(ServiceStatus {
            url: Some("http://hello.team.example.com".into()),
            traffic: vec![
                TrafficTarget {
                    revision_name: Some("hello-00001".into()),
                    percent: Some(80),
                    ..Default::default()
                },
                TrafficTarget {
                    revision_name: Some("hello-00002".into()),
                    percent: Some(20),
                    tag: Some("candidate".into()),
                    url: Some("http://candidate-hello.team.example.com".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let routes: HashMap<_, _> = service_routes(&svc).into_iter().collect();
        let main = &routes["hello.team.example.com"];
        assert_eq!(main.len(), 2);
        assert_eq!(main[0].percent, 80);
        assert_eq!(&routes["hello.team.svc.cluster.local"], main);
        assert_eq!(&routes["hello.team"], main);
        let tag = &routes["candidate-hello.team.example.com"];
        assert_eq!(
            tag,
            &vec![Target {
                revision: RevisionKey::new("team", "hello-00002"),
                percent: 100
            }]
        );
    }

    #[test]
    fn revision_settings_come_from_spec_and_annotations() {
        use gantry_api::serving::v1::{Container, ContainerPort, RevisionSpec};
        let spec = RevisionSpec {
            containers: vec![Container {
                ports: vec![ContainerPort {
                    name: Some("h2c".into()),
                    container_port: Some(9000),
                    ..Default::default()
                }],
                readiness_probe: Some(serde_json::json!({ "httpGet": { "path": "/ready" } })),
                ..Default::default()
            }],
            container_concurrency: Some(10),
            timeout_seconds: Some(120),
            response_start_timeout_seconds: Some(30),
            ..Default::default()
        };
        let mut rev = Revision::new("hello-00001", spec);
        rev.metadata.annotations = Some(
            [
                (MIN_SCALE_ANNOTATION, "1"),
                (MAX_SCALE_ANNOTATION, "5"),
                (WINDOW_ANNOTATION, "10s"),
                (TARGET_UTILIZATION_ANNOTATION, "50"),
                (ACTIVATION_SCALE_ANNOTATION, "2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let c = revision_config(&rev, &Defaults::default());
        assert_eq!(c.container_concurrency, 10);
        assert_eq!(
            c.timeout,
            Duration::from_secs(30),
            "the response-start timeout is shorter"
        );
        assert!(c.h2c);
        assert_eq!(
            c.probe,
            Probe::Http {
                path: "/ready".into()
            }
        );
        // containerConcurrency 10 × 50 %.
        assert_eq!(c.autoscale.target, 5.0);
        assert_eq!(c.autoscale.stable_window, Duration::from_secs(10));
        assert_eq!(
            (
                c.autoscale.min_scale,
                c.autoscale.max_scale,
                c.autoscale.activation_scale
            ),
            (1, 5, 2)
        );
        let plain = revision_config(
            &Revision::new("r", RevisionSpec::default()),
            &Defaults::default(),
        );
        assert_eq!(plain.timeout, Duration::from_secs(300));
        assert_eq!(plain.probe, Probe::Tcp);
        assert_eq!(plain.autoscale.target, 70.0);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("http://a.b.example.com/x").as_deref(),
            Some("a.b.example.com")
        );
        assert_eq!(url_host("https://a.b:8443").as_deref(), Some("a.b"));
    }
}

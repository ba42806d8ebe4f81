//! The ImageRepository controller: scans a registry repository's tags on `interval` into the
//! [`TagStore`] and reports the scan in `status` as Flux's image-reflector-controller does.
//!
//! A scan happens when the object was never scanned, a new `reconcile.fluxcd.io/requestedAt`
//! arrives, the image or the exclusion list changed, the stored list is missing, or `interval`
//! has passed since `lastScanResult.scanTime` (so a restart does not rescan what is fresh: the
//! stored list survives it). The tag list streams page by page through the exclusion list into
//! the store; only the status summary (count, revision, 10 greatest tags) is kept in memory.
//!
//! Status: `Ready=True` (`Succeeded`, `successful scan: found N tags`); a bad image or exclusion
//! pattern is `Stalled` (not retried until the spec changes); a secret that cannot be used is
//! `AuthenticationFailed`, a failed scan `ReadOperationFailed`, both retried with backoff. Events
//! only on change. The finalizer `finalizers.fluxcd.io` removes the stored list on deletion.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::image::v1::{
    AUTHENTICATION_FAILED_REASON, IMAGE_URL_INVALID_REASON, ImageProvider, ImageRepository,
    ImageRepositoryStatus, READ_OPERATION_FAILED_REASON, ScanResult,
};
use gantry_api::meta::{
    FINALIZER, INVALID_SPEC_REASON, READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON,
};
use gantry_runtime::backoff::after_failures;
use gantry_runtime::conditions;
use gantry_runtime::events::{Events, Severity};
use gantry_runtime::finalizer;
use gantry_runtime::metrics::{Metrics, ResourceInfo};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use regex::Regex;

use crate::registry::{ClientConfig, Credentials, Reference, RegistryClient, RegistryError};
use crate::tags::{TagStore, TagSummary};

/// Field manager of status writes and reporter of events: Flux's controller name.
pub const FIELD_MANAGER: &str = "image-reflector-controller";
const KIND: &str = "ImageRepository";
const GROUP: &str = "image.toolkit.fluxcd.io";

/// Called with (namespace, name) of an ImageRepository whose scan changed its tag list.
pub type ScanHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What every reconciliation shares.
pub struct Context {
    /// Client for the API server.
    pub client: Client,
    /// Where tag lists go.
    pub tags: TagStore,
    events: Events,
    hook: Option<ScanHook>,
    metrics: Option<Metrics>,
    page_size: Option<u32>,
    schedule: Mutex<HashMap<(String, String), Schedule>>,
}

// When an object is next due, and what it looked like when that was decided.
#[derive(Clone, Debug)]
struct Schedule {
    uid: Option<String>,
    generation: Option<i64>,
    requested_at: Option<String>,
    due: Instant,
    failures: u32,
}

impl Context {
    /// A context publishing Kubernetes Events as `image-reflector-controller`.
    pub fn new(client: Client, tags: TagStore) -> Self {
        let (sender, _) = tokio::sync::broadcast::channel(16);
        Context {
            events: Events::new(client.clone(), FIELD_MANAGER, sender),
            client,
            tags,
            hook: None,
            metrics: None,
            page_size: Some(crate::registry::DEFAULT_PAGE_SIZE),
            schedule: Mutex::default(),
        }
    }

    /// Publishes through the process's shared [`Events`].
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Records `gotk_reconcile_duration_seconds` and `gotk_resource_info` into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Calls `hook(namespace, name)` after every scan that changed the stored tag list (the
    /// ImagePolicy controller's trigger).
    pub fn with_scan_hook(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Tags asked for per registry page (`n`); `None` lets the registry choose.
    pub fn with_page_size(mut self, page_size: Option<u32>) -> Self {
        self.page_size = page_size;
        self
    }

    /// Forgets a deleted ImageRepository: schedule, metrics, stored tags.
    pub fn forget(&self, namespace: &str, name: &str) -> std::io::Result<()> {
        if let Ok(mut map) = self.schedule.lock() {
            map.remove(&(namespace.to_owned(), name.to_owned()));
        }
        if let Some(metrics) = &self.metrics {
            metrics.remove_resource(KIND, namespace, name);
        }
        self.tags.remove(namespace, name)
    }

    fn schedule_of(&self, key: &(String, String)) -> Option<Schedule> {
        self.schedule.lock().ok()?.get(key).cloned()
    }

    fn set_schedule(&self, key: (String, String), s: Schedule) {
        if let Ok(mut map) = self.schedule.lock() {
            map.insert(key, s);
        }
    }
}

/// Why a reconciliation failed; the status already says so when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ImageRepository has no namespace")]
    NoNamespace,
    /// The spec cannot work (bad image, interval or exclusion pattern); not retried.
    #[error("{message}")]
    InvalidSpec {
        reason: &'static str,
        message: String,
    },
    /// Credentials or TLS material could not be loaded.
    #[error("failed to configure authentication options: {0}")]
    Auth(String),
    /// The registry scan failed.
    #[error("scan failed: {0}")]
    Scan(#[source] RegistryError),
    /// The scan did not finish within the timeout.
    #[error("scan failed: no answer within the timeout of {0:?}")]
    Timeout(Duration),
    /// Writing the tag list failed.
    #[error("failed to store tags for '{canonical}': {source}")]
    Store {
        canonical: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing status or the finalizer failed.
    #[error("failed to update the object: {0}")]
    Kube(#[source] kube::Error),
}

impl Error {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { reason, .. } => reason,
            Error::Auth(_) => AUTHENTICATION_FAILED_REASON,
            _ => READ_OPERATION_FAILED_REASON,
        }
    }
}

/// Reconciles one ImageRepository.
pub async fn reconcile(obj: Arc<ImageRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    if obj.metadata.deletion_timestamp.is_some() {
        return cleanup(&obj, &ctx, &namespace, &name).await;
    }
    let api: Api<ImageRepository> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer::add(&api, &*obj, FINALIZER)
        .await
        .map_err(Error::Kube)?;
    if obj.spec.suspend {
        record_resource(&ctx, &obj, &namespace, &name);
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_inner(&obj, &ctx, &namespace, &name).await;
    if let Some(metrics) = &ctx.metrics
        && result.as_ref().is_ok_and(|(scanned, _)| *scanned)
    {
        metrics.observe_reconcile(KIND, &namespace, &name, started.elapsed());
    }
    result.map(|(_, action)| action)
}

// (whether a scan ran, when to come back)
async fn reconcile_inner(
    obj: &ImageRepository,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<(bool, Action), Error> {
    let key = (namespace.to_owned(), name.to_owned());
    let generation = obj.metadata.generation;
    let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
    let status = obj.status.clone().unwrap_or_default();

    // Our own status writes come back as watch events: not a reason to scan again.
    let previous = ctx.schedule_of(&key).filter(|s| s.uid == obj.metadata.uid);
    if let Some(s) = &previous
        && s.generation == generation
        && s.requested_at == requested_at
        && s.due > Instant::now()
    {
        return Ok((false, Action::requeue(s.due - Instant::now())));
    }
    let failures = previous.as_ref().map_or(0, |s| s.failures);

    let spec = match validate(obj) {
        Ok(spec) => spec,
        Err(err) => return stalled(obj, ctx, namespace, err, requested_at).await,
    };

    // After a restart (no schedule yet), a fresh scan on record is kept until it is due.
    if previous.is_none()
        && let Some(wait) = not_due(obj, ctx, &spec, &status, &requested_at, namespace, name)
    {
        ctx.set_schedule(
            key,
            Schedule {
                uid: obj.metadata.uid.clone(),
                generation,
                requested_at,
                due: Instant::now() + wait,
                failures: 0,
            },
        );
        record_resource(ctx, obj, namespace, name);
        return Ok((false, Action::requeue(wait)));
    }

    match scan(obj, ctx, &spec, namespace, name).await {
        Ok(summary) => {
            let revision = summary.revision();
            let count = summary.count();
            let message = format!("successful scan: found {count} tags");
            let mut conds = status.conditions.clone();
            conditions::succeeded(&mut conds, generation, SUCCEEDED_REASON, &message);
            let new_status = ImageRepositoryStatus {
                conditions: conds,
                observed_generation: generation,
                canonical_image_name: Some(spec.reference.canonical_name()),
                last_scan_result: Some(ScanResult {
                    revision: Some(revision.clone()),
                    tag_count: count as i64,
                    scan_time: Some(Time(jiff::Timestamp::now())),
                    latest_tags: summary.latest_tags(),
                }),
                observed_exclusion_list: spec.exclusion_list.clone(),
                last_handled_reconcile_at: requested_at
                    .clone()
                    .or_else(|| status.last_handled_reconcile_at.clone()),
            };
            patch_status(ctx, obj, namespace, &new_status).await?;
            let old_revision = status
                .last_scan_result
                .as_ref()
                .and_then(|r| r.revision.clone());
            let changed = old_revision.as_deref() != Some(revision.as_str());
            let was = conditions::get(&status.conditions, READY_CONDITION);
            let was_ready = was.is_some_and(|c| c.status == "True");
            if changed || !was_ready || was.is_some_and(|c| c.message != message) {
                tracing::info!(%namespace, %name, %revision, tags = count, "{message}");
                publish(
                    ctx,
                    obj,
                    Severity::Info,
                    SUCCEEDED_REASON,
                    &message,
                    &revision,
                )
                .await;
            }
            if changed && let Some(hook) = &ctx.hook {
                hook(namespace, name);
            }
            let mut recorded = obj.clone();
            recorded.status = Some(new_status);
            record_resource(ctx, &recorded, namespace, name);
            ctx.set_schedule(
                key,
                Schedule {
                    uid: obj.metadata.uid.clone(),
                    generation,
                    requested_at,
                    due: Instant::now() + spec.interval,
                    failures: 0,
                },
            );
            Ok((true, Action::requeue(spec.interval)))
        }
        Err(err) => {
            let message = err.to_string();
            let reason = err.reason();
            tracing::warn!(%namespace, %name, reason, "{message}");
            let mut conds = status.conditions.clone();
            conditions::failed(&mut conds, generation, reason, &message, false);
            let new_status = ImageRepositoryStatus {
                conditions: conds,
                observed_generation: status.observed_generation.or(Some(-1)),
                last_handled_reconcile_at: requested_at
                    .clone()
                    .or_else(|| status.last_handled_reconcile_at.clone()),
                ..status.clone()
            };
            patch_status(ctx, obj, namespace, &new_status).await?;
            let was = conditions::get(&status.conditions, READY_CONDITION);
            if was.is_none_or(|c| c.status != "False" || c.message != message) {
                publish(ctx, obj, Severity::Error, reason, &message, "").await;
            }
            let mut recorded = obj.clone();
            recorded.status = Some(new_status);
            record_resource(ctx, &recorded, namespace, name);
            ctx.set_schedule(
                key,
                Schedule {
                    uid: obj.metadata.uid.clone(),
                    generation,
                    requested_at,
                    due: Instant::now() + after_failures(failures + 1),
                    failures: failures + 1,
                },
            );
            Err(err)
        }
    }
}

/// Requeues with exponential backoff after a failure; a bad spec waits for a change.
pub fn error_policy(obj: Arc<ImageRepository>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    match err {
        Error::InvalidSpec { .. } | Error::NoNamespace => Action::await_change(),
        _ => {
            let failures = ctx.schedule_of(&key).map_or(1, |s| s.failures.max(1));
            Action::requeue(after_failures(failures))
        }
    }
}

/// Runs the ImageRepository controller (in `namespace`, or all namespaces) with up to
/// `concurrency` reconciliations at once, until `shutdown` completes.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ImageRepository> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("ImageRepository reconcile: {e}");
            }
        })
        .await;
}

// The parts of the spec a scan needs, checked.
struct Spec {
    reference: Reference,
    interval: Duration,
    timeout: Duration,
    exclusion_list: Vec<String>,
    exclusions: Vec<Regex>,
}

fn validate(obj: &ImageRepository) -> Result<Spec, Error> {
    let interval = match obj.interval() {
        Ok(d) if !d.is_zero() => d,
        _ => {
            return Err(Error::InvalidSpec {
                reason: INVALID_SPEC_REASON,
                message: format!("invalid interval '{}'", obj.spec.interval),
            });
        }
    };
    let timeout = obj.timeout().map_err(|_| Error::InvalidSpec {
        reason: INVALID_SPEC_REASON,
        message: format!(
            "invalid timeout '{}'",
            obj.spec.timeout.as_deref().unwrap_or_default()
        ),
    })?;
    let reference = Reference::parse(&obj.spec.image).map_err(|e| Error::InvalidSpec {
        reason: IMAGE_URL_INVALID_REASON,
        message: e.to_string(),
    })?;
    let exclusion_list = obj.exclusion_list();
    let exclusions = compile_exclusions(&exclusion_list)?;
    if let Some(provider) = obj.spec.provider.filter(|p| *p != ImageProvider::Generic)
        && obj.spec.secret_ref.is_none()
    {
        return Err(Error::InvalidSpec {
            reason: AUTHENTICATION_FAILED_REASON,
            message: format!(
                "provider '{}' (cloud workload identity) is not supported; use spec.secretRef",
                serde_json::to_value(provider)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(Spec {
        reference,
        interval,
        timeout,
        exclusion_list,
        exclusions,
    })
}

/// Compiles an exclusion list; an invalid pattern names itself.
pub fn compile_exclusions(patterns: &[String]) -> Result<Vec<Regex>, Error> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|e| Error::InvalidSpec {
                reason: INVALID_SPEC_REASON,
                message: format!("invalid exclusionList pattern '{p}': {e}"),
            })
        })
        .collect()
}

// How long until the next scan, when none is needed now (Flux's shouldScan).
fn not_due(
    obj: &ImageRepository,
    ctx: &Context,
    spec: &Spec,
    status: &ImageRepositoryStatus,
    requested_at: &Option<String>,
    namespace: &str,
    name: &str,
) -> Option<Duration> {
    let last = status.last_scan_result.as_ref()?;
    let scanned = last.scan_time.as_ref()?.0;
    if requested_at.is_some() && *requested_at != status.last_handled_reconcile_at {
        return None;
    }
    if status.observed_generation != obj.metadata.generation
        || status.canonical_image_name.as_deref() != Some(&spec.reference.canonical_name())
        || status.observed_exclusion_list != spec.exclusion_list
        || !ctx.tags.exists(namespace, name)
        || !conditions::is_true(&status.conditions, READY_CONDITION)
    {
        return None;
    }
    let age = jiff::Timestamp::now().duration_since(scanned);
    let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
    let wait = spec.interval.checked_sub(age)?;
    (wait >= Duration::from_secs(1)).then_some(wait)
}

async fn scan(
    obj: &ImageRepository,
    ctx: &Context,
    spec: &Spec,
    namespace: &str,
    name: &str,
) -> Result<TagSummary, Error> {
    let mut config = client_config(obj, &ctx.client, namespace).await?;
    config.page_size = ctx.page_size;
    config.request_timeout = spec.timeout;
    let client = RegistryClient::new(&spec.reference, config).map_err(|e| match e {
        RegistryError::Client(e) => Error::Auth(e.to_string()),
        e => Error::Scan(e),
    })?;
    let canonical = spec.reference.canonical_name();
    let store_error = |source| Error::Store {
        canonical: canonical.clone(),
        source,
    };
    let mut writer = ctx.tags.writer(namespace, name).map_err(store_error)?;
    let listing = client.list_tags(|page| {
        for tag in page {
            if !spec.exclusions.iter().any(|r| r.is_match(&tag)) {
                writer.push(&tag)?;
            }
        }
        Ok(())
    });
    match tokio::time::timeout(spec.timeout, listing).await {
        Err(_) => return Err(Error::Timeout(spec.timeout)),
        Ok(Err(RegistryError::Sink(e))) => return Err(store_error(e)),
        Ok(Err(e)) => return Err(Error::Scan(e)),
        Ok(Ok(_)) => {}
    }
    // The commit syncs to disk: off the async workers.
    tokio::task::spawn_blocking(move || writer.commit())
        .await
        .map_err(|e| store_error(std::io::Error::other(e.to_string())))?
        .map_err(store_error)
}

/// How to reach the repository's registry: credentials, TLS material and proxy from the
/// referenced Secrets (the ImagePolicy controller resolves digests with the same).
pub(crate) async fn client_config(
    obj: &ImageRepository,
    client: &Client,
    namespace: &str,
) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig {
        insecure: obj.spec.insecure,
        ..ClientConfig::default()
    };
    let registry = Reference::parse(&obj.spec.image)
        .map(|r| r.registry)
        .unwrap_or_default();
    if let Some(secret_ref) = &obj.spec.secret_ref {
        let data = secret_data(client, namespace, &secret_ref.name).await?;
        config.credentials = credentials_from_secret(&data, &registry, &secret_ref.name)?;
    }
    if let Some(cert_ref) = &obj.spec.cert_secret_ref {
        let data = secret_data(client, namespace, &cert_ref.name).await?;
        let get = |keys: &[&str]| keys.iter().find_map(|k| data.get(*k).cloned());
        config.ca_pem = get(&["ca.crt", "caFile"]);
        match (get(&["tls.crt", "certFile"]), get(&["tls.key", "keyFile"])) {
            (Some(cert), Some(key)) => config.client_cert_pem = Some((cert, key)),
            (None, None) => {}
            _ => {
                return Err(Error::Auth(format!(
                    "secret '{}': 'tls.crt' and 'tls.key' must be given together",
                    cert_ref.name
                )));
            }
        }
        if config.ca_pem.is_none() && config.client_cert_pem.is_none() {
            return Err(Error::Auth(format!(
                "secret '{}' has none of 'ca.crt', 'tls.crt', 'tls.key'",
                cert_ref.name
            )));
        }
    }
    if let Some(proxy_ref) = &obj.spec.proxy_secret_ref {
        let data = secret_data(client, namespace, &proxy_ref.name).await?;
        config.proxy = Some(proxy_url(&data).map_err(Error::Auth)?);
    }
    Ok(config)
}

/// Credentials for `registry` from a docker-registry Secret's data (`.dockerconfigjson`, or the
/// legacy `.dockercfg`, whose content is the `auths` map itself).
pub fn credentials_from_secret(
    data: &BTreeMap<String, Vec<u8>>,
    registry: &str,
    secret: &str,
) -> Result<Option<Credentials>, Error> {
    let json = if let Some(json) = data.get(".dockerconfigjson") {
        json.clone()
    } else if let Some(legacy) = data.get(".dockercfg") {
        let mut wrapped = b"{\"auths\":".to_vec();
        wrapped.extend_from_slice(legacy);
        wrapped.push(b'}');
        wrapped
    } else {
        return Err(Error::Auth(format!(
            "secret '{secret}' has no '.dockerconfigjson' (create it with `kubectl create secret docker-registry`)"
        )));
    };
    let creds = Credentials::from_docker_config(&json, registry)
        .map_err(|e| Error::Auth(format!("secret '{secret}': {e}")))?;
    if creds.is_none() {
        tracing::debug!(
            secret,
            registry,
            "no credentials for this registry in the secret"
        );
    }
    Ok(creds)
}

// `address` with optional `username`/`password` as a proxy URL.
fn proxy_url(data: &BTreeMap<String, Vec<u8>>) -> Result<String, String> {
    let get = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(v).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let address = get("address").ok_or("invalid proxy secret: 'address' field not found")?;
    let (scheme, rest) = address.split_once("://").ok_or_else(|| {
        format!("invalid proxy address '{address}': expected http(s)://host:port")
    })?;
    Ok(match get("username") {
        Some(user) => {
            let password = get("password").unwrap_or_default();
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{scheme}://{}:{}@{rest}", enc(&user), enc(&password))
        }
        None => address,
    })
}

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(name).await.map_err(|e| {
        Error::Auth(format!(
            "failed to get secret '{namespace}/{name}': {}",
            match &e {
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            }
        ))
    })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

async fn stalled(
    obj: &ImageRepository,
    ctx: &Context,
    namespace: &str,
    err: Error,
    requested_at: Option<String>,
) -> Result<(bool, Action), Error> {
    let status = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let reason = err.reason();
    tracing::warn!(%namespace, name = %obj.name_any(), reason, "{message}");
    let mut conds = status.conditions.clone();
    conditions::failed(&mut conds, generation, reason, &message, true);
    let new_status = ImageRepositoryStatus {
        conditions: conds,
        observed_generation: generation,
        last_handled_reconcile_at: requested_at
            .clone()
            .or_else(|| status.last_handled_reconcile_at.clone()),
        ..status.clone()
    };
    patch_status(ctx, obj, namespace, &new_status).await?;
    let was = conditions::get(&status.conditions, READY_CONDITION);
    if was.is_none_or(|c| c.message != message) {
        publish(ctx, obj, Severity::Error, reason, &message, "").await;
    }
    // Nothing to do until the spec changes; remember that, so status echoes are no-ops.
    ctx.set_schedule(
        (namespace.to_owned(), obj.name_any()),
        Schedule {
            uid: obj.metadata.uid.clone(),
            generation,
            requested_at,
            due: Instant::now() + Duration::from_secs(365 * 24 * 3600),
            failures: 0,
        },
    );
    let mut recorded = obj.clone();
    recorded.status = Some(new_status);
    record_resource(ctx, &recorded, namespace, &obj.name_any());
    Ok((false, Action::await_change()))
}

async fn cleanup(
    obj: &ImageRepository,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    if let Err(e) = ctx.forget(namespace, name) {
        tracing::warn!(%namespace, %name, "removing the stored tags: {e}");
    }
    let api: Api<ImageRepository> = Api::namespaced(ctx.client.clone(), namespace);
    finalizer::remove(&api, obj, FINALIZER)
        .await
        .map_err(Error::Kube)?;
    Ok(Action::await_change())
}

async fn patch_status(
    ctx: &Context,
    obj: &ImageRepository,
    namespace: &str,
    status: &ImageRepositoryStatus,
) -> Result<(), Error> {
    let api: Api<ImageRepository> = Api::namespaced(ctx.client.clone(), namespace);
    gantry_runtime::status::apply(&api, &obj.name_any(), FIELD_MANAGER, status)
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    obj: &ImageRepository,
    severity: Severity,
    reason: &str,
    message: &str,
    revision: &str,
) {
    let metadata = (!revision.is_empty())
        .then(|| (format!("{GROUP}/revision"), revision.to_owned()))
        .into_iter()
        .collect();
    ctx.events
        .publish(obj.object_ref(&()), severity, reason, message, metadata)
        .await;
}

// `gotk_resource_info` / `gotk_reconcile_condition` from the object's (new) status.
fn record_resource(ctx: &Context, obj: &ImageRepository, namespace: &str, name: &str) {
    let Some(metrics) = &ctx.metrics else { return };
    let status = obj.status.clone().unwrap_or_default();
    let ready = conditions::get(&status.conditions, READY_CONDITION);
    metrics.set_resource(&ResourceInfo {
        group: GROUP.into(),
        kind: KIND.into(),
        version: "v1".into(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
        reason: ready.map_or(String::new(), |c| c.reason.clone()),
        suspended: obj.spec.suspend,
        revision: status
            .last_scan_result
            .and_then(|r| r.revision)
            .unwrap_or_default(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_exclusion_pattern_names_itself() {
        let err = compile_exclusions(&["^ok$".into(), "(".into()]).unwrap_err();
        assert_eq!(err.reason(), INVALID_SPEC_REASON);
        assert!(
            err.to_string()
                .starts_with("invalid exclusionList pattern '('"),
            "{err}"
        );
    }

    #[test]
    fn docker_secrets_need_a_docker_config() {
        let mut data = BTreeMap::new();
        let err = credentials_from_secret(&data, "r:5000", "creds").unwrap_err();
        assert_eq!(err.reason(), AUTHENTICATION_FAILED_REASON);
        assert!(
            err.to_string().contains("has no '.dockerconfigjson'"),
            "{err}"
        );
        data.insert(
            ".dockercfg".into(),
            br#"{"r:5000": {"username": "u", "password": "p"}}"#.to_vec(),
        );
        let creds = credentials_from_secret(&data, "r:5000", "creds")
            .unwrap()
            .unwrap();
        assert_eq!(creds.username, "u");
        data.insert(".dockerconfigjson".into(), b"{".to_vec());
        assert!(credentials_from_secret(&data, "r:5000", "creds").is_err());
    }

    #[test]
    fn proxy_urls_carry_encoded_credentials() {
        let mut data = BTreeMap::new();
        data.insert("address".into(), b"http://proxy:3128".to_vec());
        assert_eq!(proxy_url(&data).unwrap(), "http://proxy:3128");
        data.insert("username".into(), b"u@x".to_vec());
        data.insert("password".into(), b"p:w".to_vec());
        assert_eq!(proxy_url(&data).unwrap(), "http://u%40x:p%3Aw@proxy:3128");
        assert!(proxy_url(&BTreeMap::new()).is_err());
    }
}

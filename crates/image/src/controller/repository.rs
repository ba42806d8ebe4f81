//! The ImageRepository controller: scans a registry repository's tags on `interval` into the
//! [`TagStore`] and reports the scan in `status` as Flux's image-reflector-controller does.
//!
//! A scan happens when the object was never scanned, a new `reconcile.fluxcd.io/requestedAt`
//! arrives, the image or the exclusion list changed, the stored list is missing, or `interval`
//! has passed since `lastScanResult.scanTime` (`not_due`: a restart does not rescan what is
//! fresh, the stored list survives it). The tag list streams page by page through the exclusion
//! list into the store; only the status summary (count, revision, 10 greatest tags) is kept in
//! memory.
//!
//! Status: `Ready=True` (`Succeeded`, `successful scan: found N tags`); a bad image or exclusion
//! pattern is `Stalled` (not retried until the spec changes); a secret that cannot be used is
//! `AuthenticationFailed`, a failed scan `ReadOperationFailed`, both retried with backoff. Events
//! only on change. A scan that changed the list requests the trigger given to
//! [`ImageRepositories::notify_scanned`] (the ImagePolicies that use the repository). Deleting
//! the object removes its stored list ([`Reconciler::cleanup`]); the harness
//! ([`gantry_runtime::controller`]) owns watch, finalizer, backoff, metrics and events.

use std::sync::Arc;
use std::time::Duration;

use gantry_api::image::v1::{
    AUTHENTICATION_FAILED_REASON, IMAGE_URL_INVALID_REASON, ImageProvider, ImageRepository,
    ImageRepositoryStatus, READ_OPERATION_FAILED_REASON, ScanResult,
};
use gantry_api::meta::{
    INVALID_SPEC_REASON, READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON,
};
use gantry_runtime::conditions;
use gantry_runtime::controller::{Cx, Reconciler};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use regex::Regex;

use super::secrets;
use crate::registry::{Reference, RegistryClient, RegistryError};
use crate::tags::{TagStore, TagSummary};

/// Field manager of status writes and reporter of events: Flux's controller name.
pub const FIELD_MANAGER: &str = "image-reflector-controller";

/// The ImageRepository controller's domain steps; run it with
/// `Controller::new(ImageRepositories::new(tags), shared)`.
pub struct ImageRepositories {
    tags: TagStore,
    page_size: Option<u32>,
    scanned: Option<Trigger<ImageRepository>>,
}

impl ImageRepositories {
    /// Stores tag lists in `tags`.
    pub fn new(tags: TagStore) -> Self {
        Self {
            tags,
            page_size: Some(crate::registry::DEFAULT_PAGE_SIZE),
            scanned: None,
        }
    }

    /// Requests `trigger` with each ImageRepository whose scan changed its tag list: the
    /// in-process hand-off to the ImagePolicies that use it.
    pub fn notify_scanned(mut self, trigger: Trigger<ImageRepository>) -> Self {
        self.scanned = Some(trigger);
        self
    }

    /// Tags asked for per registry page (`n`); `None` lets the registry choose.
    pub fn with_page_size(mut self, page_size: Option<u32>) -> Self {
        self.page_size = page_size;
        self
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
    /// Removing the tag list of a deleted object failed.
    #[error("failed to remove the stored tags: {0}")]
    Remove(#[source] std::io::Error),
    /// Writing status failed.
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

impl Reconciler for ImageRepositories {
    type Object = ImageRepository;
    type Error = Error;
    const CONTROLLER: &'static str = FIELD_MANAGER;

    async fn reconcile(
        &self,
        obj: Arc<ImageRepository>,
        cx: &Cx<ImageRepository>,
    ) -> Result<Action, Error> {
        let obj = obj.as_ref();
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
        let previous = obj.status.clone().unwrap_or_default();
        let result = match validate(obj) {
            Ok(spec) => {
                let stored = self.tags.exists(&namespace, &name);
                let due = not_due(
                    obj,
                    &spec,
                    requested_at.as_deref(),
                    stored,
                    Timestamp::now(),
                );
                if let Some(wait) = due {
                    cx.record(obj, None);
                    return Ok(Action::requeue(wait));
                }
                self.scan(obj, cx, &spec, &namespace, &name)
                    .await
                    .map(|summary| (spec, summary))
            }
            Err(err) => Err(err),
        };
        let (spec, summary) = match result {
            Ok(scanned) => scanned,
            Err(err) => {
                let status = failed_status(obj, &err, requested_at);
                cx.report_failure(obj, &status, err.reason(), &err.to_string())
                    .await
                    .map_err(Error::Kube)?;
                return Err(err);
            }
        };
        let status = scanned_status(obj, &spec, &summary, requested_at, Timestamp::now());
        cx.write_status(obj, &status).await.map_err(Error::Kube)?;
        let news = scan_news(&previous, &status);
        if news.list_changed
            && let Some(scanned) = &self.scanned
        {
            scanned.request(&name, &namespace);
        }
        if news.announce {
            let message = ready_message(&summary);
            let revision = summary.revision();
            tracing::info!(%namespace, %name, %revision, tags = summary.count(), "{message}");
            let revision = Some(revision.as_str());
            cx.event(obj, Severity::Info, SUCCEEDED_REASON, &message, revision)
                .await;
        }
        Ok(Action::requeue(spec.interval))
    }

    async fn cleanup(
        &self,
        obj: Arc<ImageRepository>,
        _cx: &Cx<ImageRepository>,
    ) -> Result<(), Error> {
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        self.tags
            .remove(&namespace, &obj.name_any())
            .map_err(Error::Remove)
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::InvalidSpec { .. })
    }
}

fn ready_message(summary: &TagSummary) -> String {
    format!("successful scan: found {} tags", summary.count())
}

/// The status after a successful scan.
fn scanned_status(
    obj: &ImageRepository,
    spec: &Spec,
    summary: &TagSummary,
    requested_at: Option<String>,
    now: Timestamp,
) -> ImageRepositoryStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let mut conds = previous.conditions;
    conditions::succeeded(
        &mut conds,
        generation,
        SUCCEEDED_REASON,
        &ready_message(summary),
    );
    ImageRepositoryStatus {
        conditions: conds,
        observed_generation: generation,
        canonical_image_name: Some(spec.reference.canonical_name()),
        last_scan_result: Some(ScanResult {
            revision: Some(summary.revision()),
            tag_count: i64::try_from(summary.count()).unwrap_or(i64::MAX),
            scan_time: Some(Time(now)),
            latest_tags: summary.latest_tags(),
        }),
        observed_exclusion_list: spec.exclusion_list.clone(),
        last_handled_reconcile_at: requested_at.or(previous.last_handled_reconcile_at),
    }
}

/// The status after a failure: `Stalled` for a spec that cannot work (its generation is then
/// observed), `Ready=False` with a retry otherwise; the last scan is kept.
fn failed_status(
    obj: &ImageRepository,
    err: &Error,
    requested_at: Option<String>,
) -> ImageRepositoryStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let stalled = !ImageRepositories::retryable(err);
    let mut conds = previous.conditions.clone();
    conditions::failed(
        &mut conds,
        generation,
        err.reason(),
        &err.to_string(),
        stalled,
    );
    ImageRepositoryStatus {
        conditions: conds,
        observed_generation: if stalled {
            generation
        } else {
            previous.observed_generation.or(Some(-1))
        },
        last_handled_reconcile_at: requested_at.or(previous.last_handled_reconcile_at.clone()),
        ..previous
    }
}

/// What a successful scan tells others.
#[derive(Debug, PartialEq)]
struct ScanNews {
    /// The tag list changed: its policies must choose again.
    list_changed: bool,
    /// Worth an event: a new list, or a recovery, or a new Ready message.
    announce: bool,
}

fn scan_news(previous: &ImageRepositoryStatus, now: &ImageRepositoryStatus) -> ScanNews {
    let revision =
        |s: &ImageRepositoryStatus| s.last_scan_result.as_ref().and_then(|r| r.revision.clone());
    let list_changed = revision(previous) != revision(now);
    let was = conditions::get(&previous.conditions, READY_CONDITION);
    let is = conditions::get(&now.conditions, READY_CONDITION);
    let announce = list_changed
        || was.is_none_or(|c| c.status != "True" || Some(&c.message) != is.map(|c| &c.message));
    ScanNews {
        list_changed,
        announce,
    }
}

// A failure is announced once, not on every retry.
/// How long until the next scan when none is needed now (Flux's `shouldScan`): the last scan
/// is on record with this spec, its list is `stored`, no new `requestedAt` arrived, and
/// `lastScanResult.scanTime + interval` is still ahead of `now` (by a second at least).
fn not_due(
    obj: &ImageRepository,
    spec: &Spec,
    requested_at: Option<&str>,
    stored: bool,
    now: Timestamp,
) -> Option<Duration> {
    let status = obj.status.as_ref()?;
    let scanned = status.last_scan_result.as_ref()?.scan_time.as_ref()?.0;
    if requested_at.is_some() && requested_at != status.last_handled_reconcile_at.as_deref() {
        return None;
    }
    if status.observed_generation != obj.metadata.generation
        || status.canonical_image_name.as_deref() != Some(&spec.reference.canonical_name())
        || status.observed_exclusion_list != spec.exclusion_list
        || !stored
        || !conditions::is_true(&status.conditions, READY_CONDITION)
    {
        return None;
    }
    let age = Duration::try_from(now.duration_since(scanned)).unwrap_or(Duration::ZERO);
    let wait = spec.interval.checked_sub(age)?;
    (wait >= Duration::from_secs(1)).then_some(wait)
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

impl ImageRepositories {
    async fn scan(
        &self,
        obj: &ImageRepository,
        cx: &Cx<ImageRepository>,
        spec: &Spec,
        namespace: &str,
        name: &str,
    ) -> Result<TagSummary, Error> {
        let mut config = secrets::client_config(obj, cx.client(), namespace).await?;
        config.page_size = self.page_size;
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
        let mut writer = self.tags.writer(namespace, name).map_err(store_error)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(image: &str) -> ImageRepository {
        let mut obj = ImageRepository::new(
            "app",
            gantry_api::image::v1::ImageRepositorySpec {
                image: image.into(),
                interval: "10m".into(),
                ..Default::default()
            },
        );
        obj.metadata.generation = Some(1);
        obj
    }

    fn summary(tags: &[&str]) -> TagSummary {
        let mut summary = TagSummary::default();
        for t in tags {
            summary.add(t);
        }
        summary
    }

    // `obj` after a scan of `tags` at `at`.
    fn scanned(mut obj: ImageRepository, tags: &[&str], at: Timestamp) -> ImageRepository {
        let spec = validate(&obj).unwrap();
        obj.status = Some(scanned_status(&obj, &spec, &summary(tags), None, at));
        obj
    }

    #[test]
    fn a_fresh_scan_on_record_is_not_redone_until_its_interval_passed() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let minutes = |m: i64| t0 + jiff::SignedDuration::from_secs(m * 60);
        let never = repository("reg.local/app");
        let spec = validate(&never).unwrap();
        assert_eq!(
            not_due(&never, &spec, None, true, t0),
            None,
            "never scanned"
        );

        let obj = scanned(never, &["1.0.0"], t0);
        assert_eq!(
            not_due(&obj, &spec, None, true, minutes(4)),
            Some(Duration::from_secs(6 * 60)),
            "a restart 4 minutes later waits the rest of the interval"
        );
        assert_eq!(not_due(&obj, &spec, None, true, minutes(10)), None, "due");
        assert_eq!(
            not_due(&obj, &spec, None, false, minutes(4)),
            None,
            "list lost"
        );
        assert_eq!(
            not_due(&obj, &spec, Some("now"), true, minutes(4)),
            None,
            "a new requestedAt"
        );

        let mut handled = obj.clone();
        handled.status.as_mut().unwrap().last_handled_reconcile_at = Some("now".into());
        assert!(not_due(&handled, &spec, Some("now"), true, minutes(4)).is_some());

        let mut edited = obj.clone();
        edited.metadata.generation = Some(2);
        assert_eq!(
            not_due(&edited, &spec, None, true, minutes(4)),
            None,
            "new spec"
        );
        let mut excluding = obj.clone();
        excluding.spec.exclusion_list = vec!["^rc".into()];
        let other = validate(&excluding).unwrap();
        assert_eq!(
            not_due(&obj, &other, None, true, minutes(4)),
            None,
            "new exclusions"
        );

        let mut failed = obj.clone();
        let err = Error::Timeout(Duration::from_secs(1));
        failed.status = Some(failed_status(&obj, &err, None));
        assert_eq!(
            not_due(&failed, &spec, None, true, minutes(4)),
            None,
            "not Ready"
        );
    }

    #[test]
    fn a_scan_reports_its_list_and_announces_only_news() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let obj = scanned(repository("reg.local/app"), &["1.0.0", "1.1.0"], t0);
        let status = obj.status.clone().unwrap();
        let ready = conditions::get(&status.conditions, READY_CONDITION).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("True", SUCCEEDED_REASON, "successful scan: found 2 tags")
        );
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(
            status.canonical_image_name.as_deref(),
            Some("reg.local/app")
        );
        let scan = status.last_scan_result.clone().unwrap();
        assert_eq!(
            (scan.tag_count, scan.latest_tags),
            (2, vec!["1.1.0".into(), "1.0.0".into()])
        );
        let first = scan_news(&ImageRepositoryStatus::default(), &status);
        assert_eq!(
            first,
            ScanNews {
                list_changed: true,
                announce: true
            }
        );

        let spec = validate(&obj).unwrap();
        let same = scanned_status(&obj, &spec, &summary(&["1.0.0", "1.1.0"]), None, t0);
        let news = scan_news(&status, &same);
        assert_eq!(
            news,
            ScanNews {
                list_changed: false,
                announce: false
            }
        );
        let more = scanned_status(
            &obj,
            &spec,
            &summary(&["1.0.0", "1.1.0", "2.0.0"]),
            None,
            t0,
        );
        assert_eq!(
            scan_news(&status, &more),
            ScanNews {
                list_changed: true,
                announce: true
            }
        );

        // A recovery with the same list is announced, without waking the policies.
        let mut failed = obj.clone();
        failed.status = Some(failed_status(
            &obj,
            &Error::Timeout(Duration::from_secs(1)),
            None,
        ));
        let news = scan_news(failed.status.as_ref().unwrap(), &same);
        assert_eq!(
            news,
            ScanNews {
                list_changed: false,
                announce: true
            }
        );
    }

    #[test]
    fn failures_keep_the_last_scan_and_only_a_bad_spec_stalls() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let obj = scanned(repository("reg.local/app"), &["1.0.0"], t0);
        let scan = obj.status.as_ref().unwrap().last_scan_result.clone();

        let err = Error::Auth("no secret".into());
        let status = failed_status(&obj, &err, Some("asked".into()));
        assert_eq!(
            status.last_scan_result, scan,
            "the stored list is still served"
        );
        assert_eq!(status.last_handled_reconcile_at.as_deref(), Some("asked"));
        assert!(!conditions::is_true(&status.conditions, "Stalled"));
        assert!(conditions::is_true(&status.conditions, "Reconciling"));
        let ready = conditions::get(&status.conditions, READY_CONDITION).unwrap();
        assert_eq!(ready.reason, AUTHENTICATION_FAILED_REASON);
        assert!(conditions::failure_is_news(
            &obj.status.as_ref().unwrap().conditions,
            &ready.message
        ));
        assert!(
            !conditions::failure_is_news(&status.conditions, &ready.message),
            "announced once"
        );

        let mut bad = obj.clone();
        bad.spec.image = "reg.local/app:1.0".into();
        bad.metadata.generation = Some(2);
        let err = validate(&bad).err().unwrap();
        assert!(!ImageRepositories::retryable(&err));
        let status = failed_status(&bad, &err, None);
        assert!(conditions::is_true(&status.conditions, "Stalled"));
        assert_eq!(
            status.observed_generation,
            Some(2),
            "a stalled spec is observed"
        );
        assert_eq!(
            conditions::get(&status.conditions, READY_CONDITION)
                .unwrap()
                .reason,
            IMAGE_URL_INVALID_REASON
        );
    }

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
}

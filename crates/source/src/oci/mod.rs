//! The OCIRepository controller: the manifest a tag, semver range or digest resolves to becomes
//! an artifact, reported in `status` as Flux's source-controller reports it.
//!
//! Per reconciliation: read `secretRef` (docker config JSON), `certSecretRef` and
//! `proxySecretRef`; resolve the reference (a semver range lists the tags, `semverFilter` first);
//! ask the registry for the manifest digest: revision `<tag>@sha256:<hex>` (a digest reference is
//! its own revision). Nothing is downloaded when that revision is already stored with the same
//! `ignore` and `layerSelector`. Otherwise the manifest is fetched by digest (verified, at most
//! 4 MiB), the layer selected (first, or first of `layerSelector.mediaType`) and streamed
//! (verified, bounded by [`OCIRepositories::max_layer_bytes`]): `extract` unpacks it (symlinks
//! skipped) and archives the tree with the ignore rules, `copy` stores the compressed bytes as
//! they are. The artifact is `ocirepository/<ns>/<name>/sha256:<hex>.tar.gz`, its metadata the
//! manifest's annotations. Registry operations share one `spec.timeout`.
//!
//! What Gantry does not do (yet) is refused with `Stalled`: `verify` (cosign, notation), cloud
//! `provider`s and `serviceAccountName` pull secrets.

pub mod layout;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use gantry_api::meta::{
    READY_CONDITION, RECONCILE_REQUEST_ANNOTATION, SUCCEEDED_REASON, parse_duration,
};
use gantry_api::source::v1::{
    ARCHIVE_OPERATION_FAILED_REASON, ARTIFACT_IN_STORAGE_CONDITION, ARTIFACT_OUTDATED_CONDITION,
    AUTHENTICATION_FAILED_REASON, Artifact, FETCH_FAILED_CONDITION, OCI_DEFAULT_TAG,
    OCI_LAYER_OPERATION_FAILED_REASON, OCI_PULL_FAILED_REASON, OCI_REPOSITORY_PREFIX,
    OCILayerOperation, OCIProvider, OCIRepository, OCIRepositoryStatus,
    READ_OPERATION_FAILED_REASON, STORAGE_OPERATION_FAILED_CONDITION, URL_INVALID_REASON,
    VERIFICATION_ERROR_REASON,
};
use gantry_runtime::conditions::{self, Status};
use gantry_runtime::controller::{Cx, Reconciler, jittered};
use gantry_runtime::events::Severity;
use gantry_runtime::trigger::Trigger;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};

use crate::artifact::{ArtifactError, ArtifactStore, OCI_REPOSITORY_KIND};
use crate::controller::{FIELD_MANAGER, NEW_ARTIFACT_REASON, failed_conditions};
use crate::registry::{
    ClientConfig, Credentials, Reference, ReferenceError, RegistryClient, RegistryError,
};
use crate::sourceignore::{IgnoreError, SourceIgnore};
use layout::{LayoutError, Manifest, REVISION_ANNOTATION, SOURCE_ANNOTATION};

/// Largest layer pulled unless configured otherwise.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 1 << 30;

/// The OCIRepository controller's domain steps; run it on the harness:
/// `Controller::new(OCIRepositories::new(store), shared)`.
pub struct OCIRepositories {
    store: ArtifactStore,
    stored: Option<Trigger<OCIRepository>>,
    max_layer_bytes: u64,
}

impl OCIRepositories {
    /// Stores artifacts in `store`.
    pub fn new(store: ArtifactStore) -> Self {
        Self {
            store,
            stored: None,
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
        }
    }

    /// Requests `trigger` with each OCIRepository whose artifact was just stored (the in-process
    /// hand-off to the Kustomizations using it).
    pub fn notify_stored(mut self, trigger: Trigger<OCIRepository>) -> Self {
        self.stored = Some(trigger);
        self
    }

    /// Refuse layers larger than `bytes` (a registry is not trusted to send what it declares).
    pub fn max_layer_bytes(mut self, bytes: u64) -> Self {
        self.max_layer_bytes = bytes;
        self
    }
}

/// Why a reconciliation failed; the status already says so when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OCIRepository has no namespace")]
    NoNamespace,
    /// The spec cannot work; only a change helps.
    #[error("{message}")]
    Stalled {
        reason: &'static str,
        message: String,
    },
    #[error("failed to get secret '{namespace}/{name}': {}", gantry_runtime::secrets::api_message(.source))]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A Secret's content cannot be used as credentials, CA or proxy.
    #[error("{0}")]
    Credentials(String),
    /// Listing tags or choosing one failed.
    #[error("failed to determine the artifact tag for '{url}': {cause}")]
    Tag { url: String, cause: String },
    /// Resolving the manifest digest failed.
    #[error("failed to determine artifact digest: {0}")]
    Revision(#[source] RegistryError),
    /// Fetching the manifest or the layer failed.
    #[error("failed to pull artifact from '{url}': {source}")]
    Pull {
        url: String,
        #[source]
        source: RegistryError,
    },
    /// The manifest or the layer is not usable.
    #[error("{0}")]
    Layer(String),
    #[error("timeout after {0:?} pulling the artifact")]
    Timeout(Duration),
    #[error("failed to read ignore rules: {0}")]
    Ignore(#[from] IgnoreError),
    #[error("unable to archive artifact to storage: {0}")]
    Artifact(#[from] ArtifactError),
    #[error("failed to patch status: {0}")]
    Status(#[source] kube::Error),
    #[error("worker failed: {0}")]
    Worker(String),
}

impl Error {
    /// The Flux condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Stalled { reason, .. } => reason,
            Error::Secret { .. } | Error::Credentials(_) => AUTHENTICATION_FAILED_REASON,
            Error::Tag { .. } => READ_OPERATION_FAILED_REASON,
            Error::Revision(_) | Error::Pull { .. } | Error::Timeout(_) => OCI_PULL_FAILED_REASON,
            Error::Layer(_) => OCI_LAYER_OPERATION_FAILED_REASON,
            Error::Ignore(_) | Error::Artifact(_) => ARCHIVE_OPERATION_FAILED_REASON,
            _ => OCI_PULL_FAILED_REASON,
        }
    }

    fn condition(&self) -> &'static str {
        match self {
            Error::Ignore(_) | Error::Artifact(_) => STORAGE_OPERATION_FAILED_CONDITION,
            _ => FETCH_FAILED_CONDITION,
        }
    }
}

impl From<LayoutError> for Error {
    fn from(e: LayoutError) -> Self {
        Error::Layer(e.to_string())
    }
}

impl Reconciler for OCIRepositories {
    type Object = OCIRepository;
    type Error = Error;
    const CONTROLLER: &'static str = FIELD_MANAGER;

    async fn reconcile(
        &self,
        obj: Arc<OCIRepository>,
        cx: &Cx<OCIRepository>,
    ) -> Result<Action, Error> {
        let obj = obj.as_ref();
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        let name = obj.name_any();
        let requested_at = obj.annotations().get(RECONCILE_REQUEST_ANNOTATION).cloned();
        let previous = obj.status.clone().unwrap_or_default();
        let (interval, reference) = match check_spec(obj) {
            Ok(checked) => checked,
            Err(err) => return Err(stalled(obj, cx, err, requested_at).await),
        };
        let timeout = parse_duration(obj.timeout()).unwrap_or(Duration::from_secs(60));
        let pulled = tokio::time::timeout(
            timeout,
            self.pull(obj, cx.client(), &namespace, &name, &reference, timeout),
        )
        .await
        .unwrap_or(Err(Error::Timeout(timeout)));
        match pulled {
            Ok(artifact) => {
                // Best effort, as Flux: a failed link keeps the previous URL.
                let url = match self.store.link_latest(&artifact) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to update status URL link");
                        previous.url.clone()
                    }
                };
                let status = success_status(obj, &previous, artifact.clone(), url, requested_at);
                cx.write_status(obj, &status).await.map_err(Error::Status)?;
                let changed = previous
                    .artifact
                    .as_ref()
                    .is_none_or(|a| a.digest != artifact.digest || a.revision != artifact.revision);
                if changed {
                    if let Some(stored) = &self.stored {
                        stored.request(&name, &namespace);
                    }
                    tracing::info!(%namespace, %name, revision = %artifact.revision, "stored new artifact");
                    cx.event(
                        obj,
                        Severity::Info,
                        NEW_ARTIFACT_REASON,
                        &event_message(obj, &artifact),
                        Some(&artifact.revision),
                    )
                    .await;
                }
                Ok(Action::requeue(jittered(obj, interval)))
            }
            Err(err) => {
                let status = failure_status(obj, &previous, &err, requested_at);
                cx.report_failure(obj, &status, err.reason(), &err.to_string())
                    .await
                    .map_err(Error::Status)?;
                Err(err)
            }
        }
    }

    async fn cleanup(&self, obj: Arc<OCIRepository>, _cx: &Cx<OCIRepository>) -> Result<(), Error> {
        let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
        self.store
            .remove_all(OCI_REPOSITORY_KIND, &namespace, &obj.name_any())
            .map_err(Error::Artifact)
    }

    fn retryable(error: &Error) -> bool {
        !matches!(error, Error::Stalled { .. })
    }
}

/// What to pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    Digest(String),
    Semver {
        range: String,
        filter: Option<String>,
    },
    Tag(String),
}

/// The spec's interval and repository, or why the spec cannot work.
pub fn check_spec(obj: &OCIRepository) -> Result<(Duration, Reference), Error> {
    let stall = |reason, message: String| Error::Stalled { reason, message };
    let interval = match parse_duration(&obj.spec.interval) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            let message = format!("invalid interval '{}'", obj.spec.interval);
            return Err(stall(URL_INVALID_REASON, message));
        }
    };
    let reference = parse_url(&obj.spec.url).map_err(|why| {
        let message = format!("URL validation failed for '{}': {why}", obj.spec.url);
        stall(URL_INVALID_REASON, message)
    })?;
    if let Some(verify) = &obj.spec.verify {
        let message = format!(
            "signature verification with provider '{}' is not supported by Gantry yet; remove spec.verify",
            verify.provider
        );
        return Err(stall(VERIFICATION_ERROR_REASON, message));
    }
    let provider = obj.spec.provider.unwrap_or_default();
    if provider != OCIProvider::Generic {
        let message = format!(
            "provider '{}' is not supported by Gantry yet; use 'generic' with spec.secretRef",
            serde_json::to_value(provider)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
        return Err(stall(AUTHENTICATION_FAILED_REASON, message));
    }
    if obj
        .spec
        .service_account_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        let message = "spec.serviceAccountName (image pull secrets of a ServiceAccount) is not \
                       supported by Gantry yet; use spec.secretRef"
            .to_owned();
        return Err(stall(AUTHENTICATION_FAILED_REASON, message));
    }
    if let Some(filter) = obj
        .spec
        .r#ref
        .as_ref()
        .and_then(|r| r.semver_filter.as_deref())
        && let Err(e) = regex::Regex::new(filter)
    {
        let message = format!("invalid semverFilter '{filter}': {e}");
        return Err(stall(READ_OPERATION_FAILED_REASON, message));
    }
    Ok((interval, reference))
}

/// `oci://host/path` as a repository; tags and digests belong in `spec.ref`.
pub fn parse_url(url: &str) -> Result<Reference, String> {
    let Some(rest) = url.strip_prefix(OCI_REPOSITORY_PREFIX) else {
        return Err("URL must be in format 'oci://<domain>/<org>/<repo>'".into());
    };
    Reference::parse(rest).map_err(|e| match e {
        ReferenceError::Tag(_, tag) => format!("URL must not contain a tag; remove ':{tag}'"),
        ReferenceError::Digest(_, digest) => {
            format!("URL must not contain a digest; remove '@{digest}'")
        }
        other => other.to_string(),
    })
}

/// What `spec.ref` asks for, with Flux's precedence: digest, semver, tag, `latest`.
pub fn want(obj: &OCIRepository) -> Want {
    let r = obj.spec.r#ref.clone().unwrap_or_default();
    let set = |s: Option<String>| s.filter(|s| !s.is_empty());
    if let Some(digest) = set(r.digest) {
        return Want::Digest(digest);
    }
    if let Some(range) = set(r.semver) {
        return Want::Semver {
            range,
            filter: set(r.semver_filter),
        };
    }
    Want::Tag(set(r.tag).unwrap_or_else(|| OCI_DEFAULT_TAG.to_owned()))
}

/// The highest tag in `range` among `tags` that match `filter`.
pub fn choose_tag(tags: &[String], range: &str, filter: Option<&str>) -> Result<String, String> {
    let filter = filter
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| e.to_string())?;
    let parsed = gantry_core::semver::Range::parse(range)
        .map_err(|e| format!("semver '{range}' parse error: {e}"))?;
    let candidates = tags
        .iter()
        .filter(|t| filter.as_ref().is_none_or(|f| f.is_match(t)));
    parsed
        .highest(candidates)
        .cloned()
        .ok_or_else(|| format!("no match found for semver: {range}"))
}

/// The digest (`sha256:<hex>`) part of a revision.
pub fn digest_of_revision(revision: &str) -> &str {
    revision.rsplit('@').next().unwrap_or(revision)
}

impl OCIRepositories {
    async fn pull(
        &self,
        obj: &OCIRepository,
        client: &Client,
        namespace: &str,
        name: &str,
        reference: &Reference,
        timeout: Duration,
    ) -> Result<Artifact, Error> {
        let registry = self
            .registry_client(obj, client, namespace, reference, timeout)
            .await?;
        let url = obj.spec.url.clone();
        let revision = match want(obj) {
            Want::Digest(digest) => {
                let valid = digest
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !valid {
                    return Err(Error::Revision(RegistryError::Malformed {
                        url,
                        cause: format!("invalid digest '{digest}': expected sha256:<64 hex>"),
                    }));
                }
                digest
            }
            Want::Semver { range, filter } => {
                let mut tags = Vec::new();
                registry
                    .list_tags(|page| {
                        tags.extend(page);
                        Ok(())
                    })
                    .await
                    .map_err(|e| Error::Tag {
                        url: url.clone(),
                        cause: e.to_string(),
                    })?;
                let tag =
                    choose_tag(&tags, &range, filter.as_deref()).map_err(|cause| Error::Tag {
                        url: url.clone(),
                        cause,
                    })?;
                let digest = registry
                    .manifest_digest(&tag)
                    .await
                    .map_err(Error::Revision)?;
                format!("{tag}@{digest}")
            }
            Want::Tag(tag) => {
                let digest = registry
                    .manifest_digest(&tag)
                    .await
                    .map_err(Error::Revision)?;
                format!("{tag}@{digest}")
            }
        };

        let status = obj.status.clone().unwrap_or_default();
        let same_config = status.observed_ignore == obj.spec.ignore
            && status.observed_layer_selector == obj.spec.layer_selector;
        if let Some(current) = status
            .artifact
            .filter(|a| a.revision == revision && same_config && self.store.exists(a))
        {
            return Ok(current);
        }

        let digest = digest_of_revision(&revision).to_owned();
        let (bytes, _) = registry
            .manifest(&digest)
            .await
            .map_err(|source| Error::Pull {
                url: url.clone(),
                source,
            })?;
        let manifest = Manifest::parse(&bytes)?;
        let layer = manifest.select_layer(obj.layer_media_type())?.clone();
        let max = self.max_layer_bytes;
        if layer.size as u64 > max {
            return Err(Error::Layer(format!(
                "layer {} is {} bytes, more than the {max} allowed",
                layer.digest, layer.size
            )));
        }
        let file_name = format!("{digest}.tar.gz");
        let mut artifact = match obj.layer_operation() {
            OCILayerOperation::Copy => {
                let mut pending = self.store.begin(OCI_REPOSITORY_KIND, namespace, name)?;
                registry
                    .fetch_blob(&layer.digest, max, &mut pending)
                    .await
                    .map_err(|source| Error::Pull {
                        url: url.clone(),
                        source,
                    })?;
                pending.commit(&revision, Some(&file_name))?
            }
            OCILayerOperation::Extract => {
                let mut blob = tempfile::tempfile()
                    .map_err(|e| Error::Worker(format!("temporary file: {e}")))?;
                registry
                    .fetch_blob(&layer.digest, max, &mut blob)
                    .await
                    .map_err(|source| Error::Pull {
                        url: url.clone(),
                        source,
                    })?;
                let store = self.store.clone();
                let ignore = obj.spec.ignore.clone();
                let (namespace, name, revision) =
                    (namespace.to_owned(), name.to_owned(), revision.clone());
                tokio::task::spawn_blocking(move || -> Result<Artifact, Error> {
                    let dir = tempfile::Builder::new()
                        .prefix("gantry-oci-")
                        .tempdir()
                        .map_err(|e| Error::Worker(format!("temporary directory: {e}")))?;
                    blob.seek(SeekFrom::Start(0))
                        .map_err(|e| Error::Worker(e.to_string()))?;
                    crate::artifact::unpack(std::io::BufReader::new(blob), dir.path()).map_err(
                        |e| {
                            Error::Layer(format!(
                                "failed to extract layer contents from artifact: {e}"
                            ))
                        },
                    )?;
                    let rules = SourceIgnore::load(dir.path(), ignore.as_deref())?;
                    Ok(store.store_named(
                        OCI_REPOSITORY_KIND,
                        &namespace,
                        &name,
                        dir.path(),
                        &rules,
                        &revision,
                        Some(&file_name),
                    )?)
                })
                .await
                .map_err(|e| Error::Worker(e.to_string()))??
            }
        };
        artifact.metadata = manifest.annotations;
        Ok(artifact)
    }

    async fn registry_client(
        &self,
        obj: &OCIRepository,
        client: &Client,
        namespace: &str,
        reference: &Reference,
        timeout: Duration,
    ) -> Result<RegistryClient, Error> {
        let mut config = ClientConfig {
            insecure: obj.spec.insecure,
            request_timeout: timeout,
            ..ClientConfig::default()
        };
        if let Some(secret) = &obj.spec.secret_ref {
            let data = secret_data(client, namespace, &secret.name).await?;
            let json = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"))
                .ok_or_else(|| {
                    Error::Credentials(format!(
                        "secret '{namespace}/{}' has no '.dockerconfigjson' key",
                        secret.name
                    ))
                })?;
            config.credentials = Credentials::from_docker_config(json, &reference.registry)
                .map_err(|e| {
                    Error::Credentials(format!("secret '{namespace}/{}': {e}", secret.name))
                })?;
        }
        if let Some(secret) = &obj.spec.cert_secret_ref {
            let data = secret_data(client, namespace, &secret.name).await?;
            config.ca_pem = data.get("ca.crt").cloned();
            if let (Some(cert), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) {
                config.client_cert_pem = Some((cert.clone(), key.clone()));
            }
        }
        if let Some(secret) = &obj.spec.proxy_secret_ref {
            let data = secret_data(client, namespace, &secret.name).await?;
            config.proxy = Some(crate::git::auth::proxy_url(&data).map_err(Error::Credentials)?);
        }
        RegistryClient::new(reference, config).map_err(|e| {
            Error::Credentials(format!(
                "failed to generate transport for '{}': {e}",
                obj.spec.url
            ))
        })
    }
}

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    gantry_runtime::secrets::data(client, namespace, name)
        .await
        .map_err(|source| Error::Secret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })
}

/// Flux's `NewArtifact` message, with the origin when the annotations name it.
pub fn event_message(obj: &OCIRepository, artifact: &Artifact) -> String {
    let mut message = format!(
        "stored artifact with revision '{}' from '{}'",
        artifact.revision, obj.spec.url
    );
    if let (Some(source), Some(revision)) = (
        artifact
            .metadata
            .get(SOURCE_ANNOTATION)
            .filter(|s| !s.is_empty()),
        artifact
            .metadata
            .get(REVISION_ANNOTATION)
            .filter(|s| !s.is_empty()),
    ) {
        message.push_str(&format!(
            ", origin source '{source}', origin revision '{revision}'"
        ));
    }
    message
}

fn ready_message(revision: &str) -> String {
    format!("stored artifact for digest '{revision}'")
}

fn success_status(
    obj: &OCIRepository,
    previous: &OCIRepositoryStatus,
    artifact: Artifact,
    url: Option<String>,
    requested_at: Option<String>,
) -> OCIRepositoryStatus {
    let generation = obj.metadata.generation;
    let message = ready_message(&artifact.revision);
    let mut conds = previous.conditions.clone();
    for gone in [
        FETCH_FAILED_CONDITION,
        STORAGE_OPERATION_FAILED_CONDITION,
        ARTIFACT_OUTDATED_CONDITION,
    ] {
        conditions::remove(&mut conds, gone);
    }
    conditions::set(
        &mut conds,
        ARTIFACT_IN_STORAGE_CONDITION,
        Status::True,
        SUCCEEDED_REASON,
        &message,
        generation,
    );
    conditions::succeeded(&mut conds, generation, SUCCEEDED_REASON, &message);
    OCIRepositoryStatus {
        observed_generation: generation,
        conditions: conds,
        artifact: Some(artifact),
        url,
        observed_ignore: obj.spec.ignore.clone(),
        observed_layer_selector: obj.spec.layer_selector.clone(),
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
    }
}

fn failure_status(
    obj: &OCIRepository,
    previous: &OCIRepositoryStatus,
    err: &Error,
    requested_at: Option<String>,
) -> OCIRepositoryStatus {
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let conds = failed_conditions(
        &previous.conditions,
        generation,
        Some(err.condition()),
        err.reason(),
        &message,
    );
    OCIRepositoryStatus {
        observed_generation: previous.observed_generation.or(Some(-1)),
        conditions: conds,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    }
}

async fn stalled(
    obj: &OCIRepository,
    cx: &Cx<OCIRepository>,
    err: Error,
    requested_at: Option<String>,
) -> Error {
    let previous = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let message = err.to_string();
    let reason = err.reason();
    let conds = failed_conditions(&previous.conditions, generation, None, reason, &message);
    let status = OCIRepositoryStatus {
        observed_generation: generation,
        conditions: conds,
        last_handled_reconcile_at: requested_at
            .or_else(|| previous.last_handled_reconcile_at.clone()),
        ..previous.clone()
    };
    if let Err(e) = cx.write_status(obj, &status).await {
        return Error::Status(e);
    }
    let was = conditions::get(&previous.conditions, READY_CONDITION);
    if was.is_none_or(|c| c.message != message) {
        cx.event(obj, Severity::Error, reason, &message, None).await;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::source::v1::{OCIRepositoryRef, OCIRepositorySpec};

    fn repo(url: &str, r: Option<OCIRepositoryRef>) -> OCIRepository {
        let mut o = OCIRepository::new(
            "app",
            OCIRepositorySpec {
                url: url.into(),
                interval: "1m".into(),
                r#ref: r,
                ..Default::default()
            },
        );
        o.metadata.generation = Some(2);
        o
    }

    #[test]
    fn references_follow_flux_s_precedence() {
        let r = |digest: Option<&str>, semver: Option<&str>, tag: Option<&str>| {
            Some(OCIRepositoryRef {
                digest: digest.map(Into::into),
                semver: semver.map(Into::into),
                semver_filter: None,
                tag: tag.map(Into::into),
            })
        };
        let url = "oci://127.0.0.1:5000/app";
        assert_eq!(want(&repo(url, None)), Want::Tag("latest".into()));
        assert_eq!(
            want(&repo(url, r(None, None, Some("v1")))),
            Want::Tag("v1".into())
        );
        assert!(matches!(
            want(&repo(url, r(None, Some(">=1.0.0"), Some("v1")))),
            Want::Semver { .. }
        ));
        assert_eq!(
            want(&repo(url, r(Some("sha256:ab"), Some(">=1"), Some("v1")))),
            Want::Digest("sha256:ab".into())
        );
    }

    #[test]
    fn urls_are_checked_with_flux_s_messages() {
        assert_eq!(
            parse_url("oci://127.0.0.1:5000/team/app")
                .unwrap()
                .canonical_name(),
            "127.0.0.1:5000/team/app"
        );
        assert_eq!(
            parse_url("https://ghcr.io/a/b").unwrap_err(),
            "URL must be in format 'oci://<domain>/<org>/<repo>'"
        );
        assert_eq!(
            parse_url("oci://ghcr.io/a/b:v1").unwrap_err(),
            "URL must not contain a tag; remove ':v1'"
        );
        let err = check_spec(&repo("oci://ghcr.io/a/b:v1", None)).unwrap_err();
        assert_eq!(err.reason(), "URLInvalid");
        assert_eq!(
            err.to_string(),
            "URL validation failed for 'oci://ghcr.io/a/b:v1': URL must not contain a tag; remove ':v1'"
        );
    }

    #[test]
    fn semver_picks_the_highest_filtered_tag() {
        let tags: Vec<String> = [
            "v1.0.0",
            "v1.2.0",
            "v2.0.0",
            "v1.3.0-rc.1",
            "latest",
            "1.2.5-dev",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(choose_tag(&tags, "1.x", None).unwrap(), "v1.2.0");
        assert_eq!(choose_tag(&tags, ">=1.0.0", None).unwrap(), "v2.0.0");
        assert_eq!(
            choose_tag(&tags, ">=1.0.0-0", Some(".*-dev$")).unwrap(),
            "1.2.5-dev"
        );
        assert_eq!(
            choose_tag(&tags, ">=3.0.0", None).unwrap_err(),
            "no match found for semver: >=3.0.0"
        );
    }

    #[test]
    fn revisions_and_messages_are_flux_s() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(digest_of_revision(&format!("v1@{digest}")), digest);
        assert_eq!(digest_of_revision(&digest), digest);
        let obj = repo("oci://127.0.0.1:5000/app", None);
        let mut artifact = Artifact {
            path: "ocirepository/ns/app/x.tar.gz".into(),
            url: "http://x/ocirepository/ns/app/x.tar.gz".into(),
            revision: format!("latest@{digest}"),
            digest: "sha256:00".into(),
            last_update_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            ),
            size: Some(1),
            metadata: Default::default(),
        };
        assert_eq!(
            event_message(&obj, &artifact),
            format!(
                "stored artifact with revision 'latest@{digest}' from 'oci://127.0.0.1:5000/app'"
            )
        );
        artifact
            .metadata
            .insert(SOURCE_ANNOTATION.into(), "https://git/x".into());
        artifact
            .metadata
            .insert(REVISION_ANNOTATION.into(), "main@sha1:1".into());
        assert!(
            event_message(&obj, &artifact)
                .ends_with(", origin source 'https://git/x', origin revision 'main@sha1:1'")
        );

        let ok = success_status(&obj, &Default::default(), artifact.clone(), None, None);
        let kinds: Vec<_> = ok
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Ready", "True", "Succeeded"),
                ("ArtifactInStorage", "True", "Succeeded")
            ]
        );
        assert_eq!(
            ok.conditions[0].message,
            format!("stored artifact for digest 'latest@{digest}'")
        );
        let err = Error::Layer("no layers found in artifact".into());
        let failed = failure_status(&obj, &ok, &err, None);
        let ready = conditions::get(&failed.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "OCIArtifactLayerOperationFailed");
        assert!(conditions::is_true(&failed.conditions, "FetchFailed"));
        assert_eq!(failed.artifact, ok.artifact, "the last artifact is kept");
    }
}

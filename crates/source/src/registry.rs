//! A client for the OCI distribution API, just what image automation needs: list a repository's
//! tags (every page, streamed) and resolve a tag's manifest digest; what OCIRepository needs:
//! fetch a manifest and stream a blob, both bounded and digest-verified; and what `gantry push
//! artifact` and `cargo xtask image --push` need: upload blobs and put a manifest.
//!
//! - References: `alpine` is `docker.io/library/alpine` (API host `index.docker.io`), a first
//!   path component with a `.` or `:` or equal to `localhost` is a registry host.
//! - Authentication: anonymous, Basic, or the bearer-token challenge flow
//!   (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`), with credentials taken from a
//!   `.dockerconfigjson` whose `auths` key matches the registry host the way docker matches it.
//! - Pagination: `n`/`last` and the `Link` header, to the end; each page is handed to the caller
//!   and dropped, so memory is one page however many tags there are.
//! - `429 Too Many Requests`: `Retry-After` is honoured up to a bound, then the scan fails.
//!
//! Built on [`gantry_runtime::http::client`] (rustls, system roots plus an optional CA).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use gantry_runtime::http::{ClientError, ClientOptions};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// Registry host of Docker Hub as users write it (and as canonical names spell it).
pub const DOCKER_HUB: &str = "docker.io";
/// Host Docker Hub's registry API answers on.
pub const DOCKER_HUB_API: &str = "index.docker.io";
/// Tags asked for per page (`n`); registries may return fewer.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Largest tag-list page body accepted (a registry that ignores `n` still has to fit).
const MAX_PAGE_BYTES: usize = 64 << 20;
/// Largest manifest accepted (distribution itself refuses manifests over 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Media types a manifest fetch accepts: single image manifests, OCI first.
const IMAGE_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Media types a digest lookup accepts: image indexes first, as a pull would.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image '{0}' should not start with a URL scheme; remove '{1}://'")]
    Scheme(String, String),
    #[error("image '{0}' should not contain a tag; remove ':{1}'")]
    Tag(String, String),
    #[error("image '{0}' should not contain a digest; remove '@{1}'")]
    Digest(String, String),
    #[error("invalid image reference '{image}': {why}")]
    Invalid { image: String, why: &'static str },
}

/// A repository in a registry: `registry/repository`, without tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), `docker.io` for Docker Hub.
    pub registry: String,
    /// Path of the repository in the registry, e.g. `library/alpine`.
    pub repository: String,
}

impl Reference {
    /// Parses an ImageRepository's `spec.image`: no scheme, tag or digest allowed.
    pub fn parse(image: &str) -> Result<Self, ReferenceError> {
        let (reference, tag, digest) = Self::parse_with_tag(image)?;
        if let Some(digest) = digest {
            return Err(ReferenceError::Digest(image.into(), digest));
        }
        if let Some(tag) = tag {
            return Err(ReferenceError::Tag(image.into(), tag));
        }
        Ok(reference)
    }

    /// Parses `[registry/]repository[:tag][@digest]`.
    pub fn parse_with_tag(
        image: &str,
    ) -> Result<(Self, Option<String>, Option<String>), ReferenceError> {
        let invalid = |why| ReferenceError::Invalid {
            image: image.into(),
            why,
        };
        if let Some((scheme, _)) = image.split_once("://") {
            return Err(ReferenceError::Scheme(image.into(), scheme.into()));
        }
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                let valid = digest.split_once(':').is_some_and(|(alg, hex)| {
                    !alg.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !valid {
                    return Err(invalid("the digest is not <algorithm>:<hex>"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (image, None),
        };
        // A `:` after the last `/` starts the tag; one before it belongs to a registry port.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].find(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(invalid(
                "the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
            ));
        }
        if name.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(invalid("the registry host has invalid characters"));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                "repository path components must be lowercase letters, digits and . _ - separators",
            ));
        }
        Ok((
            Reference {
                registry,
                repository,
            },
            tag,
            digest,
        ))
    }

    /// The name with every implied part explicit, e.g. `docker.io/library/alpine`.
    pub fn canonical_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host the API is reached at (`index.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical_name())
    }
}

/// Whether `tag` is a valid OCI tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a docker config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("invalid docker config JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("docker config entry for '{0}': 'auth' is not base64 of 'username:password'")]
    BadAuth(String),
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(serde::Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// The credentials a `.dockerconfigjson` holds for `registry` (as in [`Reference::registry`]),
    /// `None` when no `auths` key matches. Keys are matched on their host, with or without a
    /// scheme or path (`https://index.docker.io/v1/`, `registry:5000`); every Docker Hub alias
    /// matches Docker Hub. An exact key wins over an alias.
    pub fn from_docker_config(
        json: &[u8],
        registry: &str,
    ) -> Result<Option<Self>, DockerConfigError> {
        let config: DockerConfig = serde_json::from_slice(json).map_err(DockerConfigError::Json)?;
        let wanted = normalise_host(registry);
        let hub = |h: &str| {
            matches!(
                h,
                "docker.io"
                    | "index.docker.io"
                    | "registry-1.docker.io"
                    | "registry.hub.docker.com"
            )
        };
        let mut found = None;
        for (key, entry) in &config.auths {
            let host = normalise_host(key);
            if host == wanted {
                found = Some((key, entry));
                break;
            }
            if found.is_none() && hub(&host) && hub(&wanted) {
                found = Some((key, entry));
            }
        }
        let Some((key, entry)) = found else {
            return Ok(None);
        };
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = BASE64
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| DockerConfigError::BadAuth(key.clone()))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| DockerConfigError::BadAuth(key.clone()))?;
            return Ok(Some(Credentials {
                username: username.into(),
                password: password.into(),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            })),
            _ => Ok(None),
        }
    }
}

// `https://Host:5000/v1/` -> `host:5000`.
fn normalise_host(key: &str) -> String {
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    key.split('/').next().unwrap_or("").to_ascii_lowercase()
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Extra trusted CA (PEM), client certificate and key (PEM).
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Proxy URL for every request.
    pub proxy: Option<String>,
    /// Credentials for Basic auth or the token endpoint; anonymous when `None`.
    pub credentials: Option<Credentials>,
    /// Limit of each HTTP request.
    pub request_timeout: Duration,
    /// `n` asked for per tag-list page; `None` lets the registry choose.
    pub page_size: Option<u32>,
    /// Longest `Retry-After` that is waited out; a longer one fails at once.
    pub max_retry_after: Duration,
    /// How many 429 answers in a row are retried.
    pub max_retries: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure: false,
            ca_pem: None,
            client_cert_pem: None,
            proxy: None,
            credentials: None,
            request_timeout: Duration::from_secs(30),
            page_size: Some(DEFAULT_PAGE_SIZE),
            max_retry_after: Duration::from_secs(60),
            max_retries: 5,
        }
    }
}

/// Why talking to the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The HTTP client could not be built (CA, client certificate, proxy).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Nothing answered: connection refused, DNS, TLS handshake.
    #[error("registry {host} is unreachable: {cause}")]
    Unreachable { host: String, cause: String },
    /// The request did not finish in time.
    #[error("request to {url} timed out")]
    Timeout { url: String },
    /// 401/403: credentials missing, wrong, or without access.
    #[error("authentication to {host} failed ({status}): {detail}")]
    Unauthorized {
        host: String,
        status: u16,
        detail: String,
    },
    /// 404: the repository (or tag) does not exist.
    #[error("{what} not found in {host}: {detail}")]
    NotFound {
        host: String,
        what: String,
        detail: String,
    },
    /// 429 that could not be waited out.
    #[error("registry {host} is rate limiting requests (429 Too Many Requests{})", retry_note(.retry_after))]
    TooManyRequests {
        host: String,
        retry_after: Option<Duration>,
    },
    /// The answer is not what the API specifies.
    #[error("malformed answer from {url}: {cause}")]
    Malformed { url: String, cause: String },
    /// Any other unexpected status.
    #[error("unexpected status {status} from {url}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    /// The caller's page handler failed (e.g. writing the tag store).
    #[error("storing tags: {0}")]
    Sink(#[source] std::io::Error),
}

fn retry_note(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

impl RegistryError {
    /// Whether the credentials are the problem (Flux's `AuthenticationFailed` territory).
    pub fn is_auth(&self) -> bool {
        matches!(self, RegistryError::Unauthorized { .. })
    }
}

/// What a tag listing saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListStats {
    /// Pages fetched.
    pub pages: u32,
    /// Tags received (before any filtering by the caller).
    pub tags: u64,
}

/// A client for one repository; it keeps the bearer token between requests.
pub struct RegistryClient {
    http: reqwest::Client,
    reference: Reference,
    base: Url,
    config: ClientConfig,
    auth: Mutex<Option<HeaderValue>>,
}

impl RegistryClient {
    /// A client for `reference` with `config`.
    pub fn new(reference: &Reference, config: ClientConfig) -> Result<Self, RegistryError> {
        let http = gantry_runtime::http::client(&ClientOptions {
            ca_pem: config.ca_pem.clone(),
            client_cert_pem: config.client_cert_pem.clone(),
            proxy: config.proxy.clone(),
            timeout: Some(config.request_timeout),
        })?;
        let scheme = if config.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", reference.api_host())).map_err(|e| {
            RegistryError::Malformed {
                url: reference.api_host().into(),
                cause: format!("not a host: {e}"),
            }
        })?;
        Ok(RegistryClient {
            http,
            reference: reference.clone(),
            base,
            config,
            auth: Mutex::new(None),
        })
    }

    /// The repository this client talks to.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Lists every tag, page by page, handing each page to `on_page` in the registry's order.
    pub async fn list_tags(
        &self,
        mut on_page: impl FnMut(Vec<String>) -> std::io::Result<()>,
    ) -> Result<ListStats, RegistryError> {
        let mut url = self.url(&format!("v2/{}/tags/list", self.reference.repository));
        if let Some(n) = self.config.page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let mut stats = ListStats::default();
        let mut previous_last: Option<String> = None;
        // Once a registry pages with `Link`, a page without one is the last.
        let mut saw_link = false;
        loop {
            let response = self.get(url.clone(), None, "repository").await?;
            let link = next_link(response.headers(), &url);
            saw_link |= link.is_some();
            let body = read_limited(response, &url).await?;
            let page: TagPage =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Malformed {
                    url: url.to_string(),
                    cause: format!("tag list is not {{\"name\": ..., \"tags\": [...]}}: {e}"),
                })?;
            drop(body);
            let tags = page.tags.unwrap_or_default();
            if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
                return Err(RegistryError::Malformed {
                    url: url.to_string(),
                    cause: format!("invalid tag {bad:?} in the tag list"),
                });
            }
            // A registry that ignores `last` would serve the same page forever.
            if previous_last.is_some() && tags.last() == previous_last.as_ref() {
                break;
            }
            stats.pages += 1;
            stats.tags += tags.len() as u64;
            // Exactly `n` tags may mean more; more than `n` means `n` was ignored (distribution
            // 2.8 ignores both `n` and `last` on tag lists and sends everything at once).
            let full_page = self
                .config
                .page_size
                .is_some_and(|n| tags.len() as u64 == u64::from(n));
            let last = tags.last().cloned();
            on_page(tags).map_err(RegistryError::Sink)?;
            url = match (link, last) {
                (Some(next), _) => next,
                // Without a Link header, a full page may mean more: ask from the last tag on.
                (None, Some(last)) if full_page && !saw_link => {
                    let mut next = url.clone();
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .filter(|(k, _)| k != "last")
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    next.query_pairs_mut()
                        .clear()
                        .extend_pairs(pairs)
                        .append_pair("last", &last);
                    previous_last = Some(last);
                    next
                }
                _ => break,
            };
        }
        Ok(stats)
    }

    /// The manifest digest (`sha256:...`) `tag` points to, as a pull would resolve it.
    pub async fn manifest_digest(&self, tag: &str) -> Result<String, RegistryError> {
        let url = self.url(&format!("v2/{}/manifests/{tag}", self.reference.repository));
        let accept = HeaderValue::from_static(MANIFEST_ACCEPT);
        let head = self
            .request(
                reqwest::Method::HEAD,
                url.clone(),
                Some(&accept),
                None,
                "tag",
            )
            .await?;
        if let Some(digest) = head
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            return Ok(digest.to_owned());
        }
        // No header on HEAD: the digest is the hash of the manifest bytes.
        let response = self.get(url.clone(), Some(&accept), "tag").await?;
        let body = read_limited(response, &url).await?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
    }

    /// The image manifest `reference` (a tag or `sha256:` digest) names: its bytes and digest.
    /// Only OCI and Docker image manifests are accepted (an index is refused: artifacts are single
    /// manifests), at most [`MAX_MANIFEST_BYTES`]; a digest reference must match the bytes.
    pub async fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let url = self.url(&format!(
            "v2/{}/manifests/{reference}",
            self.reference.repository
        ));
        let accept = HeaderValue::from_static(IMAGE_MANIFEST_ACCEPT);
        let response = self.get(url.clone(), Some(&accept), "manifest").await?;
        let body = read_bounded(response, &url, MAX_MANIFEST_BYTES).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.contains(':') && reference != digest {
            return Err(RegistryError::Malformed {
                url: url.to_string(),
                cause: format!("manifest has digest {digest}, not the {reference} asked for"),
            });
        }
        Ok((body, digest))
    }

    /// Streams the blob `digest` (`sha256:<hex>`) into `sink`, refusing more than `max_bytes`
    /// and bytes whose sha256 is not `digest`; returns the size. Memory is one chunk.
    pub async fn fetch_blob(
        &self,
        digest: &str,
        max_bytes: u64,
        sink: &mut impl std::io::Write,
    ) -> Result<u64, RegistryError> {
        let url = self.url(&format!("v2/{}/blobs/{digest}", self.reference.repository));
        let malformed = |cause: String| RegistryError::Malformed {
            url: url.to_string(),
            cause,
        };
        let expected = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| malformed(format!("unsupported blob digest {digest:?}")))?
            .to_ascii_lowercase();
        let mut response = self.get(url.clone(), None, "blob").await?;
        if response.content_length().is_some_and(|l| l > max_bytes) {
            return Err(malformed(format!("blob larger than {max_bytes} bytes")));
        }
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| malformed(format!("reading the blob: {}", error_chain(&e))))?
        {
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(malformed(format!("blob larger than {max_bytes} bytes")));
            }
            hasher.update(&chunk);
            // Chunks are small (tens of KiB): a blocking write here costs less than a hop to a
            // blocking thread per chunk.
            sink.write_all(&chunk).map_err(RegistryError::Sink)?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(malformed(format!(
                "blob content has digest sha256:{actual}, not {digest}"
            )));
        }
        Ok(size)
    }

    /// Uploads `data` as the blob `digest` (`sha256:...`) unless the repository has it already
    /// (a monolithic upload: POST for a session, one PUT with the bytes). Returns whether it was
    /// uploaded.
    pub async fn push_blob(&self, digest: &str, data: &[u8]) -> Result<bool, RegistryError> {
        let repository = &self.reference.repository;
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        match self
            .request(reqwest::Method::HEAD, url, None, None, "blob")
            .await
        {
            Ok(_) => return Ok(false),
            Err(RegistryError::NotFound { .. }) => {}
            Err(err) => return Err(err),
        }
        let start = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let session = self
            .request(
                reqwest::Method::POST,
                start.clone(),
                None,
                None,
                "repository",
            )
            .await?;
        let location = session
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| RegistryError::Malformed {
                url: start.to_string(),
                cause: "upload session without a Location header".into(),
            })?;
        // Location may be relative to the registry, and may carry a query (the session state).
        let mut upload = start.join(location).map_err(|e| RegistryError::Malformed {
            url: start.to_string(),
            cause: format!("upload Location {location:?}: {e}"),
        })?;
        upload.query_pairs_mut().append_pair("digest", digest);
        let body = Body {
            data,
            content_type: "application/octet-stream",
        };
        self.request(reqwest::Method::PUT, upload, None, Some(body), "upload")
            .await?;
        Ok(true)
    }

    /// Puts `manifest` (of `media_type`) as `tag` and returns its digest, as the registry
    /// reports it (else the hash of the bytes, which is what it must be).
    pub async fn push_manifest(
        &self,
        tag: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> Result<String, RegistryError> {
        let url = self.url(&format!("v2/{}/manifests/{tag}", self.reference.repository));
        let body = Body {
            data: manifest,
            content_type: media_type,
        };
        let response = self
            .request(reqwest::Method::PUT, url, None, Some(body), "manifest")
            .await?;
        let computed = format!("sha256:{}", hex::encode(Sha256::digest(manifest)));
        let reported = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(reported.unwrap_or(computed))
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    async fn get(
        &self,
        url: Url,
        accept: Option<&HeaderValue>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        self.request(reqwest::Method::GET, url, accept, None, what)
            .await
    }

    // One request with authentication and 429 handling; only a 2xx answer is returned.
    async fn request(
        &self,
        method: reqwest::Method,
        url: Url,
        accept: Option<&HeaderValue>,
        body: Option<Body<'_>>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut retries = 0;
        let mut authenticated = false;
        // Writes need a token scoped for push; a challenge without a scope gets this one.
        let scope = if method == reqwest::Method::GET || method == reqwest::Method::HEAD {
            "pull"
        } else {
            "pull,push"
        };
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept.clone());
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, body.content_type)
                    .body(body.data.to_vec());
            }
            if let Some(auth) = self.auth.lock().await.clone() {
                request = request.header(reqwest::header::AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(|e| self.transport(e, &url))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            match status {
                StatusCode::UNAUTHORIZED if !authenticated => {
                    let challenge = response
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let header = self.authenticate(&challenge, scope).await?;
                    *self.auth.lock().await = Some(header);
                    authenticated = true;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let retry_after = retry_after(response.headers());
                    let wait = retry_after.unwrap_or(Duration::from_secs(1) * 2u32.pow(retries));
                    if retries >= self.config.max_retries || wait > self.config.max_retry_after {
                        return Err(RegistryError::TooManyRequests {
                            host: self.reference.api_host().into(),
                            retry_after,
                        });
                    }
                    tracing::debug!(%url, ?wait, "429 from the registry; waiting as asked");
                    retries += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(self.status_error(response, &url, what).await),
            }
        }
    }

    // The Authorization header answering a `WWW-Authenticate` challenge.
    async fn authenticate(
        &self,
        challenge: &str,
        access: &str,
    ) -> Result<HeaderValue, RegistryError> {
        let host = self.reference.api_host().to_owned();
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            host: host.clone(),
            status: 401,
            detail,
        };
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let creds = self.config.credentials.as_ref().ok_or_else(|| {
                    unauthorized("the registry requires credentials and none were given".into())
                })?;
                Ok(basic(creds))
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| unauthorized("bearer challenge without a realm".into()))?;
                let mut token_url = Url::parse(realm).map_err(|e| RegistryError::Malformed {
                    url: realm.clone(),
                    cause: format!("token realm is not a URL: {e}"),
                })?;
                {
                    let mut query = token_url.query_pairs_mut();
                    if let Some(service) = params.get("service") {
                        query.append_pair("service", service);
                    }
                    let scope = params.get("scope").cloned().unwrap_or_else(|| {
                        format!("repository:{}:{access}", self.reference.repository)
                    });
                    query.append_pair("scope", &scope);
                }
                let mut request = self.http.get(token_url.clone());
                if let Some(creds) = &self.config.credentials {
                    request = request.header(reqwest::header::AUTHORIZATION, basic(creds));
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| self.transport(e, &token_url))?;
                let status = response.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    let body = response.text().await.unwrap_or_default();
                    return Err(RegistryError::Unauthorized {
                        host,
                        status: status.as_u16(),
                        detail: format!(
                            "token endpoint {} refused the {}: {}",
                            token_url.origin().ascii_serialization(),
                            if self.config.credentials.is_some() {
                                "credentials"
                            } else {
                                "anonymous request"
                            },
                            short(&body)
                        ),
                    });
                }
                if !status.is_success() {
                    return Err(self.status_error(response, &token_url, "token").await);
                }
                let body = read_limited(response, &token_url).await?;
                let token: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| RegistryError::Malformed {
                        url: token_url.to_string(),
                        cause: format!("token response: {e}"),
                    })?;
                let token = token
                    .token
                    .or(token.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| RegistryError::Malformed {
                        url: token_url.to_string(),
                        cause: "token response has neither 'token' nor 'access_token'".into(),
                    })?;
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    RegistryError::Malformed {
                        url: token_url.to_string(),
                        cause: "token has characters not allowed in a header".into(),
                    }
                })
            }
            _ => Err(unauthorized(format!(
                "unsupported authentication challenge {:?}",
                short(challenge)
            ))),
        }
    }

    fn transport(&self, err: reqwest::Error, url: &Url) -> RegistryError {
        if err.is_timeout() {
            return RegistryError::Timeout {
                url: url.to_string(),
            };
        }
        RegistryError::Unreachable {
            host: url.host_str().map_or_else(
                || url.to_string(),
                |h| match url.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                },
            ),
            cause: error_chain(&err),
        }
    }

    async fn status_error(
        &self,
        response: reqwest::Response,
        url: &Url,
        what: &str,
    ) -> RegistryError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let detail = registry_message(&body);
        let host = self.reference.api_host().to_owned();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                host,
                status: status.as_u16(),
                detail,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                host,
                what: format!("{what} '{}'", self.reference.repository),
                detail,
            },
            _ => RegistryError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                detail,
            },
        }
    }
}

/// A request body; kept borrowed so a retried request sends the same bytes again.
struct Body<'a> {
    data: &'a [u8],
    content_type: &'a str,
}

#[derive(serde::Deserialize)]
struct TagPage {
    // Some registries send `null` for an empty repository.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

fn basic(creds: &Credentials) -> HeaderValue {
    let encoded = BASE64.encode(format!("{}:{}", creds.username, creds.password));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// Splits `Bearer realm="x",service="y",scope="repository:a:pull,push"` into the scheme and its
/// parameters (commas inside quotes belong to the value).
pub fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

// The `rel="next"` target of a `Link` header, resolved against the request URL.
fn next_link(headers: &HeaderMap, base: &Url) -> Option<Url> {
    for value in headers.get_all(reqwest::header::LINK) {
        let value = value.to_str().ok()?;
        for link in value.split(',') {
            let (target, params) = link.split_once(';').unwrap_or((link, ""));
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                return base.join(target).ok();
            }
        }
    }
    None
}

// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = when.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

async fn read_limited(response: reqwest::Response, url: &Url) -> Result<Vec<u8>, RegistryError> {
    read_bounded(response, url, MAX_PAGE_BYTES).await
}

async fn read_bounded(
    mut response: reqwest::Response,
    url: &Url,
    limit: usize,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::Malformed {
        url: url.to_string(),
        cause: format!("answer larger than {limit} bytes"),
    };
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| RegistryError::Malformed {
            url: url.to_string(),
            cause: format!("reading the answer: {}", error_chain(&e)),
        })?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

// The message of a distribution error body (`{"errors":[{"code":...,"message":...}]}`), else the
// body itself, shortened.
fn registry_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ if body.trim().is_empty() => "(no body)".into(),
        _ => short(body),
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

// reqwest's Display hides the cause ("error sending request"); the chain says what happened.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(image: &str) -> (String, String) {
        let r = Reference::parse(image).unwrap();
        (r.registry, r.repository)
    }

    #[test]
    fn docker_hub_short_names_are_made_explicit() {
        assert_eq!(
            parse("alpine"),
            ("docker.io".into(), "library/alpine".into())
        );
        assert_eq!(
            Reference::parse("alpine").unwrap().canonical_name(),
            "docker.io/library/alpine"
        );
        assert_eq!(
            parse("fluxcd/flux"),
            ("docker.io".into(), "fluxcd/flux".into())
        );
        assert_eq!(
            parse("index.docker.io/library/alpine"),
            ("docker.io".into(), "library/alpine".into())
        );
        assert_eq!(
            parse("docker.io/alpine"),
            ("docker.io".into(), "library/alpine".into())
        );
        assert_eq!(
            Reference::parse("alpine").unwrap().api_host(),
            "index.docker.io"
        );
    }

    #[test]
    fn registries_are_recognised_by_dot_colon_or_localhost() {
        assert_eq!(
            parse("ghcr.io/fluxcd/flux"),
            ("ghcr.io".into(), "fluxcd/flux".into())
        );
        assert_eq!(
            parse("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000".into(), "team/app".into())
        );
        assert_eq!(parse("localhost/app"), ("localhost".into(), "app".into()));
        assert_eq!(
            parse("registry:5000/app"),
            ("registry:5000".into(), "app".into())
        );
        assert_eq!(
            Reference::parse("registry:5000/app").unwrap().api_host(),
            "registry:5000"
        );
    }

    #[test]
    fn tags_digests_and_schemes_are_refused_with_the_fix() {
        let err = Reference::parse("ghcr.io/a/b:v1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image 'ghcr.io/a/b:v1' should not contain a tag; remove ':v1'"
        );
        assert!(matches!(
            Reference::parse("https://ghcr.io/a/b"),
            Err(ReferenceError::Scheme(_, s)) if s == "https"
        ));
        assert!(matches!(
            Reference::parse("a/b@sha256:abcd"),
            Err(ReferenceError::Digest(..))
        ));
        assert!(Reference::parse("ghcr.io/Upper/case").is_err());
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a//b").is_err());
        let (r, tag, digest) = Reference::parse_with_tag("localhost:5000/a:1.0@sha256:ab").unwrap();
        assert_eq!(
            (r.canonical_name(), tag.as_deref(), digest.as_deref()),
            ("localhost:5000/a".into(), Some("1.0"), Some("sha256:ab"))
        );
    }

    #[test]
    fn docker_config_matches_hosts_like_docker() {
        let config = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "registry.example.com:5000": {"username": "u", "password": "p"},
            "http://127.0.0.1:5000/v2/": {"auth": "bG9jYWw6cHc="}
        }}"#;
        let hub = Credentials::from_docker_config(config, "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "secret")
        );
        let example = Credentials::from_docker_config(config, "registry.example.com:5000")
            .unwrap()
            .unwrap();
        assert_eq!(example.username, "u");
        let local = Credentials::from_docker_config(config, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("local", "pw")
        );
        assert!(
            Credentials::from_docker_config(config, "registry.example.com")
                .unwrap()
                .is_none(),
            "the port is part of the host"
        );
        assert!(matches!(
            Credentials::from_docker_config(b"{\"auths\": {\"x\": {\"auth\": \"!!\"}}}", "x"),
            Err(DockerConfigError::BadAuth(_))
        ));
        assert!(matches!(
            Credentials::from_docker_config(b"not json", "x"),
            Err(DockerConfigError::Json(_))
        ));
    }

    #[test]
    fn challenges_keep_commas_inside_quotes() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (scheme.as_str(), params["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
    }

    #[test]
    fn link_headers_resolve_against_the_request() {
        let base = Url::parse("https://r.example/v2/a/tags/list?n=2").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#),
        );
        assert_eq!(
            next_link(&headers, &base).unwrap().as_str(),
            "https://r.example/v2/a/tags/list?last=b&n=2"
        );
        assert!(next_link(&HeaderMap::new(), &base).is_none());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a past date: go now"
        );
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            registry_message(
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#
            ),
            "NAME_UNKNOWN: repository name not known to registry"
        );
        assert_eq!(registry_message(""), "(no body)");
    }
}

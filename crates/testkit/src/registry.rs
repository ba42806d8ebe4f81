//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution 2.8) on
//! 127.0.0.1, with its own storage directory, killed on drop.
//!
//! Modes: anonymous, htpasswd (bcrypt, generated here), token auth (a token server in the test
//! process issues ES256 JWTs whose signing certificate, sent in the `x5c` header, is the
//! registry's `rootcertbundle`), each over plain HTTP or TLS with a CA of its own. [`Registry::push`]
//! uploads a tiny image (config blob, layer blob, OCI manifest) with the registry's own API;
//! [`Registry::seed_tags`] adds thousands of tags for that manifest in milliseconds by writing
//! the tag links the registry would write itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use sha2::{Digest, Sha256};

use crate::git::free_port;

/// The registry binary from Debian's `docker-registry` package.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
const SERVICE: &str = "gantry-test-registry";
const ISSUER: &str = "gantry-test-issuer";

/// Who may talk to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Anyone, no credentials.
    Anonymous,
    /// HTTP Basic against an htpasswd file with this one user.
    Htpasswd { username: String, password: String },
    /// Bearer tokens from the test token server, which accepts this one user.
    Token { username: String, password: String },
}

impl RegistryAuth {
    /// Basic auth for `user`/`password`.
    pub fn htpasswd(username: &str, password: &str) -> Self {
        RegistryAuth::Htpasswd {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Token auth for `user`/`password`.
    pub fn token(username: &str, password: &str) -> Self {
        RegistryAuth::Token {
            username: username.into(),
            password: password.into(),
        }
    }

    fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Htpasswd { username, password }
            | RegistryAuth::Token { username, password } => Some((username, password)),
        }
    }
}

/// A running `docker-registry`.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    auth: RegistryAuth,
    ca_pem: Option<String>,
    token: Option<TokenServer>,
    http: reqwest::Client,
}

impl Registry {
    /// Starts a plain-HTTP registry.
    pub fn start(auth: RegistryAuth) -> Self {
        Self::launch(auth, false)
    }

    /// Starts a registry serving HTTPS with a certificate from a fresh CA ([`Registry::ca_pem`]).
    pub fn start_tls(auth: RegistryAuth) -> Self {
        Self::launch(auth, true)
    }

    fn launch(auth: RegistryAuth, tls: bool) -> Self {
        assert!(
            Path::new(DOCKER_REGISTRY).exists(),
            "{DOCKER_REGISTRY} is missing: install Debian's `docker-registry` package"
        );
        let dir = tempfile::Builder::new()
            .prefix("gantry-registry-")
            .tempdir()
            .expect("registry directory");
        let mut extra = String::new();
        let mut ca_pem = None;
        if tls {
            let (ca, cert, key) = server_certificate();
            std::fs::write(dir.path().join("server.crt"), cert).expect("server.crt");
            std::fs::write(dir.path().join("server.key"), key).expect("server.key");
            extra.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.crt").display(),
                dir.path().join("server.key").display()
            ));
            ca_pem = Some(ca);
        }
        let mut token = None;
        let auth_section = match &auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Htpasswd { username, password } => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{username}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token { username, password } => {
                let server = TokenServer::start(username, password);
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, &server.signer.cert_pem).expect("rootcertbundle");
                let section = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    bundle.display()
                );
                token = Some(server);
                section
            }
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: gantry-test-secret\n{extra}{auth_section}",
                    root = dir.path().join("data").display(),
                ),
            )
            .expect("registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "docker-registry exited ({status}): {}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let http = test_client(ca_pem.as_deref());
                    return Registry {
                        child,
                        port,
                        dir,
                        auth,
                        ca_pem,
                        token,
                        http,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "docker-registry did not listen within 15s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start docker-registry: {last_err}");
    }

    /// `127.0.0.1:<port>`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `<host>/<repository>`, an image reference without tag.
    pub fn image(&self, repository: &str) -> String {
        format!("{}/{repository}", self.host())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server certificate (TLS mode only), PEM.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// How many tokens the token server issued (token mode only).
    pub fn tokens_issued(&self) -> usize {
        self.token
            .as_ref()
            .map_or(0, |t| t.issued.load(Ordering::SeqCst))
    }

    /// A `.dockerconfigjson` with `username`/`password` for this registry.
    pub fn docker_config(&self, username: &str, password: &str) -> String {
        let auth = STANDARD.encode(format!("{username}:{password}"));
        serde_json::json!({ "auths": { self.host(): { "auth": auth } } }).to_string()
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes a tiny image (a config blob, one layer, an OCI manifest) as `repository:tag`
    /// through the registry API and returns the manifest digest. The content depends only on
    /// `repository`, so pushing more tags reuses the blobs.
    pub async fn push(&self, repository: &str, tag: &str) -> String {
        self.push_variant(repository, tag, "").await
    }

    /// Like [`Registry::push`], with `variant` mixed into the layer so the digest differs.
    pub async fn push_variant(&self, repository: &str, tag: &str, variant: &str) -> String {
        let auth = self.auth_header(repository).await;
        push_tiny_image(&self.http, &self.base(), repository, tag, variant, &auth)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Pushes `tags` of the same manifest through the API, several at a time.
    pub async fn push_tags(&self, repository: &str, tags: &[String]) -> String {
        use futures::StreamExt;
        let first = tags.first().expect("at least one tag");
        let digest = self.push(repository, first).await;
        let manifest = self.manifest(repository, first).await;
        let auth = self.auth_header(repository).await;
        futures::stream::iter(&tags[1..])
            .map(|tag| async {
                put_manifest(&self.http, &self.base(), repository, tag, &manifest, &auth)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        digest
    }

    /// Adds `tags` pointing at the manifest `existing_tag` already points to, by writing the
    /// tag links into the registry's filesystem storage exactly where a manifest PUT writes
    /// them (`_manifests/tags/<tag>/current/link` and `.../index/sha256/<hex>/link`). Tens of
    /// thousands of tags take a second instead of minutes of PUTs.
    pub fn seed_tags<S: AsRef<str>>(&self, repository: &str, existing_tag: &str, tags: &[S]) {
        let tags_dir = self
            .dir
            .path()
            .join("data/docker/registry/v2/repositories")
            .join(repository)
            .join("_manifests/tags");
        let link = std::fs::read_to_string(tags_dir.join(existing_tag).join("current/link"))
            .unwrap_or_else(|e| panic!("{repository}:{existing_tag} was not pushed: {e}"));
        let hex = link.trim().strip_prefix("sha256:").expect("sha256 link");
        for tag in tags {
            let dir = tags_dir.join(tag.as_ref());
            let index = dir.join("index/sha256").join(hex);
            std::fs::create_dir_all(dir.join("current")).expect("tag dir");
            std::fs::create_dir_all(&index).expect("tag index dir");
            std::fs::write(dir.join("current/link"), link.trim()).expect("tag link");
            std::fs::write(index.join("link"), link.trim()).expect("tag index link");
        }
    }

    /// Deletes `repository:tag` (the manifest, so every tag pointing at it goes).
    pub async fn delete_manifest(&self, repository: &str, digest: &str) {
        let auth = self.auth_header(repository).await;
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base());
        let response = with_auth(self.http.delete(&url), &auth)
            .send()
            .await
            .expect("DELETE manifest");
        assert!(
            response.status().is_success(),
            "DELETE {url}: {}",
            response.status()
        );
    }

    /// `http://` or `https://` and the host.
    pub fn base(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host())
    }

    async fn manifest(&self, repository: &str, tag: &str) -> Vec<u8> {
        let auth = self.auth_header(repository).await;
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base());
        let response = with_auth(self.http.get(&url), &auth)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("GET manifest");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.bytes().await.expect("manifest body").to_vec()
    }

    // What the push helper authenticates with: Basic, or a token it signs itself.
    async fn auth_header(&self, repository: &str) -> Option<String> {
        match (&self.auth, &self.token) {
            (RegistryAuth::Anonymous, _) => None,
            (RegistryAuth::Htpasswd { username, password }, _) => Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{username}:{password}"))
            )),
            (RegistryAuth::Token { username, .. }, Some(server)) => Some(format!(
                "Bearer {}",
                server.signer.token(
                    username,
                    &[format!("repository:{repository}:pull,push,delete")]
                )
            )),
            (RegistryAuth::Token { .. }, None) => unreachable!("token mode has a token server"),
        }
    }

    /// Path of the registry's storage root (for tests that inspect it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The credentials the registry accepts, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.credentials()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes a tiny image (see [`Registry::push_variant`]) as `repository:tag` to a registry that
/// is already running at `base` (`http://127.0.0.1:5000`), anonymously, and returns the manifest
/// digest. For registries this process did not start, e.g. the sandbox's.
pub async fn push_image(
    base: &str,
    repository: &str,
    tag: &str,
    variant: &str,
) -> Result<String, String> {
    push_tiny_image(&test_client(None), base, repository, tag, variant, &None).await
}

// A config blob, one layer with `variant` in it, and an OCI manifest, through the registry API.
async fn push_tiny_image(
    http: &reqwest::Client,
    base: &str,
    repository: &str,
    tag: &str,
    variant: &str,
    auth: &Option<String>,
) -> Result<String, String> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = format!("gantry test layer for {repository} {variant}").into_bytes();
    let config_digest = upload_blob(http, base, repository, config, auth).await?;
    let layer_digest = upload_blob(http, base, repository, &layer, auth).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    })
    .to_string();
    put_manifest(http, base, repository, tag, manifest.as_bytes(), auth).await
}

async fn upload_blob(
    http: &reqwest::Client,
    base: &str,
    repository: &str,
    data: &[u8],
    auth: &Option<String>,
) -> Result<String, String> {
    let digest = format!("sha256:{}", hex(&Sha256::digest(data)));
    let head = with_auth(
        http.head(format!("{base}/v2/{repository}/blobs/{digest}")),
        auth,
    )
    .send()
    .await
    .map_err(|e| format!("HEAD blob at {base}: {e}"))?;
    if head.status().is_success() {
        return Ok(digest);
    }
    let start = with_auth(
        http.post(format!("{base}/v2/{repository}/blobs/uploads/")),
        auth,
    )
    .send()
    .await
    .map_err(|e| format!("starting a blob upload at {base}: {e}"))?;
    if start.status().as_u16() != 202 {
        return Err(format!(
            "starting an upload: {}: {}",
            start.status(),
            start.text().await.unwrap_or_default()
        ));
    }
    let location = start
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .ok_or("the registry gave no upload Location")?
        .to_owned();
    let mut url = reqwest::Url::parse(base)
        .and_then(|b| b.join(&location))
        .map_err(|e| format!("upload URL {location:?}: {e}"))?;
    url.query_pairs_mut().append_pair("digest", &digest);
    let done = with_auth(http.put(url), auth)
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .map_err(|e| format!("PUT blob: {e}"))?;
    if done.status().as_u16() != 201 {
        return Err(format!(
            "finishing an upload: {}: {}",
            done.status(),
            done.text().await.unwrap_or_default()
        ));
    }
    Ok(digest)
}

async fn put_manifest(
    http: &reqwest::Client,
    base: &str,
    repository: &str,
    tag: &str,
    manifest: &[u8],
    auth: &Option<String>,
) -> Result<String, String> {
    let url = format!("{base}/v2/{repository}/manifests/{tag}");
    let response = with_auth(http.put(&url), auth)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_vec())
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    if response.status().as_u16() != 201 {
        return Err(format!(
            "PUT {url}: {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    Ok(response
        .headers()
        .get("docker-content-digest")
        .and_then(|d| d.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sha256:{}", hex(&Sha256::digest(manifest)))))
}

fn with_auth(request: reqwest::RequestBuilder, auth: &Option<String>) -> reqwest::RequestBuilder {
    match auth {
        Some(value) => request.header("Authorization", value),
        None => request,
    }
}

fn test_client(ca_pem: Option<&str>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("test HTTP client")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// A CA, and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) PEM.
fn server_certificate() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gantry test registry CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("server key");
    let cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");
    (ca_pem, cert.pem(), leaf_key.serialize_pem())
}

// Signs registry tokens: an ES256 key and the self-signed certificate the registry trusts.
struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("token signing key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("token signing key");
        let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("token cert params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gantry test token issuer");
        let cert = params.self_signed(&rc_key).expect("token certificate");
        Signer {
            key,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    // A JWT granting `scopes` (`repository:<name>:<actions>`) to `subject`.
    fn token(&self, subject: &str, scopes: &[String]) -> String {
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", rand_suffix()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("sign token");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

fn rand_suffix() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

// The token endpoint: `GET /token?service=...&scope=...` with Basic credentials.
struct TokenServer {
    port: u16,
    signer: Arc<Signer>,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(username: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("token server port");
        let port = listener.local_addr().expect("token server address").port();
        let signer = Arc::new(Signer::new());
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("{username}:{password}"))
        );
        let (thread_signer, thread_stop, thread_issued) =
            (signer.clone(), stop.clone(), issued.clone());
        let user = username.to_owned();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = answer_token(stream, &expected, &user, &thread_signer, &thread_issued);
            }
        });
        TokenServer {
            port,
            signer,
            stop,
            issued,
            thread: Some(thread),
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_token(
    stream: TcpStream,
    expected: &str,
    user: &str,
    signer: &Signer,
    issued: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_owned()),
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    if content_length > 0 {
        let mut body = vec![0; content_length.min(1 << 20)];
        reader.read_exact(&mut body)?;
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let url = reqwest::Url::parse(&format!("http://x{target}"))
        .unwrap_or_else(|_| reqwest::Url::parse("http://x/").expect("URL"));
    let scopes: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let mut stream = stream;
    if authorization.as_deref() != Some(expected) {
        let body =
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let token = signer.token(user, &scopes);
    issued.fetch_add(1, Ordering::SeqCst);
    let body =
        serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

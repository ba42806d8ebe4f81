//! Real git servers on loopback for tests, and repositories to serve.
//!
//! - [`GitHttpServer`]: smart HTTP (or HTTPS with a generated CA) through git's own
//!   `git-http-backend`, run as a CGI program for every request, behind HTTP basic auth or a
//!   bearer token. It counts the requests it serves,
//!   so a test can prove that no pack was fetched.
//! - [`SshServer`]: Debian's `sshd` (package `openssh-server`) as a foreground process on a free
//!   loopback port, with a generated host key and one authorised test key; clients run the real
//!   `git-upload-pack` / `git-receive-pack` through it.
//! - [`TestRepo`]: a bare repository plus a work tree to commit, tag and (force-)push from, with
//!   the `git` CLI isolated from the machine's configuration.
//!
//! Servers bind 127.0.0.1 only and stop (kill + wait) when dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Where Debian puts git's CGI program.
pub const GIT_HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";
/// A host name that does not resolve, in the HTTPS server's certificate: reachable only through
/// a proxy (see [`GitHttpServer::proxied_requests`]).
pub const PROXIED_HOST: &str = "git.gantry.invalid";
/// Debian's OpenSSH server.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A `git` command isolated from global and system configuration, with a fixed identity.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Gantry Test")
        .env("GIT_AUTHOR_EMAIL", "test@gantry.invalid")
        .env("GIT_COMMITTER_NAME", "Gantry Test")
        .env("GIT_COMMITTER_EMAIL", "test@gantry.invalid")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// Runs `git args` in `dir` and returns its trimmed stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running git {args:?}: {e}"));
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository (what servers serve) and a work tree that pushes to it.
pub struct TestRepo {
    /// The bare repository, `<root>/<name>.git`.
    pub bare: PathBuf,
    work: tempfile::TempDir,
}

impl TestRepo {
    /// Creates `<root>/<name>.git` (bare, default branch `main`) and an empty work tree.
    pub fn new(root: &Path, name: &str) -> Self {
        let bare = root.join(format!("{name}.git"));
        std::fs::create_dir_all(&bare).expect("create bare repository directory");
        git(&bare, &["init", "--quiet", "--bare", "-b", "main"]);
        let work = tempfile::tempdir().expect("work tree");
        git(work.path(), &["init", "--quiet", "-b", "main"]);
        TestRepo { bare, work }
    }

    /// The work tree.
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// Writes a file (creating directories) in the work tree.
    pub fn write(&self, path: &str, content: &str) -> &Self {
        let p = self.work.path().join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("create directories");
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        self
    }

    /// Removes a file from the work tree.
    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.work.path().join(path)).expect("remove file");
        self
    }

    /// Commits everything in the work tree; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        git(self.work(), &["add", "-A"]);
        git(
            self.work(),
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// The id of the work tree's HEAD commit.
    pub fn head(&self) -> String {
        git(self.work(), &["rev-parse", "HEAD"])
    }

    /// Runs any git command in the work tree.
    pub fn git(&self, args: &[&str]) -> String {
        git(self.work(), args)
    }

    /// Switches to (creating if needed) `branch` in the work tree.
    pub fn checkout(&self, branch: &str) -> &Self {
        let exists = git_command(self.work())
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if exists {
            git(self.work(), &["checkout", "--quiet", branch]);
        } else {
            git(self.work(), &["checkout", "--quiet", "-b", branch]);
        }
        self
    }

    /// Starts a branch with no history (for rewriting history), with an empty tree.
    pub fn orphan(&self, branch: &str) -> &Self {
        git(self.work(), &["checkout", "--quiet", "--orphan", branch]);
        git(
            self.work(),
            &["rm", "-r", "--quiet", "--force", "--ignore-unmatch", "."],
        );
        self
    }

    /// A lightweight tag on HEAD.
    pub fn tag(&self, name: &str) -> &Self {
        git(self.work(), &["tag", name]);
        self
    }

    /// An annotated tag on HEAD.
    pub fn annotated_tag(&self, name: &str) -> &Self {
        git(
            self.work(),
            &["tag", "-a", name, "-m", &format!("release {name}")],
        );
        self
    }

    /// Installs an executable server-side hook (`pre-receive`, `update`, ...) in the bare
    /// repository, e.g. `"#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n"` to refuse pushes.
    pub fn hook(&self, name: &str, script: &str) -> &Self {
        let path = self.bare.join("hooks").join(name);
        std::fs::create_dir_all(path.parent().expect("hooks directory")).expect("hooks directory");
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("make the hook executable");
        }
        self
    }

    /// The commit a branch of the bare repository (what clients see) points to.
    pub fn remote_head(&self, branch: &str) -> String {
        git(&self.bare, &["rev-parse", &format!("refs/heads/{branch}")])
    }

    /// Force-pushes `refspec` (e.g. `HEAD:refs/heads/main`) and all tags to the bare repository.
    pub fn push(&self, refspec: &str) -> &Self {
        let bare = self.bare.to_string_lossy().into_owned();
        git(self.work(), &["push", "--quiet", "--force", &bare, refspec]);
        git(
            self.work(),
            &["push", "--quiet", "--force", "--tags", &bare],
        );
        self
    }
}

/// How the HTTP server authenticates clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    /// Anyone may fetch.
    None,
    /// HTTP basic auth with this user and password.
    Basic { username: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

#[derive(Default)]
struct Counters {
    proxied: AtomicUsize,
    info_refs: AtomicUsize,
    upload_pack: AtomicUsize,
    unauthorized: AtomicUsize,
}

/// Smart HTTP git server: `git-http-backend` as CGI behind a small HTTP/1.1 server.
pub struct GitHttpServer {
    port: u16,
    ca_pem: Option<String>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    accept: Option<JoinHandle<()>>,
}

impl GitHttpServer {
    /// Serves every repository under `root` on a free loopback port.
    pub fn start(root: &Path, auth: HttpAuth) -> Self {
        Self::launch(root, auth, None, 0).expect("bind 127.0.0.1")
    }

    /// Like [`start`](Self::start), on a given loopback port; fails when the port is taken. For
    /// a server in a foreground process of its own (the sandbox's), which serves until killed.
    pub fn start_on(root: &Path, auth: HttpAuth, port: u16) -> io::Result<Self> {
        Self::launch(root, auth, None, port)
    }

    /// Like [`start`](Self::start), over HTTPS with a certificate for `127.0.0.1` and
    /// `localhost` issued by a fresh CA ([`ca_pem`](Self::ca_pem)).
    pub fn start_tls(root: &Path, auth: HttpAuth) -> Self {
        let (ca_pem, config) = tls_config();
        let mut server =
            Self::launch(root, auth, Some(Arc::new(config)), 0).expect("bind 127.0.0.1");
        server.ca_pem = Some(ca_pem);
        server
    }

    /// The CA that issued the HTTPS certificate (PEM), for a secret's `ca.crt`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    fn launch(
        root: &Path,
        auth: HttpAuth,
        tls: Option<Arc<rustls::ServerConfig>>,
        port: u16,
    ) -> io::Result<Self> {
        assert!(
            Path::new(GIT_HTTP_BACKEND).exists(),
            "{GIT_HTTP_BACKEND} is missing: install Debian's `git` package"
        );
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let root = root.to_owned();
        let accept = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (root, auth, counters) = (root.clone(), auth.clone(), counters.clone());
                    let tls = tls.clone();
                    std::thread::spawn(move || {
                        let served = match tls {
                            None if is_connect(&stream) => tunnel(stream, &auth, &counters),
                            None => serve(stream, &root, &auth, &counters).map(drop),
                            Some(config) => rustls::ServerConnection::new(config)
                                .map_err(io::Error::other)
                                .and_then(|conn| {
                                    let tls = rustls::StreamOwned::new(conn, stream);
                                    let mut tls = serve(tls, &root, &auth, &counters)?;
                                    tls.conn.send_close_notify();
                                    tls.flush()
                                }),
                        };
                        if let Err(e) = served {
                            eprintln!("git http test server: {e}");
                        }
                    });
                }
            })
        };
        Ok(GitHttpServer {
            port,
            ca_pem: None,
            stop,
            counters,
            accept: Some(accept),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http(s)://127.0.0.1:<port>/<path>`, e.g. `url("app.git")`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!(
            "{scheme}://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Ref advertisements served (`GET .../info/refs`), authorised ones only.
    pub fn info_refs_requests(&self) -> usize {
        self.counters.info_refs.load(Ordering::SeqCst)
    }

    /// Pack negotiations served (`POST .../git-upload-pack`): zero means nothing was fetched.
    pub fn upload_pack_requests(&self) -> usize {
        self.counters.upload_pack.load(Ordering::SeqCst)
    }

    /// Requests refused with 401.
    pub fn unauthorized_requests(&self) -> usize {
        self.counters.unauthorized.load(Ordering::SeqCst)
    }

    /// Proxy requests served: a plain server also acts as a proxy, for `CONNECT host:port`
    /// (tunnelled to 127.0.0.1:port) and for absolute-form `GET http://host/path` (served itself).
    pub fn proxied_requests(&self) -> usize {
        self.counters.proxied.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other(format!("bad request line {line:?}")));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
    }))
}

fn authorised(req: &Request, auth: &HttpAuth) -> Option<String> {
    let given = req.header("authorization");
    match auth {
        HttpAuth::None => Some(String::new()),
        HttpAuth::Basic { username, password } => {
            let expected = format!(
                "Basic {}",
                STANDARD.encode(format!("{username}:{password}"))
            );
            (given == Some(expected.as_str())).then(|| username.clone())
        }
        HttpAuth::Bearer(token) => {
            (given == Some(format!("Bearer {token}").as_str())).then(|| "bearer".to_owned())
        }
    }
}

// One request per connection; the whole body is read first (test repositories are small),
// which lets the same code serve plain TCP and TLS streams. Returns the stream to close.
fn serve<S: Read + Write>(
    stream: S,
    root: &Path,
    auth: &HttpAuth,
    counters: &Counters,
) -> io::Result<S> {
    let mut reader = BufReader::new(stream);
    let Some(mut req) = read_request(&mut reader)? else {
        return Ok(reader.into_inner());
    };
    // Absolute-form target: a proxy request; serve it as if addressed to this server.
    if let Some(rest) = req.path.strip_prefix("http://") {
        counters.proxied.fetch_add(1, Ordering::SeqCst);
        req.path = rest.find('/').map_or("/".into(), |i| rest[i..].to_owned());
    }
    let Some(user) = authorised(&req, auth) else {
        counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        let challenge = match auth {
            HttpAuth::Bearer(_) => "Bearer realm=\"git\"",
            _ => "Basic realm=\"git\"",
        };
        let mut out = reader.into_inner();
        write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        out.flush()?;
        return Ok(out);
    };
    if req.path.ends_with("/info/refs") {
        counters.info_refs.fetch_add(1, Ordering::SeqCst);
    }
    if req.method == "POST" && req.path.ends_with("/git-upload-pack") {
        counters.upload_pack.fetch_add(1, Ordering::SeqCst);
    }
    if req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        reader.get_mut().flush()?;
    }
    let mut body = Vec::new();
    if req
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        copy_chunked(&mut reader, &mut body)?;
    } else if let Some(len) = req
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        (&mut reader).take(len).read_to_end(&mut body)?;
    }

    let mut cmd = Command::new(GIT_HTTP_BACKEND);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_TYPE", req.header("content-type").unwrap_or(""))
        .env("CONTENT_LENGTH", body.len().to_string());
    if !user.is_empty() {
        cmd.env("REMOTE_USER", &user);
    }
    if let Some(enc) = req.header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(proto) = req.header("git-protocol") {
        cmd.env("GIT_PROTOCOL", proto);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // Feed the body on its own thread: the backend may write before it has read everything.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let feeder = std::thread::spawn(move || stdin.write_all(&body));

    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut status = "200 OK".to_owned();
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match line.split_once(':') {
            Some((n, v)) if n.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            _ => {
                headers.push_str(line);
                headers.push_str("\r\n");
            }
        }
    }
    // libgit2 wants a delimited body: buffer the (small, test-sized) response.
    let mut response = Vec::new();
    stdout.read_to_end(&mut response)?;
    let _ = feeder.join();
    child.wait()?;
    let mut out = reader.into_inner();
    write!(
        out,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.len()
    )?;
    out.write_all(&response)?;
    out.flush()?;
    Ok(out)
}

// Whether a plain connection starts with a proxy `CONNECT`.
fn is_connect(stream: &TcpStream) -> bool {
    let mut head = [0u8; 8];
    matches!(stream.peek(&mut head), Ok(8) if &head == b"CONNECT ")
}

// `CONNECT host:port`: an HTTPS proxy tunnel to 127.0.0.1:port, whatever the host (so tests
// can name hosts that do not resolve and prove the proxy was used); with basic auth, the
// credentials are required in `Proxy-Authorization`.
fn tunnel(stream: TcpStream, auth: &HttpAuth, counters: &Counters) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let req = read_request(&mut reader)?.ok_or_else(|| io::Error::other("empty request"))?;
    if let HttpAuth::Basic { username, password } = auth {
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("{username}:{password}"))
        );
        if req.header("proxy-authorization") != Some(expected.as_str()) {
            counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            let mut out = stream;
            out.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"proxy\"\r\nContent-Length: 0\r\n\
                  Connection: close\r\n\r\n",
            )?;
            return Ok(());
        }
    }
    counters.proxied.fetch_add(1, Ordering::SeqCst);
    let port: u16 = req
        .path
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad CONNECT target {}", req.path)))?;
    let upstream = TcpStream::connect(("127.0.0.1", port))?;
    let mut client = stream;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    // The client sends nothing more before the 200, so the reader holds no buffered bytes.
    let (mut client_read, mut upstream_write) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    let mut upstream_read = upstream;
    let _ = io::copy(&mut upstream_read, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

// A CA and a server certificate for 127.0.0.1/localhost signed by it.
fn tls_config() -> (String, rustls::ServerConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gantry test git CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        PROXIED_HOST.to_string(),
    ])
    .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("server key");
    let cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .expect("server key DER");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .expect("TLS server config");
    (ca_pem, config)
}

fn copy_chunked(reader: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Ok(());
        }
        let size_hex = size_line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        io::copy(&mut reader.take(size), out)?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

/// A key pair made by `ssh-keygen`.
#[derive(Clone, Debug)]
pub struct SshKeyPair {
    /// Private key (OpenSSH format).
    pub private: String,
    /// Public key line, `<type> <base64> [comment]`.
    pub public: String,
}

impl SshKeyPair {
    /// Generates an ed25519 key pair without passphrase in `dir` as `name` / `name.pub`.
    pub fn generate(dir: &Path, name: &str) -> Self {
        Self::generate_with(dir, name, "ed25519", "")
    }

    /// Generates a key pair of `key_type` (`ed25519`, `ecdsa`, `rsa`) with `passphrase`.
    pub fn generate_with(dir: &Path, name: &str, key_type: &str, passphrase: &str) -> Self {
        let path = dir.join(name);
        let status = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                key_type,
                "-N",
                passphrase,
                "-C",
                "gantry-test",
                "-f",
            ])
            .arg(&path)
            .stdin(Stdio::null())
            .status()
            .expect("ssh-keygen (package openssh-client) runs");
        assert!(status.success(), "ssh-keygen failed");
        SshKeyPair {
            private: std::fs::read_to_string(&path).expect("private key"),
            public: std::fs::read_to_string(path.with_extension("pub")).expect("public key"),
        }
    }

    /// `<type> <base64>` of the public key.
    pub fn public_key(&self) -> String {
        self.public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `sshd` serving git over SSH to one authorised key.
pub struct SshServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// The server's host key.
    pub host_key: SshKeyPair,
    /// The key the server accepts.
    pub client_key: SshKeyPair,
    user: String,
}

impl SshServer {
    /// Starts `sshd -D -e` on a free loopback port, accepting `client_key` for the current user.
    pub fn start() -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install Debian's `openssh-server` package"
        );
        let dir = tempfile::Builder::new()
            .prefix("gantry-sshd-")
            .tempdir()
            .expect("sshd directory");
        let host_key = SshKeyPair::generate(dir.path(), "host_ed25519");
        let client_key = SshKeyPair::generate(dir.path(), "client_ed25519");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, &client_key.public).expect("authorized_keys");
        // As root, sshd insists on its privilege separation directory.
        if is_root() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let user = current_user();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                     AuthorizedKeysFile {auth}\nUsePAM no\nStrictModes no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                     AllowUsers {user}\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n",
                    host = dir.path().join("host_ed25519").display(),
                    pid = dir.path().join("sshd.pid").display(),
                    auth = authorized.display(),
                ),
            )
            .expect("sshd_config");
            let log = std::fs::File::create(dir.path().join("sshd.log")).expect("sshd log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "sshd exited ({status}): {}",
                        std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return SshServer {
                        child,
                        port,
                        dir,
                        host_key,
                        client_key,
                        user,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "sshd did not listen within 10s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start sshd: {last_err}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to log in as (the one running the tests).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `ssh://<user>@127.0.0.1:<port><absolute path>` for a repository on this machine.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// Also accepts `key` from now on.
    pub fn authorize(&self, key: &SshKeyPair) {
        let path = self.dir.path().join("authorized_keys");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("authorized_keys");
        writeln!(file, "{}", key.public.trim()).expect("append to authorized_keys");
    }

    /// Also accepts `key`, for fetching only: like a read-only deploy key, any other command
    /// (`git-receive-pack`, a push) is refused with GitHub's message on stderr.
    pub fn authorize_read_only(&self, key: &SshKeyPair) {
        let script = self.dir.path().join("read-only.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$SSH_ORIGINAL_COMMAND\" in\n  git-upload-pack*) exec sh -c \"$SSH_ORIGINAL_COMMAND\" ;;\n  *) echo \"ERROR: Permission to gantry/app.git denied to deploy key\" >&2; exit 1 ;;\nesac\n",
        )
        .expect("read-only command");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("make the command executable");
        }
        let path = self.dir.path().join("authorized_keys");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("authorized_keys");
        writeln!(
            file,
            "command=\"{}\",no-pty {}",
            script.display(),
            key.public.trim()
        )
        .expect("append to authorized_keys");
    }

    /// A plain known_hosts line for this server: `[127.0.0.1]:<port> <type> <key>`.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key.public_key())
    }

    /// What sshd logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            let out = Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "root".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_git_cli_clones_over_http_with_basic_auth() {
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("a.txt", "hello");
        let id = repo.commit("first");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(
            root.path(),
            HttpAuth::Basic {
                username: "u".into(),
                password: "p".into(),
            },
        );
        let dest = tempfile::tempdir().unwrap();
        let url = server.url("app.git").replace("http://", "http://u:p@");
        git(dest.path(), &["clone", "--quiet", &url, "c"]);
        assert_eq!(git(&dest.path().join("c"), &["rev-parse", "HEAD"]), id);
        assert!(server.upload_pack_requests() >= 1);

        // Push through the same server (receive-pack needs an authenticated REMOTE_USER), with
        // a body large enough for git to send it chunked.
        let clone = dest.path().join("c");
        // Incompressible and above git's 1 MiB http.postBuffer, so the pack goes chunked.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let big: Vec<u8> = (0..1_500_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(clone.join("big.bin"), big).unwrap();
        git(&clone, &["add", "-A"]);
        git_command(&clone)
            .args(["commit", "--quiet", "-m", "big"])
            .status()
            .unwrap();
        git(
            &clone,
            &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
        );
        assert_eq!(
            git(&repo.bare, &["rev-parse", "refs/heads/main"]),
            git(&clone, &["rev-parse", "HEAD"])
        );

        let refused = git_command(dest.path())
            .args([
                "ls-remote",
                &server.url("app.git").replace("http://", "http://u:wrong@"),
            ])
            .output()
            .unwrap();
        assert!(!refused.status.success());
        assert!(server.unauthorized_requests() >= 1);
    }

    #[test]
    fn the_git_cli_clones_over_ssh() {
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        repo.write("a.txt", "hello");
        let id = repo.commit("first");
        repo.push("HEAD:refs/heads/main");
        let server = SshServer::start();
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("id");
        std::fs::write(&key, &server.client_key.private).unwrap();
        let known = keys.path().join("known_hosts");
        std::fs::write(&known, server.known_hosts_line()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let dest = tempfile::tempdir().unwrap();
        let ssh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            key.display(),
            known.display()
        );
        let out = git_command(dest.path())
            .env("GIT_SSH_COMMAND", ssh)
            .args(["clone", "--quiet", &server.url(&repo.bare), "c"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "clone over ssh: {}\nsshd: {}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        assert_eq!(git(&dest.path().join("c"), &["rev-parse", "HEAD"]), id);
    }
}

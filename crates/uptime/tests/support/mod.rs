//! Real servers on 127.0.0.1 for the uptime tests: HTTP (axum), TLS with rcgen certificates,
//! DNS (UDP, messages by hickory-proto), and an alert receiver. Each stops when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{any, get};
use gantry_api::uptime::v1alpha1::Monitor;
use gantry_uptime::plan::{self, Clients, Plan, Secrets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A server task that is stopped on drop.
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// The stand-in web application: `/ok` (JSON), `/fail` (503), `/slow` (answers after 30 s),
/// `/loop` (redirects to itself), `/big` (a 100 MiB body, produced lazily), `/auth` (wants
/// `Bearer secret-token`).
pub async fn http_server(bind: SocketAddr) -> Running {
    let app = Router::new()
        .route(
            "/ok",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"UP","items":[1,2,3],"message":"all ok"}"#,
                )
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down for repairs") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .route(
            "/big",
            get(|| async {
                let chunk = bytes_chunk();
                let stream = futures::stream::iter(
                    (0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                Body::from_stream(stream)
            }),
        )
        .route(
            "/auth",
            get(|headers: HeaderMap| async move {
                match headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                {
                    Some("Bearer secret-token") => (StatusCode::OK, "welcome"),
                    _ => (StatusCode::UNAUTHORIZED, "who are you"),
                }
            }),
        );
    serve(bind, app).await
}

fn bytes_chunk() -> axum::body::Bytes {
    axum::body::Bytes::from(vec![b'x'; 1024 * 1024])
}

pub async fn serve(bind: SocketAddr, app: Router) -> Running {
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Running { addr, stop }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Certificates for the TLS tests.
pub struct Pki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

pub enum Leaf {
    Valid,
    Expired,
    WrongHost,
    SelfSigned,
    /// Valid for this many days only.
    ExpiresIn(i64),
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "gantry uptime test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&key).expect("CA").pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(ca, key),
        }
    }

    /// A server config presenting `leaf`.
    pub fn server(&self, leaf: Leaf) -> rustls::ServerConfig {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let names = match leaf {
            Leaf::WrongHost => vec!["other.invalid".to_string()],
            _ => vec!["localhost".to_string(), "127.0.0.1".to_string()],
        };
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Midnight UTC `days` from today, as rcgen takes dates.
        let day = |days: i64| {
            let d = jiff::Timestamp::now()
                .to_zoned(jiff::tz::TimeZone::UTC)
                .date()
                .checked_add(jiff::Span::new().days(days))
                .expect("date");
            rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
        };
        params.not_before = day(-2);
        params.not_after = match leaf {
            Leaf::Expired => day(-1),
            Leaf::ExpiresIn(days) => day(days),
            _ => day(365),
        };
        let key = KeyPair::generate().expect("leaf key");
        let cert = match leaf {
            Leaf::SelfSigned => params.self_signed(&key).expect("self-signed"),
            _ => params.signed_by(&key, &self.issuer).expect("leaf"),
        };
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server config")
    }
}

/// A TLS server answering every request with `200 ok` (HTTP/1.1, one request per connection).
pub async fn tls_server(config: rustls::ServerConfig) -> Running {
    let listener = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                _ = s.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Running { addr, stop }
}

/// A DNS server on 127.0.0.1 (UDP): `app.test.` A → 127.0.0.1 and 127.0.0.2; `text.test.` TXT;
/// everything else NXDOMAIN.
pub async fn dns_server() -> Running {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let socket = tokio::net::UdpSocket::bind(loopback())
        .await
        .expect("bind udp");
    let addr = socket.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => return },
                _ = s.cancelled() => return,
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            let Some(q) = query.queries.first().cloned() else {
                continue;
            };
            answer.add_query(q.clone());
            let name = q.name().to_ascii();
            match (name.as_str(), q.query_type()) {
                ("app.test.", RecordType::A) => {
                    for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
                        answer.add_answer(Record::from_rdata(
                            q.name().clone(),
                            60,
                            RData::A(A::from(std::net::Ipv4Addr::from(ip))),
                        ));
                    }
                }
                ("text.test.", RecordType::TXT) => {
                    answer.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::TXT(TXT::new(vec!["hello".into()])),
                    ));
                }
                ("app.test.", _) | ("text.test.", _) => {}
                _ => answer.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = Name::root();
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    Running { addr, stop }
}

/// Collects what alert providers receive.
#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Vec<serde_json::Value>>>);

impl Received {
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().expect("lock").clone()
    }

    pub fn reasons(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits (up to `timeout`) until an alert with `reason` has arrived.
    pub async fn arrives(&self, timeout: Duration, reason: &str) {
        eventually(timeout, &format!("the {reason} alert"), || {
            self.reasons().iter().any(|r| r == reason).then_some(())
        })
        .await
    }
}

/// A loopback alert receiver (a `generic` Provider's address is `http://<addr>/alerts`).
pub async fn alert_receiver() -> (Running, Received) {
    let received = Received::default();
    let app = Router::new()
        .route(
            "/alerts",
            any(
                |State(r): State<Received>, body: axum::body::Bytes| async move {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        r.0.lock().expect("lock").push(v);
                    }
                    StatusCode::OK
                },
            ),
        )
        .with_state(received.clone());
    (serve(loopback(), app).await, received)
}

pub fn monitor(yaml: &str) -> Monitor {
    let mut m: Monitor = serde_saphyr::from_str(yaml).expect("Monitor YAML");
    if m.metadata.namespace.is_none() {
        m.metadata.namespace = Some("default".into());
    }
    m.metadata.generation = Some(1);
    m
}

pub fn compile(yaml: &str, secrets: &Secrets) -> Result<Plan, plan::PlanError> {
    plan::compile(&monitor(yaml), secrets, &Clients::default())
}

pub fn compiled(yaml: &str) -> Plan {
    compile(yaml, &Secrets::new()).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

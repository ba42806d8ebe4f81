//! Running one check: the request (HTTP(S), TCP, DNS, TLS) or the heartbeat deadline, then the
//! conditions. Hostile endpoints are expected: the body read is bounded ([`BODY_LIMIT`]), every
//! check has a deadline, redirect loops stop after [`MAX_REDIRECTS`](crate::plan::MAX_REDIRECTS)
//! hops, and TLS failures say what was wrong with the certificate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_core::uptime::condition::{self, Observation};

use crate::plan::{Auth, Plan, Target};
use crate::{dns, tls};

/// How much of a body is read for conditions and keywords; the rest is never downloaded.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub success: bool,
    pub response_time: Duration,
    /// What failed, or a short summary of success.
    pub message: String,
    /// The endpoint could not be reached at all (retried sooner while confirming a failure).
    pub connection_error: bool,
    /// Seconds until the TLS certificate expires, when one was seen.
    pub certificate_seconds: Option<i64>,
}

/// Runs the plan's check once. `last_beat`: when the heartbeat monitor was last called.
pub async fn run(plan: &Plan, last_beat: Option<Instant>) -> CheckResult {
    let started = Instant::now();
    // The executors have their own deadlines; this one catches anything they miss.
    let deadline = plan.timeout + Duration::from_secs(1);
    let seen = match tokio::time::timeout(deadline, observe(plan, last_beat)).await {
        Ok(seen) => seen,
        Err(_) => Err(Failure::connection(format!(
            "timed out after {}",
            gantry_core::uptime::state::human(plan.timeout)
        ))),
    };
    let elapsed = started.elapsed();
    match seen {
        Err(failure) => CheckResult {
            success: false,
            response_time: elapsed,
            message: failure.message,
            connection_error: failure.connection,
            certificate_seconds: failure.certificate_seconds,
        },
        Ok(seen) => {
            let certificate_seconds = seen.certificate_expiration_ms.map(|ms| ms / 1000);
            let mut failures = match condition::evaluate_all(&plan.conditions, &seen.observation) {
                Ok(()) => Vec::new(),
                Err(failed) => failed,
            };
            failures.extend(seen.extra_failures);
            let response_time = seen.observation.response_time;
            CheckResult {
                success: failures.is_empty(),
                response_time,
                message: if failures.is_empty() {
                    seen.summary
                } else {
                    format!("failed: {}", failures.join("; "))
                },
                connection_error: false,
                certificate_seconds,
            }
        }
    }
}

struct Seen {
    observation: Observation,
    certificate_expiration_ms: Option<i64>,
    /// Failures outside the conditions (keyword, expected DNS answers).
    extra_failures: Vec<String>,
    summary: String,
}

struct Failure {
    message: String,
    connection: bool,
    certificate_seconds: Option<i64>,
}

impl Failure {
    fn connection(message: String) -> Self {
        Failure {
            message,
            connection: true,
            certificate_seconds: None,
        }
    }
}

async fn observe(plan: &Plan, last_beat: Option<Instant>) -> Result<Seen, Failure> {
    match &plan.target {
        Target::Http { .. } => http(plan).await,
        Target::Tcp { host, port } => tcp(host, *port, plan.timeout).await,
        Target::Dns {
            name,
            server,
            record_type,
            expected,
        } => {
            let started = Instant::now();
            let answer = dns::query(*server, name, *record_type, plan.timeout)
                .await
                .map_err(Failure::connection)?;
            let extra_failures = expected
                .iter()
                .filter(|e| !answer.records.iter().any(|r| r.eq_ignore_ascii_case(e)))
                .map(|e| format!("expected answer '{e}' not in {:?}", answer.records))
                .collect();
            Ok(Seen {
                observation: Observation {
                    response_time: started.elapsed(),
                    body: Some(answer.records.join("\n")),
                    connected: true,
                    dns_rcode: Some(answer.rcode.clone()),
                    ..Default::default()
                },
                certificate_expiration_ms: None,
                extra_failures,
                summary: format!("{} {:?}", answer.rcode, answer.records),
            })
        }
        Target::Tls {
            host,
            port,
            server_name,
            verifier,
        } => tls_check(host, *port, server_name, verifier.clone(), plan.timeout).await,
        Target::Heartbeat => {
            let grace = plan.interval + plan.timeout;
            match last_beat {
                Some(at) if at.elapsed() <= grace => Ok(Seen {
                    observation: Observation {
                        connected: true,
                        ..Default::default()
                    },
                    certificate_expiration_ms: None,
                    extra_failures: Vec::new(),
                    summary: format!(
                        "last heartbeat {} ago",
                        gantry_core::uptime::state::human(at.elapsed())
                    ),
                }),
                Some(at) => Err(Failure::connection(format!(
                    "no heartbeat for {}",
                    gantry_core::uptime::state::human(at.elapsed())
                ))),
                None => Err(Failure::connection(format!(
                    "no heartbeat received yet (expected every {})",
                    gantry_core::uptime::state::human(plan.interval)
                ))),
            }
        }
    }
}

async fn http(plan: &Plan) -> Result<Seen, Failure> {
    let Target::Http {
        url,
        method,
        headers,
        body,
        auth,
        client,
        keyword,
    } = &plan.target
    else {
        return Err(Failure::connection("not an HTTP monitor".into()));
    };
    let started = Instant::now();
    let mut request = client
        .request(method.clone(), url.clone())
        .timeout(plan.timeout);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    if let Some(body) = body {
        request = request.body(body.clone());
    }
    request = match auth {
        Some(Auth::Basic { username, password }) => request.basic_auth(username, Some(password)),
        Some(Auth::Bearer(token)) => request.bearer_auth(token),
        None => request,
    };
    let mut response = request.send().await.map_err(|e| http_failure(&e, plan))?;
    let status = response.status().as_u16();
    let ip = response.remote_addr().map(|a| a.ip().to_string());
    let certificate_expiration_ms = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .and_then(tls::seconds_left)
        .map(|s| s.saturating_mul(1000));
    let mut text = None;
    let mut truncated = false;
    if plan.needs_body {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = BODY_LIMIT - buf.len();
                    if chunk.len() >= room {
                        buf.extend_from_slice(&chunk[..room]);
                        // Dropping the response closes the connection: the rest is never read.
                        truncated = true;
                        break;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(http_failure(&e, plan)),
            }
        }
        text = Some(String::from_utf8_lossy(&buf).into_owned());
    }
    drop(response);
    let mut extra_failures = Vec::new();
    if let (Some((word, invert)), Some(body)) = (keyword, &text) {
        let found = body.contains(word.as_str());
        if found == *invert {
            extra_failures.push(if *invert {
                format!("keyword '{word}' found in the body")
            } else if truncated {
                format!("keyword '{word}' not in the first {BODY_LIMIT} bytes of the body")
            } else {
                format!("keyword '{word}' not in the body")
            });
        }
    }
    let response_time = started.elapsed();
    Ok(Seen {
        observation: Observation {
            status: Some(status),
            ip,
            response_time,
            body: text,
            connected: true,
            certificate_expiration_ms,
            dns_rcode: None,
        },
        certificate_expiration_ms,
        extra_failures,
        summary: format!("HTTP {status} in {}ms", response_time.as_millis()),
    })
}

fn http_failure(err: &reqwest::Error, plan: &Plan) -> Failure {
    let message = if err.is_timeout() {
        format!(
            "timed out after {}",
            gantry_core::uptime::state::human(plan.timeout)
        )
    } else if err.is_redirect() {
        format!(
            "redirect loop or more than {} redirects",
            crate::plan::MAX_REDIRECTS
        )
    } else if let Some(tls) = tls::describe_chain(err) {
        tls
    } else {
        format!("request failed: {}", root_cause(err))
    };
    Failure {
        message,
        connection: err.is_connect() || err.is_timeout(),
        certificate_seconds: None,
    }
}

/// The innermost error's text (e.g. "Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, Failure> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(Failure::connection(format!(
            "connecting to {host}:{port}: {e}"
        ))),
        Err(_) => Err(Failure::connection(format!(
            "connecting to {host}:{port} timed out after {}",
            gantry_core::uptime::state::human(timeout)
        ))),
    }
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<Seen, Failure> {
    let started = Instant::now();
    let stream = connect(host, port, timeout).await?;
    let ip = stream.peer_addr().ok().map(|a| a.ip().to_string());
    drop(stream);
    let response_time = started.elapsed();
    Ok(Seen {
        observation: Observation {
            ip,
            response_time,
            connected: true,
            ..Default::default()
        },
        certificate_expiration_ms: None,
        extra_failures: Vec::new(),
        summary: format!("connected in {}ms", response_time.as_millis()),
    })
}

async fn tls_check(
    host: &str,
    port: u16,
    server_name: &rustls::pki_types::ServerName<'static>,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    timeout: Duration,
) -> Result<Seen, Failure> {
    let started = Instant::now();
    let recording = Arc::new(tls::Recording {
        inner: verifier,
        leaf: Mutex::new(None),
    });
    let config = tls::client_config(recording.clone(), None).map_err(Failure::connection)?;
    let stream = connect(host, port, timeout).await?;
    let ip = stream.peer_addr().ok().map(|a| a.ip().to_string());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let left = timeout.saturating_sub(started.elapsed());
    let handshake =
        tokio::time::timeout(left, connector.connect(server_name.clone(), stream)).await;
    let certificate_seconds = recording.leaf().as_deref().and_then(tls::seconds_left);
    match handshake {
        Err(_) => Err(Failure {
            message: format!(
                "TLS handshake with {host}:{port} timed out after {}",
                gantry_core::uptime::state::human(timeout)
            ),
            connection: true,
            certificate_seconds,
        }),
        Ok(Err(e)) => Err(Failure {
            message: tls::describe_chain(&e)
                .unwrap_or_else(|| format!("TLS handshake with {host}:{port} failed: {e}")),
            connection: false,
            certificate_seconds,
        }),
        Ok(Ok(_)) => {
            let response_time = started.elapsed();
            Ok(Seen {
                observation: Observation {
                    ip,
                    response_time,
                    connected: true,
                    certificate_expiration_ms: certificate_seconds.map(|s| s.saturating_mul(1000)),
                    ..Default::default()
                },
                certificate_expiration_ms: certificate_seconds.map(|s| s.saturating_mul(1000)),
                extra_failures: Vec::new(),
                summary: match certificate_seconds {
                    Some(s) => format!(
                        "certificate valid for {}",
                        gantry_core::uptime::state::human(Duration::from_secs(s.max(0) as u64))
                    ),
                    None => "handshake done".into(),
                },
            })
        }
    }
}

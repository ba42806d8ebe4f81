//! The HTTP side: accept (HTTP/1.1 and h2c), route by Host, hold while a Revision wakes,
//! forward to a pod, pass upgrades and streams through.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, RETRY_AFTER, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::dial::{DialGuard, GuardedConnector};
use crate::metrics::RevisionLabels;
use crate::pool::{DialError, Sender, dial};
use crate::probe::phase;
use crate::revision::{Lease, Pod, Revision};
use crate::table::{RevisionConfig, host_key};
use crate::{Router, ScaleReason};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2-prior-knowledge client to h2c pods, behind the dial guard. (HTTP/1.1 pods get
/// per-pod connections from [`crate::pool`]; an h2c pod needs one multiplexed connection, which
/// hyper-util's client already keeps per pod address.)
pub(crate) struct Clients {
    h2c: Client<GuardedConnector, Incoming>,
}

impl Clients {
    pub(crate) fn new(guard: Arc<DialGuard>) -> Self {
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(GuardedConnector::new(guard));
        Clients { h2c }
    }
}

/// Forwarding one request to a pod failed.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("the pod's HTTP/1.1 connection failed")]
    Http1(#[source] hyper::Error),
    #[error("the pod's h2c connection failed")]
    H2c(#[source] hyper_util::client::legacy::Error),
}

impl ForwardError {
    /// The pod could not be reached at all (not an error on an open connection).
    fn is_connect(&self) -> bool {
        match self {
            ForwardError::Dial(_) => true,
            ForwardError::Http1(_) => false,
            ForwardError::H2c(e) => e.is_connect(),
        }
    }
}

/// A response body that holds the request's lease until the body ends or is dropped, so an open
/// stream (SSE, a long download) counts as in flight; and the pod connection it came on, which
/// goes back to the pod's idle connections once the body has been read to the end.
pub struct ProxyBody {
    inner: Inner,
    lease: Option<Lease>,
    conn: Option<Sender>,
    max_idle: usize,
}

/// The pod's body as hyper gives it (no box per response), or the router's own answer.
enum Inner {
    Pod(Incoming),
    Own(BoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    fn own(inner: BoxBody<Bytes, BoxError>) -> Self {
        ProxyBody {
            inner: Inner::Own(inner),
            lease: None,
            conn: None,
            max_idle: 0,
        }
    }

    /// The body is over: the connection (if it was read to the end) goes back to the pod before
    /// the slot is freed, so the request that gets the slot finds it; then the slot is freed.
    fn finish(&mut self, read_to_end: bool) {
        if let (Some(conn), Some(lease)) = (self.conn.take(), &self.lease)
            && read_to_end
        {
            lease.pod.give_back(conn, self.max_idle);
        }
        self.lease = None;
    }

    fn text(s: impl Into<Bytes>) -> Self {
        ProxyBody::own(
            Full::new(s.into())
                .map_err(|n: Infallible| match n {})
                .boxed(),
        )
    }

    fn empty() -> Self {
        ProxyBody::own(Empty::new().map_err(|n: Infallible| match n {}).boxed())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Pod(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Inner::Own(b) => Pin::new(b).poll_frame(cx),
        };
        match &polled {
            // The stream is over: free the pod slot now rather than when hyper drops the body.
            Poll::Ready(None) => self.finish(true),
            // A broken body: its connection cannot carry another request.
            Poll::Ready(Some(Err(_))) => self.finish(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Pod(b) => b.is_end_stream(),
            Inner::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Pod(b) => b.size_hint(),
            Inner::Own(b) => b.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper drops a body without polling its end once it reports `is_end_stream` (a known
        // length fully read, or none at all): such a connection is reusable too.
        let read_to_end = self.is_end_stream();
        self.finish(read_to_end);
    }
}

fn answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(format!("{message}\n")));
    *resp.status_mut() = status;
    resp
}

/// Serves the router on `listener` until `shutdown` completes.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(%err, "accepting a serving connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "serving connection ended");
            }
        });
    }
}

/// Binds `addr` and serves; returns the bound address and the server task.
pub async fn bind(
    router: Router,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(router, listener, shutdown))))
}

impl Router {
    /// Handles one request end to end.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .map(host_key)
            .unwrap_or_default();
        let Some(route) = self.route(&host) else {
            if host == crate::peers::REPORT_HOST {
                let (status, body) = self.peer_report(req.headers());
                return answer(status, &body);
            }
            return answer(
                StatusCode::NOT_FOUND,
                &format!("no Knative Service serves host \"{host}\""),
            );
        };
        let Some(rev) = route.pick().cloned() else {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the route has no traffic target",
            );
        };
        let accounted = rev.start();
        let config = rev.config();
        let deadline = tokio::time::Instant::now() + config.timeout;
        let pod = match rev.try_acquire(config.container_concurrency) {
            Some(pod) => pod,
            None => match self.wait_for_pod(&rev, &config, deadline).await {
                Ok(pod) => pod,
                Err(resp) => return resp,
            },
        };
        self.forward(req, Lease::new(pod, accounted), rev, &config, deadline)
            .await
    }

    /// Holds a request until a pod has a free slot, waking the Revision if it has none.
    async fn wait_for_pod(
        &self,
        rev: &Arc<Revision>,
        config: &RevisionConfig,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Pod>, Response<ProxyBody>> {
        let labels = RevisionLabels::from(&rev.key);
        let m = &self.inner.metrics;
        if rev.waiting.fetch_add(1, Ordering::SeqCst) >= self.inner.settings.queue_limit {
            rev.waiting.fetch_sub(1, Ordering::SeqCst);
            m.rejected.get_or_create(&labels).inc();
            let mut resp = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "pending request queue full",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(resp);
        }
        m.requests_held.get_or_create(&labels).inc();
        let depth = m.queue_depth.get_or_create(&labels).clone();
        depth.inc();
        let _waiting = Waiting { rev, depth };
        loop {
            let notified = rev.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Pairs with the fence in `Revision::release`, which skips the wake-up when no one
            // is counted in `waiting`: this request is counted, so either that release sees it
            // or this look for a slot sees the slot it freed.
            std::sync::atomic::fence(Ordering::SeqCst);
            if let Some(pod) = rev.try_acquire(config.container_concurrency) {
                return Ok(pod);
            }
            if rev.ready_pods() == 0 && rev.replicas.load(Ordering::SeqCst) <= 0 {
                self.wake(rev, config);
            }
            // Re-check at least every second: a failed wake is retried, a missed change seen.
            let recheck =
                (tokio::time::Instant::now() + std::time::Duration::from_secs(1)).min(deadline);
            if tokio::time::timeout_at(recheck, notified).await.is_err() && recheck >= deadline {
                m.rejected.get_or_create(&labels).inc();
                let mut resp = answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "no pod of the revision became ready in time",
                );
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return Err(resp);
            }
        }
    }

    /// Asks for the Revision's first pods, once per wake.
    fn wake(&self, rev: &Arc<Revision>, config: &RevisionConfig) {
        if rev.waking.swap(true, Ordering::SeqCst) {
            return;
        }
        let requested = Instant::now();
        *rev.wake_times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = crate::revision::WakeTimes {
            requested: Some(requested),
            ..Default::default()
        };
        let s = &config.autoscale;
        let mut replicas = s.min_scale.max(s.activation_scale).max(1);
        if s.max_scale > 0 {
            replicas = replicas.min(s.max_scale);
        }
        self.inner
            .metrics
            .wakes
            .get_or_create(&RevisionLabels::from(&rev.key))
            .inc();
        tracing::info!(revision = %rev.key, replicas, "waking from zero");
        let scaling = self
            .inner
            .scaler
            .scale(&rev.key, replicas, ScaleReason::Wake);
        let rev = rev.clone();
        let router = self.clone();
        tokio::spawn(async move {
            match scaling.await {
                Ok(()) => {
                    let now = Instant::now();
                    rev.wake_times
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .scale_done = Some(now);
                    router
                        .inner
                        .metrics
                        .cold_start
                        .get_or_create(&phase("scale_request"))
                        .observe((now - requested).as_secs_f64());
                }
                Err(err) => {
                    tracing::warn!(revision = %rev.key, %err, "waking the revision failed; held requests retry");
                    rev.waking.store(false, Ordering::SeqCst);
                }
            }
        });
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        lease: Lease,
        rev: Arc<Revision>,
        config: &RevisionConfig,
        deadline: tokio::time::Instant,
    ) -> Response<ProxyBody> {
        let addr = lease.pod.endpoint.addr;
        let upgrading = is_upgrade(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(HOST, v);
        }
        // HTTP/1.1 to a pod takes the origin form (`/path?query`), which is what HTTP/1.1
        // clients send already; the h2c client wants the pod's address in the URI.
        let uri = if config.h2c {
            pod_uri(addr, parts.uri.path_and_query())
        } else if parts.uri.authority().is_some() || parts.uri.path_and_query().is_none() {
            origin_form(parts.uri.path_and_query())
        } else {
            Some(std::mem::take(&mut parts.uri))
        };
        parts.uri = match uri {
            Some(uri) => uri,
            None => return answer(StatusCode::BAD_REQUEST, "invalid request path"),
        };
        parts.version = if config.h2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        strip_hop_headers(&mut parts.headers, upgrading && !config.h2c);
        let req = Request::from_parts(parts, body);
        let sending = async {
            if config.h2c {
                let resp = self.inner.clients.h2c.request(req).await;
                resp.map(|r| (r, None)).map_err(ForwardError::H2c)
            } else {
                let sent = self.send_http1(&lease.pod, req).await;
                sent.map(|(r, conn)| (r, Some(conn)))
            }
        };
        let rejected = || {
            self.inner
                .metrics
                .rejected
                .get_or_create(&RevisionLabels::from(&rev.key))
                .inc();
        };
        let (mut resp, conn) = match tokio::time::timeout_at(deadline, sending).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(err)) => {
                rejected();
                if err.is_connect() {
                    // The pod stopped answering: route around it until a probe succeeds again.
                    lease.pod.ready.store(false, Ordering::SeqCst);
                    lease.pod.conns.clear();
                    crate::probe::spawn(self.clone(), rev.clone(), lease.pod.clone());
                }
                tracing::warn!(revision = %rev.key, pod = %addr, err = %DisplayChain(&err), "forwarding failed");
                return answer(StatusCode::BAD_GATEWAY, "the revision's pod did not answer");
            }
            Err(_) => {
                rejected();
                let mut resp = answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the revision did not answer in time",
                );
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return resp;
            }
        };
        self.first_byte(&rev);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            // The pod's connection becomes the tunnel: it is not given back (`conn` drops here).
            drop(conn);
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (client, backend) = tokio::join!(client_upgrade, backend_upgrade);
                if let (Ok(client), Ok(backend)) = (client, backend) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(backend),
                    )
                    .await;
                }
                // The upgraded connection was in flight until here.
                drop(lease);
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, ProxyBody::empty());
        }
        strip_hop_headers(resp.headers_mut(), false);
        resp.map(|b| ProxyBody {
            inner: Inner::Pod(b),
            lease: Some(lease),
            conn,
            max_idle: self.inner.settings.max_idle_per_pod,
        })
    }

    /// Sends an HTTP/1.1 request on one of the pod's idle connections, or on a new one. A
    /// request that an idle connection closed before writing it (the pod timed the connection
    /// out meanwhile) is sent again on the next; once written, a request is never sent twice.
    async fn send_http1(
        &self,
        pod: &Pod,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Sender), ForwardError> {
        loop {
            let (mut conn, idle) = match pod.conns.take() {
                Some(conn) => (conn, true),
                None => (dial(&self.inner.guard, pod.endpoint.addr).await?, false),
            };
            // A new connection takes its first request before its task has run; an idle one
            // may still be finishing its previous response.
            if idle && !conn.is_ready() && conn.ready().await.is_err() {
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if idle => req = unsent,
                    _ => return Err(ForwardError::Http1(err.into_error())),
                },
            }
        }
    }

    fn first_byte(&self, rev: &Revision) {
        // Set (under the lock) before held requests are woken; warm requests stop here.
        if !rev.first_byte_pending.load(Ordering::Relaxed) {
            return;
        }
        let mut w = rev
            .wake_times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(requested), Some(_)) = (w.requested, w.ready) {
            self.inner
                .metrics
                .cold_start
                .get_or_create(&phase("first_byte"))
                .observe(requested.elapsed().as_secs_f64());
            *w = Default::default();
            rev.first_byte_pending.store(false, Ordering::SeqCst);
        }
    }
}

/// Keeps the queue-depth gauge and the waiting count right however the wait ends.
struct Waiting<'a> {
    rev: &'a Revision,
    depth: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rev.waiting.fetch_sub(1, Ordering::SeqCst);
        self.depth.dec();
    }
}

/// `http://<pod>/<path?query>` without formatting and re-parsing the whole URI.
fn pod_uri(addr: SocketAddr, path: Option<&PathAndQuery>) -> Option<Uri> {
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    write!(w, "{addr}").ok()?;
    let n = 64 - w.len();
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::try_from(&buf[..n]).ok()?);
    parts.path_and_query = Some(
        path.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

/// `/path?query` alone (`/` when the URI has no path, as in `http://host`).
fn origin_form(path: Option<&PathAndQuery>) -> Option<Uri> {
    let mut parts = uri::Parts::default();
    parts.path_and_query = Some(
        path.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

/// An error with its sources, for a log line.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Hop-by-hop headers of RFC 9110 §7.6.1 besides `Connection` and `Upgrade`.
static HOP_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1); an upgrade keeps `Connection` and `Upgrade`.
/// Allocates only for the header names a `Connection` header lists.
fn strip_hop_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !(t.is_empty()
                    || t.eq_ignore_ascii_case("keep-alive")
                    || t.eq_ignore_ascii_case("close")
                    || (keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_HEADERS {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_go_upgrades_stay() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade, X-Private"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        assert!(is_upgrade(&h));
        let mut up = h.clone();
        strip_hop_headers(&mut up, true);
        assert!(up.contains_key(UPGRADE) && up.contains_key(CONNECTION));
        assert!(!up.contains_key("x-private") && !up.contains_key("keep-alive"));
        strip_hop_headers(&mut h, false);
        assert!(h.is_empty());
    }
}

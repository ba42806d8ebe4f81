//! Loopback stand-ins for pods and a scaler that starts and stops them.
//!
//! A stand-in is a real HTTP server (hyper, HTTP/1.1 and h2c) bound to its own 127.x.y.z
//! address; it counts each request id it serves, its concurrency, and echoes WebSocket bytes.
//! The scaler plays the cluster (ReplicaSet + kubelet): the proxy under test is exercised
//! without a control plane, which `tests/cluster.rs` covers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use gantry_router::table::{Endpoint, RevisionKey};
use gantry_router::{Router, ScaleReason, Scaler};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A fresh loopback address per stand-in (Linux routes all of 127/8 to `lo`).
pub fn next_loopback() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 77, (n / 250) as u8, (n % 250 + 1) as u8))
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Request id (`x-id` header) → times served.
    pub served: Mutex<HashMap<String, u32>>,
    pub total: AtomicU64,
    pub in_flight: AtomicU32,
    pub max_in_flight: AtomicU32,
    pub versions: Mutex<Vec<Version>>,
    /// Connections open right now (the router's and its prober's).
    pub conns_open: AtomicI64,
    /// Connections that carried at least one request.
    pub conns_used: AtomicU64,
}

pub struct StandIn {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Stops serving (the pod is gone); its counts stay readable.
    pub fn stop(&self) {
        self.task.abort();
    }

    pub async fn start(ip: IpAddr, port: u16) -> StandIn {
        let listener = TcpListener::bind((ip, port)).await.expect("bind stand-in");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the server closes them too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                s.conns_open.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let used = Arc::new(AtomicBool::new(false));
                    let stats = s.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        if !used.swap(true, Ordering::SeqCst) {
                            s.conns_used.fetch_add(1, Ordering::SeqCst);
                        }
                        async move { Ok::<_, Infallible>(handle(req, s, addr).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                    stats.conns_open.fetch_sub(1, Ordering::SeqCst);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        StandIn { addr, stats, task }
    }

    pub fn served_total(&self) -> u64 {
        self.stats.total.load(Ordering::SeqCst)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn handle(mut req: Request<Incoming>, stats: Arc<Stats>, me: SocketAddr) -> Response<Body> {
    let n = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(n, Ordering::SeqCst);
    stats.total.fetch_add(1, Ordering::SeqCst);
    stats.versions.lock().unwrap().push(req.version());
    if let Some(id) = req.headers().get("x-id").and_then(|v| v.to_str().ok()) {
        *stats
            .served
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default() += 1;
    }
    let query = req.uri().query().unwrap_or_default().to_string();
    let resp = match req.uri().path() {
        "/sleep" => {
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("{me}")))
        }
        // The pod closes the connection after this response.
        "/close" => Response::builder()
            .header("connection", "close")
            .body(full(format!("{me}")))
            .unwrap(),
        "/sse" => {
            let events = futures::stream::unfold(0u32, |i| async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {i}\n\n")))),
                    i + 1,
                ))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap()
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(""))
                .unwrap()
        }
        _ => Response::new(full(format!("{me}"))),
    };
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    resp
}

/// Plays the cluster for the router: `scale(n)` starts or stops stand-ins and reports them as
/// the Revision's endpoints and replicas.
#[derive(Default)]
pub struct StandInScaler {
    pub router: OnceLock<Router>,
    pub pods: Mutex<HashMap<RevisionKey, Vec<Arc<StandIn>>>>,
    /// Stopped pods, kept for their counts.
    pub retired: Mutex<Vec<Arc<StandIn>>>,
    pub calls: Mutex<Vec<(RevisionKey, u32, ScaleReason)>>,
    /// How long a "pod" takes to start after the scale request.
    pub start_delay: Duration,
    /// Pods get addresses but never listen (a pod that never becomes ready).
    pub never_ready: bool,
}

impl StandInScaler {
    pub fn attach(&self, router: &Router) {
        let _ = self.router.set(router.clone());
    }

    /// Every pod ever started, stopped ones included.
    pub fn all_pods(&self) -> Vec<Arc<StandIn>> {
        let mut all = self.live_pods();
        all.extend(self.retired.lock().unwrap().iter().cloned());
        all
    }

    pub fn live_pods(&self) -> Vec<Arc<StandIn>> {
        self.pods
            .lock()
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Scales at once (as if the cluster had done it).
    pub async fn set(&self, key: &RevisionKey, n: u32) {
        let router = self.router.get().expect("attached").clone();
        let current = self.pods.lock().unwrap().get(key).map_or(0, Vec::len) as u32;
        let mut started = Vec::new();
        for _ in current..n {
            if self.never_ready {
                // Reserve a port nobody listens on.
                let l = std::net::TcpListener::bind((next_loopback(), 0)).unwrap();
                let addr = l.local_addr().unwrap();
                drop(l);
                started.push(Arc::new(StandIn {
                    addr,
                    stats: Arc::default(),
                    task: tokio::spawn(async {}),
                }));
            } else {
                started.push(Arc::new(StandIn::start(next_loopback(), 0).await));
            }
        }
        let endpoints: Vec<Endpoint> = {
            let mut pods = self.pods.lock().unwrap();
            let list = pods.entry(key.clone()).or_default();
            list.extend(started);
            for gone in list.drain((n as usize).min(list.len())..) {
                gone.stop();
                self.retired.lock().unwrap().push(gone);
            }
            list.iter().map(|p| Endpoint { addr: p.addr }).collect()
        };
        router.set_endpoints(key, &endpoints);
        router.set_replicas(key, i64::from(n));
    }

    pub fn wakes(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.2 == ScaleReason::Wake)
            .count()
    }

    pub fn sleeps(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.2 == ScaleReason::Sleep)
            .count()
    }
}

/// The scaler handed to the router (it holds a reference to the stand-ins).
pub struct Handle(pub Arc<StandInScaler>);

impl Scaler for Handle {
    fn scale(
        &self,
        key: &RevisionKey,
        replicas: u32,
        reason: ScaleReason,
    ) -> BoxFuture<'static, Result<(), String>> {
        let this = self.0.clone();
        let key = key.clone();
        Box::pin(async move {
            this.calls
                .lock()
                .unwrap()
                .push((key.clone(), replicas, reason));
            let current = this.pods.lock().unwrap().get(&key).map_or(0, Vec::len) as u32;
            let n = if reason == ScaleReason::Wake {
                replicas.max(current)
            } else {
                replicas
            };
            let this2 = this.clone();
            // The scale request returns at once; the pod starts later, as in a cluster.
            tokio::spawn(async move {
                tokio::time::sleep(this2.start_delay).await;
                this2.set(&key, n).await;
            });
            Ok(())
        })
    }
}

/// What the tests send requests to the router with.
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A client to the router: HTTP/1.1, one connection per concurrent request.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2000)
        .build_http()
}

/// GET `path` with Host `host` and an `x-id` header; (status, body, retry-after).
pub async fn get(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    router: SocketAddr,
    host: &str,
    path: &str,
    id: &str,
) -> (StatusCode, String, Option<String>) {
    let req = Request::get(format!("http://{router}{path}"))
        .header("host", host)
        .header("x-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    match c.request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned(), retry)
        }
        Err(e) => (StatusCode::IM_A_TEAPOT, format!("client error: {e}"), None),
    }
}

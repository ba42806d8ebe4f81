//! The dial guard: every connection the router opens to a backend goes through here.
//!
//! With the guard on (tests, the sandbox, benchmarks) a destination outside 127.0.0.0/8 and ::1
//! is refused and counted, so a test can assert that no traffic ever left the machine.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Counts of connections opened and refused; shared by the connector and the prober.
#[derive(Debug, Default)]
pub struct DialGuard {
    loopback_only: AtomicBool,
    /// Connections attempted to loopback destinations.
    pub loopback: AtomicU64,
    /// Connections attempted to other destinations (allowed when the guard is off).
    pub other: AtomicU64,
    /// Connections refused because the guard is on.
    pub refused: AtomicU64,
}

/// A destination the guard refused.
#[derive(Debug, thiserror::Error)]
#[error("refusing to connect to {0}: the router is restricted to loopback addresses")]
pub struct Refused(pub String);

impl DialGuard {
    pub fn new(loopback_only: bool) -> Self {
        DialGuard {
            loopback_only: AtomicBool::new(loopback_only),
            ..Default::default()
        }
    }

    pub fn loopback_only(&self) -> bool {
        self.loopback_only.load(Ordering::Relaxed)
    }

    /// Counts the attempt and refuses it when the guard is on and `ip` is not loopback.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if ip.is_loopback() {
            self.loopback.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.loopback_only() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused(ip.to_string()));
        }
        self.other.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A TCP connection through the guard (the prober's).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.check(addr.ip())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's HTTP connector behind the guard. Backends are always addressed by IP literal,
/// so no name is ever resolved.
#[derive(Clone)]
pub struct GuardedConnector {
    inner: HttpConnector,
    guard: Arc<DialGuard>,
}

impl GuardedConnector {
    pub fn new(guard: Arc<DialGuard>) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.enforce_http(true);
        GuardedConnector { inner, guard }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let checked = match host.parse::<IpAddr>() {
            Ok(ip) => self.guard.check(ip).map_err(BoxError::from),
            Err(_) => Err(BoxError::from(Refused(host.to_string()))),
        };
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            checked?;
            connecting.await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_passes_when_on() {
        let g = DialGuard::new(true);
        assert!(g.check("127.3.0.7".parse().unwrap()).is_ok());
        assert!(g.check("::1".parse().unwrap()).is_ok());
        assert!(g.check("10.244.0.5".parse().unwrap()).is_err());
        assert_eq!(g.refused.load(Ordering::Relaxed), 1);
        let off = DialGuard::new(false);
        assert!(off.check("10.244.0.5".parse().unwrap()).is_ok());
        assert_eq!(off.other.load(Ordering::Relaxed), 1);
    }
}

//! Kept-alive HTTP/1.1 connections to one pod, for the warm path.
//!
//! Each [`Pod`](crate::revision::Pod) keeps its own idle connections: a request takes the most
//! recently used one that is still open (else dials a new one through the [`DialGuard`]), and
//! its response body gives the connection back once it has been read to the end. A connection
//! whose response was cut off, that was upgraded, or that the pod closed is dropped, not reused.
//! When a pod leaves the table its idle connections are closed (dropping a hyper `SendRequest`
//! ends its connection task once it is idle).
//!
//! This replaces hyper-util's legacy `Client` on the warm path: that client looks its pool up
//! by scheme and authority under one process-wide mutex (twice per request) and spawns a task
//! per request to return the connection; here the pod is already known, its lock guards a
//! short `Vec`, and nothing is spawned per request.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;

use crate::dial::DialGuard;

/// The sending half of one HTTP/1.1 connection to a pod.
pub(crate) type Sender = SendRequest<Incoming>;

/// An idle connection older than this is closed (hyper-util's legacy client used 90 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Opening a connection to a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to the pod at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with the pod at {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// Dials `addr` through the guard and starts the connection's task (with upgrades, so a
/// WebSocket can take the connection over).
pub(crate) async fn dial(guard: &DialGuard, addr: SocketAddr) -> Result<Sender, DialError> {
    let stream = guard
        .connect(addr)
        .await
        .map_err(|source| DialError::Connect { addr, source })?;
    let (sender, conn) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| DialError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(pod = %addr, %err, "pod connection ended");
        }
    });
    Ok(sender)
}

/// One pod's idle connections, most recently used last.
#[derive(Default)]
pub struct Idle {
    conns: Mutex<Vec<(Sender, Instant)>>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("len", &self.len()).finish()
    }
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Idle connections kept right now that are still open.
    pub fn len(&self) -> usize {
        self.lock().iter().filter(|(s, _)| !s.is_closed()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently used idle connection that is still open.
    pub(crate) fn take(&self) -> Option<Sender> {
        let mut conns = self.lock();
        while let Some((sender, _)) = conns.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request, unless `max` are idle already (then it is closed).
    pub(crate) fn put(&self, sender: Sender, max: usize) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut conns = self.lock();
        if conns.len() >= max {
            conns.retain(|(s, since)| !s.is_closed() && now - *since < IDLE_TIMEOUT);
            if conns.len() >= max {
                return;
            }
        }
        conns.push((sender, now));
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] and forgets closed ones.
    pub(crate) fn prune(&self, now: Instant) {
        self.lock()
            .retain(|(s, since)| !s.is_closed() && now - *since < IDLE_TIMEOUT);
    }

    /// Closes every idle connection (the pod left the table or stopped answering).
    pub(crate) fn clear(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
    }
}

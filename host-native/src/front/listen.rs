//! The accept loop: every TCP connection is counted against a global cap
//! and one per client address, served as HTTP/1.1 with a deadline for its
//! request headers and one for the whole time it stays plain HTTP, and
//! counted until it closes (an upgraded WebSocket holds its slot for its
//! life).
//!
//! warp's own server gives hyper no timer, so a request sent one byte a
//! second, or a connection that never sends anything, stays open forever,
//! and nothing caps how many file descriptors clients can take.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use warp::http::Request;
use warp::{Filter, Reply};

use crate::metrics::Metrics;

/// Bounds on what clients can make the listener hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once (HTTP and WebSocket); `0` for no cap.
    pub max_connections: usize,
    /// Connections open at once from one IP address; `0` for no cap.
    pub max_per_address: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Time a connection may stay plain HTTP (keep-alive included) before
    /// it is closed; an upgrade to a WebSocket ends it.
    pub http_timeout: Duration,
    /// Time the bytes of one WebSocket message may take to arrive once they
    /// begin; a client that stalls mid-frame is closed with 1008.
    pub frame_timeout: Duration,
    /// A session's connection from which nothing arrived for this long is
    /// pinged, and closed once nothing (not even a pong) arrived for twice
    /// as long: a peer gone without a FIN is let go in bounded time.
    pub ping_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_per_address: 256,
            header_timeout: Duration::from_secs(10),
            http_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
        }
    }
}

/// Connections open, overall and per address.
#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection's place in the counts; freed when the last
/// holder (the HTTP task, then the WebSocket's task) lets go.
pub struct Slot {
    address: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// Held by a request so that the WebSocket it upgrades to keeps the
/// connection's slot (see [`super::upgrade`]).
#[derive(Clone)]
pub struct Held {
    _slot: Arc<Slot>,
}

/// Serves `routes` on `listener` within `limits` until `stop` resolves;
/// then stops accepting and asks open HTTP connections to finish (upgraded
/// ones are the hall's to close).
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Some(slot) = admit(&counts, peer, limits) else {
            metrics.connections_refused.inc();
            tokio::spawn(refuse(stream, peer, limits));
            continue;
        };
        // Frames are small and each is written when ready: Nagle's algorithm
        // would hold one behind the peer's delayed ACK of the one before.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let held = Held {
            _slot: Arc::new(slot),
        };
        let inner = TowerToHyperService::new(warp::service(routes.clone()));
        // Each request carries the slot, for the WebSocket it may become.
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(held.clone());
            hyper::service::Service::call(&inner, req)
        });
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let deadline = tokio::time::sleep(limits.http_timeout);
            let mut deadline = std::pin::pin!(deadline);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = deadline.as_mut() => {
                        tracing::debug!(%peer, "HTTP connection open too long; closed");
                        break;
                    }
                    changed = stopped.changed() => {
                        if changed.is_err() || *stopped.borrow() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    let _ = stopping.send(true);
}

/// Takes a slot for a connection from `peer`, or `None` at a cap.
fn admit(counts: &Arc<Mutex<Counts>>, peer: SocketAddr, limits: Limits) -> Option<Slot> {
    let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
    let address = peer.ip();
    let here = c.by_address.get(&address).copied().unwrap_or(0);
    if (limits.max_connections > 0 && c.total >= limits.max_connections)
        || (limits.max_per_address > 0 && here >= limits.max_per_address)
    {
        return None;
    }
    c.total += 1;
    *c.by_address.entry(address).or_default() += 1;
    Some(Slot {
        address,
        counts: counts.clone(),
    })
}

/// Answers a connection over a cap with 503 and why, then closes it.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, limits: Limits) {
    tracing::debug!(%peer, "connection refused at the connection cap");
    let body = format!(
        "too many connections: at most {} open at once, {} from one address; try again later\n",
        limits.max_connections, limits.max_per_address
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

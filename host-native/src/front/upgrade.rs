//! The WebSocket handshake, done here rather than by `warp::ws()`: warp's
//! `Ws` gives every connection tungstenite's default 128 KiB read buffer,
//! which tungstenite zero-fills on each read, so an idle follower would cost
//! ~130 KiB. Here the buffer is sized for the frames a gathering sees.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::listen::Held;
use super::watched::Watched;

/// A server-side WebSocket over an upgraded hyper connection.
pub type Socket = WebSocketStream<Watched>;

/// Read buffer per connection (resident: tungstenite zero-fills it). Ops and
/// acks are tens of bytes; a larger frame is read in several steps and the
/// buffer grows for it (a burst of 16 pipelined ops is about 800 bytes).
/// Per idle gathering with one connection, when the rest cost more than
/// now: 7.5 KB with 1 KiB, 10.5 KB with 4 KiB, 139 KB with the default.
const READ_BUFFER: usize = 512;

/// Most bytes the WebSocket layer may hold unwritten for one connection.
/// It queues a pong for every ping it reads, and a client that pings and
/// never reads would otherwise make it keep them all; past this it keeps
/// only the latest. Twice the outbox's byte bound, so that any frame the
/// outbox lets through fits.
const MAX_WRITE_BUFFER: usize = 2 * super::outbox::CAPACITY_BYTES;

/// The request was not a WebSocket upgrade.
#[derive(Debug)]
pub struct NotUpgrade(pub &'static str);
impl warp::reject::Reject for NotUpgrade {}

/// A checked upgrade request: the client's key and hyper's upgrade handle.
pub struct Handshake {
    key: String,
    on_upgrade: OnUpgrade,
    /// The connection's place under the listener's caps, kept for the
    /// WebSocket's life (none when the routes are mounted elsewhere).
    slot: Option<Held>,
}

/// Extracts a WebSocket upgrade (GET, `Connection: upgrade`, `Upgrade:
/// websocket`, version 13, a key), or rejects with what was missing.
pub fn handshake() -> impl Filter<Extract = (Handshake,), Error = Rejection> + Clone {
    warp::header::optional::<String>("connection")
        .and(warp::header::optional::<String>("upgrade"))
        .and(warp::header::optional::<String>("sec-websocket-version"))
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<Held>())
        .and_then(
            |connection: Option<String>,
             upgrade: Option<String>,
             version: Option<String>,
             key: Option<String>,
             on_upgrade: Option<OnUpgrade>,
             slot: Option<Held>| async move {
                let has_token = |v: &Option<String>, token: &str| {
                    v.as_deref().is_some_and(|v| {
                        v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                    })
                };
                if !has_token(&connection, "upgrade") || !has_token(&upgrade, "websocket") {
                    return Err(warp::reject::custom(NotUpgrade(
                        "this route is a WebSocket: send Connection: upgrade and Upgrade: websocket",
                    )));
                }
                if version.as_deref().map(str::trim) != Some("13") {
                    return Err(warp::reject::custom(NotUpgrade(
                        "only WebSocket version 13 is spoken (Sec-WebSocket-Version: 13)",
                    )));
                }
                match (key, on_upgrade) {
                    (Some(key), Some(on_upgrade)) => Ok(Handshake {
                        key,
                        on_upgrade,
                        slot,
                    }),
                    (None, _) => Err(warp::reject::custom(NotUpgrade(
                        "the upgrade lacks Sec-WebSocket-Key",
                    ))),
                    (_, None) => Err(warp::reject::custom(NotUpgrade(
                        "this connection cannot be upgraded (HTTP/1.1 only)",
                    ))),
                }
            },
        )
}

impl Handshake {
    /// Answers 101 and, once hyper hands the connection over, runs `serve`
    /// on the WebSocket; frames above `max_frame` are cut off by the
    /// WebSocket layer itself.
    pub fn accept<F, Fut>(self, max_frame: usize, frame_timeout: Duration, serve: F) -> impl Reply
    where
        F: FnOnce(Socket, Option<Held>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.trim().as_bytes());
        let on_upgrade = self.on_upgrade;
        let slot = self.slot;
        tokio::spawn(async move {
            // Not a `match` around the rest: its scrutinee would stay in the
            // task for the connection's whole life.
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER)
                .max_write_buffer_size(MAX_WRITE_BUFFER)
                .max_message_size(Some(max_frame))
                .max_frame_size(Some(max_frame));
            let socket = WebSocketStream::from_raw_socket(
                Watched::new(TokioIo::new(upgraded), frame_timeout),
                Role::Server,
                Some(config),
            )
            .await;
            // A task of its own: this one's state (the handshake's
            // futures, `serve` and `max_frame`) would otherwise stay in
            // every connection's task for its whole life.
            // The slot goes into `serve`'s own future: a wrapping block
            // would hold that future twice (a kilobyte per connection).
            tokio::spawn(serve(socket, slot));
        });
        let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
        let reply = warp::reply::with_header(reply, "connection", "upgrade");
        let reply = warp::reply::with_header(reply, "upgrade", "websocket");
        warp::reply::with_header(reply, "sec-websocket-accept", accept)
    }
}

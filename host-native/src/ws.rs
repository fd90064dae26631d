//! One WebSocket connection: a reader that routes frames through the hall and
//! a writer that drains the connection's outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gathering_core::protocol::{CLOSE_POLICY, CLOSE_TOO_BIG};
use gathering_core::{ConnId, Encoding, Frame, GatheringId, Inbound};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::upgrade::Socket;

use crate::hall_task::HallMail;
use crate::outbox::{Outbox, Outgoing, Queue};
use crate::server::Shared;

/// How long one frame may take to reach the client before the connection is
/// considered dead. The close frame gets a shorter bound: it is a courtesy.
const SEND_BOUND: Duration = Duration::from_secs(10);
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Connection ids, unique for the life of the process.
pub(crate) static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Serves one upgraded connection to gathering `id` until it closes.
pub async fn serve(socket: Socket, id: GatheringId, encoding: Encoding, shared: Arc<Shared>) {
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    shared.metrics.connections.inc();
    let (sink, mut stream) = socket.split();
    let (outbox, queue) = Outbox::new();
    let writer = tokio::spawn(write_loop(sink, queue));
    let join = HallMail::Route(
        id.clone(),
        Inbound::Join { conn, encoding },
        Some(outbox.clone()),
    );
    if shared.hall.send(join).await.is_ok() {
        read_loop(&mut stream, conn, &id, &outbox, &shared, writer).await;
        let _ = shared
            .hall
            .send(HallMail::Route(id, Inbound::Leave { conn }, None))
            .await;
    }
    shared.metrics.connections.dec();
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<Socket>,
    conn: ConnId,
    id: &GatheringId,
    outbox: &Outbox,
    shared: &Shared,
    mut writer: tokio::task::JoinHandle<()>,
) {
    let max = shared.config.max_frame_bytes;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            // The writer closed the connection: allow the client a moment to
            // answer the close handshake, then stop reading.
            _ = &mut writer => {
                let _ = tokio::time::timeout(CLOSE_BOUND, async {
                    while let Some(Ok(msg)) = stream.next().await {
                        if msg.is_close() { break; }
                    }
                }).await;
                return;
            }
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("too big") {
                    outbox.close(CLOSE_TOO_BIG, "frame too large");
                    let _ = tokio::time::timeout(CLOSE_BOUND, &mut writer).await;
                } else {
                    tracing::debug!(%conn, error = %text, "connection read failed");
                }
                return;
            }
            None => return,
        };
        let frame = match msg {
            Message::Text(text) => Frame::Text(text.as_str().into()),
            Message::Binary(bytes) => Frame::Binary(bytes.as_ref().into()),
            Message::Close(_) => return,
            // Ping and pong are answered by the WebSocket layer.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if frame.len() > max {
            outbox.close(CLOSE_TOO_BIG, "frame too large");
            let _ = tokio::time::timeout(CLOSE_BOUND, &mut writer).await;
            return;
        }
        let route = HallMail::Route(id.clone(), Inbound::Frame { conn, frame }, None);
        if shared.hall.send(route).await.is_err() {
            return;
        }
    }
}

async fn write_loop(mut sink: futures_util::stream::SplitSink<Socket, Message>, mut queue: Queue) {
    loop {
        match queue.recv().await {
            Some(Outgoing::Frame(frame)) => {
                let msg = match frame {
                    Frame::Text(text) => Message::text(&*text),
                    Frame::Binary(bytes) => Message::binary(bytes::Bytes::from_owner(bytes)),
                };
                match tokio::time::timeout(SEND_BOUND, sink.send(msg)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            Some(Outgoing::Close(code, reason)) => {
                let _ = tokio::time::timeout(CLOSE_BOUND, sink.send(close(code, reason))).await;
                return;
            }
            None => {
                // Closed without a close frame: the client stopped reading
                // (queue overflow) or the server dropped the connection.
                let closing = close(CLOSE_POLICY, "send queue overflow");
                let _ = tokio::time::timeout(CLOSE_BOUND, sink.send(closing)).await;
                return;
            }
        }
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

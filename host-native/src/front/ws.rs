//! One WebSocket connection: one task that routes its frames through the
//! hall and drains its outbox to the socket.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gathering_core::protocol::{CLOSE_POLICY, CLOSE_TOO_BIG};
use gathering_core::{ConnId, Encoding, Frame, GatheringId, Inbound};
use gathering_driver::HallMail;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Front;
use super::outbox::{Outbox, Outgoing, Queue};
use super::upgrade::Socket;

/// How long one frame may take to reach the client before the connection is
/// considered dead. The close frame gets a shorter bound: it is a courtesy.
const SEND_BOUND: Duration = Duration::from_secs(10);
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Serves one upgraded connection to gathering `id` until it closes.
///
/// One task per connection both reads (frames go to the hall) and writes
/// (the outbox goes to the socket): a second task, and the lock that split
/// halves share, cost every idle connection about a kilobyte. A plain fn
/// returning an `async move` block, so that the socket is held once (an
/// async fn would keep its argument beside the local it moves into).
#[allow(clippy::manual_async_fn)] // deliberately not one: see above
pub fn serve(
    mut socket: Socket,
    id: GatheringId,
    encoding: Encoding,
    shared: Arc<Front>,
) -> impl Future<Output = ()> {
    async move {
        let conn = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
        shared.metrics.connections.inc();
        let (outbox, mut queue) = Outbox::new();
        // This task keeps a handle too, so that the queue ends (`None`) only
        // when it was closed for overflow, never because a gathering let go.
        let join = HallMail::Route(
            id.clone(),
            Inbound::Join { conn, encoding },
            Some(outbox.clone()),
        );
        if shared.hall.send(join).await.is_ok() {
            pump(&mut socket, &mut queue, conn, &id, &shared).await;
            let _ = shared
                .hall
                .send(HallMail::Route(id, Inbound::Leave { conn }, None))
                .await;
        }
        drop(outbox);
        shared.metrics.connections.dec();
    }
}

/// Moves frames both ways until either side closes.
///
/// Reading and writing take turns (the select is fair): a write waits at
/// most `SEND_BOUND` for a client that does not read, and a read waits for
/// room in the hall's mailbox, which only backpressure fills.
async fn pump(
    socket: &mut Socket,
    queue: &mut Queue,
    conn: ConnId,
    id: &GatheringId,
    shared: &Front,
) {
    let max = shared.max_frame_bytes;
    loop {
        // The branches' futures are dropped before a handler runs, so the
        // handlers may use the socket.
        tokio::select! {
            out = queue.recv() => {
                let (code, reason) = match out {
                    Some(Outgoing::Frame(frame)) => {
                        // Boxed: one allocation per burst written, against
                        // its whole state in every idle connection's task.
                        let written = tokio::time::timeout(SEND_BOUND, write(socket, queue, frame));
                        match Box::pin(written).await {
                            Ok(Ok(None)) => continue,
                            Ok(Ok(Some(close))) => close,
                            _ => return,
                        }
                    }
                    Some(Outgoing::Close(code, reason)) => (code, reason),
                    // Closed without a close frame: the client stopped
                    // reading and its queue overflowed.
                    None => (CLOSE_POLICY, "send queue overflow"),
                };
                return Box::pin(closing(socket, code, reason)).await;
            }
            next = socket.next() => {
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("too big") {
                            return Box::pin(closing(socket, CLOSE_TOO_BIG, "frame too large")).await;
                        }
                        tracing::debug!(%conn, error = %text, "connection read failed");
                        return;
                    }
                    None => return,
                };
                let frame = match msg {
                    Message::Text(text) => Frame::Text(text.as_str().into()),
                    Message::Binary(bytes) => Frame::Binary(bytes.as_ref().into()),
                    Message::Close(_) => {
                        // The WebSocket layer queued the answer; send it.
                        let _ = tokio::time::timeout(CLOSE_BOUND, socket.flush()).await;
                        return;
                    }
                    // Ping and pong are answered by the WebSocket layer.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                if frame.len() > max {
                    return Box::pin(closing(socket, CLOSE_TOO_BIG, "frame too large")).await;
                }
                let route = HallMail::Route(id.clone(), Inbound::Frame { conn, frame }, None);
                if shared.hall.send(route).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Frames written with one flush at most: a burst (a gathering's batch
/// forwards and acks together) costs one write to the socket rather than
/// one per frame, and a long queue still yields to reading.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to
/// [`WRITE_BATCH`]), then flushes once. Returns the close asked for if the
/// queue ended in one.
async fn write(
    socket: &mut Socket,
    queue: &mut Queue,
    first: Frame,
) -> Result<Option<(u16, &'static str)>, tokio_tungstenite::tungstenite::Error> {
    let mut next = Some(first);
    let mut close = None;
    let mut written = 0;
    while let Some(frame) = next.take() {
        // Ready first, then the message: no message is held across an await
        // (this future is part of every connection's task).
        std::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).await?;
        socket.start_send_unpin(match frame {
            Frame::Text(text) => Message::text(&*text),
            Frame::Binary(bytes) => Message::binary(bytes::Bytes::from_owner(bytes)),
        })?;
        written += 1;
        if written < WRITE_BATCH {
            match queue.try_recv() {
                Some(Outgoing::Frame(frame)) => next = Some(frame),
                Some(Outgoing::Close(code, reason)) => close = Some((code, reason)),
                // Empty for now (or closed: the next `recv` says so).
                None => {}
            }
        }
    }
    socket.flush().await?;
    Ok(close)
}

/// Sends a close frame, then allows the client a moment to answer the close
/// handshake before the connection is dropped. Callers box it: it happens
/// once per connection, and unboxed its state would enlarge every idle
/// connection's task.
async fn closing(socket: &mut Socket, code: u16, reason: &'static str) {
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_BOUND, socket.send(close(code, reason))).await {
        let _ = tokio::time::timeout(CLOSE_BOUND, async {
            while let Some(Ok(msg)) = socket.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

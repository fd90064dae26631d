//! The tokio driver of the core's sans-IO room (`gathering_core::client`):
//! a task that owns the socket, opens and closes it when the room asks,
//! feeds it what arrives and the time, and hands its events to the user.
//! The room itself decides everything else (backoff, resume, retries).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::OptionFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use gathering_core::client::{
    Refusal, Room as Machine, RoomAction, RoomConfig, RoomEvent, RoomStatus,
};
use gathering_core::protocol::{self, Encoding, Frame};
use gathering_core::{App, ClientMsg, Duration, GatheringId, Instant, SessionId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{ClientError, OpenError, Ws, connect, join_url};

/// Gives a token for each join that needs a fresh one (the first, and
/// after each 4003), or `None` to join without.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How a [`Room`] joins.
#[derive(Clone)]
pub struct RoomOptions<P> {
    /// The encoding of its frames.
    pub encoding: Encoding,
    /// The session; a new random one by default.
    pub session: Option<SessionId>,
    /// Tokens for a server with `--auth-secret`.
    pub token: Option<TokenSource>,
    /// What this member shows from the start.
    pub presence: Option<P>,
    /// Bounds: unsettled ops, ops in flight, the handshake's timeout.
    pub config: RoomConfig,
    /// The backoff's first ceiling and cap (500 ms and 30 s by default).
    pub backoff: Option<(Duration, Duration)>,
    /// Seeds the backoff's jitter; by default from the clock.
    pub seed: Option<u64>,
}

impl<P> Default for RoomOptions<P> {
    fn default() -> Self {
        RoomOptions {
            encoding: Encoding::Postcard,
            session: None,
            token: None,
            presence: None,
            config: RoomConfig::default(),
            backoff: None,
            seed: None,
        }
    }
}

enum Command<A: App> {
    Op(A::Op, oneshot::Sender<Result<u64, Refusal>>),
    Presence(A::Presence),
    Rejoin,
    Leave,
}

/// One session with one gathering that stays joined: it reconnects,
/// resumes and sends its ops again by itself until [`Room::leave`]. Each
/// op applies exactly once; every op after the last
/// [`RoomEvent::State`] comes once, in seq order, from [`Room::next`].
/// Dropping the room leaves it.
pub struct Room<A: App> {
    commands: mpsc::UnboundedSender<Command<A>>,
    events: mpsc::UnboundedReceiver<RoomEvent<A::Op, A, A::Presence>>,
    status: watch::Receiver<RoomStatus>,
    session: SessionId,
}

impl<A> Room<A>
where
    A: App + Send + 'static,
    A::Op: Send + Clone,
    A::Presence: Send + Clone,
{
    /// Joins gathering `id` on the server at `base` (`ws://127.0.0.1:8080`)
    /// and keeps it joined, on a task of the current tokio runtime.
    /// Refused only for a session that is not 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub fn join(
        base: &str,
        id: &GatheringId,
        options: RoomOptions<A::Presence>,
    ) -> Result<Self, ClientError> {
        let clock = tokio::time::Instant::now();
        let seed = options.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let session = match options.session.clone() {
            Some(session) => session,
            None => random_session(seed)?,
        };
        let mut machine = Machine::new(
            options.config.clone(),
            seed,
            options.presence.clone(),
            Instant::ZERO,
        );
        if let Some((base_delay, cap)) = options.backoff {
            let backoff = machine.backoff_mut();
            backoff.base = base_delay;
            backoff.cap = cap;
        }
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(machine.status().clone());
        let target = Target {
            url: format!("{}&session={session}", join_url(base, id, options.encoding)),
            encoding: options.encoding,
            token: options.token,
        };
        tokio::spawn(run::<A>(
            machine, clock, target, command_rx, event_tx, status_tx,
        ));
        Ok(Room {
            commands,
            events,
            status,
            session,
        })
    }

    /// Applies `op`: its seq once durable, or why it was refused (nothing
    /// applied), or `closed`/`left` when the room ended first.
    pub async fn op(&self, op: A::Op) -> Result<u64, Refusal> {
        self.sender().op(op).await
    }

    /// Shows `data` to everyone here.
    pub fn set_presence(&self, data: A::Presence) {
        self.sender().set_presence(data);
    }

    /// A handle that sends ops and presence from other tasks, while this
    /// one reads the events.
    pub fn sender(&self) -> RoomSender<A> {
        RoomSender {
            commands: self.commands.clone(),
        }
    }

    /// Joins again now (a dispersed room, or one waiting to reconnect).
    pub fn rejoin(&self) {
        let _ = self.commands.send(Command::Rejoin);
    }

    /// The next event: status, state, op or presence; `None` once the room
    /// ended and every event was read.
    pub async fn next(&mut self) -> Option<RoomEvent<A::Op, A, A::Presence>> {
        self.events.recv().await
    }

    /// Where the room is now.
    pub fn status(&self) -> RoomStatus {
        self.status.borrow().clone()
    }

    /// This room's session.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// Leaves: closes with 1000; ops still waiting are refused with `left`.
    pub fn leave(self) {
        let _ = self.commands.send(Command::Leave);
    }
}

/// Sends a [`Room`]'s ops and presence; clones share the room.
pub struct RoomSender<A: App> {
    commands: mpsc::UnboundedSender<Command<A>>,
}

impl<A: App> Clone for RoomSender<A> {
    fn clone(&self) -> Self {
        RoomSender {
            commands: self.commands.clone(),
        }
    }
}

impl<A: App> RoomSender<A> {
    /// As [`Room::op`].
    pub async fn op(&self, op: A::Op) -> Result<u64, Refusal> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Op(op, tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// As [`Room::set_presence`].
    pub fn set_presence(&self, data: A::Presence) {
        let _ = self.commands.send(Command::Presence(data));
    }
}

fn gone() -> Refusal {
    Refusal {
        code: "closed".into(),
        message: "the room's task ended".into(),
    }
}

/// A session name from `seed`: 16 characters of the session alphabet.
fn random_session(seed: u64) -> Result<SessionId, ClientError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut x = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
    let name: String = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % 64) as usize])
        })
        .collect();
    SessionId::parse(&name).map_err(|e| ClientError::Connect(e.to_string()))
}

struct Target {
    url: String,
    encoding: Encoding,
    token: Option<TokenSource>,
}

type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ws, (u16, String)>> + Send>>;

async fn run<A>(
    mut machine: Machine<A::Op, A, A::Presence>,
    clock: tokio::time::Instant,
    target: Target,
    mut commands: mpsc::UnboundedReceiver<Command<A>>,
    events: mpsc::UnboundedSender<RoomEvent<A::Op, A, A::Presence>>,
    status: watch::Sender<RoomStatus>,
) where
    A: App + Send + 'static,
    A::Op: Send + Clone,
    A::Presence: Send + Clone,
{
    let now = || Instant::from_nanos(u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let mut ws: Option<Ws> = None;
    let mut connecting: Option<Connecting> = None;
    let mut token: Option<String> = None;
    let mut waiters: HashMap<u64, oneshot::Sender<Result<u64, Refusal>>> = HashMap::new();
    let mut leaving = false;
    loop {
        // Carry out what the room asked for.
        let mut fed = false;
        while let Some(action) = machine.poll_action() {
            match action {
                RoomAction::Connect {
                    since,
                    epoch,
                    fresh_token,
                    node,
                } => {
                    if let Some(old) = ws.take() {
                        close(old).await;
                    }
                    if fresh_token {
                        token = target.token.as_ref().and_then(|source| source());
                    }
                    let mut url = format!("{}&since={since}", target.url);
                    if let Some(epoch) = epoch {
                        url.push_str(&format!("&epoch={epoch}"));
                    }
                    // Node names are what --node allows; a name that needs
                    // escaping is not sent (the front chooses).
                    if let Some(node) = node.filter(|n| {
                        n.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                        })
                    }) {
                        url.push_str(&format!("&node={node}"));
                    }
                    connecting = Some(Box::pin(open(url, token.clone())));
                }
                RoomAction::Send(msg) => {
                    let frame = encode(&msg, target.encoding);
                    drop(msg);
                    if let (Some(socket), Some(frame)) = (ws.as_mut(), frame) {
                        fed |= socket.feed(frame).await.is_ok();
                    }
                }
                RoomAction::Close => {
                    connecting = None;
                    if let Some(old) = ws.take() {
                        close(old).await;
                    }
                }
            }
        }
        if fed && let Some(socket) = ws.as_mut() {
            let _ = socket.flush().await;
        }
        while let Some(event) = machine.poll_event() {
            match event {
                RoomEvent::Settled { ticket, result } => {
                    if let Some(waiter) = waiters.remove(&ticket) {
                        let _ = waiter.send(result);
                    }
                }
                RoomEvent::Status(s) => {
                    let _ = status.send(s.clone());
                    let _ = events.send(RoomEvent::Status(s));
                }
                other => {
                    let _ = events.send(other);
                }
            }
        }
        if leaving {
            return;
        }
        let deadline = machine
            .deadline()
            .map(|at| clock + std::time::Duration::from_nanos(at.as_nanos()));
        tokio::select! {
            command = commands.recv() => {
                leaving = command_in(&mut machine, &mut waiters, command, now());
                // Every command already waiting, so that their frames go
                // out in one write.
                while !leaving && let Ok(command) = commands.try_recv() {
                    leaving = command_in(&mut machine, &mut waiters, Some(command), now());
                }
            }
            Some(opened) = OptionFuture::from(connecting.as_mut()) => {
                connecting = None;
                match opened {
                    Ok(socket) => ws = Some(socket),
                    Err((code, reason)) => machine.closed(now(), code, &reason),
                }
            }
            Some(next) = OptionFuture::from(ws.as_mut().map(StreamExt::next)) => {
                let mut next = Some(next);
                // Every message already read, before answering any.
                while let Some(message) = next.take() {
                    if !message_in(&mut machine, message, now()) {
                        ws = None;
                        break;
                    }
                    next = ws.as_mut().and_then(|s| s.next().now_or_never());
                }
            }
            Some(()) = OptionFuture::from(deadline.map(tokio::time::sleep_until)) => {
                machine.tick(now());
            }
        }
    }
}

/// A user's command; whether the room is leaving.
fn command_in<A>(
    machine: &mut Machine<A::Op, A, A::Presence>,
    waiters: &mut HashMap<u64, oneshot::Sender<Result<u64, Refusal>>>,
    command: Option<Command<A>>,
    now: Instant,
) -> bool
where
    A: App,
    A::Op: Clone,
    A::Presence: Clone,
{
    match command {
        Some(Command::Op(op, reply)) => match machine.op(now, op) {
            Ok(ticket) => {
                waiters.insert(ticket, reply);
            }
            Err(refusal) => {
                let _ = reply.send(Err(refusal));
            }
        },
        Some(Command::Presence(data)) => machine.set_presence(now, data),
        Some(Command::Rejoin) => machine.rejoin(now),
        Some(Command::Leave) | None => {
            machine.leave();
            return true;
        }
    }
    false
}

/// What the socket gave; whether it is still open.
fn message_in<A>(
    machine: &mut Machine<A::Op, A, A::Presence>,
    message: Option<Result<Message, tungstenite::Error>>,
    now: Instant,
) -> bool
where
    A: App,
    A::Op: Clone,
    A::Presence: Clone,
{
    match message {
        Some(Ok(Message::Text(text))) => received(machine, now, Frame::Text(text.as_str().into())),
        Some(Ok(Message::Binary(bytes))) => {
            received(machine, now, Frame::Binary(bytes.as_ref().into()));
        }
        Some(Ok(Message::Close(frame))) => {
            let (code, reason) = frame.map_or((1006, String::new()), |f| {
                (u16::from(f.code), f.reason.to_string())
            });
            machine.closed(now, code, &reason);
            return false;
        }
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            machine.closed(now, 1006, &e.to_string());
            return false;
        }
        None => {
            machine.closed(now, 1006, "connection ended");
            return false;
        }
    }
    true
}

fn received<A>(machine: &mut Machine<A::Op, A, A::Presence>, now: Instant, frame: Frame)
where
    A: App,
    A::Op: Clone,
    A::Presence: Clone,
{
    // A frame this client cannot read is dropped: the server speaks the
    // protocol, and a stray one must not end the room.
    if let Ok(msg) = protocol::decode(&frame) {
        machine.received(now, msg);
    }
}

/// `msg` as a WebSocket message (before any await: the ops need not be `Sync`).
fn encode<O: serde::Serialize, P: serde::Serialize>(
    msg: &ClientMsg<O, P>,
    encoding: Encoding,
) -> Option<Message> {
    Some(match protocol::encode(msg, encoding).ok()? {
        Frame::Text(text) => Message::text(&*text),
        Frame::Binary(bytes) => Message::binary(bytes.to_vec()),
    })
}

/// Closes with 1000 (a clean leave: the others see this member go at
/// once), waiting a moment for the close to go out.
async fn close(mut ws: Ws) {
    let frame = normal_close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(Some(frame))).await;
}

/// A close frame with code 1000 and no reason.
pub(super) fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}

/// Opens a connection; a refusal before the upgrade is mapped to the close
/// code a page would see (401 → 4401, 403 → 4403, 503 → 1013, another 4xx
/// → 1008), anything else to 1006.
async fn open(url: String, token: Option<String>) -> Result<Ws, (u16, String)> {
    match connect(&url, token.as_deref()).await {
        Ok(ws) => Ok(ws),
        Err(OpenError::Failed(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let code = match status {
                401 => 4401,
                403 => 4403,
                503 => 1013,
                400..=499 => 1008,
                _ => 1006,
            };
            Err((code, format!("HTTP {status}: {body}")))
        }
        Err(e @ OpenError::Url(_)) => Err((1002, e.to_string())),
        Err(e @ OpenError::Token) => Err((4401, e.to_string())),
        Err(e @ OpenError::Failed(_)) => Err((1006, e.to_string())),
    }
}

//! The high-level client: one device on one (replaceable) connection.
//!
//! Background tasks, per client: a dispatcher (the only place events are produced, so
//! their order is the order frames arrived), an acker (coalesced `Received` frames), and
//! per connection a reader and a writer (which also keeps the connection alive with
//! pings). Requests carry ids from one counter and wait on a oneshot in the pending map;
//! sends retry with the same `client_msg_id` until acked or their deadline, reconnecting
//! first when the connection dropped. Every channel is bounded.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink, stream::SplitStream};
use natter_proto::{
    ConversationId, DeviceId, ErrorCode, MAX_BODY_BYTES, MAX_CLIENT_MSG_ID_BYTES, Seq, UserId,
    close_code,
    codec::WireFormat,
    v1::{
        self, ClientFrame, MessageKind, ServerFrame, client_frame::Body as CBody,
        server_frame::Body as SBody,
    },
};
use rand::Rng as _;
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::{AbortHandle, JoinHandle},
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    connection::{self, ABNORMAL_CLOSE, Connection, Incoming, WsStream},
    error::{ClientError, ConnectionError, error_code},
    inbox::{Inbox, Origin},
    presence::{self, Subscriptions},
};

/// A media message's caption, at most (docs/protocol.md "Media").
pub const MAX_CAPTION_BYTES: usize = 1024;
/// A media message's file name, at most.
pub const MAX_FILENAME_BYTES: usize = 255;

/// Frames queued for one connection's writer.
const WRITE_QUEUE: usize = 1024;
/// The longest a server's Reconnect hint may delay our reconnect.
const MAX_RECONNECT_HINT: Duration = Duration::from_secs(60);
/// Frames queued from the readers to the dispatcher.
const INCOMING_QUEUE: usize = 1024;

/// How a [`Client`] behaves. `Default` suits most uses.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Wire encoding (WebSocket subprotocol).
    pub format: WireFormat,
    /// Send `Received` for every message [`Client::recv`] hands out (coalesced per
    /// conversation). On by default.
    pub auto_ack: bool,
    /// Hand out this device's own messages too (from Acks and syncs), so the event
    /// stream is the whole conversation. Off by default: they only count for ordering.
    pub yield_own: bool,
    /// Reconnect (and sync) by itself when the connection drops, except after 4001/4002.
    pub auto_reconnect: bool,
    /// How long one request waits for its reply.
    pub request_timeout: Duration,
    /// How long [`Client::send`] keeps retrying before giving up.
    pub send_deadline: Duration,
    /// How long [`Client::sync`] may take, retries included.
    pub sync_timeout: Duration,
    /// Events queued for [`Client::recv`]. When full, message delivery waits (and with
    /// it replies): read events concurrently with awaiting requests.
    pub event_capacity: usize,
    /// How long a gap in a conversation may stay open before the client asks Sync for it
    /// (a message can overtake another for a moment, e.g. our Ack and a peer's push).
    pub gap_fill_delay: Duration,
    /// Messages kept past a gap per conversation; more are fetched again by the next sync.
    pub max_buffered_per_conversation: usize,
    /// Other WebSocket URLs of the same service (other edges). When a connection
    /// cannot be made, the next reconnect tries the next URL in turn, so a device
    /// whose edge died carries on at another one.
    pub alternate_urls: Vec<String>,
    /// Positions to start from (e.g. persisted by the application). Conversations not
    /// listed start from the server's stored cursor of this device.
    pub initial_cursors: Vec<(ConversationId, Seq)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            format: WireFormat::Proto,
            auto_ack: true,
            yield_own: false,
            auto_reconnect: false,
            request_timeout: Duration::from_secs(10),
            send_deadline: Duration::from_secs(60),
            sync_timeout: Duration::from_secs(60),
            event_capacity: 4096,
            gap_fill_delay: Duration::from_millis(200),
            max_buffered_per_conversation: 10_000,
            alternate_urls: Vec::new(),
            initial_cursors: Vec::new(),
        }
    }
}

/// Counters of what the client had to do, for tests, tools and load tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent again (same client_msg_id for sends) after a timeout, a retryable
    /// error or a dropped connection.
    pub retries: u64,
    /// New connections after the first.
    pub reconnects: u64,
    /// Syncs started to fill a gap in a conversation.
    pub gap_syncs: u64,
    /// Receipt, typing or error events dropped because the event queue was full.
    pub events_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    reconnects: AtomicU64,
    gap_syncs: AtomicU64,
    events_dropped: AtomicU64,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The one-to-one conversation with this user.
    User(UserId),
    Conversation(ConversationId),
}

impl From<UserId> for Target {
    fn from(u: UserId) -> Self {
        Target::User(u)
    }
}

impl From<ConversationId> for Target {
    fn from(c: ConversationId) -> Self {
        Target::Conversation(c)
    }
}

impl From<&ConversationId> for Target {
    fn from(c: &ConversationId) -> Self {
        Target::Conversation(c.clone())
    }
}

/// Something that happened, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message, exactly once per (conversation, seq), each conversation in seq order.
    Message(v1::Message),
    /// Someone received or read up to a seq.
    Receipt(v1::Receipt),
    Typing(v1::TypingEvent),
    /// Someone asked to join a group this user administers (join approval is on).
    JoinRequested(v1::GroupJoinRequested),
    /// A user's presence changed: pushed by the server for users this user subscribed
    /// to (from any of its devices), or found changed by a renewal of this device's
    /// subscriptions (e.g. after a reconnect). See [`Client::subscribe_presence`].
    Presence(v1::UserPresence),
    /// Something happened in a call this device rings for or takes part in: an incoming
    /// call, an answer, SDP or an ICE candidate from another device, the end. See
    /// [`Client::start_call`].
    Call(Box<v1::CallEvent>),
    /// An administrator deleted message `seq` of a conversation for everyone: show it as
    /// deleted and drop its content. It may name a message not handed out yet, which then
    /// comes out with `deleted` set (as sync and history return deleted messages).
    MessageDeleted {
        conversation_id: String,
        seq: u64,
    },
    /// An announcement from the operators, pushed to every connected device. Those
    /// missed while offline are listed by [`crate::HttpClient::announcements`].
    Announcement {
        id: u64,
        text: String,
        created_at_ms: u64,
    },
    /// An Error frame that answers no pending request (e.g. a refused `Received`).
    Error {
        id: u64,
        error: v1::Error,
    },
    /// The connection closed (the server's close code, or 1006 when it just ended).
    Closed {
        code: u16,
        reason: String,
    },
    /// A new connection is up (after [`Client::reconnect`] or an automatic reconnect).
    Reconnected(v1::Welcome),
    /// The server is draining (a restart): this connection closes once its requests
    /// are answered, and the next connection waits `after_ms` (the server spreads its
    /// clients' returns). Sends meanwhile wait and go out on the new connection.
    Reconnecting {
        reason: String,
        after_ms: u32,
    },
}

/// What the dispatcher queues for [`Client::recv`], in arrival order.
#[derive(Debug)]
enum Queued {
    Event(Event),
    /// A withheld message's place (`Message.withheld`): never handed out, but acked like
    /// a message once `recv` gets this far, so receipts never run ahead of the events the
    /// application has taken.
    Skip {
        conversation_id: String,
        seq: u64,
    },
}

/// Turns messages the inbox let out into queue entries: withheld ones become skips.
fn queue_messages(out: Vec<v1::Message>) -> impl Iterator<Item = Queued> {
    out.into_iter().map(|m| {
        if m.withheld {
            Queued::Skip {
                conversation_id: m.conversation_id,
                seq: m.seq,
            }
        } else {
            Queued::Event(Event::Message(m))
        }
    })
}

#[derive(Debug)]
enum PendingKind {
    /// Keeps what was sent, to turn the Ack into our own message.
    Send(v1::Send),
    Other,
}

#[derive(Debug)]
enum Reply {
    Frame(SBody),
    Disconnected,
}

#[derive(Debug)]
struct Pending {
    generation: u64,
    kind: PendingKind,
    tx: oneshot::Sender<Reply>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Counts connections; frames of an older one are ignored.
    generation: u64,
    writer: Option<mpsc::Sender<WsMessage>>,
    reader: Option<AbortHandle>,
    /// Set by 4001/4002: do not reconnect by ourselves.
    terminal: Option<(u16, String)>,
    /// A draining server asked us to reconnect no earlier than this (Reconnect frame).
    reconnect_at: Option<tokio::time::Instant>,
}

#[derive(Debug, Default)]
struct AckState {
    wanted: HashMap<String, u64>,
    sent: HashMap<String, u64>,
}

/// Input of the dispatcher.
#[derive(Debug)]
struct FromReader {
    generation: u64,
    incoming: Incoming,
}

/// Why one attempt failed.
enum Attempt {
    /// Retrying may help (timeout, dropped connection, server down).
    Retry(ClientError),
    Fatal(ClientError),
}

#[derive(Debug)]
struct Shared {
    ws_url: String,
    /// Which URL (0 = `ws_url`, then `opts.alternate_urls`) the next connect tries.
    url_index: AtomicUsize,
    token: Mutex<String>,
    opts: ClientOptions,
    next_id: Arc<AtomicU64>,
    pending: Mutex<HashMap<u64, Pending>>,
    slot: Mutex<Slot>,
    connect_lock: tokio::sync::Mutex<()>,
    inbox: Mutex<Inbox>,
    acks: Mutex<AckState>,
    ack_notify: Notify,
    incoming: mpsc::Sender<FromReader>,
    events: mpsc::Sender<Queued>,
    /// This device's presence subscriptions, renewed by `presence_renewer`.
    presence: Mutex<Subscriptions>,
    /// Held by whoever sends PresenceSubscribe frames, so a renewal cannot revive a
    /// subscription an unsubscribe is ending.
    presence_ops: tokio::sync::Mutex<()>,
    /// Wakes `presence_renewer` when the renewal time may have moved.
    presence_notify: Notify,
    gap_sync_running: AtomicBool,
    shut: AtomicBool,
    welcome: Mutex<v1::Welcome>,
    counters: Counters,
}

/// Locks a std mutex, recovering from poisoning (no invariant spans a panic here: every
/// critical section is a few map operations).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers after which the same request is tried again (after a backoff). RATE_LIMITED
/// too: a refused Send was not stored, and sending it again later with the same
/// `client_msg_id` is how it gets stored, once.
fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited
    )
}

fn disconnected(reason: &str) -> ClientError {
    ClientError::Connection(ConnectionError::Closed {
        code: ABNORMAL_CLOSE,
        reason: reason.into(),
    })
}

/// A random `client_msg_id`: 128 bits as 32 hex digits.
/// A reply of the wrong kind for the request.
fn unexpected(body: SBody) -> ClientError {
    ClientError::UnexpectedReply(format!("{body:?}"))
}

pub fn new_client_msg_id() -> String {
    let v: u128 = rand::rng().random();
    format!("{v:032x}")
}

/// Ids in order of first appearance, once each.
fn dedup(users: &[UserId]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    users
        .iter()
        .map(|u| u.get())
        .filter(|u| seen.insert(*u))
        .collect()
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(25))
    }

    /// The next delay: doubling up to 1 s, with jitter so clients spread out.
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        d.mul_f64(rand::rng().random_range(0.5..1.5))
    }
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn encode(&self, frame: &ClientFrame) -> WsMessage {
        connection::encode(self.opts.format, frame)
    }

    /// The live connection's writer, or `None`; `Err` if closed for good.
    fn current(&self) -> Result<Option<(u64, mpsc::Sender<WsMessage>)>, Attempt> {
        let slot = lock(&self.slot);
        if let Some((code, reason)) = &slot.terminal {
            return Err(Attempt::Fatal(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            }));
        }
        Ok(slot.writer.clone().map(|w| (slot.generation, w)))
    }

    fn mark_dead(&self, generation: u64) {
        let mut slot = lock(&self.slot);
        if slot.generation == generation {
            slot.writer = None;
        }
    }

    fn fail_pending(&self, pred: impl Fn(&Pending) -> bool) {
        let failed: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| pred(p))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        for p in failed {
            let _ = p.tx.send(Reply::Disconnected);
        }
    }

    /// Makes `conn` the live connection: starts its reader and writer, retires the old one.
    fn install(self: &Arc<Self>, conn: Connection, welcome: v1::Welcome, first: bool) {
        let (sink, stream) = conn.into_inner().split();
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        let ping_every = (welcome.idle_timeout_s > 0)
            .then(|| Duration::from_secs(u64::from(welcome.idle_timeout_s)).div_f64(3.0));
        tokio::spawn(writer_task(
            sink,
            wrx,
            ping_every,
            self.next_id.clone(),
            self.opts.format,
        ));
        let (old_writer, old_reader, generation) = {
            let mut slot = lock(&self.slot);
            slot.generation += 1;
            let generation = slot.generation;
            let reader = tokio::spawn(reader_task(
                stream,
                generation,
                self.opts.format,
                self.incoming.clone(),
            ));
            slot.terminal = None;
            (
                slot.writer.replace(wtx),
                slot.reader.replace(reader.abort_handle()),
                generation,
            )
        };
        if let Some(r) = old_reader {
            r.abort();
        }
        // Dropping the old writer's queue makes its task send a close frame.
        drop(old_writer);
        lock(&self.inbox).set_device(welcome.device_id);
        *lock(&self.welcome) = welcome.clone();
        self.fail_pending(|p| p.generation < generation);
        // Receipts written on the old connection may be lost with it: send them again.
        lock(&self.acks).sent.clear();
        self.ack_notify.notify_one();
        if !first {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .events
                .try_send(Queued::Event(Event::Reconnected(welcome)));
            // The new connection's server may know none of our presence subscriptions.
            lock(&self.presence).renew_now(Instant::now());
            self.presence_notify.notify_one();
        }
    }

    async fn open_connection(self: &Arc<Self>) -> Result<(), ConnectionError> {
        let token = lock(&self.token).clone();
        let count = 1 + self.opts.alternate_urls.len();
        let i = self.url_index.load(Ordering::Relaxed) % count;
        let url = match i {
            0 => &self.ws_url,
            n => &self.opts.alternate_urls[n - 1],
        };
        let (conn, welcome) = match Connection::connect(url, &token, self.opts.format).await {
            Ok(c) => c,
            Err(e) => {
                // A refused token is refused everywhere; anything else may be this node.
                if !matches!(
                    e,
                    ConnectionError::Rejected {
                        status: 401 | 403,
                        ..
                    }
                ) {
                    self.url_index.store((i + 1) % count, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        if self.shut.load(Ordering::Relaxed) {
            return Err(ConnectionError::Closed {
                code: 1000,
                reason: "client shut down".into(),
            });
        }
        self.install(conn, welcome, false);
        Ok(())
    }

    /// The live connection, connecting first if there is none.
    async fn ensure_connected(self: &Arc<Self>) -> Result<(u64, mpsc::Sender<WsMessage>), Attempt> {
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        let guard = self.connect_lock.lock().await;
        if let Some(c) = self.current()? {
            return Ok(c);
        }
        if self.shut.load(Ordering::Relaxed) {
            return Err(Attempt::Fatal(ClientError::Shutdown));
        }
        // A draining server's hint: wait out our share of its spread (holding the lock,
        // so every caller waits for the one reconnect).
        let hint = lock(&self.slot).reconnect_at.take();
        if let Some(at) = hint {
            tokio::time::sleep_until(at).await;
        }
        self.open_connection().await.map_err(|e| match e {
            ConnectionError::Rejected {
                status: 401 | 403, ..
            }
            | ConnectionError::Request(_) => Attempt::Fatal(ClientError::Connection(e)),
            e => Attempt::Retry(ClientError::Connection(e)),
        })?;
        drop(guard);
        // Catch up on what was missed while disconnected, without holding up the caller.
        self.spawn_resync();
        self.current()?
            .ok_or_else(|| Attempt::Retry(disconnected("connection dropped")))
    }

    /// Syncs in the background. (A plain fn: spawning from inside `ensure_connected`
    /// would make its future's `Send`-ness depend on itself.)
    fn spawn_resync(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.sync(false).await {
                tracing::debug!(error = %e, "sync after reconnecting failed");
            }
        });
    }

    /// One request and its reply.
    async fn attempt(
        self: &Arc<Self>,
        body: CBody,
        kind: PendingKind,
        timeout: Duration,
        may_connect: bool,
    ) -> Result<SBody, Attempt> {
        let (generation, writer) = if may_connect {
            self.ensure_connected().await?
        } else {
            self.current()?
                .ok_or_else(|| Attempt::Fatal(disconnected("not connected")))?
        };
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            id,
            Pending {
                generation,
                kind,
                tx,
            },
        );
        let msg = self.encode(&ClientFrame {
            id,
            body: Some(body),
        });
        if writer.send(msg).await.is_err() {
            lock(&self.pending).remove(&id);
            self.mark_dead(generation);
            return Err(Attempt::Retry(disconnected("connection dropped")));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Reply::Frame(body))) => Ok(body),
            Ok(Ok(Reply::Disconnected)) | Ok(Err(_)) => {
                Err(Attempt::Retry(disconnected("connection dropped")))
            }
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(Attempt::Retry(ClientError::Timeout(timeout)))
            }
        }
    }

    /// Repeats a request until it gets a final answer or `deadline` passes. `make` builds
    /// the request afresh for each attempt.
    async fn request_until(
        self: &Arc<Self>,
        deadline: Instant,
        attempt_timeout: Duration,
        may_connect: bool,
        make: impl Fn() -> (CBody, PendingKind),
    ) -> Result<SBody, ClientError> {
        let mut backoff = Backoff::new();
        let mut last: Option<ClientError> = None;
        loop {
            if self.shut.load(Ordering::Relaxed) {
                return Err(ClientError::Shutdown);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last.unwrap_or(ClientError::Timeout(attempt_timeout)));
            }
            let (body, kind) = make();
            match self
                .attempt(body, kind, left.min(attempt_timeout), may_connect)
                .await
            {
                Ok(SBody::Error(e)) if retryable(error_code(e.code)) => {
                    last = Some(ClientError::from_frame(&e));
                }
                Ok(body) => return Ok(body),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => last = Some(e),
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.next().min(left)).await;
        }
    }

    async fn sync(self: &Arc<Self>, may_connect: bool) -> Result<v1::SyncDone, ClientError> {
        let deadline = Instant::now() + self.opts.sync_timeout;
        let body = self
            .request_until(deadline, self.opts.sync_timeout, may_connect, || {
                let cursors = lock(&self.inbox).cursors();
                (CBody::Sync(v1::Sync { cursors }), PendingKind::Other)
            })
            .await?;
        match body {
            SBody::SyncDone(d) => Ok(d),
            SBody::Error(e) => Err(ClientError::from_frame(&e)),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a frame that gets no reply unless it fails.
    async fn fire(self: &Arc<Self>, body: CBody) -> Result<(), ClientError> {
        let (generation, writer) = self.ensure_connected().await.map_err(|e| match e {
            Attempt::Retry(e) | Attempt::Fatal(e) => e,
        })?;
        let msg = self.encode(&ClientFrame {
            id: self.next_id(),
            body: Some(body),
        });
        if writer.send(msg).await.is_err() {
            self.mark_dead(generation);
            return Err(disconnected("connection dropped"));
        }
        Ok(())
    }

    /// One PresenceSubscribe frame (at most [`presence::MAX_PER_FRAME`] ids) and its
    /// snapshot, retried within `request_timeout` while the server is unreachable.
    async fn presence_frame(
        self: &Arc<Self>,
        user_ids: &[u64],
        unsubscribe: bool,
        may_connect: bool,
    ) -> Result<v1::PresenceSnapshot, ClientError> {
        let timeout = self.opts.request_timeout;
        let body = self
            .request_until(Instant::now() + timeout, timeout, may_connect, || {
                (
                    CBody::PresenceSubscribe(v1::PresenceSubscribe {
                        user_ids: user_ids.to_vec(),
                        unsubscribe,
                    }),
                    PendingKind::Other,
                )
            })
            .await?;
        match body {
            SBody::PresenceSnapshot(s) => Ok(*s),
            SBody::Error(e) => Err(ClientError::from_frame(&e)),
            other => Err(unexpected(other)),
        }
    }

    /// Renews every presence subscription of this device, frame by frame; presence that
    /// changed since it was last seen becomes events. Callers hold `presence_ops`.
    async fn renew_presence(self: &Arc<Self>) -> Result<(), ClientError> {
        let frames = lock(&self.presence).renewal_frames();
        let mut ttl_s = 0;
        for ids in frames {
            let snapshot = self.presence_frame(&ids, false, false).await?;
            ttl_s = snapshot.subscription_ttl_s;
            let changed: Vec<v1::UserPresence> = {
                let mut subs = lock(&self.presence);
                snapshot
                    .users
                    .into_iter()
                    .filter(|p| subs.observe(p))
                    .collect()
            };
            for p in changed {
                self.try_emit(Event::Presence(p));
            }
        }
        lock(&self.presence).renewed(ttl_s, Instant::now());
        Ok(())
    }

    fn want_ack(&self, conversation: &str, seq: u64) {
        {
            let mut acks = lock(&self.acks);
            let w = acks.wanted.entry(conversation.to_owned()).or_insert(0);
            if seq <= *w {
                return;
            }
            *w = seq;
        }
        self.ack_notify.notify_one();
    }

    fn take_pending(&self, id: u64) -> Option<Pending> {
        if id == 0 {
            return None;
        }
        lock(&self.pending).remove(&id)
    }

    /// Hands a reply to its waiting request; false if nobody waits for `id`.
    fn complete(&self, id: u64, body: SBody) -> bool {
        match self.take_pending(id) {
            Some(p) => {
                let _ = p.tx.send(Reply::Frame(body));
                true
            }
            None => false,
        }
    }

    /// Puts messages through the inbox and queues what comes out. Returns whether a gap
    /// is now open.
    async fn deliver(&self, messages: Vec<v1::Message>, origin: Origin) -> bool {
        let mut out = Vec::new();
        let gap = {
            let mut inbox = lock(&self.inbox);
            for m in messages {
                inbox.accept(m, origin, &mut out);
            }
            inbox.has_gaps()
        };
        self.emit_messages(out).await;
        gap
    }

    async fn emit_messages(&self, out: Vec<v1::Message>) {
        for q in queue_messages(out) {
            if self.events.send(q).await.is_err() {
                return;
            }
        }
    }

    fn try_emit(&self, event: Event) {
        if let Err(e) = self.events.try_send(Queued::Event(event)) {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "event queue full: dropped a receipt, typing or error event");
        }
    }

    /// Handles one server frame; returns whether a gap is open.
    async fn on_frame(self: &Arc<Self>, frame: ServerFrame) -> bool {
        let id = frame.id;
        let Some(body) = frame.body else {
            return false;
        };
        match body {
            SBody::Message(m) => return self.deliver(vec![m], Origin::Live).await,
            SBody::SyncBatch(b) => return self.deliver(b.messages, Origin::Sync).await,
            SBody::SyncDone(d) => {
                let mut out = Vec::new();
                let gap = {
                    let mut inbox = lock(&self.inbox);
                    inbox.apply_heads(&d.heads, &mut out);
                    inbox.has_gaps()
                };
                self.emit_messages(out).await;
                self.complete(id, SBody::SyncDone(d));
                return gap;
            }
            SBody::Ack(ack) => {
                let Some(p) = self.take_pending(id) else {
                    tracing::debug!(id, "an Ack nobody waits for");
                    return false;
                };
                let mut gap = false;
                if let PendingKind::Send(s) = &p.kind {
                    let (user, device) = {
                        let w = lock(&self.welcome);
                        (w.user_id, w.device_id)
                    };
                    let own = v1::Message {
                        conversation_id: ack.conversation_id.clone(),
                        seq: ack.seq,
                        message_id: ack.message_id,
                        sender_user: user,
                        sender_device: device,
                        client_msg_id: ack.client_msg_id.clone(),
                        kind: s.kind,
                        body: s.body.clone(),
                        reply_to_seq: s.reply_to_seq,
                        // What was sent (id, caption...): the stored message has it all.
                        media: s.media.clone(),
                        created_at_ms: ack.created_at_ms,
                        ..Default::default()
                    };
                    gap = self.deliver(vec![own], Origin::Live).await;
                }
                let _ = p.tx.send(Reply::Frame(SBody::Ack(ack)));
                return gap;
            }
            SBody::Receipt(r) => self.try_emit(Event::Receipt(r)),
            SBody::Typing(t) => self.try_emit(Event::Typing(t)),
            SBody::JoinRequested(j) => self.try_emit(Event::JoinRequested(j)),
            SBody::Presence(p) => {
                lock(&self.presence).observe(&p);
                self.try_emit(Event::Presence(p));
            }
            SBody::CallEvent(e) => {
                // Not dropped when the queue is full, like messages: a lost "ringing" or
                // "ended" would leave the application in the wrong state.
                let _ = self.events.send(Queued::Event(Event::Call(e))).await;
            }
            SBody::MessageDeleted(d) => {
                // A message still waiting past a gap comes out deleted, like the stored one.
                lock(&self.inbox).mark_deleted(&d.conversation_id, d.seq);
                // Not dropped either: a lost deletion would leave the content on screen.
                let event = Event::MessageDeleted {
                    conversation_id: d.conversation_id,
                    seq: d.seq,
                };
                let _ = self.events.send(Queued::Event(event)).await;
            }
            SBody::Announcement(a) => {
                let event = Event::Announcement {
                    id: a.id,
                    text: a.text,
                    created_at_ms: a.created_at_ms,
                };
                let _ = self.events.send(Queued::Event(event)).await;
            }
            SBody::Reconnect(r) => {
                // Bounded: a confused server cannot keep us away for long.
                let wait = Duration::from_millis(u64::from(r.after_ms)).min(MAX_RECONNECT_HINT);
                lock(&self.slot).reconnect_at = Some(tokio::time::Instant::now() + wait);
                self.try_emit(Event::Reconnecting {
                    reason: r.reason,
                    after_ms: r.after_ms,
                });
            }
            SBody::Welcome(_) => {}
            SBody::Error(e) => {
                if !self.complete(id, SBody::Error(e.clone())) {
                    self.try_emit(Event::Error { id, error: e });
                }
            }
            other @ (SBody::HistoryPage(_)
            | SBody::Pong(_)
            | SBody::GroupResult(_)
            | SBody::CallResult(_)
            | SBody::ReadByResult(_)
            | SBody::PeopleResult(_)
            | SBody::PresenceSnapshot(_)) => {
                if !self.complete(id, other) {
                    tracing::trace!(id, "a reply nobody waits for");
                }
            }
        }
        false
    }

    async fn on_closed(self: &Arc<Self>, generation: u64, code: u16, reason: String) {
        let terminal = {
            let mut slot = lock(&self.slot);
            if slot.generation != generation {
                return;
            }
            slot.writer = None;
            slot.reader = None;
            // Logged out, replaced, or the account disabled by an administrator: a
            // reconnect would be refused (or fight the newer connection).
            if matches!(
                code,
                close_code::REVOKED | close_code::REPLACED | close_code::ACCOUNT_DISABLED
            ) {
                slot.terminal = Some((code, reason.clone()));
            }
            slot.terminal.is_some()
        };
        self.fail_pending(|p| p.generation <= generation);
        let _ = self
            .events
            .send(Queued::Event(Event::Closed { code, reason }))
            .await;
        if self.opts.auto_reconnect && !terminal {
            let me = self.clone();
            tokio::spawn(async move { me.reconnect_loop().await });
        }
    }

    async fn reconnect_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            if self.shut.load(Ordering::Relaxed) {
                return;
            }
            match self.ensure_connected().await {
                Ok(_) => return,
                Err(Attempt::Fatal(e)) => {
                    tracing::warn!(error = %e, "not reconnecting");
                    return;
                }
                Err(Attempt::Retry(e)) => {
                    tracing::debug!(error = %e, "reconnect failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }
}

async fn writer_task(
    mut sink: SplitSink<WsStream, WsMessage>,
    mut rx: mpsc::Receiver<WsMessage>,
    ping_every: Option<Duration>,
    next_id: Arc<AtomicU64>,
    format: WireFormat,
) {
    let period = ping_every.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    let mut last_write = Instant::now();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    let _ = sink.close().await;
                    return;
                };
                if sink.feed(msg).await.is_err() {
                    return;
                }
                // Batch whatever else is queued into one flush.
                while let Ok(msg) = rx.try_recv() {
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                last_write = Instant::now();
            }
            _ = ticker.tick(), if ping_every.is_some() => {
                if last_write.elapsed() >= period {
                    let ping = ClientFrame {
                        id: next_id.fetch_add(1, Ordering::Relaxed),
                        body: Some(CBody::Ping(v1::Ping { client_time_ms: natter_proto::now_ms() })),
                    };
                    if sink.send(connection::encode(format, &ping)).await.is_err() {
                        return;
                    }
                    last_write = Instant::now();
                }
            }
        }
    }
}

async fn reader_task(
    mut stream: SplitStream<WsStream>,
    generation: u64,
    format: WireFormat,
    incoming: mpsc::Sender<FromReader>,
) {
    loop {
        let item = match stream.next().await {
            Some(Ok(msg)) => match connection::decode(format, msg) {
                Ok(Incoming::Nothing) => continue,
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e, "dropped an undecodable server frame");
                    continue;
                }
            },
            Some(Err(e)) => closed(connection::ended(Some(e))),
            None => closed(connection::ended(None)),
        };
        let last = matches!(item, Incoming::Closed { .. });
        let sent = incoming
            .send(FromReader {
                generation,
                incoming: item,
            })
            .await;
        if last || sent.is_err() {
            return;
        }
    }
}

fn closed(e: ConnectionError) -> Incoming {
    match e {
        ConnectionError::Closed { code, reason } => Incoming::Closed { code, reason },
        other => Incoming::Closed {
            code: ABNORMAL_CLOSE,
            reason: other.to_string(),
        },
    }
}

async fn dispatcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<FromReader>) {
    let delay = shared.opts.gap_fill_delay;
    let mut gap_timer: Option<Instant> = None;
    loop {
        let timer = async {
            match gap_timer {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let gap = tokio::select! {
            input = rx.recv() => {
                let Some(FromReader { generation, incoming }) = input else { return };
                match incoming {
                    Incoming::Frame(f) => shared.on_frame(f).await,
                    Incoming::Closed { code, reason } => {
                        shared.on_closed(generation, code, reason).await;
                        false
                    }
                    Incoming::Nothing => false,
                }
            }
            _ = timer => {
                gap_timer = None;
                if lock(&shared.inbox).has_gaps() {
                    if !shared.gap_sync_running.swap(true, Ordering::AcqRel) {
                        shared.counters.gap_syncs.fetch_add(1, Ordering::Relaxed);
                        let me = shared.clone();
                        tokio::spawn(async move {
                            if let Err(e) = me.sync(false).await {
                                tracing::debug!(error = %e, "gap-filling sync failed");
                            }
                            me.gap_sync_running.store(false, Ordering::Release);
                        });
                    }
                    // Check again later: the sync may not close every gap.
                    true
                } else {
                    false
                }
            }
        };
        if gap && gap_timer.is_none() {
            gap_timer = Some(Instant::now() + delay);
        }
    }
}

/// Renews this device's presence subscriptions when they are due: every
/// `subscription_ttl_s / 2`, and at once after a reconnect. Renewals never open a
/// connection themselves; a failed one is tried again a few seconds later.
async fn presence_renewer(shared: Arc<Shared>) {
    loop {
        let next = lock(&shared.presence).next_renewal();
        tokio::select! {
            () = shared.presence_notify.notified() => continue,
            () = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let _ops = shared.presence_ops.lock().await;
        if !lock(&shared.presence).due(Instant::now()) {
            continue;
        }
        if let Err(e) = shared.renew_presence().await {
            tracing::debug!(error = %e, "renewing presence subscriptions failed");
            lock(&shared.presence).renewal_failed(Instant::now());
        }
    }
}

async fn acker(shared: Arc<Shared>) {
    loop {
        shared.ack_notify.notified().await;
        let todo: Vec<(String, u64)> = {
            let acks = lock(&shared.acks);
            acks.wanted
                .iter()
                .filter(|(c, w)| acks.sent.get(*c).is_none_or(|s| s < *w))
                .map(|(c, w)| (c.clone(), *w))
                .collect()
        };
        for (conversation_id, up_to_seq) in todo {
            let Ok(Some((_, writer))) = shared.current() else {
                break;
            };
            let msg = shared.encode(&ClientFrame {
                id: shared.next_id(),
                body: Some(CBody::Received(v1::Received {
                    conversation_id: conversation_id.clone(),
                    up_to_seq,
                })),
            });
            if writer.send(msg).await.is_err() {
                break;
            }
            let mut acks = lock(&shared.acks);
            let s = acks.sent.entry(conversation_id).or_insert(0);
            *s = (*s).max(up_to_seq);
        }
    }
}

/// One device of a user, connected. All methods take `&self`: share it with an `Arc`
/// to send from several tasks while another one calls [`Client::recv`].
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    /// Connects the device of `access_token` to `ws_url` (e.g. `ws://host/v1/ws`).
    pub async fn connect(
        ws_url: &str,
        access_token: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let (conn, welcome) = Connection::connect(ws_url, access_token, options.format).await?;
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(16));
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let mut inbox = Inbox::new(
            welcome.device_id,
            options.yield_own,
            options.max_buffered_per_conversation,
        );
        let mut ignored = Vec::new();
        for (conversation, seq) in &options.initial_cursors {
            inbox.set_cursor(conversation.as_str(), seq.get(), &mut ignored);
        }
        let shared = Arc::new(Shared {
            ws_url: ws_url.to_owned(),
            url_index: AtomicUsize::new(0),
            token: Mutex::new(access_token.to_owned()),
            opts: options,
            next_id: Arc::new(AtomicU64::new(1)),
            pending: Mutex::new(HashMap::new()),
            slot: Mutex::new(Slot::default()),
            connect_lock: tokio::sync::Mutex::new(()),
            inbox: Mutex::new(inbox),
            acks: Mutex::new(AckState::default()),
            ack_notify: Notify::new(),
            incoming: incoming_tx,
            events: events_tx,
            presence: Mutex::new(Subscriptions::default()),
            presence_ops: tokio::sync::Mutex::new(()),
            presence_notify: Notify::new(),
            gap_sync_running: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            welcome: Mutex::new(welcome.clone()),
            counters: Counters::default(),
        });
        let tasks = vec![
            tokio::spawn(dispatcher(shared.clone(), incoming_rx)),
            tokio::spawn(acker(shared.clone())),
            tokio::spawn(presence_renewer(shared.clone())),
        ];
        shared.install(conn, welcome, true);
        Ok(Client {
            shared,
            events: tokio::sync::Mutex::new(events_rx),
            tasks,
        })
    }

    /// The Welcome of the current connection.
    pub fn welcome(&self) -> v1::Welcome {
        lock(&self.shared.welcome).clone()
    }

    pub fn user_id(&self) -> UserId {
        UserId(lock(&self.shared.welcome).user_id)
    }

    pub fn device_id(&self) -> DeviceId {
        DeviceId(lock(&self.shared.welcome).device_id)
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.shared.current(), Ok(Some(_)))
    }

    /// Uses `token` for the next connections (after a refresh).
    pub fn set_access_token(&self, token: &str) {
        *lock(&self.shared.token) = token.to_owned();
    }

    /// The next event; `None` only once the client is shut down.
    pub async fn recv(&self) -> Option<Event> {
        let mut events = self.events.lock().await;
        loop {
            let q = events.recv().await?;
            if let Some(ev) = self.take(q) {
                return Some(ev);
            }
        }
    }

    /// The next event, or `None` if none arrives within `timeout`.
    pub async fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .ok()
            .flatten()
    }

    /// An event if one is queued.
    pub fn try_recv(&self) -> Option<Event> {
        let mut events = self.events.try_lock().ok()?;
        loop {
            let q = events.try_recv().ok()?;
            if let Some(ev) = self.take(q) {
                return Some(ev);
            }
        }
    }

    /// Acks what the application takes (and withheld messages it passes), and unwraps
    /// the event, if any.
    fn take(&self, q: Queued) -> Option<Event> {
        let auto_ack = self.shared.opts.auto_ack;
        match q {
            Queued::Event(ev) => {
                if let Event::Message(m) = &ev
                    && auto_ack
                {
                    self.shared.want_ack(&m.conversation_id, m.seq);
                }
                Some(ev)
            }
            Queued::Skip {
                conversation_id,
                seq,
            } => {
                if auto_ack {
                    self.shared.want_ack(&conversation_id, seq);
                }
                None
            }
        }
    }

    /// Sends a text message.
    pub async fn send_text(
        &self,
        target: impl Into<Target>,
        text: &str,
    ) -> Result<v1::Ack, ClientError> {
        self.send(
            target,
            MessageKind::Text,
            Bytes::copy_from_slice(text.as_bytes()),
            None,
        )
        .await
    }

    /// Sends a media message (`MESSAGE_KIND_MEDIA`) for an uploaded media (see
    /// [`crate::HttpClient::upload_media`] and [`crate::MediaInfo::media_ref`]). Only what
    /// a sender may set travels: `id`, `caption`, `filename`, `voice` and the
    /// `forwarded_from_*` of a forward; the server fills in the rest from the upload.
    /// Refused with `MEDIA_REFUSED` (or `NOT_FOUND`) for media the sender may not share.
    pub async fn send_media(
        &self,
        target: impl Into<Target>,
        media: v1::MediaRef,
    ) -> Result<v1::Ack, ClientError> {
        if media.id.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a media message needs a media id".into(),
            ));
        }
        if media.caption.len() > MAX_CAPTION_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "caption is longer than {MAX_CAPTION_BYTES} bytes"
            )));
        }
        if media.filename.len() > MAX_FILENAME_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "filename is longer than {MAX_FILENAME_BYTES} bytes"
            )));
        }
        let media = v1::MediaRef {
            id: media.id,
            caption: media.caption,
            filename: media.filename,
            voice: media.voice,
            forwarded_from_conversation: media.forwarded_from_conversation,
            forwarded_from_seq: media.forwarded_from_seq,
            ..Default::default()
        };
        let mut send = v1::Send {
            client_msg_id: new_client_msg_id(),
            kind: MessageKind::Media as i32,
            media: Some(Box::new(media)),
            ..Default::default()
        };
        match target.into() {
            Target::User(u) => send.to_user = u.get(),
            Target::Conversation(c) => send.conversation_id = c.into(),
        }
        self.send_frame(send).await
    }

    /// Sends a message and waits for its Ack. Retries with the same `client_msg_id`
    /// (random if `None`) on timeouts, UNAVAILABLE/INTERNAL errors, RATE_LIMITED (backing
    /// off) and dropped connections (reconnecting first) until acked or `send_deadline`
    /// passes, so the message is stored exactly once however often it is tried.
    pub async fn send(
        &self,
        target: impl Into<Target>,
        kind: MessageKind,
        body: impl Into<Bytes>,
        client_msg_id: Option<String>,
    ) -> Result<v1::Ack, ClientError> {
        let mut send = v1::Send {
            client_msg_id: client_msg_id.unwrap_or_else(new_client_msg_id),
            kind: kind as i32,
            body: body.into(),
            ..Default::default()
        };
        match target.into() {
            Target::User(u) => send.to_user = u.get(),
            Target::Conversation(c) => send.conversation_id = c.into(),
        }
        self.send_frame(send).await
    }

    /// Like [`Client::send`] with every field of the Send frame under the caller's control
    /// (e.g. `reply_to_seq`). An empty `client_msg_id` gets a random one.
    pub async fn send_frame(&self, mut send: v1::Send) -> Result<v1::Ack, ClientError> {
        if send.client_msg_id.is_empty() {
            send.client_msg_id = new_client_msg_id();
        }
        if send.client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "client_msg_id is longer than {MAX_CLIENT_MSG_ID_BYTES} bytes"
            )));
        }
        if send.body.len() > MAX_BODY_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "body is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        let o = &self.shared.opts;
        let deadline = Instant::now() + o.send_deadline;
        let body = self
            .shared
            .request_until(deadline, o.request_timeout, true, || {
                (CBody::Send(send.clone()), PendingKind::Send(send.clone()))
            })
            .await?;
        match body {
            SBody::Ack(a) => Ok(a),
            SBody::Error(e) => Err(ClientError::from_frame(&e)),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the server (and so the senders) this device has everything up to `up_to`.
    pub async fn received(
        &self,
        conversation: &ConversationId,
        up_to: Seq,
    ) -> Result<(), ClientError> {
        self.shared
            .fire(CBody::Received(v1::Received {
                conversation_id: conversation.to_string(),
                up_to_seq: up_to.get(),
            }))
            .await
    }

    /// Marks everything up to `up_to` as read by the user.
    pub async fn read(&self, conversation: &ConversationId, up_to: Seq) -> Result<(), ClientError> {
        self.shared
            .fire(CBody::Read(v1::Read {
                conversation_id: conversation.to_string(),
                up_to_seq: up_to.get(),
            }))
            .await
    }

    /// Shows or clears the typing indicator (`ChatState::Typing`).
    pub async fn typing(&self, target: impl Into<Target>, active: bool) -> Result<(), ClientError> {
        self.chat_state(target, v1::ChatState::Typing, active).await
    }

    /// Shows or clears what the user is doing in a conversation: typing, or recording a
    /// voice note. Send `active` again every few seconds while it lasts (receivers drop
    /// it `TypingEvent.expires_in_ms` after the last one). Fire and forget: no answer is
    /// awaited; indicators sent too fast are dropped by the server, which says so with
    /// an Error frame (RATE_LIMITED) that arrives as [`Event::Error`].
    pub async fn chat_state(
        &self,
        target: impl Into<Target>,
        state: v1::ChatState,
        active: bool,
    ) -> Result<(), ClientError> {
        let mut t = v1::Typing {
            active,
            state: state as i32,
            ..Default::default()
        };
        match target.into() {
            Target::User(u) => t.to_user = u.get(),
            Target::Conversation(c) => t.conversation_id = c.into(),
        }
        self.shared.fire(CBody::Typing(t)).await
    }

    /// One page of history older than `before` (`Seq::ZERO`: the newest), oldest first.
    ///
    /// The page is as the server sent it: it may hold withheld placeholders
    /// (`Message.withheld`: sent while this user blocked the sender), which keep their
    /// seq so that paging by the oldest seq works, and which an application shows
    /// nothing for. [`Client::full_history`] leaves them out.
    pub async fn history(
        &self,
        conversation: &ConversationId,
        before: Seq,
        limit: u32,
    ) -> Result<v1::HistoryPage, ClientError> {
        let body = self
            .query(|| {
                CBody::History(v1::History {
                    conversation_id: conversation.to_string(),
                    before_seq: before.get(),
                    limit,
                })
            })
            .await?;
        match body {
            SBody::HistoryPage(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// One group operation (create, add members, remove, leave, set role, invite, join,
    /// get, list, ...). Retried like a send while the server is unreachable: every
    /// operation is safe to repeat except `create_invite`, which may then make two links.
    pub async fn group(&self, op: v1::group_request::Op) -> Result<v1::GroupResult, ClientError> {
        let body = self
            .query(|| {
                CBody::Group(Box::new(v1::GroupRequest {
                    op: Some(op.clone()),
                }))
            })
            .await?;
        match body {
            SBody::GroupResult(r) => Ok(*r),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a group named `name` with `members` (and this user as owner).
    pub async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
    ) -> Result<v1::GroupInfo, ClientError> {
        let result = self
            .group(v1::group_request::Op::Create(v1::GroupCreate {
                create_id: new_client_msg_id(),
                name: name.to_owned(),
                members: members.iter().map(|u| u.get()).collect(),
                ..Default::default()
            }))
            .await?;
        result
            .group
            .ok_or_else(|| ClientError::UnexpectedReply("a created group without its info".into()))
    }

    /// Who has received and read message `seq` of a conversation.
    pub async fn read_by(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<v1::ReadByResult, ClientError> {
        let body = self
            .query(|| {
                CBody::ReadBy(v1::ReadBy {
                    conversation_id: conversation.to_string(),
                    seq: seq.get(),
                })
            })
            .await?;
        match body {
            SBody::ReadByResult(r) => Ok(*r),
            other => Err(unexpected(other)),
        }
    }

    /// One people operation: profiles, privacy settings, contacts, blocks and status
    /// updates. Retried like [`Client::group`] while the server is unreachable; every
    /// operation is safe to repeat (`StatusPost` by its `post_id`, which
    /// [`Client::post_status`] chooses once per call).
    pub async fn people(
        &self,
        op: v1::people_request::Op,
    ) -> Result<v1::PeopleResult, ClientError> {
        let body = self
            .query(|| {
                CBody::People(Box::new(v1::PeopleRequest {
                    op: Some(op.clone()),
                }))
            })
            .await?;
        match body {
            SBody::PeopleResult(r) => Ok(*r),
            other => Err(unexpected(other)),
        }
    }

    /// A user's profile as this user may see it (`None`: no such user).
    pub async fn profile(&self, user: UserId) -> Result<Option<v1::Profile>, ClientError> {
        let r = self
            .people(v1::people_request::Op::ProfileGet(v1::ProfileGet {
                user_ids: vec![user.get()],
            }))
            .await?;
        Ok(r.profiles.into_iter().find(|p| p.user_id == user.get()))
    }

    /// This user's own profile, whole.
    pub async fn my_profile(&self) -> Result<v1::Profile, ClientError> {
        let r = self
            .people(v1::people_request::Op::ProfileGet(v1::ProfileGet::default()))
            .await?;
        r.profiles
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::UnexpectedReply("no profile in a ProfileGet answer".into()))
    }

    /// Looks a user up by username (`Err` with NOT_FOUND when there is none).
    pub async fn find_user(&self, username: &str) -> Result<v1::Profile, ClientError> {
        let r = self
            .people(v1::people_request::Op::Find(v1::UserFind {
                username: username.to_owned(),
            }))
            .await?;
        r.profiles
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::UnexpectedReply("no profile in a UserFind answer".into()))
    }

    /// Adds a user to this user's contacts by username (or renames the contact).
    /// `name`: this user's own name for them (empty: none).
    pub async fn add_contact_by_username(
        &self,
        username: &str,
        name: &str,
    ) -> Result<v1::Contact, ClientError> {
        let r = self
            .people(v1::people_request::Op::ContactAdd(v1::ContactAdd {
                username: username.to_owned(),
                name: name.to_owned(),
                ..Default::default()
            }))
            .await?;
        r.contact
            .ok_or_else(|| ClientError::UnexpectedReply("no contact in a ContactAdd answer".into()))
    }

    /// Blocks a user; returns the whole block list after.
    pub async fn block(&self, user: UserId) -> Result<Vec<UserId>, ClientError> {
        let r = self
            .people(v1::people_request::Op::Block(v1::Block {
                user_id: user.get(),
            }))
            .await?;
        Ok(r.blocked.into_iter().map(UserId).collect())
    }

    /// Unblocks a user; returns the whole block list after.
    pub async fn unblock(&self, user: UserId) -> Result<Vec<UserId>, ClientError> {
        let r = self
            .people(v1::people_request::Op::Unblock(v1::Unblock {
                user_id: user.get(),
            }))
            .await?;
        Ok(r.blocked.into_iter().map(UserId).collect())
    }

    /// Posts a text status update for this user's contacts (24 hours). Retries cannot
    /// post it twice: one `post_id` is chosen per call.
    pub async fn post_status(&self, text: &str) -> Result<v1::Status, ClientError> {
        let r = self
            .people(v1::people_request::Op::StatusPost(v1::StatusPost {
                post_id: new_client_msg_id(),
                text: text.to_owned(),
                ..Default::default()
            }))
            .await?;
        r.status
            .ok_or_else(|| ClientError::UnexpectedReply("no status in a StatusPost answer".into()))
    }

    /// Subscribes to the presence of `users` and returns what may be seen of it now (the
    /// answers of every frame merged; `subscription_ttl_s` of the last one). Changes then
    /// arrive as [`Event::Presence`]. The client remembers the subscriptions and renews
    /// them by itself every `subscription_ttl_s / 2` and right after every reconnect,
    /// until [`Client::unsubscribe_presence`]. Any number of users: they go in frames of
    /// at most 1,000 (the server allows 5,000 subscriptions per user at once and answers
    /// LIMIT_REACHED or INVALID_ARGUMENT past that). On an error, the frames answered
    /// before it stay subscribed.
    pub async fn subscribe_presence(
        &self,
        users: &[UserId],
    ) -> Result<v1::PresenceSnapshot, ClientError> {
        let ids = dedup(users);
        let mut merged = v1::PresenceSnapshot::default();
        if ids.is_empty() {
            return Ok(merged);
        }
        let _ops = self.shared.presence_ops.lock().await;
        for chunk in presence::chunks(&ids) {
            let snapshot = self.shared.presence_frame(chunk, false, true).await?;
            {
                let mut subs = lock(&self.shared.presence);
                subs.subscribed(chunk, snapshot.subscription_ttl_s, Instant::now());
                for p in &snapshot.users {
                    subs.observe(p);
                }
            }
            merged.subscription_ttl_s = snapshot.subscription_ttl_s;
            merged.users.extend(snapshot.users);
        }
        self.shared.presence_notify.notify_one();
        Ok(merged)
    }

    /// Ends presence subscriptions (this device stops renewing them at once, even when
    /// the server cannot be told; they then run out by themselves).
    pub async fn unsubscribe_presence(&self, users: &[UserId]) -> Result<(), ClientError> {
        let ids = dedup(users);
        if ids.is_empty() {
            return Ok(());
        }
        let _ops = self.shared.presence_ops.lock().await;
        lock(&self.shared.presence).remove(&ids);
        self.shared.presence_notify.notify_one();
        for chunk in presence::chunks(&ids) {
            self.shared.presence_frame(chunk, true, true).await?;
        }
        Ok(())
    }

    /// The users whose presence this device subscribed to (and renews).
    pub fn presence_subscriptions(&self) -> Vec<UserId> {
        lock(&self.shared.presence)
            .users()
            .into_iter()
            .map(UserId)
            .collect()
    }

    /// Every message of a conversation, oldest first, paging through history. Withheld
    /// placeholders are left out.
    pub async fn full_history(
        &self,
        conversation: &ConversationId,
        page: u32,
    ) -> Result<Vec<v1::Message>, ClientError> {
        let mut all = Vec::new();
        let mut before = Seq::ZERO;
        loop {
            let p = self.history(conversation, before, page).await?;
            let oldest = p.messages.first().map(|m| m.seq);
            all.splice(0..0, p.messages.into_iter().filter(|m| !m.withheld));
            match oldest {
                Some(s) if p.more && s > 1 => before = Seq(s),
                _ => return Ok(all),
            }
        }
    }

    /// Asks for everything newer than this device's cursors. Resolves at SyncDone, when
    /// every synced message has been queued as an event (so read events concurrently if
    /// more than `event_capacity` may arrive).
    pub async fn sync(&self) -> Result<v1::SyncDone, ClientError> {
        self.shared.sync(true).await
    }

    /// A new connection with the same token (the old one is closed), then a sync.
    pub async fn reconnect(&self) -> Result<v1::SyncDone, ClientError> {
        {
            let _guard = self.shared.connect_lock.lock().await;
            self.shared.open_connection().await?;
        }
        self.sync().await
    }

    /// Round trip time of a Ping.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let body = self
            .query(|| {
                CBody::Ping(v1::Ping {
                    client_time_ms: natter_proto::now_ms(),
                })
            })
            .await?;
        match body {
            SBody::Pong(_) => Ok(started.elapsed()),
            other => Err(unexpected(other)),
        }
    }

    /// One request and its reply within `request_timeout`, retried like a send while the
    /// server is unreachable; an Error frame becomes `Err`.
    async fn query(&self, make: impl Fn() -> CBody) -> Result<SBody, ClientError> {
        let timeout = self.shared.opts.request_timeout;
        let body = self
            .shared
            .request_until(Instant::now() + timeout, timeout, true, || {
                (make(), PendingKind::Other)
            })
            .await?;
        match body {
            SBody::Error(e) => Err(ClientError::from_frame(&e)),
            other => Ok(other),
        }
    }

    /// One call operation (see the `call_*` helpers). Retried like [`Client::group`]
    /// while the server is unreachable: a start is idempotent by its `call_id`, an
    /// answer by the device, a repeated candidate is harmless.
    pub async fn call(&self, op: v1::call_request::Op) -> Result<v1::CallInfo, ClientError> {
        let body = self
            .query(|| {
                CBody::Call(Box::new(v1::CallRequest {
                    op: Some(op.clone()),
                }))
            })
            .await?;
        match body {
            SBody::CallResult(r) => r.call.ok_or_else(|| {
                ClientError::UnexpectedReply("a CallResult without its call".into())
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Places a call to `target` (a user: one-to-one, with the SDP `offer`; a group:
    /// no offer). Returns the call as it started (RINGING, or ENDED with BUSY when the
    /// callee is in another call). Its id is new and random.
    pub async fn start_call(
        &self,
        target: impl Into<Target>,
        media: v1::CallMedia,
        offer: Option<String>,
    ) -> Result<v1::CallInfo, ClientError> {
        let (conversation_id, to_user) = match target.into() {
            Target::User(u) => (String::new(), u.get()),
            Target::Conversation(c) => (c.as_str().to_owned(), 0),
        };
        self.call(v1::call_request::Op::Start(v1::CallStart {
            call_id: new_client_msg_id(),
            conversation_id,
            to_user,
            media: media as i32,
            offer: offer.map(|sdp| v1::SessionDescription {
                r#type: v1::SdpType::Offer as i32,
                sdp,
            }),
        }))
        .await
    }

    /// Answers a ringing call on this device (one-to-one: with the SDP answer; a group
    /// call: `None`, joining it).
    pub async fn answer_call(
        &self,
        call_id: &str,
        answer: Option<String>,
    ) -> Result<v1::CallInfo, ClientError> {
        self.call(v1::call_request::Op::Answer(v1::CallAnswer {
            call_id: call_id.to_owned(),
            answer: answer.map(|sdp| v1::SessionDescription {
                r#type: v1::SdpType::Answer as i32,
                sdp,
            }),
        }))
        .await
    }

    /// Declines a ringing call.
    pub async fn decline_call(&self, call_id: &str) -> Result<v1::CallInfo, ClientError> {
        self.call(v1::call_request::Op::Decline(v1::CallDecline {
            call_id: call_id.to_owned(),
        }))
        .await
    }

    /// Hangs up (cancels a call still ringing; leaves a group call).
    pub async fn hangup_call(&self, call_id: &str) -> Result<v1::CallInfo, ClientError> {
        self.call(v1::call_request::Op::Hangup(v1::CallHangup {
            call_id: call_id.to_owned(),
        }))
        .await
    }

    /// Sends SDP or an ICE candidate to another device in the call (`to_device` 0: the
    /// other side of a one-to-one call).
    pub async fn call_signal(
        &self,
        call_id: &str,
        to_device: u64,
        description: Option<v1::SessionDescription>,
        candidate: Option<v1::IceCandidate>,
    ) -> Result<v1::CallInfo, ClientError> {
        self.call(v1::call_request::Op::Signal(v1::CallSignal {
            call_id: call_id.to_owned(),
            to_device,
            description,
            candidate,
        }))
        .await
    }

    /// This device's position in a conversation (`None`: not known yet).
    pub fn cursor(&self, conversation: &ConversationId) -> Option<Seq> {
        lock(&self.shared.inbox)
            .cursor(conversation.as_str())
            .map(Seq)
    }

    /// What the client had to do so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        ClientStats {
            retries: c.retries.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            gap_syncs: c.gap_syncs.load(Ordering::Relaxed),
            events_dropped: c.events_dropped.load(Ordering::Relaxed),
        }
    }

    /// Every known position.
    pub fn cursors(&self) -> Vec<v1::Cursor> {
        lock(&self.shared.inbox).cursors()
    }

    /// Closes the connection and stops the background tasks.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.shut.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        let (writer, reader) = {
            let mut slot = lock(&self.shared.slot);
            slot.terminal = Some((1000, "client closed".into()));
            (slot.writer.take(), slot.reader.take())
        };
        if let Some(r) = reader {
            r.abort();
        }
        drop(writer);
        self.shared.fail_pending(|_| true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withheld_messages_are_queued_as_skips() {
        let m = |seq, withheld| v1::Message {
            conversation_id: "d.1.2".into(),
            seq,
            withheld,
            ..Default::default()
        };
        let q: Vec<Queued> = queue_messages(vec![m(1, false), m(2, true), m(3, false)]).collect();
        assert!(matches!(&q[0], Queued::Event(Event::Message(x)) if x.seq == 1));
        assert!(
            matches!(&q[1], Queued::Skip { conversation_id, seq: 2 } if conversation_id == "d.1.2")
        );
        assert!(matches!(&q[2], Queued::Event(Event::Message(x)) if x.seq == 3));
    }

    #[test]
    fn dedup_keeps_the_first_of_each() {
        assert_eq!(
            dedup(&[UserId(3), UserId(1), UserId(3), UserId(2)]),
            [3, 1, 2]
        );
        assert!(dedup(&[]).is_empty());
    }
}

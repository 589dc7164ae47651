//! The store role: one process owns the embedded [`crate::RedbStore`] and serves it on the
//! bus ([`serve`]); every messages instance reaches it through [`RemoteStore`], a
//! [`MessageStore`] that turns each call into bus requests on `Subject::store()`
//! (`natter.bus.v1.StoreRequest` / `StoreReply`).
//!
//! # When to use it
//!
//! In a cluster the messages instances must share one durable store. Production uses
//! ScyllaDB; where there is none (small clusters, the cluster tests) run one store role
//! and point the messages instances at it. `natter serve` does not need it: it hands the
//! `RedbStore` to the service directly.
//!
//! # Limits
//!
//! - **One instance.** The redb file is opened by one process; the store role is a single
//!   point of failure and its write throughput is that of one redb writer (requests run
//!   concurrently, up to [`MAX_IN_FLIGHT`], so appends from many partitions group-commit).
//!   The subscription is in the queue group [`QUEUE_GROUP`] so that a standby could be
//!   added later, but two live store roles on different files would split the data.
//! - **A network hop per call.** Each call is at least one request/reply on the bus. The
//!   messages service appends a whole partition batch with one call, so this costs a
//!   round trip per batch, not per message.
//! - **Payload size.** Every request and reply stays under NATS's default max payload
//!   ([`MAX_PAYLOAD_BYTES`], 1 MiB): items are packed up to [`PAYLOAD_BUDGET`].
//!   - `read_after` / `read_before` may return **fewer than `limit`** messages (at least
//!     one if any exists): as many as fit one reply (about 13 messages of 64 KiB, tens of
//!     thousands of small ones). The trait allows it ("up to `limit`"); callers page.
//!     `read_before` keeps the newest ones, so the page stays contiguous with `before`.
//!   - A larger `append` batch is sent as staged parts (held in the store role's memory,
//!     at most [`STAGING_MAX_BYTES`] in all, forgotten after [`STAGING_TTL`]) followed by
//!     one final request that appends parts and rest with ONE `append`: still atomic.
//!   - Larger `find_dedupe` lookups and long `user_conversations` / `device_cursors` /
//!     `member_cursors` lists take several requests (each asking for what follows the
//!     last item it got); each is consistent on its own, the whole is not one snapshot
//!     (harmless for these monotonic data: heads and cursors only grow, dedupe keys only
//!     appear, and the partition owner is the only writer of its keys).
//!   - One message whose encoding exceeds the budget cannot cross the wire: `append`
//!     refuses it with [`StoreError::Invalid`] and stores nothing (the service bounds
//!     bodies to 64 KiB, far below).
//! - **Unreachable store role.** A bus timeout, "no responders" or a transport failure is
//!   [`StoreError::Storage`] (`store role unreachable: ...`), within the request timeout.
//!   A timed-out **append is ambiguous**: it may have been stored or not. The messages
//!   service already handles that: it forgets its cached heads on any append failure and
//!   reloads them from the store, and a retried send finds its original Ack by dedupe, so
//!   a retry never stores a message twice nor leaves a gap. A cursor advance that timed
//!   out is equally ambiguous, and harmless (cursors only move forward).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use natter_bus::{Bus, BusError, BusEvent, BusMessage, Subscription};
use natter_proto::{
    ConversationId, DeviceId, Seq, Subject, UserId,
    bus::{
        self, StoreErrorKind, StoreRequest,
        store_reply::{self, Conversations, DeviceCursors, Found, Messages},
        store_request::{self, Op},
    },
    v1,
};
use prost::Message as _;
use rand::Rng as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{
    CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage, StoreError,
};

/// NATS's default `max_payload`: no request or reply of the store role is larger.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The encoded items one request or reply carries at most; the rest of
/// [`MAX_PAYLOAD_BYTES`] is room for the envelope and the bus's own headers.
pub const PAYLOAD_BUDGET: usize = 900 * 1024;
/// Requests the store role handles at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Queue group of the store role's subscription.
pub const QUEUE_GROUP: &str = "store";
/// Bytes of staged append parts the store role holds at most (all uploads together).
pub const STAGING_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Staged parts whose final append has not arrived after this long are forgotten.
pub const STAGING_TTL: Duration = Duration::from_secs(120);

/// Requests buffered by the subscription while all permits are taken.
const SUB_CAPACITY: usize = 8192;
/// Messages read from the store per step while a read reply is filled: bounds the memory
/// of one read to this many messages, however large `limit` is.
const READ_CHUNK: usize = 128;
/// Most buffered requests answered "closed" when the role stops.
const SHUTDOWN_DRAIN_MAX: usize = SUB_CAPACITY;

/// Encoded size of one item of a repeated message field (tag < 16, length, bytes).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

fn to_wire_error(e: &StoreError) -> bus::StoreError {
    let (kind, message) = match e {
        StoreError::Storage(m) => (StoreErrorKind::Storage, m.clone()),
        StoreError::Conflict(m) => (StoreErrorKind::Conflict, m.clone()),
        StoreError::Invalid(m) => (StoreErrorKind::Invalid, m.clone()),
        StoreError::Corrupt(m) => (StoreErrorKind::Corrupt, m.clone()),
        StoreError::Closed => (StoreErrorKind::Closed, String::new()),
        // The wire has no kind of its own for it (a store role runs no breaker): the
        // client side sees a storage failure, which it also retries.
        StoreError::Unavailable(m) => (StoreErrorKind::Storage, m.clone()),
    };
    bus::StoreError {
        kind: kind as i32,
        message,
    }
}

fn from_wire_error(e: bus::StoreError) -> StoreError {
    match StoreErrorKind::try_from(e.kind) {
        Ok(StoreErrorKind::Storage) => StoreError::Storage(e.message),
        Ok(StoreErrorKind::Conflict) => StoreError::Conflict(e.message),
        Ok(StoreErrorKind::Invalid) => StoreError::Invalid(e.message),
        Ok(StoreErrorKind::Corrupt) => StoreError::Corrupt(e.message),
        Ok(StoreErrorKind::Closed) => StoreError::Closed,
        Ok(StoreErrorKind::Unspecified) | Err(_) => StoreError::Storage(format!(
            "store role sent error kind {}: {}",
            e.kind, e.message
        )),
    }
}

fn to_wire_message(nm: NewMessage) -> store_request::NewMessage {
    store_request::NewMessage {
        members: nm.members.iter().map(|u| u.get()).collect(),
        message: Some(nm.message),
    }
}

fn from_wire_message(nm: store_request::NewMessage) -> Result<NewMessage, StoreError> {
    Ok(NewMessage {
        message: nm
            .message
            .ok_or_else(|| StoreError::Invalid("NewMessage without a message".into()))?,
        // Passed through as given: the store behind decides what it accepts.
        members: nm.members.into_iter().map(UserId).collect(),
    })
}

fn parse_conversation(s: &str) -> Result<ConversationId, StoreError> {
    s.parse()
        .map_err(|e: natter_proto::IdError| StoreError::Invalid(e.to_string()))
}

fn too_big(m: &v1::Message, size: usize) -> StoreError {
    StoreError::Storage(format!(
        "message {} of {} is {size} bytes encoded, more than one store reply carries \
         ({PAYLOAD_BUDGET})",
        m.seq, m.conversation_id
    ))
}

// ---------------------------------------------------------------------------------------
// The server.

/// Serves `store` on `Subject::store()` (queue group [`QUEUE_GROUP`]) and returns once
/// subscribed. Each request runs in its own task, at most [`MAX_IN_FLIGHT`] at a time; an
/// undecodable request is answered with an Invalid error. On `shutdown` the role stops
/// taking requests, answers those still buffered with [`StoreError::Closed`], finishes
/// the ones in progress (replies sent) and the handle completes, having dropped `store`.
pub async fn serve(
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    let sub = bus
        .queue_subscribe(&Subject::store(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let server = Arc::new(Server {
        store,
        bus,
        staging: Mutex::new(Staging::default()),
    });
    Ok(tokio::spawn(run(server, sub, shutdown)))
}

async fn run(server: Arc<Server>, mut sub: Subscription, shutdown: CancellationToken) {
    let unstarted =
        natter_bus::serve_requests("store", &mut sub, MAX_IN_FLIGHT, &shutdown, |msg| {
            let server = server.clone();
            async move { server.answer(msg).await }
        })
        .await;
    // What was taken or is still buffered gets a fast "closed" rather than a timeout.
    if let Some(msg) = unstarted {
        server.send(&msg, error_reply(&StoreError::Closed)).await;
    }
    for _ in 0..SHUTDOWN_DRAIN_MAX {
        match sub.next().now_or_never() {
            Some(Some(BusEvent::Message(msg))) => {
                server.send(&msg, error_reply(&StoreError::Closed)).await;
            }
            Some(Some(BusEvent::Lagged)) => {}
            Some(None) | None => break,
        }
    }
}

fn error_reply(e: &StoreError) -> bus::StoreReply {
    bus::StoreReply {
        result: Some(store_reply::Result::Error(to_wire_error(e))),
    }
}

struct Server {
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn Bus>,
    staging: Mutex<Staging>,
}

impl Server {
    async fn answer(&self, msg: BusMessage) {
        let reply = match StoreRequest::decode(msg.payload.clone()) {
            Ok(req) => match self.handle(req, msg.payload.len()).await {
                Ok(result) => bus::StoreReply {
                    result: Some(result),
                },
                Err(e) => error_reply(&e),
            },
            Err(e) => error_reply(&StoreError::Invalid(format!(
                "undecodable StoreRequest: {e}"
            ))),
        };
        self.send(&msg, reply).await;
    }

    async fn send(&self, msg: &BusMessage, reply: bus::StoreReply) {
        let mut payload = reply.encode_to_vec();
        if payload.len() > MAX_PAYLOAD_BYTES {
            // Only a request this crate's client never sends gets here (e.g. too many
            // dedupe keys at once): refuse it rather than send what the bus refuses.
            let e = StoreError::Invalid(format!(
                "the reply would be {} bytes, over {MAX_PAYLOAD_BYTES}: ask for less",
                payload.len()
            ));
            payload = error_reply(&e).encode_to_vec();
        }
        if let Err(e) = natter_bus::reply(self.bus.as_ref(), msg, Bytes::from(payload)).await {
            tracing::debug!(error = %e, "store reply not delivered");
        }
    }

    async fn handle(
        &self,
        req: StoreRequest,
        request_bytes: usize,
    ) -> Result<store_reply::Result, StoreError> {
        let op = req
            .op
            .ok_or_else(|| StoreError::Invalid("StoreRequest without an op".into()))?;
        let store = &self.store;
        Ok(match op {
            Op::Append(a) => {
                let staged = if a.parts == 0 {
                    Vec::new()
                } else {
                    self.lock_staging().take(a.upload_id, a.parts)?
                };
                let mut batch = staged;
                for nm in a.messages {
                    batch.push(from_wire_message(nm)?);
                }
                store.append(batch).await?;
                store_reply::Result::Stored(store_reply::Stored {})
            }
            Op::AppendPart(p) => {
                let messages = p
                    .messages
                    .into_iter()
                    .map(from_wire_message)
                    .collect::<Result<Vec<_>, _>>()?;
                self.lock_staging()
                    .add(p.upload_id, p.index, messages, request_bytes)?;
                store_reply::Result::Stored(store_reply::Stored {})
            }
            Op::Head(h) => {
                let conv = parse_conversation(&h.conversation_id)?;
                store_reply::Result::Head(store.head(&conv).await?.get())
            }
            Op::FindDedupe(f) => {
                let keys = f
                    .keys
                    .into_iter()
                    .map(|k| {
                        Ok(DedupeKey {
                            conversation: parse_conversation(&k.conversation_id)?,
                            sender_device: DeviceId(k.sender_device),
                            client_msg_id: k.client_msg_id,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let found = store.find_dedupe(keys).await?;
                store_reply::Result::Dedupe(store_reply::Dedupe {
                    found: found.into_iter().map(|ack| Found { ack }).collect(),
                })
            }
            Op::ReadAfter(r) => {
                let conv = parse_conversation(&r.conversation_id)?;
                let messages = self
                    .read_after(&conv, Seq(r.after), wire_limit(r.limit))
                    .await?;
                store_reply::Result::Messages(Messages { messages })
            }
            Op::ReadBefore(r) => {
                let conv = parse_conversation(&r.conversation_id)?;
                let messages = self
                    .read_before(&conv, Seq(r.before), wire_limit(r.limit))
                    .await?;
                store_reply::Result::Messages(Messages { messages })
            }
            Op::UserConversations(u) => {
                let all = store.user_conversations(UserId(u.user_id)).await?;
                let after = u.after_conversation_id.as_str();
                let (conversations, more) = fill_page(
                    all.into_iter()
                        .filter(|(conv, _)| conv.as_str() > after)
                        .map(|(conv, head)| v1::Cursor {
                            conversation_id: String::from(conv),
                            seq: head.get(),
                        }),
                );
                store_reply::Result::Conversations(Conversations {
                    conversations,
                    more,
                })
            }
            Op::AdvanceCursor(a) => {
                let conv = parse_conversation(&a.conversation_id)?;
                let kind = v1::ReceiptKind::try_from(a.kind)
                    .map_err(|_| StoreError::Invalid(format!("unknown receipt kind {}", a.kind)))?;
                let adv = store
                    .advance_cursor(
                        UserId(a.user_id),
                        DeviceId(a.device_id),
                        &conv,
                        kind,
                        Seq(a.seq),
                    )
                    .await?;
                store_reply::Result::Cursor(store_reply::CursorAdvance {
                    seq: adv.seq.get(),
                    moved: adv.moved,
                })
            }
            Op::DeviceCursors(d) => {
                let all = store
                    .device_cursors(UserId(d.user_id), DeviceId(d.device_id))
                    .await?;
                let after = d.after_conversation_id.as_str();
                let (cursors, more) = fill_page(
                    all.into_iter()
                        .filter(|c| c.conversation.as_str() > after)
                        .map(|c| store_reply::DeviceCursor {
                            conversation_id: String::from(c.conversation),
                            delivered: c.delivered.get(),
                            read: c.read.get(),
                        }),
                );
                store_reply::Result::Cursors(DeviceCursors { cursors, more })
            }
            Op::MemberCursors(m) => {
                let conv = parse_conversation(&m.conversation_id)?;
                let all = store.member_cursors(&conv).await?;
                // Ordered by user id, so "after" is where the previous page stopped (user
                // ids are nonzero, so 0 asks for the start).
                let (cursors, more) = fill_page(
                    all.into_iter()
                        .filter(|c| c.user.get() > m.after_user)
                        .map(|c| store_reply::MemberCursor {
                            user_id: c.user.get(),
                            delivered: c.delivered.get(),
                            read: c.read.get(),
                        }),
                );
                store_reply::Result::MemberCursors(store_reply::MemberCursors { cursors, more })
            }
            Op::Redact(r) => {
                let conv = parse_conversation(&r.conversation_id)?;
                let message = store.redact(&conv, Seq(r.seq)).await?;
                store_reply::Result::Redacted(store_reply::Redacted { message })
            }
        })
    }

    fn lock_staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        // The staging map stays consistent across a panic (every update is one insert or
        // remove), so a poisoned lock is still usable.
        self.staging.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// As many messages after `after` as fit one reply (at most `limit`), read in chunks.
    async fn read_after(
        &self,
        conv: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        let mut out: Vec<v1::Message> = Vec::new();
        let mut budget = PAYLOAD_BUDGET;
        let mut pos = after;
        while out.len() < limit {
            let want = (limit - out.len()).min(READ_CHUNK);
            let chunk = self.store.read_after(conv, pos, want).await?;
            let got = chunk.len();
            for m in chunk {
                if m.seq <= pos.get() {
                    return Err(StoreError::Corrupt(format!(
                        "read_after of {conv} after {pos} returned seq {}",
                        m.seq
                    )));
                }
                let size = field_len(m.encoded_len());
                if size > budget {
                    return if out.is_empty() {
                        Err(too_big(&m, size))
                    } else {
                        Ok(out)
                    };
                }
                budget -= size;
                pos = Seq(m.seq);
                out.push(m);
            }
            if got < want {
                break;
            }
        }
        Ok(out)
    }

    /// The newest messages before `before` that fit one reply (at most `limit`),
    /// ascending, read in chunks from the newest backwards.
    async fn read_before(
        &self,
        conv: &ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        let mut newest_first: Vec<v1::Message> = Vec::new();
        let mut budget = PAYLOAD_BUDGET;
        let mut bound = before;
        while newest_first.len() < limit && bound != Seq(1) {
            let want = (limit - newest_first.len()).min(READ_CHUNK);
            let chunk = self.store.read_before(conv, bound, want).await?;
            let got = chunk.len();
            for m in chunk.into_iter().rev() {
                // Each step must go strictly down (and never reach 0, "no bound").
                if m.seq == 0 || (bound != Seq::ZERO && m.seq >= bound.get()) {
                    return Err(StoreError::Corrupt(format!(
                        "read_before of {conv} before {bound} returned seq {}",
                        m.seq
                    )));
                }
                let size = field_len(m.encoded_len());
                if size > budget {
                    if newest_first.is_empty() {
                        return Err(too_big(&m, size));
                    }
                    newest_first.reverse();
                    return Ok(newest_first);
                }
                budget -= size;
                bound = Seq(m.seq);
                newest_first.push(m);
            }
            if got < want {
                break;
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }
}

fn wire_limit(limit: u32) -> usize {
    // u32 always fits usize on the platforms natter runs on; saturate otherwise.
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Append parts waiting for their final request, by upload id.
#[derive(Default)]
struct Staging {
    uploads: HashMap<u64, Upload>,
    bytes: usize,
}

struct Upload {
    parts: BTreeMap<u32, (Vec<NewMessage>, usize)>,
    bytes: usize,
    started: Instant,
}

impl Staging {
    fn expire(&mut self) {
        let bytes = &mut self.bytes;
        self.uploads.retain(|id, up| {
            let keep = up.started.elapsed() < STAGING_TTL;
            if !keep {
                tracing::warn!(upload = id, "staged append parts expired unused");
                *bytes = bytes.saturating_sub(up.bytes);
            }
            keep
        });
    }

    fn add(
        &mut self,
        upload_id: u64,
        index: u32,
        messages: Vec<NewMessage>,
        bytes: usize,
    ) -> Result<(), StoreError> {
        if upload_id == 0 {
            return Err(StoreError::Invalid(
                "append part without an upload id".into(),
            ));
        }
        self.expire();
        if self.bytes.saturating_add(bytes) > STAGING_MAX_BYTES {
            return Err(StoreError::Storage(format!(
                "the store role's staging is full ({STAGING_MAX_BYTES} bytes); retry later"
            )));
        }
        let up = self.uploads.entry(upload_id).or_insert_with(|| Upload {
            parts: BTreeMap::new(),
            bytes: 0,
            started: Instant::now(),
        });
        // A repeated part replaces the earlier copy.
        if let Some((_, old)) = up.parts.insert(index, (messages, bytes)) {
            up.bytes -= old;
            self.bytes -= old;
        }
        up.bytes += bytes;
        self.bytes += bytes;
        Ok(())
    }

    /// Removes the upload and returns its messages in part order, if parts `0..parts`
    /// are all there.
    fn take(&mut self, upload_id: u64, parts: u32) -> Result<Vec<NewMessage>, StoreError> {
        let up = self.uploads.remove(&upload_id).ok_or_else(|| {
            StoreError::Storage(format!(
                "no staged parts for upload {upload_id} (expired, or the store role \
                 restarted); nothing stored"
            ))
        })?;
        self.bytes = self.bytes.saturating_sub(up.bytes);
        // BTreeMap keys ascend, so 0..parts are all there iff the count matches and the
        // last key is parts - 1.
        let complete = usize::try_from(parts).is_ok_and(|n| n == up.parts.len())
            && parts
                .checked_sub(1)
                .is_some_and(|last| up.parts.keys().next_back() == Some(&last));
        if !complete {
            return Err(StoreError::Storage(format!(
                "upload {upload_id} has {} of {parts} parts; nothing stored",
                up.parts.len()
            )));
        }
        Ok(up.parts.into_values().flat_map(|(m, _)| m).collect())
    }
}

// ---------------------------------------------------------------------------------------
// The client.

/// A [`MessageStore`] served by a store role over the bus (see the module docs for what
/// that costs). Each call is one bus request with the configured timeout (a large append,
/// dedupe lookup or list takes several); an unreachable store role is
/// [`StoreError::Storage`] within that timeout, and for `append` that outcome is
/// ambiguous: the batch may or may not have been stored.
pub struct RemoteStore {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn unreachable_role(e: BusError) -> StoreError {
    StoreError::Storage(format!("store role unreachable: {e}"))
}

fn unexpected(call: &str) -> StoreError {
    StoreError::Storage(format!(
        "the store role answered {call} with another kind of reply"
    ))
}

impl RemoteStore {
    /// A client of the store role on `bus`; each request waits at most `timeout`.
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Arc<RemoteStore> {
        Arc::new(RemoteStore { bus, timeout })
    }

    async fn call(&self, op: Op) -> Result<store_reply::Result, StoreError> {
        let payload = StoreRequest { op: Some(op) }.encode_to_vec();
        // The calls below pack their items within PAYLOAD_BUDGET; this guards the rest.
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(StoreError::Invalid(format!(
                "a store request of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        let reply = self
            .bus
            .request(&Subject::store(), Bytes::from(payload), self.timeout)
            .await
            .map_err(unreachable_role)?;
        let reply = bus::StoreReply::decode(reply).map_err(|e| {
            StoreError::Storage(format!("the store role sent an undecodable reply: {e}"))
        })?;
        match reply.result {
            Some(store_reply::Result::Error(e)) => Err(from_wire_error(e)),
            Some(result) => Ok(result),
            None => Err(StoreError::Storage(
                "the store role sent an empty reply".into(),
            )),
        }
    }

    async fn stored(&self, op: Op, call: &str) -> Result<(), StoreError> {
        match self.call(op).await? {
            store_reply::Result::Stored(_) => Ok(()),
            _ => Err(unexpected(call)),
        }
    }
}

/// The first `items` that fit one reply within [`PAYLOAD_BUDGET`], in order, and whether
/// any were left out (the caller asks again after the last one).
fn fill_page<M: prost::Message>(items: impl IntoIterator<Item = M>) -> (Vec<M>, bool) {
    let mut page = Vec::new();
    let mut budget = PAYLOAD_BUDGET;
    for item in items {
        let size = field_len(item.encoded_len());
        if size > budget {
            return (page, true);
        }
        budget -= size;
        page.push(item);
    }
    (page, false)
}

/// Splits `items` into runs whose summed `size` stays within [`PAYLOAD_BUDGET`] (a run
/// holds at least one item; an item over the budget alone is the caller's to refuse).
fn pack<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let s = size(&item);
        if !run.is_empty() && bytes + s > PAYLOAD_BUDGET {
            runs.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += s;
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Upper bound of the encoded size of one dedupe answer (a found Ack) for `k`, which also
/// bounds the key's own encoding in the request.
fn dedupe_answer_size(k: &store_request::DedupeKey) -> usize {
    // Ack: two strings (tag + length + bytes) and three u64 (tag + up to 10 bytes), in a
    // Found wrapper (tag + length), in the repeated field.
    let ack = 2 * (1 + 5) + k.conversation_id.len() + k.client_msg_id.len() + 3 * 11;
    field_len(field_len(ack))
}

#[async_trait::async_trait]
impl MessageStore for RemoteStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let wire: Vec<store_request::NewMessage> = batch.into_iter().map(to_wire_message).collect();
        if let Some(big) = wire
            .iter()
            .find(|nm| field_len(nm.encoded_len()) > PAYLOAD_BUDGET)
        {
            let (seq, conv) = big
                .message
                .as_ref()
                .map(|m| (m.seq, m.conversation_id.as_str()))
                .unwrap_or_default();
            return Err(StoreError::Invalid(format!(
                "message {seq} of {conv} is {} bytes encoded, more than a store request \
                 carries ({PAYLOAD_BUDGET}); nothing stored",
                big.encoded_len()
            )));
        }
        let mut runs = pack(wire, |nm| field_len(nm.encoded_len()));
        let Some(last) = runs.pop() else {
            // Unreachable: a non-empty batch packs into at least one run.
            return Ok(());
        };
        if runs.is_empty() {
            let op = Op::Append(store_request::Append {
                messages: last,
                upload_id: 0,
                parts: 0,
            });
            return self.stored(op, "append").await;
        }
        // Too large for one request: stage the leading runs, then append everything.
        let upload_id = rand::rng().random_range(1..=u64::MAX);
        let parts = u32::try_from(runs.len())
            .map_err(|_| StoreError::Invalid("append batch too large".into()))?;
        let staged = runs.into_iter().zip(0u32..).map(|(messages, index)| {
            let op = Op::AppendPart(store_request::AppendPart {
                upload_id,
                index,
                messages,
            });
            self.stored(op, "append part")
        });
        futures::future::try_join_all(staged).await?;
        let op = Op::Append(store_request::Append {
            messages: last,
            upload_id,
            parts,
        });
        self.stored(op, "append").await
    }

    async fn head(&self, conversation: &ConversationId) -> Result<Seq, StoreError> {
        let op = Op::Head(store_request::Head {
            conversation_id: conversation.as_str().to_owned(),
        });
        match self.call(op).await? {
            store_reply::Result::Head(seq) => Ok(Seq(seq)),
            _ => Err(unexpected("head")),
        }
    }

    async fn find_dedupe(&self, keys: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
        let wire: Vec<store_request::DedupeKey> = keys
            .into_iter()
            .map(|k| store_request::DedupeKey {
                conversation_id: String::from(k.conversation),
                sender_device: k.sender_device.get(),
                client_msg_id: k.client_msg_id,
            })
            .collect();
        let mut out = Vec::with_capacity(wire.len());
        for run in pack(wire, dedupe_answer_size) {
            let asked = run.len();
            let op = Op::FindDedupe(store_request::FindDedupe { keys: run });
            match self.call(op).await? {
                store_reply::Result::Dedupe(d) if d.found.len() == asked => {
                    out.extend(d.found.into_iter().map(|f| f.ack));
                }
                store_reply::Result::Dedupe(d) => {
                    return Err(StoreError::Storage(format!(
                        "the store role answered {} of {asked} dedupe keys",
                        d.found.len()
                    )));
                }
                _ => return Err(unexpected("find_dedupe")),
            }
        }
        Ok(out)
    }

    async fn read_after(
        &self,
        conversation: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let op = Op::ReadAfter(store_request::ReadAfter {
            conversation_id: conversation.as_str().to_owned(),
            after: after.get(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        });
        match self.call(op).await? {
            store_reply::Result::Messages(m) => Ok(m.messages),
            _ => Err(unexpected("read_after")),
        }
    }

    async fn read_before(
        &self,
        conversation: &ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let op = Op::ReadBefore(store_request::ReadBefore {
            conversation_id: conversation.as_str().to_owned(),
            before: before.get(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        });
        match self.call(op).await? {
            store_reply::Result::Messages(m) => Ok(m.messages),
            _ => Err(unexpected("read_before")),
        }
    }

    async fn user_conversations(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        let mut out: Vec<(ConversationId, Seq)> = Vec::new();
        loop {
            let after = out
                .last()
                .map(|(c, _)| c.as_str().to_owned())
                .unwrap_or_default();
            let op = Op::UserConversations(store_request::UserConversations {
                user_id: user.get(),
                after_conversation_id: after,
            });
            let page = match self.call(op).await? {
                store_reply::Result::Conversations(page) => page,
                _ => return Err(unexpected("user_conversations")),
            };
            if page.more && page.conversations.is_empty() {
                return Err(StoreError::Storage(
                    "the store role sent an empty page of conversations with more to come".into(),
                ));
            }
            for c in page.conversations {
                let conv = c
                    .conversation_id
                    .parse()
                    .map_err(|e: natter_proto::IdError| StoreError::Corrupt(e.to_string()))?;
                out.push((conv, Seq(c.seq)));
            }
            if !page.more {
                return Ok(out);
            }
        }
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        conversation: &ConversationId,
        kind: v1::ReceiptKind,
        seq: Seq,
    ) -> Result<CursorAdvance, StoreError> {
        let op = Op::AdvanceCursor(store_request::AdvanceCursor {
            user_id: user.get(),
            device_id: device.get(),
            conversation_id: conversation.as_str().to_owned(),
            kind: kind as i32,
            seq: seq.get(),
        });
        match self.call(op).await? {
            store_reply::Result::Cursor(c) => Ok(CursorAdvance {
                seq: Seq(c.seq),
                moved: c.moved,
            }),
            _ => Err(unexpected("advance_cursor")),
        }
    }

    async fn device_cursors(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Vec<DeviceCursor>, StoreError> {
        let mut out: Vec<DeviceCursor> = Vec::new();
        loop {
            let after = out
                .last()
                .map(|c| c.conversation.as_str().to_owned())
                .unwrap_or_default();
            let op = Op::DeviceCursors(store_request::DeviceCursors {
                user_id: user.get(),
                device_id: device.get(),
                after_conversation_id: after,
            });
            let page = match self.call(op).await? {
                store_reply::Result::Cursors(page) => page,
                _ => return Err(unexpected("device_cursors")),
            };
            if page.more && page.cursors.is_empty() {
                return Err(StoreError::Storage(
                    "the store role sent an empty page of cursors with more to come".into(),
                ));
            }
            for c in page.cursors {
                out.push(DeviceCursor {
                    conversation: c
                        .conversation_id
                        .parse()
                        .map_err(|e: natter_proto::IdError| StoreError::Corrupt(e.to_string()))?,
                    delivered: Seq(c.delivered),
                    read: Seq(c.read),
                });
            }
            if !page.more {
                return Ok(out);
            }
        }
    }

    async fn redact(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<v1::Message>, StoreError> {
        let op = Op::Redact(store_request::Redact {
            conversation_id: conversation.as_str().to_owned(),
            seq: seq.get(),
        });
        match self.call(op).await? {
            store_reply::Result::Redacted(r) => Ok(r.message),
            _ => Err(unexpected("redact")),
        }
    }

    async fn member_cursors(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemberCursor>, StoreError> {
        let mut out: Vec<MemberCursor> = Vec::new();
        loop {
            let after = out.last().map_or(0, |c| c.user.get());
            let op = Op::MemberCursors(store_request::MemberCursors {
                conversation_id: conversation.as_str().to_owned(),
                after_user: after,
            });
            let page = match self.call(op).await? {
                store_reply::Result::MemberCursors(page) => page,
                _ => return Err(unexpected("member_cursors")),
            };
            if page.more && page.cursors.is_empty() {
                return Err(StoreError::Storage(
                    "the store role sent an empty page of member cursors with more to come".into(),
                ));
            }
            for c in page.cursors {
                // Each page must go on strictly after the last user seen, or the next
                // request would ask for the same page again (and the order would break).
                let last = out.last().map_or(after, |c| c.user.get());
                if c.user_id <= last {
                    return Err(StoreError::Corrupt(format!(
                        "the store role sent member cursor of user {} after user {last}",
                        c.user_id
                    )));
                }
                out.push(MemberCursor {
                    user: UserId(c.user_id),
                    delivered: Seq(c.delivered),
                    read: Seq(c.read),
                });
            }
            if !page.more {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_survives_the_wire() {
        for e in [
            StoreError::Storage("disk".into()),
            StoreError::Conflict("seq 3 does not follow head 1".into()),
            StoreError::Invalid("seq 0".into()),
            StoreError::Corrupt("bad bytes".into()),
            StoreError::Closed,
        ] {
            let wire = bus::StoreError::decode(to_wire_error(&e).encode_to_vec().as_slice())
                .expect("decodes");
            assert_eq!(from_wire_error(wire), e);
        }
        let unknown = bus::StoreError {
            kind: 99,
            message: "x".into(),
        };
        assert!(matches!(from_wire_error(unknown), StoreError::Storage(_)));
        // A breaker's refusal has no kind of its own on the wire: a storage failure.
        let refused = StoreError::Unavailable("breaker open".into());
        assert_eq!(
            from_wire_error(to_wire_error(&refused)),
            StoreError::Storage("breaker open".into())
        );
    }

    #[test]
    fn pack_respects_the_budget_and_keeps_order() {
        let items: Vec<usize> = vec![PAYLOAD_BUDGET / 2, PAYLOAD_BUDGET / 2, 1, PAYLOAD_BUDGET, 3];
        let runs = pack(items.clone(), |s| *s);
        assert_eq!(runs.concat(), items);
        assert!(runs.iter().all(|r| !r.is_empty()));
        assert!(
            runs.iter()
                .all(|r| r.len() == 1 || r.iter().sum::<usize>() <= PAYLOAD_BUDGET)
        );
        assert_eq!(
            runs.len(),
            4,
            "{:?}",
            runs.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn staging_needs_every_part() {
        let mut s = Staging::default();
        s.add(7, 1, Vec::new(), 10).expect("part 1");
        assert!(matches!(s.take(7, 2), Err(StoreError::Storage(_))));
        assert_eq!(s.bytes, 0, "a failed take forgets the upload");
        s.add(7, 0, Vec::new(), 10).expect("part 0");
        s.add(7, 1, Vec::new(), 10).expect("part 1");
        s.add(7, 1, Vec::new(), 12).expect("part 1 again");
        assert_eq!(s.bytes, 22);
        assert!(s.take(7, 2).is_ok());
        assert_eq!(s.bytes, 0);
        assert!(matches!(s.take(7, 2), Err(StoreError::Storage(_))));
        assert!(matches!(
            s.add(0, 0, Vec::new(), 1),
            Err(StoreError::Invalid(_))
        ));
    }
}

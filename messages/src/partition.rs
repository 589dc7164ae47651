//! Partition owners: one task per owned [`Partition`], subscribed to that partition's
//! subject `natter.msg.pNNN`. An owner takes what is queued (up to [`MAX_BATCH`]) and
//! handles it as one batch: sends are validated, deduped
//! (in the batch, then against the store), given seqs and stored with ONE `append`; only
//! then are they pushed and then acked (so an ack implies the push was published, even if
//! the owner dies right after). A retry of a stored message is pushed again before its
//! original ack. Receipts and typing follow.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use natter_bus::{BusEvent, BusMessage};
use natter_proto::{
    ConversationId, ErrorCode, MAX_BODY_BYTES, MAX_CLIENT_MSG_ID_BYTES, Partition, Seq, Subject,
    UserId,
    bus::{self, partition_reply, partition_request, user_push},
    error, now_ms,
    v1::{self, server_frame},
};
use prost::Message as _;
use rand::Rng as _;
use tokio::sync::mpsc;

use crate::{
    Caller, DedupeKey, NewMessage, Shared, StoreError, caller_of,
    ownership::{Lease, MIN_BATCH_VALIDITY},
    store_failure,
};

/// Most requests one worker handles as one batch.
const MAX_BATCH: usize = 512;
/// Heads cached per worker before the cache is emptied (and reloaded on demand).
const MAX_CACHED_HEADS: usize = 100_000;
/// Most buffered requests answered UNAVAILABLE when an owner stops.
const PARTITION_DRAIN_MAX: usize = 65_536;
/// Requests buffered per partition subscription (past that the bus drops and reports lag).
const PARTITION_SUB_CAPACITY: usize = 8192;
/// Message ids are random in [1, 2^53) so JavaScript numbers hold them exactly.
const MAX_ID: u64 = 1 << 53;

/// Serves one partition while `lease` holds: subscribes its subject, takes what is
/// queued (up to [`MAX_BATCH`]) and handles it as one batch. A batch in progress always
/// completes and is answered. When the lease is stopped (shutdown, hand-over) or about to
/// lapse, the owner unsubscribes and answers what was still buffered with UNAVAILABLE,
/// which the edge passes on and the client retries (reaching the next owner).
pub(crate) async fn own(
    partition: Partition,
    shared: Arc<Shared>,
    lease: Arc<Lease>,
    ready: Option<mpsc::Sender<()>>,
) {
    let subject = Subject::partition(partition);
    let mut sub = match shared.bus.subscribe(&subject, PARTITION_SUB_CAPACITY).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(partition = partition.index(), error = %e, "cannot subscribe a partition");
            return;
        }
    };
    tracing::trace!(
        partition = partition.index(),
        epoch = lease.epoch,
        "serving partition"
    );
    if let Some(ready) = ready {
        // The receiver only counts; it may have stopped listening.
        let _ = ready.send(()).await;
    }
    let mut worker = Worker {
        partition,
        shared,
        heads: HashMap::new(),
    };
    loop {
        let first = tokio::select! {
            biased;
            _ = lease.stop.cancelled() => break,
            event = sub.next() => event,
        };
        let first = match first {
            Some(BusEvent::Message(msg)) => msg,
            Some(BusEvent::Lagged) => {
                tracing::warn!(
                    partition = partition.index(),
                    "partition subscription lagged: requests were dropped"
                );
                continue;
            }
            None => {
                tracing::error!(
                    partition = partition.index(),
                    "partition subscription ended"
                );
                break;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            // Unconstrained: a spent coop budget would report the buffer as empty.
            match tokio::task::unconstrained(sub.next()).now_or_never() {
                Some(Some(BusEvent::Message(msg))) => batch.push(msg),
                Some(Some(BusEvent::Lagged)) => {}
                _ => break,
            }
        }
        if !lease.valid_for(MIN_BATCH_VALIDITY) {
            // Renewals are failing: stop before another instance may take over.
            tracing::warn!(
                partition = partition.index(),
                epoch = lease.epoch,
                "lease about to lapse: not serving"
            );
            for msg in &batch {
                reply(&worker.shared, msg, unavailable()).await;
            }
            break;
        }
        // Not raced against the stop: a batch in progress completes and is answered.
        worker.process(batch).await;
    }
    // Requests already buffered for us get a quick UNAVAILABLE instead of a timeout.
    for _ in 0..PARTITION_DRAIN_MAX {
        match tokio::task::unconstrained(sub.next()).now_or_never() {
            Some(Some(BusEvent::Message(msg))) => reply(&worker.shared, &msg, unavailable()).await,
            Some(Some(BusEvent::Lagged)) => {}
            _ => break,
        }
    }
    drop(sub);
    tracing::trace!(
        partition = partition.index(),
        epoch = lease.epoch,
        "stopped serving partition"
    );
}

fn unavailable() -> bus::PartitionReply {
    reply_error(error(
        ErrorCode::Unavailable,
        "service shutting down, retry",
    ))
}

fn reply_error(e: v1::Error) -> bus::PartitionReply {
    bus::PartitionReply {
        body: Some(partition_reply::Body::Error(e)),
    }
}

async fn reply(shared: &Shared, msg: &BusMessage, reply: bus::PartitionReply) {
    let payload = Bytes::from(reply.encode_to_vec());
    if let Err(e) = natter_bus::reply(shared.bus.as_ref(), msg, payload).await {
        tracing::debug!(error = %e, "partition reply not delivered");
    }
}

async fn push(shared: &Shared, user: UserId, frame: Bytes, skip_device: u64) {
    let push = bus::UserPush {
        body: Some(user_push::Body::Frame(frame)),
        skip_device,
    };
    if let Err(e) = shared
        .bus
        .publish(&Subject::user(user), Bytes::from(push.encode_to_vec()))
        .await
    {
        // Best effort: devices that miss a push get it from sync.
        tracing::debug!(error = %e, %user, "push not published");
    }
}

/// Pushes a stored message to every member's devices (not back to the sending device).
async fn push_message(shared: &Shared, message: v1::Message, members: &[UserId]) {
    let sender = UserId(message.sender_user);
    let sender_device = message.sender_device;
    let bytes = frame(server_frame::Body::Message(message));
    for &member in members {
        let skip = if member == sender { sender_device } else { 0 };
        push(shared, member, bytes.clone(), skip).await;
    }
}

fn frame(body: server_frame::Body) -> Bytes {
    Bytes::from(
        v1::ServerFrame {
            id: 0,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

/// The other member of a direct conversation the caller belongs to.
fn other_member(conv: &ConversationId, caller: UserId) -> Result<UserId, v1::Error> {
    let members = conv
        .direct_members()
        .ok_or_else(|| error(ErrorCode::NotFound, "unknown conversation kind"))?;
    match members {
        [a, b] if a == caller => Ok(b),
        [a, b] if b == caller => Ok(a),
        _ => Err(error(
            ErrorCode::Forbidden,
            "not a member of this conversation",
        )),
    }
}

fn parse_conversation(s: &str) -> Result<ConversationId, v1::Error> {
    if s.is_empty() {
        return Err(error(ErrorCode::InvalidArgument, "conversation_id missing"));
    }
    s.parse()
        .map_err(|e: natter_proto::IdError| error(ErrorCode::InvalidArgument, e.to_string()))
}

/// The conversation named by exactly one of `conversation_id` / `to_user`, and the other
/// member (the caller must be one of the two).
fn destination(
    caller: Caller,
    conversation_id: &str,
    to_user: u64,
) -> Result<(ConversationId, UserId), v1::Error> {
    match (conversation_id.is_empty(), to_user) {
        (true, 0) | (false, 1..) => Err(error(
            ErrorCode::InvalidArgument,
            "exactly one of conversation_id and to_user must be set",
        )),
        (true, to) => {
            let to = UserId(to);
            if to == caller.user {
                return Err(error(ErrorCode::InvalidArgument, "cannot send to yourself"));
            }
            let conv = ConversationId::direct(caller.user, to)
                .map_err(|e| error(ErrorCode::InvalidArgument, e.to_string()))?;
            Ok((conv, to))
        }
        (false, 0) => {
            let conv = parse_conversation(conversation_id)?;
            let other = other_member(&conv, caller.user)?;
            Ok((conv, other))
        }
    }
}

/// A send that passed validation.
struct PendingSend {
    msg: BusMessage,
    caller: Caller,
    conv: ConversationId,
    other: UserId,
    kind: v1::MessageKind,
    send: v1::Send,
}

impl PendingSend {
    fn dedupe_key(&self) -> DedupeKey {
        DedupeKey {
            conversation: self.conv.clone(),
            sender_device: self.caller.device,
            client_msg_id: self.send.client_msg_id.clone(),
        }
    }
}

/// A send plus the requests in the same batch that retried it.
struct Unique {
    send: PendingSend,
    retries: Vec<BusMessage>,
}

struct ReceiptReq {
    msg: BusMessage,
    caller: Caller,
    kind: v1::ReceiptKind,
    conversation_id: String,
    up_to_seq: u64,
}

struct Worker {
    partition: Partition,
    shared: Arc<Shared>,
    /// Head of each conversation this worker has written or read. Valid because this
    /// worker is the only writer of its conversations; dropped on any append failure.
    heads: HashMap<ConversationId, Seq>,
}

impl Worker {
    async fn process(&mut self, batch: Vec<BusMessage>) {
        if self.heads.len() > MAX_CACHED_HEADS {
            self.heads.clear();
        }
        let mut sends = Vec::new();
        let mut receipts = Vec::new();
        let mut typing = Vec::new();
        for msg in batch {
            let req = match bus::PartitionRequest::decode(msg.payload.clone()) {
                Ok(req) => req,
                Err(_) => {
                    let e = error(ErrorCode::BadFrame, "undecodable PartitionRequest");
                    reply(&self.shared, &msg, reply_error(e)).await;
                    continue;
                }
            };
            let caller = match caller_of(req.caller) {
                Ok(c) => c,
                Err(e) => {
                    reply(&self.shared, &msg, reply_error(e)).await;
                    continue;
                }
            };
            match req.body {
                Some(partition_request::Body::Send(send)) => sends.push((msg, caller, send)),
                Some(partition_request::Body::Received(r)) => receipts.push(ReceiptReq {
                    msg,
                    caller,
                    kind: v1::ReceiptKind::Delivered,
                    conversation_id: r.conversation_id,
                    up_to_seq: r.up_to_seq,
                }),
                Some(partition_request::Body::Read(r)) => receipts.push(ReceiptReq {
                    msg,
                    caller,
                    kind: v1::ReceiptKind::Read,
                    conversation_id: r.conversation_id,
                    up_to_seq: r.up_to_seq,
                }),
                Some(partition_request::Body::Typing(t)) => typing.push((msg, caller, t)),
                None => {
                    let e = error(ErrorCode::UnknownFrame, "request has no known body");
                    reply(&self.shared, &msg, reply_error(e)).await;
                }
            }
        }
        if !sends.is_empty() {
            self.sends(sends).await;
        }
        if !receipts.is_empty() {
            self.receipts(receipts).await;
        }
        for (msg, caller, t) in typing {
            self.typing(msg, caller, t).await;
        }
    }

    fn check_partition(&self, conv: &ConversationId) -> Result<(), v1::Error> {
        if conv.partition() == self.partition {
            Ok(())
        } else {
            Err(error(
                ErrorCode::InvalidArgument,
                "request sent to the wrong partition",
            ))
        }
    }

    async fn head(&mut self, conv: &ConversationId) -> Result<Seq, v1::Error> {
        if let Some(h) = self.heads.get(conv) {
            return Ok(*h);
        }
        let h = self
            .shared
            .store
            .head(conv)
            .await
            .map_err(|e| store_failure(&e))?;
        self.heads.insert(conv.clone(), h);
        Ok(h)
    }

    fn validate_send(
        &self,
        caller: Caller,
        send: &v1::Send,
    ) -> Result<(ConversationId, UserId, v1::MessageKind), v1::Error> {
        let id_len = send.client_msg_id.len();
        if id_len == 0 || id_len > MAX_CLIENT_MSG_ID_BYTES {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("client_msg_id must be 1..={MAX_CLIENT_MSG_ID_BYTES} bytes"),
            ));
        }
        if send.body.len() > MAX_BODY_BYTES {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        let kind = match v1::MessageKind::try_from(send.kind) {
            Ok(v1::MessageKind::Unspecified) => v1::MessageKind::Text,
            Ok(kind) => kind,
            Err(_) => return Err(error(ErrorCode::InvalidArgument, "unknown kind")),
        };
        if kind == v1::MessageKind::Text && std::str::from_utf8(&send.body).is_err() {
            return Err(error(
                ErrorCode::InvalidArgument,
                "a text body must be UTF-8 (use kind BINARY for bytes)",
            ));
        }
        let (conv, other) = destination(caller, &send.conversation_id, send.to_user)?;
        self.check_partition(&conv)?;
        Ok((conv, other, kind))
    }

    async fn sends(&mut self, sends: Vec<(BusMessage, Caller, v1::Send)>) {
        // 1. Validate.
        let mut pending = Vec::with_capacity(sends.len());
        for (msg, caller, send) in sends {
            match self.validate_send(caller, &send) {
                Ok((conv, other, kind)) => pending.push(PendingSend {
                    msg,
                    caller,
                    conv,
                    other,
                    kind,
                    send,
                }),
                Err(e) => reply(&self.shared, &msg, reply_error(e)).await,
            }
        }
        if pending.is_empty() {
            return;
        }

        // 2. The other member must exist.
        let exists = self
            .shared
            .users
            .check_many(pending.iter().map(|p| p.other).collect())
            .await;
        let mut checked = Vec::with_capacity(pending.len());
        for p in pending {
            match exists.get(&p.other) {
                Some(Ok(true)) => checked.push(p),
                Some(Ok(false)) | None => {
                    let e = error(ErrorCode::NotFound, "no such user");
                    reply(&self.shared, &p.msg, reply_error(e)).await;
                }
                Some(Err(e)) => reply(&self.shared, &p.msg, reply_error(e.clone())).await,
            }
        }

        // 3. Retries within the batch join their first occurrence.
        let mut uniques: Vec<Unique> = Vec::with_capacity(checked.len());
        let mut index: HashMap<DedupeKey, usize> = HashMap::new();
        for p in checked {
            let key = p.dedupe_key();
            match index.get(&key) {
                Some(&i) => uniques[i].retries.push(p.msg),
                None => {
                    index.insert(key, uniques.len());
                    uniques.push(Unique {
                        send: p,
                        retries: Vec::new(),
                    });
                }
            }
        }
        if uniques.is_empty() {
            return;
        }

        // 4. Retries of stored messages get their original Ack.
        let keys = uniques.iter().map(|u| u.send.dedupe_key()).collect();
        let found = match self.shared.store.find_dedupe(keys).await {
            Ok(found) if found.len() == uniques.len() => found,
            Ok(_) => {
                let e = StoreError::Corrupt("find_dedupe answered a different count".into());
                self.fail_all(&uniques, store_failure(&e)).await;
                return;
            }
            Err(e) => {
                self.fail_all(&uniques, store_failure(&e)).await;
                return;
            }
        };

        // 5. Assign seqs.
        let mut accepted: Vec<Unique> = Vec::new();
        let mut batch: Vec<NewMessage> = Vec::new();
        for (u, original) in uniques.into_iter().zip(found) {
            if let Some(ack) = original {
                // A retry: its sender never saw the ack, so the first owner may have died
                // between commit and push. Push the stored message again (devices drop a
                // seq they have), then ack: an ack always follows the push.
                self.repush(&u.send, &ack).await;
                self.answer(&u, partition_reply::Body::Ack(ack)).await;
                continue;
            }
            let head = match self.head(&u.send.conv).await {
                Ok(h) => h,
                Err(e) => {
                    self.answer(&u, partition_reply::Body::Error(e)).await;
                    continue;
                }
            };
            if u.send.send.reply_to_seq > head.get() {
                let e = error(
                    ErrorCode::InvalidArgument,
                    "reply_to_seq is beyond the newest message",
                );
                self.answer(&u, partition_reply::Body::Error(e)).await;
                continue;
            }
            let seq = head.next();
            self.heads.insert(u.send.conv.clone(), seq);
            let p = &u.send;
            let message = v1::Message {
                conversation_id: p.conv.as_str().to_owned(),
                seq: seq.get(),
                message_id: rand::rng().random_range(1..MAX_ID),
                sender_user: p.caller.user.get(),
                sender_device: p.caller.device.get(),
                client_msg_id: p.send.client_msg_id.clone(),
                kind: p.kind as i32,
                body: p.send.body.clone(),
                reply_to_seq: p.send.reply_to_seq,
                created_at_ms: now_ms(),
            };
            let mut members = vec![p.caller.user, p.other];
            members.sort();
            batch.push(NewMessage { message, members });
            accepted.push(u);
        }
        if batch.is_empty() {
            return;
        }

        // 6. Store the batch durably, then ack and push.
        if let Err(e) = self.shared.store.append(batch.clone()).await {
            // Nothing (or, if the failure was ambiguous, everything) was stored: forget
            // the heads so the next batch reloads them from the store; retries then get
            // a fresh seq or their original Ack, never a gap or a duplicate.
            for nm in &batch {
                if let Ok(conv) = nm.message.conversation_id.parse::<ConversationId>() {
                    self.heads.remove(&conv);
                }
            }
            self.fail_all(&accepted, store_failure(&e)).await;
            return;
        }
        // Push before acking: a sender that holds an ack knows the push was published,
        // so an owner dying between the two loses no delivery (a retry re-pushes).
        let acks: Vec<v1::Ack> = batch
            .iter()
            .map(|nm| {
                let m = &nm.message;
                v1::Ack {
                    client_msg_id: m.client_msg_id.clone(),
                    conversation_id: m.conversation_id.clone(),
                    seq: m.seq,
                    message_id: m.message_id,
                    created_at_ms: m.created_at_ms,
                }
            })
            .collect();
        for nm in batch {
            push_message(&self.shared, nm.message, &nm.members).await;
        }
        for (u, ack) in accepted.iter().zip(acks) {
            self.answer(u, partition_reply::Body::Ack(ack)).await;
        }
    }

    /// Pushes the stored message a retried send names to every member again.
    async fn repush(&self, p: &PendingSend, ack: &v1::Ack) {
        let stored = self
            .shared
            .store
            .read_after(&p.conv, Seq(ack.seq.saturating_sub(1)), 1)
            .await;
        match stored {
            Ok(mut found) if found.first().is_some_and(|m| m.seq == ack.seq) => {
                let mut members = vec![p.caller.user, p.other];
                members.sort();
                push_message(&self.shared, found.swap_remove(0), &members).await;
            }
            Ok(_) => tracing::error!(seq = ack.seq, "a deduplicated message is not in the log"),
            // The ack still goes out; devices get the message by their next sync.
            Err(e) => tracing::warn!(error = %e, "could not re-push a retried message"),
        }
    }

    /// Replies to a unique send and to its in-batch retries.
    async fn answer(&self, u: &Unique, body: partition_reply::Body) {
        let r = bus::PartitionReply { body: Some(body) };
        reply(&self.shared, &u.send.msg, r.clone()).await;
        for retry in &u.retries {
            reply(&self.shared, retry, r.clone()).await;
        }
    }

    async fn fail_all(&self, uniques: &[Unique], e: v1::Error) {
        for u in uniques {
            self.answer(u, partition_reply::Body::Error(e.clone()))
                .await;
        }
    }

    async fn receipts(&mut self, receipts: Vec<ReceiptReq>) {
        // Validate and clamp each to its conversation's head.
        let mut valid = Vec::with_capacity(receipts.len());
        for r in receipts {
            match self.check_receipt(&r).await {
                Ok((conv, other, seq)) => valid.push((r, conv, other, seq)),
                Err(e) => reply(&self.shared, &r.msg, reply_error(e)).await,
            }
        }
        // Store them concurrently: the store's group commit writes them together.
        let store = &self.shared.store;
        let results = futures::future::join_all(valid.iter().map(|(r, conv, _, seq)| {
            store.advance_cursor(r.caller.user, r.caller.device, conv, r.kind, *seq)
        }))
        .await;
        for ((r, conv, other, _), result) in valid.into_iter().zip(results) {
            let advance = match result {
                Ok(a) => a,
                Err(e) => {
                    reply(&self.shared, &r.msg, reply_error(store_failure(&e))).await;
                    continue;
                }
            };
            let cursor = v1::Cursor {
                conversation_id: conv.as_str().to_owned(),
                seq: advance.seq.get(),
            };
            let body = partition_reply::Body::Cursor(cursor);
            reply(
                &self.shared,
                &r.msg,
                bus::PartitionReply { body: Some(body) },
            )
            .await;
            if advance.moved {
                let receipt = v1::Receipt {
                    conversation_id: conv.as_str().to_owned(),
                    user_id: r.caller.user.get(),
                    device_id: r.caller.device.get(),
                    kind: r.kind as i32,
                    up_to_seq: advance.seq.get(),
                };
                let bytes = frame(server_frame::Body::Receipt(receipt));
                push(&self.shared, other, bytes.clone(), 0).await;
                push(&self.shared, r.caller.user, bytes, r.caller.device.get()).await;
            }
        }
    }

    async fn check_receipt(
        &mut self,
        r: &ReceiptReq,
    ) -> Result<(ConversationId, UserId, Seq), v1::Error> {
        let conv = parse_conversation(&r.conversation_id)?;
        let other = other_member(&conv, r.caller.user)?;
        self.check_partition(&conv)?;
        let head = self.head(&conv).await?;
        Ok((conv, other, Seq(r.up_to_seq.min(head.get()))))
    }

    async fn typing(&self, msg: BusMessage, caller: Caller, t: v1::Typing) {
        let (conv, other) = match destination(caller, &t.conversation_id, t.to_user) {
            Ok(d) => d,
            Err(e) => {
                reply(&self.shared, &msg, reply_error(e)).await;
                return;
            }
        };
        let event = v1::TypingEvent {
            conversation_id: conv.as_str().to_owned(),
            user_id: caller.user.get(),
            active: t.active,
        };
        push(
            &self.shared,
            other,
            frame(server_frame::Body::Typing(event)),
            0,
        )
        .await;
        reply(&self.shared, &msg, bus::PartitionReply { body: None }).await;
    }
}

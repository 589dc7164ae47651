//! Partition owners: one task per owned [`Partition`], subscribed to that partition's
//! subject `natter.msg.pNNN`. An owner takes what is queued (up to [`MAX_BATCH`]) and
//! handles it as one batch: sends are validated, deduped
//! (in the batch, then against the store), given seqs and stored with ONE `append`; only
//! then are they pushed and then acked (so an ack implies the push was published, even if
//! the owner dies right after). A retry of a stored message is pushed again before its
//! original ack. Receipts and typing follow. An administrator's deletion of a message
//! (`admin_delete`, from the admin role) is handled in arrival order between them, like
//! a group change: redacted in the store, then pushed to the members.
//!
//! Groups: the owner of a group's conversation is also where the group's changes take
//! their place in its order. A change (add, remove, ...) is checked and stored by the
//! groups service, then written here as a system message at the next seq, and the owner's
//! cached members switch to the new ones before the next request is handled: a message
//! is either before a removal in the log (and fanned out to the removed member) or after
//! it (and not), and a removed member's send after it is refused. Requests of a batch are
//! handled in arrival order around each change.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use natter_bus::{BusEvent, BusMessage};
use natter_proto::{
    ConversationId, ConversationKind, ErrorCode, GroupId, MAX_BODY_BYTES, MAX_CLIENT_MSG_ID_BYTES,
    Partition, Seq, Subject, UserId,
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
/// Group states cached per worker before the cache is emptied (and reloaded on demand).
const MAX_CACHED_GROUPS: usize = 10_000;
/// `client_msg_id`s with this prefix are the server's own (system messages).
const RESERVED_CLIENT_MSG_ID_PREFIX: &str = "natter.";
/// The sender device of system messages: their dedupe keys never meet a client's, which
/// cannot use the reserved prefix.
const SYSTEM_DEVICE: u64 = 1;

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
        groups: HashMap::new(),
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
    push_at(shared, user, frame, skip_device, 0).await;
}

/// [`push`] of a message accepted at `created_at_ms` (edges measure delivery latency
/// from it).
async fn push_at(
    shared: &Shared,
    user: UserId,
    frame: Bytes,
    skip_device: u64,
    created_at_ms: u64,
) {
    let push = bus::UserPush {
        body: Some(user_push::Body::Frame(frame)),
        skip_device,
        only_device: 0,
        created_at_ms,
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

/// Pushes a stored message to every member's devices (not back to the sending device,
/// which has the Ack; system messages go to every device). The push is encoded once and
/// shared by every member but the sender.
async fn push_message(shared: &Shared, message: v1::Message, members: &[UserId]) {
    if message.withheld {
        return push_withheld(shared, message, members).await;
    }
    let sender = UserId(message.sender_user);
    // System messages and call entries come from a service: every device gets them.
    let skip_sender = if message.kind == v1::MessageKind::System as i32
        || message.kind == v1::MessageKind::Call as i32
    {
        0
    } else {
        message.sender_device
    };
    let created_at_ms = message.created_at_ms;
    let frame = frame(server_frame::Body::Message(message));
    let to_all = Bytes::from(
        bus::UserPush {
            body: Some(user_push::Body::Frame(frame.clone())),
            skip_device: 0,
            only_device: 0,
            created_at_ms,
        }
        .encode_to_vec(),
    );
    for &member in members {
        if member == sender && skip_sender != 0 {
            push_at(shared, member, frame.clone(), skip_sender, created_at_ms).await;
        } else {
            publish(shared, member, to_all.clone()).await;
        }
    }
}

/// A withheld message: its sender's other devices get it as sent, everyone else only
/// its placeholder (which keeps their seqs gap-free).
async fn push_withheld(shared: &Shared, message: v1::Message, members: &[UserId]) {
    let sender = UserId(message.sender_user);
    for &member in members {
        let view = crate::view_for(&message, member).into_owned();
        let skip = if member == sender {
            message.sender_device
        } else {
            0
        };
        push_at(
            shared,
            member,
            frame(server_frame::Body::Message(view)),
            skip,
            message.created_at_ms,
        )
        .await;
    }
}

async fn publish(shared: &Shared, user: UserId, push: Bytes) {
    if let Err(e) = shared.bus.publish(&Subject::user(user), push).await {
        // Best effort: devices that miss a push get it from sync.
        tracing::debug!(error = %e, %user, "push not published");
    }
}

/// The system message that records a group change in the group's conversation.
fn system_message(group: GroupId, seq: Seq, event: v1::GroupEvent) -> v1::Message {
    v1::Message {
        conversation_id: ConversationId::group(group).as_str().to_owned(),
        seq: seq.get(),
        message_id: rand::rng().random_range(1..MAX_ID),
        sender_user: event.actor,
        sender_device: SYSTEM_DEVICE,
        client_msg_id: format!("{RESERVED_CLIENT_MSG_ID_PREFIX}group.v{}", event.version),
        kind: v1::MessageKind::System as i32,
        body: Bytes::new(),
        reply_to_seq: 0,
        created_at_ms: now_ms(),
        event: Some(Box::new(event)),
        withheld: false,
        media: None,
        call: None,
        deleted: false,
    }
}

/// How long receivers show a typing indicator unless it is sent again.
const TYPING_EXPIRES_MS: u32 = 6_000;

fn frame(body: server_frame::Body) -> Bytes {
    Bytes::from(
        v1::ServerFrame {
            id: 0,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

/// Who else is in a conversation the caller names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// The other member of a direct conversation the caller belongs to.
    Direct(UserId),
    /// A group: membership is checked against the group's state.
    Group(GroupId),
}

fn dest_of(conv: &ConversationId, caller: UserId) -> Result<Dest, v1::Error> {
    match conv.kind() {
        ConversationKind::Direct(a, b) if a == caller => Ok(Dest::Direct(b)),
        ConversationKind::Direct(a, b) if b == caller => Ok(Dest::Direct(a)),
        ConversationKind::Direct(..) => Err(error(
            ErrorCode::Forbidden,
            "not a member of this conversation",
        )),
        ConversationKind::Group(g) => Ok(Dest::Group(g)),
    }
}

/// A group's state as the owner keeps it.
struct CachedGroup {
    state: bus::GroupState,
    /// Current members, ordered: whom messages fan out to.
    members: Arc<Vec<UserId>>,
}

impl CachedGroup {
    fn new(state: bus::GroupState) -> Self {
        let members = state.members.iter().map(|m| UserId(m.user_id)).collect();
        CachedGroup {
            state,
            members: Arc::new(members),
        }
    }

    fn member(&self, user: UserId) -> Option<&bus::GroupStateMember> {
        self.state
            .members
            .binary_search_by_key(&user.get(), |m| m.user_id)
            .ok()
            .map(|i| &self.state.members[i])
    }

    /// The caller's membership, or why they cannot act in the group's conversation.
    fn check_member(&self, user: UserId) -> Result<&bus::GroupStateMember, v1::Error> {
        if self.state.deleted {
            return Err(error(ErrorCode::NotFound, "the group was deleted"));
        }
        self.member(user)
            .ok_or_else(|| error(ErrorCode::Forbidden, "not a member of this group"))
    }
}

fn parse_conversation(s: &str) -> Result<ConversationId, v1::Error> {
    if s.is_empty() {
        return Err(error(ErrorCode::InvalidArgument, "conversation_id missing"));
    }
    s.parse()
        .map_err(|e: natter_proto::IdError| error(ErrorCode::InvalidArgument, e.to_string()))
}

/// The conversation named by exactly one of `conversation_id` / `to_user`, and who else
/// is in it (for a direct one the caller must be one of the two).
fn destination(
    caller: Caller,
    conversation_id: &str,
    to_user: u64,
) -> Result<(ConversationId, Dest), v1::Error> {
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
            Ok((conv, Dest::Direct(to)))
        }
        (false, 0) => {
            let conv = parse_conversation(conversation_id)?;
            let dest = dest_of(&conv, caller.user)?;
            Ok((conv, dest))
        }
    }
}

/// A send that passed validation.
struct PendingSend {
    msg: BusMessage,
    caller: Caller,
    conv: ConversationId,
    dest: Dest,
    /// Everyone in the conversation (sender included), filled in once checked.
    members: Arc<Vec<UserId>>,
    kind: v1::MessageKind,
    send: v1::Send,
    /// The recipient blocked the sender: stored, acked, but never shown to them.
    withheld: bool,
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

/// A request of a batch, decoded.
enum Item {
    Plain(Plain),
    /// A group change; no caller only for an administrator's (`GroupChange.admin`).
    Group(BusMessage, Option<Caller>, bus::GroupChange),
    /// From the admin role (no caller): delete a message for everyone.
    AdminDelete(BusMessage, bus::AdminDeleteMessage),
}

/// A request that does not change a group.
enum Plain {
    /// A send; `true` when it comes from a service (a call's history entry), which may
    /// use the reserved client_msg_id prefix and the server-only kinds.
    Send(BusMessage, Caller, v1::Send, bool),
    Receipt(ReceiptReq),
    Typing(BusMessage, Caller, v1::Typing),
    ReadBy(BusMessage, Caller, v1::ReadBy),
}

struct Worker {
    partition: Partition,
    shared: Arc<Shared>,
    /// Head of each conversation this worker has written or read. Valid because this
    /// worker is the only writer of its conversations; dropped on any append failure.
    heads: HashMap<ConversationId, Seq>,
    /// State of each group whose conversation this worker served. Valid because every
    /// change to a group passes through this worker (it writes the change's system
    /// message); dropped when a change's outcome is uncertain.
    /// `None`: the group does not exist (a create would pass through here and replace it),
    /// so requests naming unknown groups cost no round trip to the groups service.
    groups: HashMap<GroupId, Option<Arc<CachedGroup>>>,
}

impl Worker {
    async fn process(&mut self, batch: Vec<BusMessage>) {
        if self.heads.len() > MAX_CACHED_HEADS {
            self.heads.clear();
        }
        if self.groups.len() > MAX_CACHED_GROUPS {
            self.groups.clear();
        }
        let mut items = Vec::with_capacity(batch.len());
        for msg in batch {
            let req = match bus::PartitionRequest::decode(msg.payload.clone()) {
                Ok(req) => req,
                Err(_) => {
                    let e = error(ErrorCode::BadFrame, "undecodable PartitionRequest");
                    reply(&self.shared, &msg, reply_error(e)).await;
                    continue;
                }
            };
            // A message deleted by an administrator: from the admin role, which attaches
            // no caller (an edge always attaches one and never builds this body).
            let req = match req {
                bus::PartitionRequest {
                    caller: None,
                    body: Some(partition_request::Body::AdminDelete(d)),
                    ..
                } => {
                    items.push(Item::AdminDelete(msg, d));
                    continue;
                }
                req => req,
            };
            // An administrator's group change (`GroupChange.admin`, only a delete) comes
            // from the admin role without a caller; an edge always attaches one and never
            // sets `admin` (with a caller, the groups service refuses it).
            let req = match req {
                bus::PartitionRequest {
                    caller: None,
                    body: Some(partition_request::Body::Group(g)),
                    ..
                } if g.admin => {
                    items.push(Item::Group(msg, None, g));
                    continue;
                }
                req => req,
            };
            let caller = match caller_of(req.caller) {
                Ok(c) => c,
                Err(e) => {
                    reply(&self.shared, &msg, reply_error(e)).await;
                    continue;
                }
            };
            items.push(match req.body {
                Some(partition_request::Body::Send(send)) => {
                    Item::Plain(Plain::Send(msg, caller, send, false))
                }
                Some(partition_request::Body::CallLog(c)) => {
                    let Some(log) = c.log else {
                        let e = error(ErrorCode::InvalidArgument, "a call log needs `log`");
                        reply(&self.shared, &msg, reply_error(e)).await;
                        continue;
                    };
                    let send = v1::Send {
                        client_msg_id: format!(
                            "{RESERVED_CLIENT_MSG_ID_PREFIX}call.{}",
                            log.call_id
                        ),
                        conversation_id: c.conversation_id,
                        to_user: c.to_user,
                        kind: v1::MessageKind::Call as i32,
                        call: Some(Box::new(log)),
                        ..Default::default()
                    };
                    Item::Plain(Plain::Send(msg, caller, send, true))
                }
                Some(partition_request::Body::Received(r)) => {
                    Item::Plain(Plain::Receipt(ReceiptReq {
                        msg,
                        caller,
                        kind: v1::ReceiptKind::Delivered,
                        conversation_id: r.conversation_id,
                        up_to_seq: r.up_to_seq,
                    }))
                }
                Some(partition_request::Body::Read(r)) => Item::Plain(Plain::Receipt(ReceiptReq {
                    msg,
                    caller,
                    kind: v1::ReceiptKind::Read,
                    conversation_id: r.conversation_id,
                    up_to_seq: r.up_to_seq,
                })),
                Some(partition_request::Body::Typing(t)) => {
                    Item::Plain(Plain::Typing(msg, caller, t))
                }
                Some(partition_request::Body::ReadBy(r)) => {
                    Item::Plain(Plain::ReadBy(msg, caller, r))
                }
                Some(partition_request::Body::Group(g)) => Item::Group(msg, Some(caller), g),
                // With a caller: not from the admin role.
                Some(partition_request::Body::AdminDelete(_)) => {
                    let e = error(ErrorCode::Forbidden, "only the admin role deletes messages");
                    reply(&self.shared, &msg, reply_error(e)).await;
                    continue;
                }
                None => {
                    let e = error(ErrorCode::UnknownFrame, "request has no known body");
                    reply(&self.shared, &msg, reply_error(e)).await;
                    continue;
                }
            });
        }
        // Group changes are barriers: what arrived before one is handled with the
        // membership before it, what arrived after with the membership after it.
        let mut run = Vec::new();
        for item in items {
            match item {
                Item::Group(msg, caller, change) => {
                    self.run(std::mem::take(&mut run)).await;
                    self.group_change(msg, caller, change).await;
                }
                Item::AdminDelete(msg, d) => {
                    // In order too: it never races a batch of this partition.
                    self.run(std::mem::take(&mut run)).await;
                    let body = match self.admin_delete(d).await {
                        Ok(deleted) => partition_reply::Body::Deleted(deleted),
                        Err(e) => partition_reply::Body::Error(e),
                    };
                    reply(&self.shared, &msg, bus::PartitionReply { body: Some(body) }).await;
                }
                Item::Plain(plain) => run.push(plain),
            }
        }
        self.run(run).await;
    }

    /// An administrator deletes message `seq` for everyone: the store redacts it (see
    /// [`crate::redacted`]), then every member is pushed `MessageDeleted` (of a withheld
    /// message only its sender, the only one who saw it). Members are looked up first, so
    /// a failure leaves the message as it was. A system message (a group change) is
    /// refused: it is the group's membership history. Deleting again is harmless: the
    /// push goes out again.
    async fn admin_delete(
        &mut self,
        d: bus::AdminDeleteMessage,
    ) -> Result<v1::MessageDeleted, v1::Error> {
        let conv = parse_conversation(&d.conversation_id)?;
        self.check_partition(&conv)?;
        if d.seq == 0 {
            return Err(error(ErrorCode::InvalidArgument, "seq must be at least 1"));
        }
        let seq = Seq(d.seq);
        let not_found = || error(ErrorCode::NotFound, "no message with this seq");
        if seq > self.head(&conv).await? {
            return Err(not_found());
        }
        let read = self.shared.store.read_after(&conv, Seq(d.seq - 1), 1);
        let stored = crate::timed("read", read)
            .await
            .map_err(|e| store_failure(&e))?
            .into_iter()
            .find(|m| m.seq == d.seq)
            .ok_or_else(not_found)?;
        if stored.kind == v1::MessageKind::System as i32 {
            return Err(error(
                ErrorCode::InvalidArgument,
                "a group change (system message) cannot be deleted",
            ));
        }
        let members: Vec<UserId> = if stored.withheld {
            UserId::new(stored.sender_user).into_iter().collect()
        } else {
            match conv.kind() {
                ConversationKind::Direct(a, b) => vec![a, b],
                ConversationKind::Group(g) => self
                    .group_opt(g)
                    .await?
                    .map(|group| group.members.to_vec())
                    .unwrap_or_default(),
            }
        };
        crate::timed("redact", self.shared.store.redact(&conv, seq))
            .await
            .map_err(|e| store_failure(&e))?
            .ok_or_else(not_found)?;
        metrics::counter!("natter_messages_deleted_total").increment(1);
        tracing::info!(%conv, seq = d.seq, "message deleted for everyone by an administrator");
        let deleted = v1::MessageDeleted {
            conversation_id: conv.as_str().to_owned(),
            seq: d.seq,
            deleted_at_ms: now_ms(),
        };
        let push = Bytes::from(
            bus::UserPush {
                body: Some(user_push::Body::Frame(frame(
                    server_frame::Body::MessageDeleted(deleted.clone()),
                ))),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        for member in members {
            publish(&self.shared, member, push.clone()).await;
        }
        Ok(deleted)
    }

    /// Handles requests with no group change among them: sends as one batch, then
    /// receipts, typing and read-by queries.
    async fn run(&mut self, items: Vec<Plain>) {
        let mut sends = Vec::new();
        let mut receipts = Vec::new();
        let mut typing = Vec::new();
        let mut read_by = Vec::new();
        for item in items {
            match item {
                Plain::Send(msg, caller, send, trusted) => sends.push((msg, caller, send, trusted)),
                Plain::Receipt(r) => receipts.push(r),
                Plain::Typing(msg, caller, t) => typing.push((msg, caller, t)),
                Plain::ReadBy(msg, caller, r) => read_by.push((msg, caller, r)),
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
        for (msg, caller, r) in read_by {
            let body = match self.read_by(caller, r).await {
                Ok(result) => partition_reply::Body::ReadBy(result),
                Err(e) => partition_reply::Body::Error(e),
            };
            reply(&self.shared, &msg, bus::PartitionReply { body: Some(body) }).await;
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
        let h = crate::timed("head", self.shared.store.head(conv))
            .await
            .map_err(|e| store_failure(&e))?;
        self.heads.insert(conv.clone(), h);
        Ok(h)
    }

    fn validate_send(
        &self,
        caller: Caller,
        send: &v1::Send,
        trusted: bool,
    ) -> Result<(ConversationId, Dest, v1::MessageKind), v1::Error> {
        if trusted {
            // A call's history entry, built by `process` from the calls service's
            // request: only where it goes needs checking.
            let (conv, dest) = destination(caller, &send.conversation_id, send.to_user)?;
            self.check_partition(&conv)?;
            return Ok((conv, dest, v1::MessageKind::Call));
        }
        if send.call.is_some() {
            return Err(error(
                ErrorCode::InvalidArgument,
                "only the server writes call events",
            ));
        }
        let id_len = send.client_msg_id.len();
        if id_len == 0 || id_len > MAX_CLIENT_MSG_ID_BYTES {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("client_msg_id must be 1..={MAX_CLIENT_MSG_ID_BYTES} bytes"),
            ));
        }
        if send
            .client_msg_id
            .starts_with(RESERVED_CLIENT_MSG_ID_PREFIX)
        {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("client_msg_id must not start with `{RESERVED_CLIENT_MSG_ID_PREFIX}`"),
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
            Ok(v1::MessageKind::System) => {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "only the server writes system messages",
                ));
            }
            Ok(v1::MessageKind::Call) => {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "only the server writes call events",
                ));
            }
            Ok(kind) => kind,
            Err(_) => return Err(error(ErrorCode::InvalidArgument, "unknown kind")),
        };
        match (kind, &send.media) {
            (v1::MessageKind::Media, None) => {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "a media message needs `media` (upload it first: POST /v1/media)",
                ));
            }
            (v1::MessageKind::Media, Some(media)) => {
                if !send.body.is_empty() {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "a media message has no body: put the text in media.caption",
                    ));
                }
                crate::media::validate(media)?;
            }
            (_, Some(_)) => {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "`media` needs kind MESSAGE_KIND_MEDIA",
                ));
            }
            (_, None) => {}
        }
        if kind == v1::MessageKind::Text && std::str::from_utf8(&send.body).is_err() {
            return Err(error(
                ErrorCode::InvalidArgument,
                "a text body must be UTF-8 (use kind BINARY for bytes)",
            ));
        }
        let (conv, dest) = destination(caller, &send.conversation_id, send.to_user)?;
        self.check_partition(&conv)?;
        Ok((conv, dest, kind))
    }

    /// Replaces each media message's reference with the media service's description;
    /// those refused are answered here and dropped.
    async fn describe_media(&self, checked: Vec<Unique>) -> Vec<Unique> {
        if !checked.iter().any(|u| u.send.send.media.is_some()) {
            return checked;
        }
        let media = &self.shared.media;
        let described = futures::future::join_all(checked.iter().map(|u| async move {
            match &u.send.send.media {
                Some(wanted) => Some(crate::media::describe(media, u.send.caller, wanted).await),
                None => None,
            }
        }))
        .await;
        let mut out = Vec::with_capacity(checked.len());
        for (mut u, described) in checked.into_iter().zip(described) {
            match described {
                None => out.push(u),
                Some(Ok(reference)) => {
                    u.send.send.media = Some(Box::new(reference));
                    out.push(u);
                }
                Some(Err(e)) => self.answer(&u, partition_reply::Body::Error(e)).await,
            }
        }
        out
    }

    async fn sends(&mut self, sends: Vec<(BusMessage, Caller, v1::Send, bool)>) {
        // 1. Validate.
        let mut pending = Vec::with_capacity(sends.len());
        for (msg, caller, send, trusted) in sends {
            match self.validate_send(caller, &send, trusted) {
                Ok((conv, dest, kind)) => pending.push(PendingSend {
                    msg,
                    caller,
                    conv,
                    dest,
                    members: Arc::default(),
                    kind,
                    send,
                    withheld: false,
                }),
                Err(e) => reply(&self.shared, &msg, reply_error(e)).await,
            }
        }
        if pending.is_empty() {
            return;
        }

        // 2. Retries within the batch join their first occurrence.
        let mut uniques: Vec<Unique> = Vec::with_capacity(pending.len());
        let mut index: HashMap<DedupeKey, usize> = HashMap::new();
        for p in pending {
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

        // 3. Retries of stored messages get their original Ack, whatever the sender's
        // membership is now: the message was accepted when it was first sent.
        let keys = uniques.iter().map(|u| u.send.dedupe_key()).collect();
        let found = match crate::timed("find_dedupe", self.shared.store.find_dedupe(keys)).await {
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
        let mut fresh = Vec::with_capacity(uniques.len());
        for (mut u, original) in uniques.into_iter().zip(found) {
            let Some(ack) = original else {
                fresh.push(u);
                continue;
            };
            // A retry: its sender never saw the ack, so the first owner may have died
            // between commit and push. Push the stored message again to the members of
            // now (devices drop a seq they have), then ack: an ack always follows the push.
            u.send.members = match u.send.dest {
                Dest::Direct(other) => {
                    let mut members = vec![u.send.caller.user, other];
                    members.sort();
                    Arc::new(members)
                }
                Dest::Group(g) => match self.group(g).await {
                    Ok(group) => group.members.clone(),
                    Err(_) => Arc::default(),
                },
            };
            self.repush(&u.send, &ack).await;
            self.answer(&u, partition_reply::Body::Ack(ack)).await;
        }
        if fresh.is_empty() {
            return;
        }

        // 4. The other member must exist; a group's sender must be a member allowed to
        // send, and the group's members are whom the message fans out to.
        let others: Vec<UserId> = fresh
            .iter()
            .filter_map(|u| match u.send.dest {
                Dest::Direct(other) => Some(other),
                Dest::Group(_) => None,
            })
            .collect();
        let exists = if others.is_empty() {
            HashMap::new()
        } else {
            self.shared.users.check_many(others).await
        };
        let mut checked = Vec::with_capacity(fresh.len());
        for mut u in fresh {
            let verdict = match u.send.dest {
                Dest::Direct(other) => match exists.get(&other) {
                    Some(Ok(true)) => match self.shared.audiences.get(other).await {
                        Ok(audience) => {
                            // The sender is not told: the message is stored and acked
                            // (one tick) but withheld from the recipient, for good.
                            u.send.withheld = audience.blocks(u.send.caller.user);
                            let mut members = vec![u.send.caller.user, other];
                            members.sort();
                            Ok(Arc::new(members))
                        }
                        Err(e) => Err(e),
                    },
                    Some(Ok(false)) | None => Err(error(ErrorCode::NotFound, "no such user")),
                    Some(Err(e)) => Err(e.clone()),
                },
                Dest::Group(g) => self.group(g).await.and_then(|group| {
                    // A call's entry is the server's record, not the caller's message:
                    // the send policy does not apply (membership does).
                    if group.check_member(u.send.caller.user)?.may_send
                        || u.send.kind == v1::MessageKind::Call
                    {
                        Ok(group.members.clone())
                    } else {
                        Err(error(
                            ErrorCode::Forbidden,
                            "only admins may send messages to this group",
                        ))
                    }
                }),
            };
            match verdict {
                Ok(members) => {
                    u.send.members = members;
                    checked.push(u);
                }
                Err(e) => self.answer(&u, partition_reply::Body::Error(e)).await,
            }
        }

        // 4b. A media message carries what the media service says the media is, and
        // only media its sender may share (their upload, or forwarded from a message
        // they can read). Asked concurrently for the batch, before seqs are assigned,
        // so a refusal leaves no gap.
        let checked = self.describe_media(checked).await;

        // 5. Assign seqs.
        let mut accepted: Vec<Unique> = Vec::new();
        let mut batch: Vec<NewMessage> = Vec::new();
        let mut fanout: Vec<Arc<Vec<UserId>>> = Vec::new();
        for u in checked {
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
                event: None,
                withheld: p.withheld,
                media: p.send.media.clone(),
                call: p.send.call.clone(),
                deleted: false,
            };
            // A group's members are not listed per message: sync asks the groups
            // service which groups a user is in and reads their heads.
            let members = match p.dest {
                Dest::Direct(_) => p.members.to_vec(),
                Dest::Group(_) => Vec::new(),
            };
            fanout.push(p.members.clone());
            batch.push(NewMessage { message, members });
            accepted.push(u);
        }
        if batch.is_empty() {
            return;
        }

        // 6. Store the batch durably, then ack and push.
        if let Err(e) = crate::timed("append", self.shared.store.append(batch.clone())).await {
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
        if let Some(notify) = &self.shared.notify {
            notify.offer(&batch, &fanout);
        }
        for (nm, members) in batch.into_iter().zip(fanout) {
            push_message(&self.shared, nm.message, &members).await;
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
                push_message(&self.shared, found.swap_remove(0), &p.members).await;
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

    /// The group's state, from the cache or the groups service. A change the groups
    /// service stored whose system message is not in the log yet (its owner died in
    /// between) is written first, so the log and the membership agree again.
    async fn group(&mut self, group: GroupId) -> Result<Arc<CachedGroup>, v1::Error> {
        self.group_opt(group)
            .await?
            .ok_or_else(|| error(ErrorCode::NotFound, "no such group"))
    }

    async fn group_opt(&mut self, group: GroupId) -> Result<Option<Arc<CachedGroup>>, v1::Error> {
        if let Some(g) = self.groups.get(&group) {
            return Ok(g.clone());
        }
        let Some(state) = self.shared.groups.state(group).await? else {
            self.groups.insert(group, None);
            return Ok(None);
        };
        let conv = ConversationId::group(group);
        let head = self.head(&conv).await?;
        if state.event_seq > head.get() {
            let event = state.event.clone().unwrap_or_default();
            if state.event_seq != head.get() + 1 {
                tracing::error!(
                    %conv,
                    event_seq = state.event_seq,
                    %head,
                    "a group change is ahead of its conversation by more than one message"
                );
                return Err(error(ErrorCode::Internal, "internal error"));
            }
            // Those it names hear of it too: a removed member their removal.
            let mut audience: BTreeSet<UserId> =
                state.members.iter().map(|m| UserId(m.user_id)).collect();
            audience.extend(event.users.iter().filter_map(|&u| UserId::new(u).ok()));
            let message = system_message(group, head.next(), event);
            self.append_system(&conv, message.clone()).await?;
            let audience: Vec<UserId> = audience.into_iter().collect();
            push_message(&self.shared, message, &audience).await;
        }
        let cached = Arc::new(CachedGroup::new(state));
        self.groups.insert(group, Some(cached.clone()));
        Ok(Some(cached))
    }

    /// Appends one system message at its seq (the head + 1).
    async fn append_system(
        &mut self,
        conv: &ConversationId,
        message: v1::Message,
    ) -> Result<(), v1::Error> {
        let seq = Seq(message.seq);
        let batch = vec![NewMessage {
            message,
            members: Vec::new(),
        }];
        match crate::timed("append", self.shared.store.append(batch)).await {
            Ok(()) => {
                self.heads.insert(conv.clone(), seq);
                Ok(())
            }
            Err(e) => {
                self.heads.remove(conv);
                if let Some(g) = conv.group_id() {
                    self.groups.remove(&g);
                }
                Err(store_failure(&e))
            }
        }
    }

    /// One group change: checked and stored by the groups service, then written as a
    /// system message at the next seq; from then on the new members apply.
    /// `caller` is `None` for an administrator's change (`change.admin`).
    async fn group_change(
        &mut self,
        msg: BusMessage,
        caller: Option<Caller>,
        change: bus::GroupChange,
    ) {
        let body = match self.try_group_change(caller, change).await {
            Ok(result) => partition_reply::Body::Group(result),
            Err(e) => partition_reply::Body::Error(e),
        };
        reply(&self.shared, &msg, bus::PartitionReply { body: Some(body) }).await;
    }

    async fn try_group_change(
        &mut self,
        caller: Option<Caller>,
        change: bus::GroupChange,
    ) -> Result<v1::GroupResult, v1::Error> {
        let group = GroupId::new(change.group_id)
            .map_err(|_| error(ErrorCode::InvalidArgument, "group_id missing"))?;
        let conv = ConversationId::group(group);
        self.check_partition(&conv)?;
        let before = self.group_opt(group).await?;
        let head = self.head(&conv).await?;
        let applied = self
            .shared
            .groups
            .apply(bus::GroupApply {
                caller: caller.map(|c| bus::Caller {
                    user_id: c.user.get(),
                    device_id: c.device.get(),
                }),
                group_id: group.get(),
                request: change.request,
                next_seq: head.next().get(),
                admin: change.admin,
            })
            .await;
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                // The outcome may be unknown (a timeout): reload the state next time.
                self.groups.remove(&group);
                return Err(e);
            }
        };
        let mut result = applied.result.unwrap_or_default();
        let after = applied.state.map(|s| Arc::new(CachedGroup::new(s)));
        if let Some(event) = applied.event {
            let message = system_message(group, head.next(), event);
            if let Err(e) = self.append_system(&conv, message.clone()).await {
                // Stored by the groups service but not in the log: the next load of the
                // group writes it (see `group_opt`).
                tracing::warn!(%conv, "group change stored, its system message not yet");
                return Err(e);
            }
            result.seq = message.seq;
            // Everyone before and after the change hears of it: the removed see their
            // removal, the added their addition.
            let mut audience: BTreeSet<UserId> = BTreeSet::new();
            for g in before.iter().chain(after.iter()) {
                audience.extend(g.members.iter().copied());
            }
            let audience: Vec<UserId> = audience.into_iter().collect();
            push_message(&self.shared, message, &audience).await;
        }
        if result.pending_approval
            && let Some(caller) = caller
            && let Some(after) = &after
            && before
                .as_ref()
                .is_none_or(|b| b.state.version < after.state.version)
        {
            // A new request to join: the admins decide, so they hear of it.
            let notice = v1::GroupJoinRequested {
                group_id: group.get(),
                conversation_id: conv.as_str().to_owned(),
                user_id: caller.user.get(),
            };
            let bytes = frame(server_frame::Body::JoinRequested(notice));
            for admin in after.state.members.iter().filter(|m| m.admin) {
                push(&self.shared, UserId(admin.user_id), bytes.clone(), 0).await;
            }
        }
        match after {
            Some(after) => {
                self.groups.insert(group, Some(after));
            }
            None => {
                self.groups.remove(&group);
            }
        }
        Ok(result)
    }

    /// Who has received and read message `seq`: cursors of every member who could get it.
    async fn read_by(
        &mut self,
        caller: Caller,
        r: v1::ReadBy,
    ) -> Result<v1::ReadByResult, v1::Error> {
        let conv = parse_conversation(&r.conversation_id)?;
        let dest = dest_of(&conv, caller.user)?;
        self.check_partition(&conv)?;
        // Membership first: a non-member learns nothing, not even how long the log is.
        let group = match dest {
            Dest::Group(g) => {
                let group = self.group(g).await?;
                group.check_member(caller.user)?;
                Some(group)
            }
            Dest::Direct(_) => None,
        };
        let head = self.head(&conv).await?;
        if r.seq == 0 || r.seq > head.get() {
            return Err(error(ErrorCode::NotFound, "no message with this seq"));
        }
        let message = self
            .shared
            .store
            .read_after(&conv, Seq(r.seq - 1), 1)
            .await
            .map_err(|e| store_failure(&e))?
            .into_iter()
            .next()
            .filter(|m| m.seq == r.seq)
            .ok_or_else(|| error(ErrorCode::NotFound, "no message with this seq"))?;
        let sender = UserId(message.sender_user);
        let recipients: Vec<UserId> = match (dest, group) {
            (_, Some(group)) => group
                .state
                .members
                .iter()
                .filter(|m| m.joined_seq <= r.seq && m.user_id != sender.get())
                .map(|m| UserId(m.user_id))
                .collect(),
            (Dest::Direct(other), None) => [caller.user, other]
                .into_iter()
                .filter(|&u| u != sender)
                .collect(),
            (Dest::Group(_), None) => Vec::new(),
        };
        let cursors = self
            .shared
            .store
            .member_cursors(&conv)
            .await
            .map_err(|e| store_failure(&e))?;
        let cursors: HashMap<UserId, (Seq, Seq)> = cursors
            .into_iter()
            .map(|c| (c.user, (c.delivered, c.read)))
            .collect();
        let mut result = v1::ReadByResult {
            conversation_id: conv.as_str().to_owned(),
            seq: r.seq,
            recipients: u32::try_from(recipients.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        for u in recipients {
            match cursors.get(&u) {
                Some(&(_, read)) if read.get() >= r.seq => result.read.push(u.get()),
                Some(&(delivered, _)) if delivered.get() >= r.seq => result.delivered.push(u.get()),
                _ => {}
            }
        }
        Ok(result)
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
        for ((r, conv, dest, _), result) in valid.into_iter().zip(results) {
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
                // In a group, receipts stay with the reader's own devices: senders ask
                // who has read a message (ReadBy) instead of receiving every member's.
                // Someone who blocked the other tells them nothing (not even "read").
                if let Dest::Direct(other) = dest
                    && self
                        .shared
                        .audiences
                        .get(r.caller.user)
                        .await
                        .is_ok_and(|a| !a.blocks(other))
                {
                    push(&self.shared, other, bytes.clone(), 0).await;
                }
                push(&self.shared, r.caller.user, bytes, r.caller.device.get()).await;
            }
        }
    }

    async fn check_receipt(
        &mut self,
        r: &ReceiptReq,
    ) -> Result<(ConversationId, Dest, Seq), v1::Error> {
        let conv = parse_conversation(&r.conversation_id)?;
        let dest = dest_of(&conv, r.caller.user)?;
        self.check_partition(&conv)?;
        if let Dest::Group(g) = dest {
            self.group(g).await?.check_member(r.caller.user)?;
        }
        let head = self.head(&conv).await?;
        Ok((conv, dest, Seq(r.up_to_seq.min(head.get()))))
    }

    async fn typing(&mut self, msg: BusMessage, caller: Caller, t: v1::Typing) {
        let to = match destination(caller, &t.conversation_id, t.to_user) {
            Ok((conv, Dest::Direct(other))) => match self.shared.audiences.get(other).await {
                // Blocked: dropped, as an indicator that expired would be.
                Ok(a) if a.blocks(caller.user) => Ok((conv, Arc::new(Vec::new()))),
                Ok(_) => Ok((conv, Arc::new(vec![other]))),
                Err(e) => Err(e),
            },
            Ok((conv, Dest::Group(g))) => match self.group(g).await {
                Ok(group) => group
                    .check_member(caller.user)
                    .map(|_| (conv, group.members.clone())),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (conv, to) = match to {
            Ok(to) => to,
            Err(e) => {
                reply(&self.shared, &msg, reply_error(e)).await;
                return;
            }
        };
        let event = v1::TypingEvent {
            conversation_id: conv.as_str().to_owned(),
            user_id: caller.user.get(),
            active: t.active,
            state: match v1::ChatState::try_from(t.state) {
                Ok(v1::ChatState::Recording) => v1::ChatState::Recording as i32,
                _ => v1::ChatState::Typing as i32,
            },
            expires_in_ms: if t.active { TYPING_EXPIRES_MS } else { 0 },
        };
        let bytes = frame(server_frame::Body::Typing(event));
        for &user in to.iter().filter(|&&u| u != caller.user) {
            push(&self.shared, user, bytes.clone(), 0).await;
        }
        reply(&self.shared, &msg, bus::PartitionReply { body: None }).await;
    }
}

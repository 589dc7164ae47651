//! The ScyllaDB [`MessageStore`](crate::MessageStore), for cluster mode. It passes the same
//! [`crate::conformance`] suite as [`crate::RedbStore`] (`tests/scylla_conformance.rs`,
//! when `NATTER_TEST_SCYLLA` names a node).
//!
//! # Schema
//!
//! `deploy/cql/schema.cql`, embedded in natter-cql and run statement by statement (all
//! `IF NOT EXISTS`) by [`ScyllaStore::connect`], with the keyspace name and replication
//! from [`ScyllaConfig`] filled in (`NetworkTopologyStrategy` in `local_dc` when it is set,
//! else `SimpleStrategy`):
//!
//! - `messages ((conversation_id, bucket), seq)`, `bucket = seq / 10 000`: the fields of
//!   `v1::Message` as columns, plus a STATIC `head`, the newest seq in that partition.
//!   [`MessageStore::redact`] nulls a row's content columns and sets `deleted` (one
//!   lightweight transaction, `IF EXISTS`); it keeps `client_msg_id` in the row, which
//!   `find_dedupe` checks, but reads return a deleted message without it.
//! - `conversation_heads (conversation_id) → head`: what [`MessageStore::head`] reads
//!   (one read).
//! - `user_conversations (user_id, conversation_id) → last_seq`.
//! - `device_cursors ((user_id, device_id), conversation_id) → delivered_seq, read_seq`.
//! - `member_cursors ((conversation_id), user_id) → delivered_seq, read_seq`: the max of
//!   each user's device cursors in the conversation, what [`MessageStore::member_cursors`]
//!   reads (one partition).
//! - `dedupe ((conversation_id, sender_device, client_msg_id), seq) → message_id,
//!   created_at_ms`, with a 7-day default TTL: one row per seq an append tried for the key
//!   (usually one), so a lookup is one partition read.
//!
//! `conversation_heads`, `user_conversations`, `device_cursors` and `member_cursors` are
//! written only `USING TIMESTAMP <seq>` (never a wall-clock timestamp), which makes every
//! write an idempotent max: the larger seq wins whatever the order of arrival, and a cursor
//! or head can never go down. For `member_cursors` this is also what takes the max over a
//! user's devices: each device's advance writes the user's row, and the highest seq wins.
//!
//! # How `append` is gap-free and duplicate-free
//!
//! 1. **Plan** (no I/O): validate ([`StoreError::Invalid`]), check that each
//!    conversation's messages follow each other and that no dedupe key repeats
//!    ([`StoreError::Conflict`]), and cut each conversation's messages into *chunks*: one
//!    per bucket, at most [`MAX_CHUNK_MESSAGES`] messages and about [`MAX_CHUNK_BYTES`]
//!    (ScyllaDB refuses batches over 1 MiB by default).
//! 2. **Check** against the store before writing anything: every dedupe key (a verified
//!    lookup, as in `find_dedupe` below) and, when the call spans several conversations or
//!    a conversation's first message opens a new bucket, the stored head of each
//!    conversation (read at LOCAL_QUORUM; a mismatch is confirmed at LOCAL_SERIAL). Any
//!    mismatch refuses the whole call with `Conflict`.
//! 3. **Dedupe rows**: each message's `(key, seq)` row.
//! 4. **Commit**: each chunk is ONE conditional batch on its bucket partition,
//!    `UPDATE messages SET head = <last seq> ... IF head = <first seq − 1>` (or
//!    `IF head = null` for a chunk that opens its bucket) plus the chunk's INSERTs. The
//!    lightweight transaction (Paxos, LOCAL_SERIAL) orders it against every other append
//!    to that partition, so of two racing appends for the same seq exactly one applies,
//!    and the rows and the head are stored together or not at all. A chunk opening bucket
//!    b ≥ 1 is sent only after bucket b − 1 was seen full (its head is b·10 000 − 1): in
//!    step 2, or because the previous chunk of the same call filled it. A full bucket can
//!    never change again, so that check cannot go stale, and the log stays gap-free across
//!    bucket boundaries. Conversations commit concurrently, a conversation's chunks in order.
//! 5. **Follow-up writes** for what was committed: `conversation_heads` and each member's
//!    `user_conversations` row.
//!
//! `find_dedupe` reads the key's dedupe rows, then the message stored at each of their
//! seqs (LOCAL_QUORUM, and LOCAL_SERIAL if that shows no match, which also completes a
//! commit still in flight), and answers the original Ack (from the stored message) only
//! for a message that carries the same sender device and client message id. A dedupe row
//! written in step 3 by a call that was then refused or failed therefore stays invisible
//! (and expires with the TTL).
//!
//! ## Guaranteed
//!
//! - Never a gap, never two messages with one seq, and a stored chunk is complete (rows
//!   and head in one Paxos commit).
//! - A call refused with `Conflict` before step 3, or by the first chunk of a
//!   single-conversation call, leaves nothing observable (only the invisible dedupe rows).
//! - A retried send is never stored twice, even after an ambiguous failure (a timeout
//!   while the lightweight transaction may still be running on the server): every seq an
//!   attempt can land at has its dedupe row before the attempt commits, lookups (in
//!   `find_dedupe` and again in step 2) check all of them against the log, and an
//!   attempt still in flight can only land at its seq while the head is just below it,
//!   i.e. before any other append to the conversation, a new attempt included, gets
//!   there. When a commit fails ambiguously, `append` re-reads the chunk's last row at
//!   LOCAL_SERIAL and reports success if it landed after all.
//!
//! ## Not guaranteed (where this differs from [`crate::RedbStore`])
//!
//! - **Atomicity across chunks.** A call spanning several conversations, buckets or chunk
//!   size limits commits chunk by chunk. Step 2 makes refusals happen before any write
//!   when there is one writer per conversation (as the service has), so only a concurrent
//!   writer or a storage failure between two commits can leave part of a call stored.
//!   The error then says "partially stored" and names what was; that part is a complete,
//!   gap-free prefix with its dedupe rows and follow-up writes, so retries get their
//!   original Ack and the rest gets fresh seqs.
//! - **Follow-up writes are not atomic with the commit.** If step 5 fails, `append`
//!   returns [`StoreError::Storage`] although the messages are stored (retries get their
//!   original Ack). Until the conversation's next append, `head()` and the members'
//!   `user_conversations` may lag behind. The next append at the stale head is refused
//!   with `Conflict` and repairs `conversation_heads` from the static heads (read at
//!   LOCAL_SERIAL), so a writer that reloads its head after a failure converges;
//!   `user_conversations` catches up with the conversation's next message.
//! - `find_dedupe` reads its keys independently, not in one snapshot.
//! - `advance_cursor` reads the cursor, then raises it `USING TIMESTAMP seq`: the stored
//!   value is always the max, but two concurrent calls raising the same cursor may both
//!   report `moved`. The device's row and the user's `member_cursors` row are written in
//!   one LOGGED batch (two partitions), so both land or neither does, but a reader may see
//!   one before the other. Nothing is written when the device's cursor does not move, so
//!   device cursors stored before `member_cursors` existed are reflected there only once
//!   the device advances again (there is no backfill).
//!
//! # Driver settings
//!
//! natter-cql's (see its docs): every statement on the hot path is prepared once at
//! connect; default load balancing policy, token-aware, restricted to `local_dc` when it
//! is set; LOCAL_QUORUM for reads and writes, LOCAL_SERIAL for lightweight transactions
//! and serial reads; the configured request timeout; the default retry policy, which
//! retries only statements marked idempotent (reads and the plain or timestamped writes,
//! never a lightweight transaction).
//!
//! On ScyllaDB versions whose tablets do not support lightweight transactions (6.0 up to
//! 2025.3), the keyspace is created with tablets disabled (cluster feature `TABLETS`
//! without `LWT_WITH_TABLETS`). An existing keyspace is used as it is.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
};

use bytes::Bytes;
use futures::FutureExt as _;
use natter_cql::{
    Kind, Read, ReadStatement, bounded, bounded_ok, corrupt, execute, from_cql, lwt_applied,
    prepare, query_all, query_opt, query_paged, storage, to_cql,
};
use natter_proto::{ConversationId, DeviceId, Seq, UserId, v1};
use prost::Message as _;
use scylla::{
    client::session::Session,
    serialize::row::SerializeRow,
    statement::{
        Consistency, SerialConsistency,
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
};

use crate::store::{
    CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage, StoreError,
};

pub use natter_cql::ScyllaConfig;

impl From<natter_cql::Error> for StoreError {
    fn from(e: natter_cql::Error) -> Self {
        match e {
            natter_cql::Error::Storage(e) => StoreError::Storage(e),
            natter_cql::Error::Invalid(e) => StoreError::Invalid(e),
            natter_cql::Error::Corrupt(e) => StoreError::Corrupt(e),
        }
    }
}

/// Seqs per `messages` partition: `bucket = seq / BUCKET_SIZE`.
const BUCKET_SIZE: u64 = 10_000;
/// Most messages in one conditional batch.
const MAX_CHUNK_MESSAGES: usize = 256;
/// About the most bytes in one conditional batch (ScyllaDB's default limit is 1 MiB; one
/// message larger than this still goes alone).
const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// What a message row costs besides its body and text columns (ids, keys, framing).
const ROW_OVERHEAD_BYTES: usize = 128;
/// Most rows one read of the log asks for.
const PAGE_ROWS: usize = 1000;
/// The largest seq (or id) a bigint column holds.
const MAX_SEQ: u64 = i64::MAX as u64;

fn bucket_of(seq: u64) -> u64 {
    seq / BUCKET_SIZE
}

/// The first seq a bucket can hold (seq 0 does not exist, so bucket 0 starts at 1).
fn bucket_first(bucket: u64) -> u64 {
    bucket.saturating_mul(BUCKET_SIZE).max(1)
}

/// The last seq a bucket can hold.
fn bucket_last(bucket: u64) -> u64 {
    bucket
        .saturating_mul(BUCKET_SIZE)
        .saturating_add(BUCKET_SIZE - 1)
}

/// The head a bucket must hold before `seq` is appended to it: `None` if `seq` opens
/// the bucket (it must still be empty), else `seq − 1`.
fn expected_head(seq: u64) -> Option<u64> {
    if seq <= bucket_first(bucket_of(seq)) {
        None
    } else {
        Some(seq - 1)
    }
}

// ---------------------------------------------------------------------------------------
// Planning an append (no I/O)

/// One conditional batch: consecutive messages of one conversation, all in one bucket,
/// committed together with the bucket's head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    bucket: u64,
    /// What the bucket's head must be for the chunk to apply (`None`: empty bucket).
    expected_head: Option<u64>,
    first_seq: u64,
    /// The bucket's head once the chunk applied.
    last_seq: u64,
    /// Estimated size of the batch.
    bytes: usize,
    /// Indices into the caller's batch, in seq order.
    messages: Vec<usize>,
}

/// The messages of one conversation in an `append` call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConversationPlan<'a> {
    conversation: &'a str,
    first_seq: u64,
    chunks: Vec<Chunk>,
}

impl ConversationPlan<'_> {
    /// True if the first message opens bucket b ≥ 1: bucket b − 1 must then be seen full
    /// before committing (the lightweight transaction only checks bucket b is empty).
    fn opens_a_later_bucket(&self) -> bool {
        bucket_of(self.first_seq) > 0 && expected_head(self.first_seq).is_none()
    }
}

fn validate_message(nm: &NewMessage) -> Result<(), StoreError> {
    let m = &nm.message;
    m.conversation_id
        .parse::<ConversationId>()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    if m.seq == 0 || m.sender_device == 0 || m.client_msg_id.is_empty() {
        return Err(StoreError::Invalid(
            "seq, sender_device and client_msg_id must be set".into(),
        ));
    }
    for (what, value) in [
        ("seq", m.seq),
        ("message_id", m.message_id),
        ("sender_user", m.sender_user),
        ("sender_device", m.sender_device),
        ("reply_to_seq", m.reply_to_seq),
        ("created_at_ms", m.created_at_ms),
    ] {
        to_cql(value, what)?;
    }
    for member in &nm.members {
        to_cql(member.get(), "member user id")?;
    }
    Ok(())
}

fn row_bytes(m: &v1::Message) -> usize {
    // A media ref carries its inline preview (a few KB): it counts against the batch.
    let media = m.media.as_ref().map_or(0, |r| r.encoded_len());
    m.body.len() + m.client_msg_id.len() + m.conversation_id.len() + media + ROW_OVERHEAD_BYTES
}

/// Validates the batch, groups it by conversation (in order of first appearance) and
/// cuts each conversation's messages into chunks. Refuses what can be refused without
/// reading the store, message by message like [`crate::RedbStore`].
fn plan_append(batch: &[NewMessage]) -> Result<Vec<ConversationPlan<'_>>, StoreError> {
    let mut plans: Vec<ConversationPlan<'_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashSet<(&str, u64, &str)> = HashSet::new();
    for (i, nm) in batch.iter().enumerate() {
        validate_message(nm)?;
        let m = &nm.message;
        let conv = m.conversation_id.as_str();
        let at = *index.entry(conv).or_insert_with(|| {
            plans.push(ConversationPlan {
                conversation: conv,
                first_seq: m.seq,
                chunks: Vec::new(),
            });
            plans.len() - 1
        });
        let plan = &mut plans[at];
        if let Some(last) = plan.chunks.last().map(|c| c.last_seq)
            && m.seq != last + 1
        {
            return Err(StoreError::Conflict(format!(
                "seq {} in {conv} does not follow {last}",
                m.seq
            )));
        }
        if !keys.insert((conv, m.sender_device, m.client_msg_id.as_str())) {
            return Err(StoreError::Conflict(format!(
                "dedupe key of {conv}/{} is in the batch twice",
                m.seq
            )));
        }
        let bytes = row_bytes(m);
        let bucket = bucket_of(m.seq);
        match plan.chunks.last_mut() {
            Some(c)
                if c.bucket == bucket
                    && c.messages.len() < MAX_CHUNK_MESSAGES
                    && c.bytes + bytes <= MAX_CHUNK_BYTES =>
            {
                c.last_seq = m.seq;
                c.bytes += bytes;
                c.messages.push(i);
            }
            _ => plan.chunks.push(Chunk {
                bucket,
                expected_head: expected_head(m.seq),
                first_seq: m.seq,
                last_seq: m.seq,
                bytes,
                messages: vec![i],
            }),
        }
    }
    Ok(plans)
}

// ---------------------------------------------------------------------------------------
// Rows

/// A row of `messages` as the reads select it.
#[derive(scylla::DeserializeRow)]
struct MessageRow {
    /// Null only in a row made of the partition's static column alone.
    seq: Option<i64>,
    message_id: Option<i64>,
    sender_user: Option<i64>,
    sender_device: Option<i64>,
    client_msg_id: Option<String>,
    kind: Option<i32>,
    body: Option<Bytes>,
    reply_to_seq: Option<i64>,
    created_at_ms: Option<i64>,
    /// A system message's group change, prost-encoded `v1::GroupEvent`.
    event: Option<Bytes>,
    withheld: Option<bool>,
    /// A media message's attachment, prost-encoded `v1::MediaRef`.
    media: Option<Bytes>,
    /// A call's history entry, prost-encoded `v1::CallLog`.
    call: Option<Bytes>,
    /// Deleted for everyone: the content columns are null, `client_msg_id` is kept for
    /// dedupe but not returned.
    deleted: Option<bool>,
}

impl MessageRow {
    /// The stored message (`None` for a static-only row). Absent fields take proto3's
    /// defaults, as in the encoded message.
    fn into_message(self, conversation: &str) -> Result<Option<v1::Message>, StoreError> {
        let Some(seq) = self.seq else {
            return Ok(None);
        };
        let id = |v: Option<i64>, what: &str| from_cql(v.unwrap_or(0), what);
        let deleted = self.deleted.unwrap_or(false);
        let message = v1::Message {
            conversation_id: conversation.to_owned(),
            seq: from_cql(seq, "seq")?,
            message_id: id(self.message_id, "message_id")?,
            sender_user: id(self.sender_user, "sender_user")?,
            sender_device: id(self.sender_device, "sender_device")?,
            client_msg_id: self.client_msg_id.unwrap_or_default(),
            kind: self.kind.unwrap_or(0),
            body: self.body.unwrap_or_default(),
            reply_to_seq: id(self.reply_to_seq, "reply_to_seq")?,
            created_at_ms: id(self.created_at_ms, "created_at_ms")?,
            event: match self.event {
                Some(bytes) if !bytes.is_empty() => {
                    Some(Box::new(v1::GroupEvent::decode(bytes).map_err(|e| {
                        StoreError::Corrupt(format!("group event: {e}"))
                    })?))
                }
                _ => None,
            },
            withheld: self.withheld.unwrap_or(false),
            media: match self.media {
                Some(bytes) if !bytes.is_empty() => {
                    Some(Box::new(v1::MediaRef::decode(bytes).map_err(|e| {
                        StoreError::Corrupt(format!("media ref: {e}"))
                    })?))
                }
                _ => None,
            },
            call: match self.call {
                Some(bytes) if !bytes.is_empty() => {
                    Some(Box::new(v1::CallLog::decode(bytes).map_err(|e| {
                        StoreError::Corrupt(format!("call log: {e}"))
                    })?))
                }
                _ => None,
            },
            deleted,
        };
        // A deleted row keeps its client_msg_id for `find_dedupe`; nobody reads it.
        Ok(Some(if deleted {
            crate::store::redacted(&message)
        } else {
            message
        }))
    }
}

/// The columns of `messages` that identify a stored message as a given send.
#[derive(scylla::DeserializeRow)]
struct MessageKeyRow {
    message_id: Option<i64>,
    sender_device: Option<i64>,
    client_msg_id: Option<String>,
    created_at_ms: Option<i64>,
}

/// What identifies a stored message as a given send.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredKey {
    message_id: u64,
    sender_device: u64,
    client_msg_id: String,
    created_at_ms: u64,
}

/// A dedupe key borrowed from a caller's key or message.
#[derive(Debug, Clone, Copy)]
struct KeyRef<'a> {
    conversation: &'a str,
    sender_device: u64,
    client_msg_id: &'a str,
}

impl<'a> KeyRef<'a> {
    fn of_key(k: &'a DedupeKey) -> Self {
        KeyRef {
            conversation: k.conversation.as_str(),
            sender_device: k.sender_device.get(),
            client_msg_id: &k.client_msg_id,
        }
    }

    fn of_message(m: &'a v1::Message) -> Self {
        KeyRef {
            conversation: &m.conversation_id,
            sender_device: m.sender_device,
            client_msg_id: &m.client_msg_id,
        }
    }
}

/// Bound values of one statement of a batch (the statements differ in shape).
type BoundValues<'a> = Box<dyn SerializeRow + Send + Sync + 'a>;

/// How a conversation's commits in one call ended.
#[derive(Debug)]
struct CommitOutcome {
    /// Chunks applied (a prefix of the plan's).
    committed: usize,
    end: CommitEnd,
}

#[derive(Debug)]
enum CommitEnd {
    AllApplied,
    /// A chunk's condition was false: another append got there first.
    Refused,
    Failed(StoreError),
}

/// A write made after a commit.
#[derive(Debug, Clone, Copy)]
enum FollowUp<'a> {
    Head {
        conversation: &'a str,
        head: u64,
    },
    Listed {
        user: u64,
        conversation: &'a str,
        seq: u64,
    },
}

// ---------------------------------------------------------------------------------------
// Prepared statements

/// Every statement the store runs after connecting.
struct Statements {
    head_hint: PreparedStatement,
    raise_head_hint: PreparedStatement,
    bucket_head: ReadStatement,
    claim_head: PreparedStatement,
    claim_empty_bucket: PreparedStatement,
    insert_message: PreparedStatement,
    messages_after: PreparedStatement,
    messages_before: PreparedStatement,
    message_key: ReadStatement,
    dedupe_seqs: PreparedStatement,
    write_dedupe: PreparedStatement,
    raise_user_conversation: PreparedStatement,
    user_conversations: PreparedStatement,
    cursor: PreparedStatement,
    raise_delivered: PreparedStatement,
    raise_read: PreparedStatement,
    device_cursors: PreparedStatement,
    raise_member_delivered: PreparedStatement,
    raise_member_read: PreparedStatement,
    member_cursors: PreparedStatement,
    message_at: ReadStatement,
    redact: PreparedStatement,
}

/// The columns `insert_message` writes (a new message is never deleted).
const MESSAGE_COLUMNS: &str = "seq, message_id, sender_user, sender_device, client_msg_id, \
                               kind, body, reply_to_seq, created_at_ms, event, withheld, \
                               media, call";
/// The columns the reads select: [`MESSAGE_COLUMNS`] and `deleted`.
const SELECT_COLUMNS: &str = "seq, message_id, sender_user, sender_device, client_msg_id, \
                              kind, body, reply_to_seq, created_at_ms, event, withheld, \
                              media, call, deleted";

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        let p = |cql: String, kind| prepare(session, cql, kind);
        let bucket_head = ReadStatement::prepare(
            session,
            format!(
                "SELECT head FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT 1"
            ),
        )
        .await?;
        let message_key = ReadStatement::prepare(
            session,
            format!(
                "SELECT message_id, sender_device, client_msg_id, created_at_ms FROM {ks}.messages \
                 WHERE conversation_id = ? AND bucket = ? AND seq = ?"
            ),
        )
        .await?;
        let message_at = ReadStatement::prepare(
            session,
            format!(
                "SELECT {SELECT_COLUMNS} FROM {ks}.messages \
                 WHERE conversation_id = ? AND bucket = ? AND seq = ?"
            ),
        )
        .await?;
        Ok(Statements {
            message_at,
            // Conditional, so it never creates a row at a seq that was not appended (a
            // plain UPDATE would), and ordered by Paxos with the appends' commits.
            redact: p(
                format!(
                    "UPDATE {ks}.messages SET body = null, reply_to_seq = null, event = null, \
                     media = null, call = null, deleted = true \
                     WHERE conversation_id = ? AND bucket = ? AND seq = ? IF EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            head_hint: p(
                format!("SELECT head FROM {ks}.conversation_heads WHERE conversation_id = ?"),
                Kind::Read,
            )
            .await?,
            raise_head_hint: p(
                format!(
                    "UPDATE {ks}.conversation_heads USING TIMESTAMP ? SET head = ? \
                     WHERE conversation_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            bucket_head,
            claim_head: p(
                format!(
                    "UPDATE {ks}.messages SET head = ? WHERE conversation_id = ? AND bucket = ? \
                     IF head = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            claim_empty_bucket: p(
                format!(
                    "UPDATE {ks}.messages SET head = ? WHERE conversation_id = ? AND bucket = ? \
                     IF head = null"
                ),
                Kind::Lwt,
            )
            .await?,
            insert_message: p(
                format!(
                    "INSERT INTO {ks}.messages (conversation_id, bucket, {MESSAGE_COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                Kind::Lwt,
            )
            .await?,
            messages_after: p(
                format!(
                    "SELECT {SELECT_COLUMNS} FROM {ks}.messages WHERE conversation_id = ? \
                     AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
                ),
                Kind::Read,
            )
            .await?,
            messages_before: p(
                format!(
                    "SELECT {SELECT_COLUMNS} FROM {ks}.messages WHERE conversation_id = ? \
                     AND bucket = ? AND seq <= ? ORDER BY seq DESC LIMIT ?"
                ),
                Kind::Read,
            )
            .await?,
            message_key,
            dedupe_seqs: p(
                format!(
                    "SELECT seq FROM {ks}.dedupe WHERE conversation_id = ? AND sender_device = ? \
                     AND client_msg_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            write_dedupe: p(
                format!(
                    "INSERT INTO {ks}.dedupe (conversation_id, sender_device, client_msg_id, seq, \
                     message_id, created_at_ms) VALUES (?, ?, ?, ?, ?, ?)"
                ),
                Kind::Write,
            )
            .await?,
            raise_user_conversation: p(
                format!(
                    "UPDATE {ks}.user_conversations USING TIMESTAMP ? SET last_seq = ? \
                     WHERE user_id = ? AND conversation_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            user_conversations: p(
                format!(
                    "SELECT conversation_id, last_seq FROM {ks}.user_conversations \
                     WHERE user_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            cursor: p(
                format!(
                    "SELECT delivered_seq, read_seq FROM {ks}.device_cursors \
                     WHERE user_id = ? AND device_id = ? AND conversation_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            raise_delivered: p(
                format!(
                    "UPDATE {ks}.device_cursors USING TIMESTAMP ? SET delivered_seq = ? \
                     WHERE user_id = ? AND device_id = ? AND conversation_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            raise_read: p(
                format!(
                    "UPDATE {ks}.device_cursors USING TIMESTAMP ? SET delivered_seq = ?, \
                     read_seq = ? WHERE user_id = ? AND device_id = ? AND conversation_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            device_cursors: p(
                format!(
                    "SELECT conversation_id, delivered_seq, read_seq FROM {ks}.device_cursors \
                     WHERE user_id = ? AND device_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            raise_member_delivered: p(
                format!(
                    "UPDATE {ks}.member_cursors USING TIMESTAMP ? SET delivered_seq = ? \
                     WHERE conversation_id = ? AND user_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            raise_member_read: p(
                format!(
                    "UPDATE {ks}.member_cursors USING TIMESTAMP ? SET delivered_seq = ?, \
                     read_seq = ? WHERE conversation_id = ? AND user_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            member_cursors: p(
                format!(
                    "SELECT user_id, delivered_seq, read_seq FROM {ks}.member_cursors \
                     WHERE conversation_id = ?"
                ),
                Kind::Read,
            )
            .await?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The store

/// The ScyllaDB-backed store: one driver session (connection pools to every node) and
/// the prepared statements. Dropping it closes the connections.
pub struct ScyllaStore {
    session: Session,
    keyspace: String,
    st: Statements,
}

impl fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects, creates the keyspace and tables if missing (see the module docs) and
    /// prepares every statement. Fails with [`StoreError::Invalid`] on a bad config and
    /// [`StoreError::Storage`] if the cluster cannot be reached or refuses the schema.
    pub async fn connect(config: ScyllaConfig) -> Result<Arc<ScyllaStore>, StoreError> {
        let session = natter_cql::connect(&config).await?;
        let st = Statements::prepare(&session, &config.keyspace).await?;
        Ok(Arc::new(ScyllaStore {
            session,
            keyspace: config.keyspace,
            st,
        }))
    }

    /// Writes a device's cursor row and its user's `member_cursors` row in one LOGGED
    /// batch: the batchlog replays a batch whose coordinator failed half-way, so the
    /// user's row is never left behind the device's for good (a plain second write could
    /// be lost, and a retried advance finds the device's cursor already raised and writes
    /// nothing). Each statement carries its own `USING TIMESTAMP`, so the batch is an
    /// idempotent max and safe to retry.
    async fn raise_cursors(
        &self,
        device: (&PreparedStatement, impl SerializeRow),
        member: (&PreparedStatement, impl SerializeRow),
        what: &str,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        batch.append_statement(device.0.clone());
        batch.append_statement(member.0.clone());
        self.session
            .batch(&batch, (device.1, member.1))
            .await
            .map_err(|e| storage(what, e))?;
        Ok(())
    }

    // -- heads --------------------------------------------------------------------------

    async fn head_hint(&self, conversation: &str) -> Result<u64, StoreError> {
        let row: Option<(Option<i64>,)> = query_opt(
            &self.session,
            &self.st.head_hint,
            (conversation,),
            "reading a head",
        )
        .await?;
        match row.and_then(|(head,)| head) {
            Some(head) => Ok(from_cql(head, "head")?),
            None => Ok(0),
        }
    }

    async fn raise_head_hint(&self, conversation: &str, head: u64) -> Result<(), StoreError> {
        let head = to_cql(head, "head")?;
        execute(
            &self.session,
            &self.st.raise_head_hint,
            (head, head, conversation),
            "raising a head",
        )
        .await?;
        Ok(())
    }

    /// The static head of one bucket partition (`None`: the bucket is empty).
    async fn bucket_head(
        &self,
        conversation: &str,
        bucket: u64,
        read: Read,
    ) -> Result<Option<u64>, StoreError> {
        let statement = self.st.bucket_head.at(read);
        let row: Option<(Option<i64>,)> = query_opt(
            &self.session,
            statement,
            (conversation, to_cql(bucket, "bucket")?),
            "reading a bucket's head",
        )
        .await?;
        Ok(row
            .and_then(|(head,)| head)
            .map(|head| from_cql(head, "bucket head"))
            .transpose()?)
    }

    /// The true head, from the static heads, starting at the bucket of `from` (a head
    /// known to be reached) and moving on while buckets are full.
    async fn walk_head(
        &self,
        conversation: &str,
        from: u64,
        read: Read,
    ) -> Result<u64, StoreError> {
        let mut bucket = bucket_of(from);
        let mut head = from;
        loop {
            match self.bucket_head(conversation, bucket, read).await? {
                Some(h) if h == bucket_last(bucket) => {
                    head = h;
                    bucket += 1;
                }
                Some(h) => return Ok(h),
                None => return Ok(head),
            }
        }
    }

    /// The head as the log has it (the hint, checked against the static heads).
    async fn current_head(&self, conversation: &str) -> Result<u64, StoreError> {
        let hint = self.head_hint(conversation).await?;
        self.walk_head(conversation, hint, Read::Quorum).await
    }

    /// After a refused append: raises `conversation_heads` to the true head in case a
    /// follow-up write was lost. Best effort; the next refusal tries again.
    async fn repair_head_hint(&self, conversation: &str) {
        let repaired = async {
            let hint = self.head_hint(conversation).await?;
            let truth = self.walk_head(conversation, hint, Read::Serial).await?;
            if truth > hint {
                tracing::info!(conversation, hint, truth, "repairing a lagging head");
                self.raise_head_hint(conversation, truth).await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if let Err(e) = repaired {
            tracing::warn!(conversation, error = %e, "could not check the stored head");
        }
    }

    /// True if the conversation's stored head is `first_seq − 1`, i.e. `first_seq` may be
    /// appended.
    async fn head_precedes(
        &self,
        conversation: &str,
        first_seq: u64,
        read: Read,
    ) -> Result<bool, StoreError> {
        let prev = first_seq.saturating_sub(1);
        let wanted = (prev > 0).then_some(prev);
        if self
            .bucket_head(conversation, bucket_of(prev), read)
            .await?
            != wanted
        {
            return Ok(false);
        }
        if bucket_of(prev) != bucket_of(first_seq) {
            // prev filled its bucket: the next one must still be empty.
            let next = self
                .bucket_head(conversation, bucket_of(first_seq), read)
                .await?;
            return Ok(next.is_none());
        }
        Ok(true)
    }

    /// [`Self::head_precedes`], a "no" from LOCAL_QUORUM confirmed at LOCAL_SERIAL (it
    /// may have missed a commit whose outcome was unknown).
    async fn head_precedes_checked(
        &self,
        conversation: &str,
        first_seq: u64,
    ) -> Result<bool, StoreError> {
        if self
            .head_precedes(conversation, first_seq, Read::Quorum)
            .await?
        {
            return Ok(true);
        }
        self.head_precedes(conversation, first_seq, Read::Serial)
            .await
    }

    // -- dedupe -------------------------------------------------------------------------

    /// The sender key and ids of the message stored at `seq`.
    async fn message_key(
        &self,
        conversation: &str,
        seq: u64,
        read: Read,
    ) -> Result<Option<StoredKey>, StoreError> {
        const WHAT: &str = "reading a message's key";
        let statement = self.st.message_key.at(read);
        let row: Option<MessageKeyRow> = query_opt(
            &self.session,
            statement,
            (
                conversation,
                to_cql(bucket_of(seq), "bucket")?,
                to_cql(seq, "seq")?,
            ),
            WHAT,
        )
        .await?;
        match row {
            None => Ok(None),
            Some(MessageKeyRow {
                message_id: Some(message_id),
                sender_device: Some(sender_device),
                client_msg_id: Some(client_msg_id),
                created_at_ms,
            }) => Ok(Some(StoredKey {
                message_id: from_cql(message_id, "message_id")?,
                sender_device: from_cql(sender_device, "sender_device")?,
                client_msg_id,
                created_at_ms: from_cql(created_at_ms.unwrap_or(0), "created_at_ms")?,
            })),
            Some(_) => Err(corrupt(
                WHAT,
                format_args!("message {conversation}/{seq} lacks its ids"),
            )
            .into()),
        }
    }

    /// The original Ack of a send, verified against the log (see the module docs).
    async fn lookup_dedupe(&self, key: KeyRef<'_>) -> Result<Option<v1::Ack>, StoreError> {
        const WHAT: &str = "reading a dedupe key";
        let rows: Vec<(Option<i64>,)> = query_all(
            &self.session,
            &self.st.dedupe_seqs,
            (
                key.conversation,
                to_cql(key.sender_device, "sender_device")?,
                key.client_msg_id,
            ),
            WHAT,
        )
        .await?;
        let mut seqs = Vec::with_capacity(rows.len());
        for (seq,) in rows {
            seqs.push(from_cql(
                seq.ok_or_else(|| corrupt(WHAT, "null seq"))?,
                "dedupe seq",
            )?);
        }
        for read in [Read::Quorum, Read::Serial] {
            for &seq in &seqs {
                let stored = self.message_key(key.conversation, seq, read).await?;
                if let Some(stored) = stored
                    && stored.sender_device == key.sender_device
                    && stored.client_msg_id == key.client_msg_id
                {
                    return Ok(Some(v1::Ack {
                        client_msg_id: key.client_msg_id.to_owned(),
                        conversation_id: key.conversation.to_owned(),
                        seq,
                        message_id: stored.message_id,
                        created_at_ms: stored.created_at_ms,
                    }));
                }
            }
        }
        Ok(None)
    }

    async fn lookup_all(&self, keys: Vec<KeyRef<'_>>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
        let tasks = keys
            .into_iter()
            .map(|k| self.lookup_dedupe(k).boxed())
            .collect();
        bounded_ok(tasks).await
    }

    async fn write_dedupe(&self, m: &v1::Message) -> Result<(), StoreError> {
        execute(
            &self.session,
            &self.st.write_dedupe,
            (
                m.conversation_id.as_str(),
                to_cql(m.sender_device, "sender_device")?,
                m.client_msg_id.as_str(),
                to_cql(m.seq, "seq")?,
                to_cql(m.message_id, "message_id")?,
                to_cql(m.created_at_ms, "created_at_ms")?,
            ),
            "writing a dedupe key",
        )
        .await?;
        Ok(())
    }

    // -- append -------------------------------------------------------------------------

    /// Step 2: refuses the call if a dedupe key is stored or a head is not where the
    /// batch continues.
    async fn check_against_store(
        &self,
        batch: &[NewMessage],
        plans: &[ConversationPlan<'_>],
    ) -> Result<(), StoreError> {
        let several = plans.len() > 1;
        let dedupe = self.lookup_all(
            batch
                .iter()
                .map(|nm| KeyRef::of_message(&nm.message))
                .collect(),
        );
        let heads = bounded_ok(
            plans
                .iter()
                .filter(|p| several || p.opens_a_later_bucket())
                .map(|p| {
                    async move {
                        let ok = self
                            .head_precedes_checked(p.conversation, p.first_seq)
                            .await?;
                        Ok::<_, StoreError>((p.conversation, p.first_seq, ok))
                    }
                    .boxed()
                })
                .collect(),
        );
        let (found, heads) = futures::future::join(dedupe, heads).await;
        if let Some(nm) = batch.iter().zip(found?).find_map(|(nm, f)| f.map(|_| nm)) {
            return Err(StoreError::Conflict(format!(
                "dedupe key of {}/{} exists",
                nm.message.conversation_id, nm.message.seq
            )));
        }
        let stale: Vec<(&str, u64)> = heads?
            .into_iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(c, first, _)| (c, first))
            .collect();
        if let Some(&(conversation, first)) = stale.first() {
            for (c, _) in &stale {
                self.repair_head_hint(c).await;
            }
            return Err(StoreError::Conflict(format!(
                "seq {first} in {conversation} does not follow the stored head"
            )));
        }
        Ok(())
    }

    /// One chunk's conditional batch. `Ok(false)`: its condition was false.
    async fn commit_chunk(
        &self,
        batch: &[NewMessage],
        conversation: &str,
        chunk: &Chunk,
    ) -> Result<bool, StoreError> {
        let bucket = to_cql(chunk.bucket, "bucket")?;
        let new_head = to_cql(chunk.last_seq, "seq")?;
        let mut statements = Batch::new(BatchType::Logged);
        statements.set_consistency(Consistency::LocalQuorum);
        statements.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        statements.set_is_idempotent(false);
        let mut values: Vec<BoundValues<'_>> = Vec::with_capacity(chunk.messages.len() + 1);
        match chunk.expected_head {
            Some(expected) => {
                statements.append_statement(self.st.claim_head.clone());
                values.push(Box::new((
                    new_head,
                    conversation,
                    bucket,
                    to_cql(expected, "head")?,
                )));
            }
            None => {
                statements.append_statement(self.st.claim_empty_bucket.clone());
                values.push(Box::new((new_head, conversation, bucket)));
            }
        }
        for &i in &chunk.messages {
            let m = &batch[i].message;
            statements.append_statement(self.st.insert_message.clone());
            values.push(Box::new((
                conversation,
                bucket,
                to_cql(m.seq, "seq")?,
                to_cql(m.message_id, "message_id")?,
                to_cql(m.sender_user, "sender_user")?,
                to_cql(m.sender_device, "sender_device")?,
                m.client_msg_id.as_str(),
                m.kind,
                &m.body,
                to_cql(m.reply_to_seq, "reply_to_seq")?,
                to_cql(m.created_at_ms, "created_at_ms")?,
                m.event.as_ref().map(|e| e.encode_to_vec()),
                m.withheld,
                m.media.as_ref().map(|r| r.encode_to_vec()),
                m.call.as_ref().map(|c| c.encode_to_vec()),
            )));
        }
        match self.session.batch(&statements, values).await {
            Ok(result) => Ok(lwt_applied(result)?),
            Err(e) => {
                let failed: StoreError = storage(
                    format_args!(
                        "committing {conversation} {}..={}",
                        chunk.first_seq, chunk.last_seq
                    ),
                    e,
                )
                .into();
                // The outcome is unknown: the transaction may have been applied. A serial
                // read finds it if it was. If it is still running on the server it may
                // land later; the call then reports the failure, and the dedupe rows
                // written in step 3 let retries find it.
                let Some(&last) = chunk.messages.last() else {
                    return Err(failed);
                };
                let last = &batch[last].message;
                match self.message_key(conversation, last.seq, Read::Serial).await {
                    Ok(Some(stored))
                        if stored.message_id == last.message_id
                            && stored.sender_device == last.sender_device
                            && stored.client_msg_id == last.client_msg_id =>
                    {
                        tracing::info!(conversation, seq = last.seq, "an ambiguous commit applied");
                        Ok(true)
                    }
                    _ => Err(failed),
                }
            }
        }
    }

    /// Step 4 for one conversation: its chunks in order, stopping at the first that does
    /// not apply.
    async fn commit_conversation(
        &self,
        batch: &[NewMessage],
        plan: &ConversationPlan<'_>,
    ) -> CommitOutcome {
        let mut committed = 0;
        for chunk in &plan.chunks {
            let end = match self.commit_chunk(batch, plan.conversation, chunk).await {
                Ok(true) => {
                    committed += 1;
                    continue;
                }
                Ok(false) => CommitEnd::Refused,
                Err(e) => CommitEnd::Failed(e),
            };
            return CommitOutcome { committed, end };
        }
        CommitOutcome {
            committed,
            end: CommitEnd::AllApplied,
        }
    }

    async fn follow_up(&self, write: FollowUp<'_>) -> Result<(), StoreError> {
        match write {
            FollowUp::Head { conversation, head } => self.raise_head_hint(conversation, head).await,
            FollowUp::Listed {
                user,
                conversation,
                seq,
            } => {
                let seq = to_cql(seq, "seq")?;
                execute(
                    &self.session,
                    &self.st.raise_user_conversation,
                    (seq, seq, to_cql(user, "user id")?, conversation),
                    "listing a conversation",
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Step 5, then the call's result.
    async fn finish(
        &self,
        batch: &[NewMessage],
        plans: &[ConversationPlan<'_>],
        outcomes: Vec<CommitOutcome>,
    ) -> Result<(), StoreError> {
        let mut writes: Vec<FollowUp<'_>> = Vec::new();
        let mut listed: HashMap<(u64, &str), u64> = HashMap::new();
        let mut stored: Vec<String> = Vec::new();
        let mut refused: Vec<&str> = Vec::new();
        let mut failures: Vec<StoreError> = Vec::new();
        for (plan, outcome) in plans.iter().zip(outcomes) {
            let applied = &plan.chunks[..outcome.committed.min(plan.chunks.len())];
            if let Some(last) = applied.last() {
                writes.push(FollowUp::Head {
                    conversation: plan.conversation,
                    head: last.last_seq,
                });
                stored.push(format!(
                    "{} {}..={}",
                    plan.conversation, plan.first_seq, last.last_seq
                ));
                for &i in applied.iter().flat_map(|c| &c.messages) {
                    let nm = &batch[i];
                    for member in &nm.members {
                        let seq = listed.entry((member.get(), plan.conversation)).or_insert(0);
                        *seq = (*seq).max(nm.message.seq);
                    }
                }
            }
            match outcome.end {
                CommitEnd::AllApplied => {}
                CommitEnd::Refused => refused.push(plan.conversation),
                CommitEnd::Failed(e) => failures.push(e),
            }
        }
        writes.extend(
            listed
                .into_iter()
                .map(|((user, conversation), seq)| FollowUp::Listed {
                    user,
                    conversation,
                    seq,
                }),
        );
        let follow_up_failure = bounded_ok(
            writes
                .into_iter()
                .map(|w| self.follow_up(w).boxed())
                .collect(),
        )
        .await
        .err();
        for conversation in &refused {
            self.repair_head_hint(conversation).await;
        }

        if refused.is_empty() && failures.is_empty() {
            return match follow_up_failure {
                None => Ok(()),
                Some(e) => Err(StoreError::Storage(format!(
                    "messages stored, but updating heads or conversation lists failed \
                     (retries get their original Ack): {e}"
                ))),
            };
        }
        let refusal = (!refused.is_empty()).then(|| {
            format!(
                "a seq does not follow the stored head in {}",
                refused.join(", ")
            )
        });
        if stored.is_empty() {
            // Nothing of the call was applied.
            return Err(match failures.into_iter().next() {
                Some(failure) => failure,
                None => StoreError::Conflict(refusal.unwrap_or_default()),
            });
        }
        let reason = failures
            .first()
            .map(ToString::to_string)
            .or(refusal)
            .unwrap_or_default();
        let follow_up = follow_up_failure.map_or_else(String::new, |e| {
            format!(" (and updating heads or lists failed: {e})")
        });
        let message = format!(
            "partially stored: {} were stored{follow_up}, the rest was not: {reason}",
            stored.join(", ")
        );
        Err(if failures.is_empty() {
            StoreError::Conflict(message)
        } else {
            StoreError::Storage(message)
        })
    }

    /// Reads one bucket's messages in `statement`'s order.
    async fn read_bucket(
        &self,
        statement: &PreparedStatement,
        conversation: &str,
        bucket: u64,
        bound: u64,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        let limit = i32::try_from(limit.min(PAGE_ROWS))
            .map_err(|_| StoreError::Invalid(format!("page of {limit} rows")))?;
        let rows: Vec<MessageRow> = query_all(
            &self.session,
            statement,
            (
                conversation,
                to_cql(bucket, "bucket")?,
                to_cql(bound, "seq")?,
                limit,
            ),
            "reading messages",
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(m) = row.into_message(conversation)? {
                out.push(m);
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl MessageStore for ScyllaStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let plans = plan_append(&batch)?;
        self.check_against_store(&batch, &plans).await?;
        bounded_ok(
            batch
                .iter()
                .map(|nm| self.write_dedupe(&nm.message).boxed())
                .collect(),
        )
        .await?;
        let outcomes = bounded(
            plans
                .iter()
                .map(|p| self.commit_conversation(&batch, p).boxed())
                .collect(),
        )
        .await;
        self.finish(&batch, &plans, outcomes).await
    }

    async fn head(&self, conversation: &ConversationId) -> Result<Seq, StoreError> {
        self.head_hint(conversation.as_str()).await.map(Seq)
    }

    async fn find_dedupe(&self, keys: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
        self.lookup_all(keys.iter().map(KeyRef::of_key).collect())
            .await
    }

    async fn read_after(
        &self,
        conversation: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        let conv = conversation.as_str();
        let mut cursor = after.get();
        let mut out = Vec::new();
        while out.len() < limit && cursor < MAX_SEQ {
            let bucket = bucket_of(cursor + 1);
            let want = (limit - out.len()).min(PAGE_ROWS);
            let page = self
                .read_bucket(&self.st.messages_after, conv, bucket, cursor, want)
                .await?;
            let got = page.len();
            for m in page {
                if m.seq <= cursor {
                    return Err(corrupt("reading messages", "rows out of order").into());
                }
                cursor = m.seq;
                out.push(m);
            }
            // A short page ends the log, unless it ended exactly at a full bucket.
            if got < want && !(got > 0 && cursor == bucket_last(bucket)) {
                break;
            }
        }
        Ok(out)
    }

    async fn read_before(
        &self,
        conversation: &ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        if limit == 0 || before == Seq(1) {
            return Ok(Vec::new());
        }
        let conv = conversation.as_str();
        let head = self.current_head(conv).await?;
        let mut upper = match before.get() {
            0 => head,
            b => (b - 1).min(head),
        };
        let mut out = Vec::new();
        while out.len() < limit && upper > 0 {
            let bucket = bucket_of(upper);
            let want = (limit - out.len()).min(PAGE_ROWS);
            let page = self
                .read_bucket(&self.st.messages_before, conv, bucket, upper, want)
                .await?;
            let got = page.len();
            for m in page {
                if m.seq > upper || m.seq == 0 {
                    return Err(corrupt("reading messages", "rows out of order").into());
                }
                upper = m.seq - 1;
                out.push(m);
            }
            if got < want {
                // Nothing older in this bucket: go on in the previous one.
                if bucket == 0 {
                    break;
                }
                upper = bucket_first(bucket) - 1;
            }
        }
        out.reverse();
        Ok(out)
    }

    async fn user_conversations(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        const WHAT: &str = "listing a user's conversations";
        let rows: Vec<(String, Option<i64>)> = query_paged(
            &self.session,
            &self.st.user_conversations,
            (to_cql(user.get(), "user id")?,),
            WHAT,
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (conversation, last_seq) in rows {
            let Some(last_seq) = last_seq else { continue };
            let conversation = conversation
                .parse::<ConversationId>()
                .map_err(|e| corrupt(WHAT, e))?;
            out.push((conversation, Seq(from_cql(last_seq, "last_seq")?)));
        }
        Ok(out)
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        conversation: &ConversationId,
        kind: v1::ReceiptKind,
        seq: Seq,
    ) -> Result<CursorAdvance, StoreError> {
        if kind == v1::ReceiptKind::Unspecified {
            return Err(StoreError::Invalid("receipt kind unspecified".into()));
        }
        let (user, device) = (
            to_cql(user.get(), "user id")?,
            to_cql(device.get(), "device id")?,
        );
        let value = to_cql(seq.get(), "seq")?;
        let conv = conversation.as_str();
        let row: Option<(Option<i64>, Option<i64>)> = query_opt(
            &self.session,
            &self.st.cursor,
            (user, device, conv),
            "reading a cursor",
        )
        .await?;
        let (delivered, read) = match row {
            Some((delivered, read)) => (
                from_cql(delivered.unwrap_or(0), "delivered_seq")?,
                from_cql(read.unwrap_or(0), "read_seq")?,
            ),
            None => (0, 0),
        };
        let seq = seq.get();
        let advance = match kind {
            v1::ReceiptKind::Read => CursorAdvance {
                seq: Seq(read.max(seq)),
                moved: seq > read,
            },
            _ => CursorAdvance {
                seq: Seq(delivered.max(seq)),
                moved: seq > delivered,
            },
        };
        // READ raises DELIVERED too; the timestamps keep each column at its max, in the
        // device's row and in the user's (where the user's other devices write as well,
        // so the highest seq of any device wins there).
        if kind == v1::ReceiptKind::Read && (seq > read || seq > delivered) {
            self.raise_cursors(
                (
                    &self.st.raise_read,
                    (value, value, value, user, device, conv),
                ),
                (
                    &self.st.raise_member_read,
                    (value, value, value, conv, user),
                ),
                "raising a read cursor",
            )
            .await?;
        } else if kind == v1::ReceiptKind::Delivered && seq > delivered {
            self.raise_cursors(
                (&self.st.raise_delivered, (value, value, user, device, conv)),
                (&self.st.raise_member_delivered, (value, value, conv, user)),
                "raising a delivered cursor",
            )
            .await?;
        }
        Ok(advance)
    }

    async fn device_cursors(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Vec<DeviceCursor>, StoreError> {
        const WHAT: &str = "listing a device's cursors";
        let rows: Vec<(String, Option<i64>, Option<i64>)> = query_paged(
            &self.session,
            &self.st.device_cursors,
            (
                to_cql(user.get(), "user id")?,
                to_cql(device.get(), "device id")?,
            ),
            WHAT,
        )
        .await?;
        rows.into_iter()
            .map(|(conversation, delivered, read)| {
                Ok(DeviceCursor {
                    conversation: conversation
                        .parse::<ConversationId>()
                        .map_err(|e| corrupt(WHAT, e))?,
                    delivered: Seq(from_cql(delivered.unwrap_or(0), "delivered_seq")?),
                    read: Seq(from_cql(read.unwrap_or(0), "read_seq")?),
                })
            })
            .collect()
    }

    async fn redact(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<v1::Message>, StoreError> {
        if seq == Seq::ZERO {
            return Err(StoreError::Invalid("seq 0 names no message".into()));
        }
        let conv = conversation.as_str();
        let key = (
            conv,
            to_cql(bucket_of(seq.get()), "bucket")?,
            to_cql(seq.get(), "seq")?,
        );
        let result = self
            .session
            .execute_unpaged(&self.st.redact, key)
            .await
            .map_err(|e| storage(format_args!("deleting {conv}/{seq}"), e))?;
        if !lwt_applied(result)? {
            // IF EXISTS was false: no message at this seq.
            return Ok(None);
        }
        // Applied at LOCAL_QUORUM: a LOCAL_QUORUM read sees it.
        let row: Option<MessageRow> = query_opt(
            &self.session,
            self.st.message_at.at(Read::Quorum),
            key,
            "reading a deleted message",
        )
        .await?;
        match row {
            Some(row) => row.into_message(conv),
            None => Err(corrupt(
                "reading a deleted message",
                format_args!("{conv}/{seq} vanished after it was deleted"),
            )
            .into()),
        }
    }

    async fn member_cursors(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemberCursor>, StoreError> {
        const WHAT: &str = "listing a conversation's member cursors";
        // One partition, clustered by user id: the rows come ordered by user (bigint
        // order is numeric order, as ids stay below 2^63), fetched page by page.
        let rows: Vec<(i64, Option<i64>, Option<i64>)> = query_paged(
            &self.session,
            &self.st.member_cursors,
            (conversation.as_str(),),
            WHAT,
        )
        .await?;
        rows.into_iter()
            .map(|(user, delivered, read)| {
                Ok(MemberCursor {
                    user: UserId(from_cql(user, "user id")?),
                    delivered: Seq(from_cql(delivered.unwrap_or(0), "delivered_seq")?),
                    read: Seq(from_cql(read.unwrap_or(0), "read_seq")?),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(a: u64, b: u64) -> ConversationId {
        ConversationId::direct(UserId(a), UserId(b)).expect("distinct users")
    }

    fn message(c: &ConversationId, seq: u64, body_len: usize) -> NewMessage {
        NewMessage {
            message: v1::Message {
                conversation_id: c.as_str().to_owned(),
                seq,
                message_id: 1000 + seq,
                sender_user: 1,
                sender_device: 7,
                client_msg_id: format!("c{seq}"),
                kind: 1,
                body: Bytes::from(vec![0u8; body_len]),
                reply_to_seq: 0,
                created_at_ms: 1_700_000_000_000,
                event: None,
                withheld: false,
                media: None,
                call: None,
                deleted: false,
            },
            members: c.direct_members().expect("direct").to_vec(),
        }
    }

    fn run(c: &ConversationId, seqs: std::ops::RangeInclusive<u64>) -> Vec<NewMessage> {
        seqs.map(|s| message(c, s, 10)).collect()
    }

    #[test]
    fn bucket_arithmetic() {
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(9_999), 0);
        assert_eq!(bucket_of(10_000), 1);
        assert_eq!(bucket_of(25_001), 2);
        assert_eq!(bucket_first(0), 1, "seq 0 does not exist");
        assert_eq!(bucket_first(1), 10_000);
        assert_eq!(bucket_last(0), 9_999);
        assert_eq!(bucket_last(1), 19_999);
        assert_eq!(bucket_of(MAX_SEQ), MAX_SEQ / BUCKET_SIZE);
        assert!(
            bucket_last(bucket_of(MAX_SEQ)) >= MAX_SEQ,
            "no overflow at the top"
        );
        assert_eq!(
            expected_head(0),
            None,
            "seq 0 is refused earlier; no underflow"
        );
        assert_eq!(expected_head(1), None);
        assert_eq!(expected_head(2), Some(1));
        assert_eq!(expected_head(9_999), Some(9_998));
        assert_eq!(expected_head(10_000), None);
        assert_eq!(expected_head(10_001), Some(10_000));
    }

    #[test]
    fn a_batch_crossing_a_bucket_boundary_is_split_there() {
        let c = conv(1, 2);
        let batch = run(&c, 9_998..=10_002);
        let plans = plan_append(&batch).expect("plan");
        assert_eq!(plans.len(), 1);
        let p = &plans[0];
        assert_eq!((p.conversation, p.first_seq), (c.as_str(), 9_998));
        let shape: Vec<_> = p
            .chunks
            .iter()
            .map(|ch| {
                (
                    ch.bucket,
                    ch.expected_head,
                    ch.first_seq,
                    ch.last_seq,
                    ch.messages.clone(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, Some(9_997), 9_998, 9_999, vec![0, 1]),
                (1, None, 10_000, 10_002, vec![2, 3, 4]),
            ]
        );
        assert!(!p.opens_a_later_bucket());
    }

    #[test]
    fn a_batch_opening_a_bucket_needs_the_previous_one_checked() {
        let c = conv(1, 2);
        let plans_at = |range| {
            let batch = run(&c, range);
            plan_append(&batch).expect("plan")[0].opens_a_later_bucket()
        };
        assert!(plans_at(10_000..=10_001));
        assert!(plans_at(20_000..=20_000));
        assert!(!plans_at(1..=3), "bucket 0 has no predecessor");
        assert!(!plans_at(10_001..=10_002));
    }

    #[test]
    fn large_batches_are_cut_by_size_and_count() {
        let c = conv(3, 4);
        // 60 KiB bodies: four fit in one 256 KiB chunk.
        let big: Vec<NewMessage> = (5..=14).map(|s| message(&c, s, 60 * 1024)).collect();
        let plans = plan_append(&big).expect("plan");
        let chunks = &plans[0].chunks;
        let sizes: Vec<usize> = chunks.iter().map(|ch| ch.messages.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let expected: Vec<Option<u64>> = chunks.iter().map(|ch| ch.expected_head).collect();
        assert_eq!(
            expected,
            vec![Some(4), Some(8), Some(12)],
            "each chunk continues the last"
        );
        assert!(chunks.iter().all(|ch| ch.bytes <= MAX_CHUNK_BYTES));

        let many = run(&c, 1..=600);
        let plans = plan_append(&many).expect("plan");
        let sizes: Vec<usize> = plans[0].chunks.iter().map(|ch| ch.messages.len()).collect();
        assert_eq!(sizes, vec![256, 256, 88]);

        // A single message over the byte cap still goes, alone.
        let huge = vec![message(&c, 1, MAX_CHUNK_BYTES * 2)];
        assert_eq!(plan_append(&huge).expect("plan")[0].chunks.len(), 1);
    }

    #[test]
    fn interleaved_conversations_keep_their_order() {
        let (a, b) = (conv(1, 2), conv(3, 4));
        let batch = vec![
            message(&a, 4, 1),
            message(&b, 1, 1),
            message(&a, 5, 1),
            message(&b, 2, 1),
        ];
        let plans = plan_append(&batch).expect("plan");
        let summary: Vec<_> = plans
            .iter()
            .map(|p| (p.conversation, p.first_seq, p.chunks[0].messages.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![(a.as_str(), 4, vec![0, 2]), (b.as_str(), 1, vec![1, 3])]
        );
        assert_eq!(plans[1].chunks[0].expected_head, None);
    }

    #[test]
    fn planning_refuses_what_needs_no_read() {
        let c = conv(1, 2);
        let gap = vec![message(&c, 2, 1), message(&c, 4, 1)];
        assert!(matches!(plan_append(&gap), Err(StoreError::Conflict(_))));
        let repeat = vec![message(&c, 2, 1), message(&c, 2, 1)];
        assert!(matches!(plan_append(&repeat), Err(StoreError::Conflict(_))));
        let mut same_key = vec![message(&c, 2, 1), message(&c, 3, 1)];
        same_key[1].message.client_msg_id = same_key[0].message.client_msg_id.clone();
        assert!(matches!(
            plan_append(&same_key),
            Err(StoreError::Conflict(_))
        ));

        let invalid = |edit: fn(&mut NewMessage)| {
            let mut nm = message(&c, 1, 1);
            edit(&mut nm);
            matches!(plan_append(&[nm]), Err(StoreError::Invalid(_)))
        };
        assert!(invalid(|nm| nm.message.seq = 0));
        assert!(invalid(|nm| nm.message.sender_device = 0));
        assert!(invalid(|nm| nm.message.client_msg_id.clear()));
        assert!(invalid(|nm| nm.message.conversation_id = "x.1".into()));
        assert!(invalid(|nm| nm.message.message_id = 1 << 63));
        assert!(invalid(|nm| nm.message.seq = u64::MAX));
        assert!(invalid(|nm| nm.members.push(UserId(u64::MAX))));
        assert_eq!(plan_append(&[]).expect("empty"), Vec::new());
    }
}

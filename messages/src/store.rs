//! The [`MessageStore`] trait: everything the messages service keeps durably (conversation
//! logs, dedupe keys, each user's conversations, each device's cursors and, per
//! conversation, each user's cursors). Implementations:
//! [`crate::RedbStore`] (embedded); a ScyllaDB store must pass the same
//! [`crate::conformance`] suite.

use natter_proto::{ConversationId, DeviceId, Seq, UserId, v1};

/// A message ready to be stored: `seq`, `message_id` and `created_at_ms` are assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub message: v1::Message,
    /// Every member of the conversation: each gets the conversation listed with this head.
    pub members: Vec<UserId>,
}

/// What makes a send a retry of an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub conversation: ConversationId,
    pub sender_device: DeviceId,
    pub client_msg_id: String,
}

/// Where one device stands in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCursor {
    pub conversation: ConversationId,
    pub delivered: Seq,
    pub read: Seq,
}

/// Where one user stands in one conversation: the highest cursor of any of their devices.
/// Kept by [`MessageStore::advance_cursor`] so that "read by" needs one read per
/// conversation, not one per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberCursor {
    pub user: UserId,
    pub delivered: Seq,
    pub read: Seq,
}

/// The result of [`MessageStore::advance_cursor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorAdvance {
    /// The value the cursor of the asked kind holds now.
    pub seq: Seq,
    /// True if this call raised it.
    pub moved: bool,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, transaction, ...). Nothing of the call was stored.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The write contradicts what is stored: a seq that is not head + 1, or a dedupe key
    /// that already exists. Nothing of the call was stored.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The arguments are malformed (e.g. seq 0, an unparsable conversation id).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// The call was not attempted: the store has been failing and the circuit breaker in
    /// front of it ([`crate::Breaker`]) is open. Nothing of the call was stored; retrying
    /// later is safe.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Durable state of the messages service. All methods are safe to call concurrently; the
/// service keeps one writer per conversation, the store checks it anyway.
#[async_trait::async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores the batch atomically and durably (on disk, fsynced) before returning `Ok`:
    /// the messages, their dedupe keys (conversation, sender_device, client_msg_id) →
    /// (seq, message_id, created_at_ms), and for each member the conversation's head in
    /// their list (max of old and new). Within a batch and against what is stored, the
    /// messages of each conversation must continue its log gap-free (seq = head + 1, in
    /// batch order) and their dedupe keys must be new; otherwise the whole batch is refused
    /// with [`StoreError::Conflict`] and nothing is stored. An empty batch is a no-op.
    async fn append(&self, batch: Vec<NewMessage>) -> Result<(), StoreError>;

    /// The newest seq of the conversation (0 if it has no messages).
    async fn head(&self, conversation: &ConversationId) -> Result<Seq, StoreError>;

    /// The original Ack of each key (`None` if unknown), in the order of `keys`, read in
    /// one snapshot.
    async fn find_dedupe(&self, keys: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError>;

    /// Up to `limit` messages with seq > `after`, ascending.
    async fn read_after(
        &self,
        conversation: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError>;

    /// The (up to) `limit` newest messages with seq < `before` (`Seq::ZERO` = no bound),
    /// returned ascending.
    async fn read_before(
        &self,
        conversation: &ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError>;

    /// Every conversation the user is a member of that has messages, with its head,
    /// ordered by conversation id.
    async fn user_conversations(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError>;

    /// Raises the device's cursor of `kind` in the conversation to `seq` (max semantics:
    /// never lowers it), durably before returning. A READ cursor also raises the DELIVERED
    /// one (what was read was received). The user's [`MemberCursor`] of the conversation
    /// is raised the same way (to the max over their devices), in the same write. `kind`
    /// UNSPECIFIED is [`StoreError::Invalid`]. The returned [`CursorAdvance`] is about the
    /// device's cursor.
    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        conversation: &ConversationId,
        kind: v1::ReceiptKind,
        seq: Seq,
    ) -> Result<CursorAdvance, StoreError>;

    /// Every cursor of the device, ordered by conversation id.
    async fn device_cursors(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Vec<DeviceCursor>, StoreError>;

    /// Every user with a cursor in the conversation (the max over their devices), ordered
    /// by user id.
    async fn member_cursors(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemberCursor>, StoreError>;

    /// Deletes message `seq` of the conversation for everyone (moderation), durably before
    /// returning: from then on every read returns it as [`redacted`] makes it (its place
    /// and ids kept, `deleted` set, no content). Returns the message as stored now, or
    /// `None` if the conversation has no message `seq`. Idempotent: redacting a deleted
    /// message changes nothing and returns it again. Its dedupe key stays, so a retried
    /// send still finds its original Ack and is not stored again. Seq 0 is
    /// [`StoreError::Invalid`].
    async fn redact(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<v1::Message>, StoreError>;
}

/// A message deleted for everyone: it keeps its place in the log (conversation, seq,
/// message_id), who sent it and when (sender_user, sender_device, created_at_ms), its
/// kind and its `withheld` flag, and loses everything else: body, media (so it no longer
/// grants access to the media), call entry, group event, reply_to_seq and client_msg_id.
pub fn redacted(message: &v1::Message) -> v1::Message {
    v1::Message {
        conversation_id: message.conversation_id.clone(),
        seq: message.seq,
        message_id: message.message_id,
        sender_user: message.sender_user,
        sender_device: message.sender_device,
        kind: message.kind,
        created_at_ms: message.created_at_ms,
        withheld: message.withheld,
        deleted: true,
        ..Default::default()
    }
}

//! The embedded [`MessageStore`]: one redb file. Writes go through one writer thread that
//! group-commits: it drains every queued write (up to a cap), applies them in ONE write
//! transaction, commits it with immediate durability (fsync) and only then answers each
//! caller. Reads run on the blocking pool, each in its own read transaction (a snapshot).

use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    path::Path,
    sync::Arc,
    thread::JoinHandle,
};

use natter_proto::{ConversationId, DeviceId, Seq, UserId, v1};
use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition,
    TableHandle as _, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use crate::store::{
    CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage, StoreError,
};

/// (conversation, seq) → prost-encoded `v1::Message`.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (conversation, sender_device, client_msg_id) → (seq, message_id, created_at_ms).
const DEDUPE: TableDefinition<(&str, u64, &str), (u64, u64, u64)> = TableDefinition::new("dedupe");
/// (user, conversation) → head.
const USER_CONVERSATIONS: TableDefinition<(u64, &str), u64> =
    TableDefinition::new("user_conversations");
/// (user, device, conversation) → (delivered, read).
const CURSORS: TableDefinition<(u64, u64, &str), (u64, u64)> = TableDefinition::new("cursors");
/// (conversation, user) → (delivered, read): the max of the user's rows in [`CURSORS`] for
/// that conversation, written in the same transaction as they are. Keyed by conversation
/// first so that "read by" is one range read.
const MEMBER_CURSORS: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("member_cursors");

/// Writes queued for the writer thread (each carries a whole caller batch).
const WRITE_QUEUE: usize = 1024;
/// One group commit takes at most this many queued writes...
const GROUP_MAX_OPS: usize = 4096;
/// ...or about this many messages.
const GROUP_MAX_MESSAGES: usize = 16_384;

fn storage(e: impl Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

enum Op {
    Append {
        batch: Vec<NewMessage>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Cursor {
        user: u64,
        device: u64,
        conversation: String,
        kind: v1::ReceiptKind,
        seq: u64,
        done: oneshot::Sender<Result<CursorAdvance, StoreError>>,
    },
    Redact {
        conversation: String,
        seq: u64,
        done: oneshot::Sender<Result<Option<v1::Message>, StoreError>>,
    },
}

impl Op {
    fn weight(&self) -> usize {
        match self {
            Op::Append { batch, .. } => batch.len().max(1),
            Op::Cursor { .. } | Op::Redact { .. } => 1,
        }
    }
}

enum Outcome {
    Append(Result<(), StoreError>),
    Cursor(Result<CursorAdvance, StoreError>),
    Redact(Result<Option<v1::Message>, StoreError>),
}

/// The redb-backed store. Dropping it stops the writer thread (after the commit in
/// progress) and closes the file, so the same path can be opened again.
pub struct RedbStore {
    db: Arc<Database>,
    /// `None` only while dropping.
    writes: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

impl RedbStore {
    /// Opens (creating if needed) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Arc<RedbStore>, StoreError> {
        let db = Database::create(path).map_err(storage)?;
        // Create every table up front so read transactions always find them.
        let txn = db.begin_write().map_err(storage)?;
        // A file written before MEMBER_CURSORS existed has device cursors that the new
        // table must reflect; it is filled from them once, when it is created.
        let member_cursors_are_new = !txn
            .list_tables()
            .map_err(storage)?
            .any(|t| t.name() == MEMBER_CURSORS.name());
        {
            txn.open_table(MESSAGES).map_err(storage)?;
            txn.open_table(DEDUPE).map_err(storage)?;
            txn.open_table(USER_CONVERSATIONS).map_err(storage)?;
            let cursors = txn.open_table(CURSORS).map_err(storage)?;
            let mut members = txn.open_table(MEMBER_CURSORS).map_err(storage)?;
            if member_cursors_are_new {
                backfill_member_cursors(&cursors, &mut members)?;
            }
        }
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("natter-redb-writer".into())
            .spawn(move || writer_loop(&writer_db, rx))
            .map_err(storage)?;
        Ok(Arc::new(RedbStore {
            db,
            writes: Some(tx),
            writer: Some(writer),
        }))
    }

    async fn submit(&self, op: Op) -> Result<(), StoreError> {
        let writes = self.writes.as_ref().ok_or(StoreError::Closed)?;
        writes.send(op).await.map_err(|_| StoreError::Closed)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            f(&txn)
        })
        .await
        .map_err(storage)?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer loop once it has answered what it holds.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            // A panicked writer has nothing left to clean up.
            let _ = writer.join();
        }
    }
}

/// Fills an empty MEMBER_CURSORS with the max of each user's device cursors per
/// conversation.
fn backfill_member_cursors(
    cursors: &impl ReadableTable<(u64, u64, &'static str), (u64, u64)>,
    members: &mut Table<'_, (&'static str, u64), (u64, u64)>,
) -> Result<(), StoreError> {
    let mut max: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    for entry in cursors.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (user, _device, conv) = k.value();
        let (delivered, read) = v.value();
        let m = max.entry((conv.to_owned(), user)).or_insert((0, 0));
        *m = (m.0.max(delivered), m.1.max(read));
    }
    for ((conv, user), cursor) in &max {
        members
            .insert((conv.as_str(), *user), *cursor)
            .map_err(storage)?;
    }
    Ok(())
}

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let mut weight = first.weight();
        let mut ops = vec![first];
        while ops.len() < GROUP_MAX_OPS && weight < GROUP_MAX_MESSAGES {
            match rx.try_recv() {
                Ok(op) => {
                    weight += op.weight();
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        let outcomes = write_group(db, &ops);
        match outcomes {
            Ok(outcomes) => {
                for (op, outcome) in ops.into_iter().zip(outcomes) {
                    answer(op, Some(outcome), None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "redb group commit failed");
                for op in ops {
                    answer(op, None, Some(e.clone()));
                }
            }
        }
    }
}

fn answer(op: Op, outcome: Option<Outcome>, failed: Option<StoreError>) {
    let failed = failed.unwrap_or_else(|| StoreError::Storage("no outcome".into()));
    // A caller that stopped waiting has nothing to learn; ignoring the send is right.
    match (op, outcome) {
        (Op::Append { done, .. }, Some(Outcome::Append(r))) => {
            let _ = done.send(r);
        }
        (Op::Cursor { done, .. }, Some(Outcome::Cursor(r))) => {
            let _ = done.send(r);
        }
        (Op::Redact { done, .. }, Some(Outcome::Redact(r))) => {
            let _ = done.send(r);
        }
        (Op::Append { done, .. }, _) => {
            let _ = done.send(Err(failed));
        }
        (Op::Cursor { done, .. }, _) => {
            let _ = done.send(Err(failed));
        }
        (Op::Redact { done, .. }, _) => {
            let _ = done.send(Err(failed));
        }
    }
}

struct Tables<'t> {
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    dedupe: Table<'t, (&'static str, u64, &'static str), (u64, u64, u64)>,
    user_conversations: Table<'t, (u64, &'static str), u64>,
    cursors: Table<'t, (u64, u64, &'static str), (u64, u64)>,
    member_cursors: Table<'t, (&'static str, u64), (u64, u64)>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES).map_err(storage)?,
            dedupe: txn.open_table(DEDUPE).map_err(storage)?,
            user_conversations: txn.open_table(USER_CONVERSATIONS).map_err(storage)?,
            cursors: txn.open_table(CURSORS).map_err(storage)?,
            member_cursors: txn.open_table(MEMBER_CURSORS).map_err(storage)?,
        })
    }
}

/// Applies every op in one transaction and commits it durably. The outer error fails the
/// whole group (nothing committed); an op refused on its own merits gets its own error and
/// writes nothing, the others still commit.
fn write_group(db: &Database, ops: &[Op]) -> Result<Vec<Outcome>, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut outcomes = Vec::with_capacity(ops.len());
    {
        let mut t = Tables::open(&txn)?;
        for op in ops {
            outcomes.push(match op {
                Op::Append { batch, .. } => Outcome::Append(apply_append(&mut t, batch)?),
                Op::Cursor {
                    user,
                    device,
                    conversation,
                    kind,
                    seq,
                    ..
                } => Outcome::Cursor(apply_cursor(
                    &mut t,
                    *user,
                    *device,
                    conversation,
                    *kind,
                    *seq,
                )?),
                Op::Redact {
                    conversation, seq, ..
                } => Outcome::Redact(apply_redact(&mut t, conversation, *seq)?),
            });
        }
    }
    txn.commit().map_err(storage)?;
    Ok(outcomes)
}

fn head_of(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    conversation: &str,
) -> Result<u64, StoreError> {
    let mut range = messages
        .range((conversation, 0u64)..=(conversation, u64::MAX))
        .map_err(storage)?;
    match range.next_back() {
        Some(entry) => Ok(entry.map_err(storage)?.0.value().1),
        None => Ok(0),
    }
}

/// Outer `Err`: the storage failed. Inner `Err`: this batch is refused, nothing written.
fn apply_append(
    t: &mut Tables<'_>,
    batch: &[NewMessage],
) -> Result<Result<(), StoreError>, StoreError> {
    // Validate everything before writing anything, so a refused batch leaves no trace.
    let mut heads: HashMap<&str, u64> = HashMap::new();
    let mut keys: HashSet<(&str, u64, &str)> = HashSet::new();
    for nm in batch {
        let m = &nm.message;
        if let Err(e) = m.conversation_id.parse::<ConversationId>() {
            return Ok(Err(StoreError::Invalid(e.to_string())));
        }
        if m.seq == 0 || m.sender_device == 0 || m.client_msg_id.is_empty() {
            return Ok(Err(StoreError::Invalid(
                "seq, sender_device and client_msg_id must be set".into(),
            )));
        }
        let conv = m.conversation_id.as_str();
        let head = match heads.get(conv) {
            Some(h) => *h,
            None => head_of(&t.messages, conv)?,
        };
        if m.seq != head + 1 {
            return Ok(Err(StoreError::Conflict(format!(
                "seq {} in {conv} does not follow head {head}",
                m.seq
            ))));
        }
        heads.insert(conv, m.seq);
        let key = (conv, m.sender_device, m.client_msg_id.as_str());
        if !keys.insert(key) || t.dedupe.get(key).map_err(storage)?.is_some() {
            return Ok(Err(StoreError::Conflict(format!(
                "dedupe key of {conv}/{} exists",
                m.seq
            ))));
        }
    }
    for nm in batch {
        let m = &nm.message;
        let conv = m.conversation_id.as_str();
        let encoded = m.encode_to_vec();
        t.messages
            .insert((conv, m.seq), encoded.as_slice())
            .map_err(storage)?;
        t.dedupe
            .insert(
                (conv, m.sender_device, m.client_msg_id.as_str()),
                (m.seq, m.message_id, m.created_at_ms),
            )
            .map_err(storage)?;
        for member in &nm.members {
            let key = (member.get(), conv);
            let old = t
                .user_conversations
                .get(key)
                .map_err(storage)?
                .map(|g| g.value());
            if old.is_none_or(|old| old < m.seq) {
                t.user_conversations.insert(key, m.seq).map_err(storage)?;
            }
        }
    }
    Ok(Ok(()))
}

fn apply_cursor(
    t: &mut Tables<'_>,
    user: u64,
    device: u64,
    conversation: &str,
    kind: v1::ReceiptKind,
    seq: u64,
) -> Result<Result<CursorAdvance, StoreError>, StoreError> {
    let key = (user, device, conversation);
    let (delivered, read) = t
        .cursors
        .get(key)
        .map_err(storage)?
        .map(|g| g.value())
        .unwrap_or((0, 0));
    let (new, advance) = match kind {
        v1::ReceiptKind::Delivered => {
            let new = (delivered.max(seq), read);
            (
                new,
                CursorAdvance {
                    seq: Seq(new.0),
                    moved: new.0 > delivered,
                },
            )
        }
        v1::ReceiptKind::Read => {
            let new = (delivered.max(seq), read.max(seq));
            (
                new,
                CursorAdvance {
                    seq: Seq(new.1),
                    moved: new.1 > read,
                },
            )
        }
        v1::ReceiptKind::Unspecified => {
            return Ok(Err(StoreError::Invalid("receipt kind unspecified".into())));
        }
    };
    if new != (delivered, read) {
        t.cursors.insert(key, new).map_err(storage)?;
    }
    // Folded in even when the device's cursor did not move: the user's cursor is then
    // already at least as high, and checking costs one lookup in a write already made.
    let member_key = (conversation, user);
    let old = t
        .member_cursors
        .get(member_key)
        .map_err(storage)?
        .map(|g| g.value())
        .unwrap_or((0, 0));
    let raised = (old.0.max(new.0), old.1.max(new.1));
    if raised != old {
        t.member_cursors
            .insert(member_key, raised)
            .map_err(storage)?;
    }
    Ok(Ok(advance))
}

/// Outer `Err`: the storage failed. A message already deleted is not written again.
fn apply_redact(
    t: &mut Tables<'_>,
    conversation: &str,
    seq: u64,
) -> Result<Result<Option<v1::Message>, StoreError>, StoreError> {
    let stored = match t.messages.get((conversation, seq)).map_err(storage)? {
        Some(bytes) => match decode_message(bytes.value()) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        },
        None => return Ok(Ok(None)),
    };
    if stored.deleted {
        return Ok(Ok(Some(stored)));
    }
    let deleted = crate::store::redacted(&stored);
    t.messages
        .insert((conversation, seq), deleted.encode_to_vec().as_slice())
        .map_err(storage)?;
    // The dedupe entry stays: a retried send still finds its original Ack.
    Ok(Ok(Some(deleted)))
}

fn decode_message(bytes: &[u8]) -> Result<v1::Message, StoreError> {
    v1::Message::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_conversation(s: &str) -> Result<ConversationId, StoreError> {
    s.parse()
        .map_err(|e: natter_proto::IdError| StoreError::Corrupt(e.to_string()))
}

#[async_trait::async_trait]
impl MessageStore for RedbStore {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.submit(Op::Append { batch, done }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn head(&self, conversation: &ConversationId) -> Result<Seq, StoreError> {
        let conv = conversation.as_str().to_owned();
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            head_of(&messages, &conv).map(Seq)
        })
        .await
    }

    async fn find_dedupe(&self, keys: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |txn| {
            let dedupe = txn.open_table(DEDUPE).map_err(storage)?;
            keys.into_iter()
                .map(|k| {
                    let found = dedupe
                        .get((
                            k.conversation.as_str(),
                            k.sender_device.get(),
                            k.client_msg_id.as_str(),
                        ))
                        .map_err(storage)?;
                    Ok(found.map(|g| {
                        let (seq, message_id, created_at_ms) = g.value();
                        v1::Ack {
                            client_msg_id: k.client_msg_id.clone(),
                            conversation_id: k.conversation.as_str().to_owned(),
                            seq,
                            message_id,
                            created_at_ms,
                        }
                    }))
                })
                .collect()
        })
        .await
    }

    async fn read_after(
        &self,
        conversation: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        if limit == 0 || after.get() == u64::MAX {
            return Ok(Vec::new());
        }
        let conv = conversation.as_str().to_owned();
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            let range = messages
                .range((conv.as_str(), after.get() + 1)..=(conv.as_str(), u64::MAX))
                .map_err(storage)?;
            range
                .take(limit)
                .map(|e| decode_message(e.map_err(storage)?.1.value()))
                .collect()
        })
        .await
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
        let conv = conversation.as_str().to_owned();
        let upper = if before == Seq::ZERO {
            u64::MAX
        } else {
            before.get() - 1
        };
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).map_err(storage)?;
            let range = messages
                .range((conv.as_str(), 0u64)..=(conv.as_str(), upper))
                .map_err(storage)?;
            let mut out = range
                .rev()
                .take(limit)
                .map(|e| decode_message(e.map_err(storage)?.1.value()))
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn user_conversations(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(USER_CONVERSATIONS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in table.range((user.get(), "")..).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                let (u, conv) = k.value();
                if u != user.get() {
                    break;
                }
                out.push((parse_conversation(conv)?, Seq(v.value())));
            }
            Ok(out)
        })
        .await
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        conversation: &ConversationId,
        kind: v1::ReceiptKind,
        seq: Seq,
    ) -> Result<CursorAdvance, StoreError> {
        let (done, rx) = oneshot::channel();
        self.submit(Op::Cursor {
            user: user.get(),
            device: device.get(),
            conversation: conversation.as_str().to_owned(),
            kind,
            seq: seq.get(),
            done,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn device_cursors(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Vec<DeviceCursor>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(CURSORS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in table
                .range((user.get(), device.get(), "")..)
                .map_err(storage)?
            {
                let (k, v) = entry.map_err(storage)?;
                let (u, d, conv) = k.value();
                if (u, d) != (user.get(), device.get()) {
                    break;
                }
                let (delivered, read) = v.value();
                out.push(DeviceCursor {
                    conversation: parse_conversation(conv)?,
                    delivered: Seq(delivered),
                    read: Seq(read),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn redact(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<v1::Message>, StoreError> {
        if seq == Seq::ZERO {
            return Err(StoreError::Invalid("seq 0 names no message".into()));
        }
        let (done, rx) = oneshot::channel();
        self.submit(Op::Redact {
            conversation: conversation.as_str().to_owned(),
            seq: seq.get(),
            done,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn member_cursors(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemberCursor>, StoreError> {
        let conv = conversation.as_str().to_owned();
        self.read(move |txn| {
            let table = txn.open_table(MEMBER_CURSORS).map_err(storage)?;
            let range = table
                .range((conv.as_str(), 0u64)..=(conv.as_str(), u64::MAX))
                .map_err(storage)?;
            range
                .map(|entry| {
                    let (k, v) = entry.map_err(storage)?;
                    let (_, user) = k.value();
                    let (delivered, read) = v.value();
                    Ok(MemberCursor {
                        user: UserId(user),
                        delivered: Seq(delivered),
                        read: Seq(read),
                    })
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written before MEMBER_CURSORS existed gets it filled from its device
    /// cursors when opened, and the store keeps it up from there.
    #[tokio::test]
    async fn member_cursors_are_backfilled_from_an_older_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.redb");
        let conv = ConversationId::direct(UserId(1), UserId(2)).expect("conv");
        let other = ConversationId::direct(UserId(1), UserId(3)).expect("conv");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            {
                let mut cursors = txn.open_table(CURSORS).expect("cursors");
                for (user, device, c, cursor) in [
                    (1, 10, &conv, (5, 2)),
                    (1, 11, &conv, (3, 3)),
                    (2, 20, &conv, (4, 0)),
                    (1, 10, &other, (9, 9)),
                ] {
                    cursors
                        .insert((user, device, c.as_str()), cursor)
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let cursor = |user, delivered, read| MemberCursor {
            user: UserId(user),
            delivered: Seq(delivered),
            read: Seq(read),
        };
        let store = RedbStore::open(&path).expect("open");
        assert_eq!(
            store.member_cursors(&conv).await.expect("conv"),
            vec![cursor(1, 5, 3), cursor(2, 4, 0)]
        );
        assert_eq!(
            store.member_cursors(&other).await.expect("other"),
            vec![cursor(1, 9, 9)]
        );
        store
            .advance_cursor(
                UserId(2),
                DeviceId(21),
                &conv,
                v1::ReceiptKind::Read,
                Seq(6),
            )
            .await
            .expect("advance");
        drop(store);
        // What was written since the backfill survives a reopen.
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.member_cursors(&conv).await.expect("conv"),
            vec![cursor(1, 5, 3), cursor(2, 6, 6)]
        );
    }
}

//! The embedded [`GroupStore`]: one redb file. A save's version check, record and index
//! entries go into one write transaction, committed with immediate durability (fsync)
//! before the caller hears back, so the index can never disagree with the records. Reads
//! run on the blocking pool, each in its own read transaction (a snapshot).
//!
//! Saves go through one writer thread that group-commits, as natter-messages' `RedbStore`
//! does, rather than one `spawn_blocking` per save. Group changes are rare, so throughput
//! is not the reason: the thread gives the store a clean end (dropping it joins the
//! writer, so the file is closed when `drop` returns and the path can be opened again,
//! even if a caller gave up on a save still running), a bounded queue instead of blocking
//! pool threads parked on redb's writer lock, and one fsync for a burst of saves (a bulk
//! import, many groups changing at once) instead of one each.

use std::{fmt::Display, path::Path, sync::Arc, thread::JoinHandle};

use natter_proto::{
    GroupId, UserId,
    bus::{GroupAccess, GroupRecord},
};
use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use crate::store::{
    GroupPage, GroupStore, IndexEntries, StoreError, check_list_limit, check_save, index_changes,
    index_entries, is_member,
};

/// group_id → (version, prost-encoded `GroupRecord`): the version is readable without
/// decoding the record.
const GROUPS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("groups");
/// (user_id, group_id) → (joined_seq, left_seq), left_seq 0 for a current member.
const USER_GROUPS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("user_groups");

/// Saves queued for the writer thread.
const WRITE_QUEUE: usize = 256;
/// One group commit takes at most this many queued saves.
const GROUP_MAX_SAVES: usize = 256;

fn storage(e: impl Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

fn decode_record(bytes: &[u8]) -> Result<GroupRecord, StoreError> {
    GroupRecord::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// One save, checked and encoded by the caller so the writer thread only does I/O.
struct Save {
    group: u64,
    version: u64,
    previous_version: Option<u64>,
    entries: IndexEntries,
    encoded: Vec<u8>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The redb-backed group store. Dropping it stops the writer thread (after the commit in
/// progress) and closes the file, so the same path can be opened again.
pub struct RedbGroupStore {
    db: Arc<Database>,
    /// `None` only while dropping.
    writes: Option<mpsc::Sender<Save>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbGroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbGroupStore")
    }
}

impl RedbGroupStore {
    /// Opens (creating if needed) the store at `path` and starts its writer thread. Fails
    /// with [`StoreError::Storage`] if the file cannot be opened, e.g. because another
    /// store has it open.
    pub fn open(path: &Path) -> Result<Arc<RedbGroupStore>, StoreError> {
        let db = Database::create(path).map_err(storage)?;
        // Create both tables up front so read transactions always find them.
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(GROUPS).map_err(storage)?;
            txn.open_table(USER_GROUPS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("natter-groups-redb-writer".into())
            .spawn(move || writer_loop(&writer_db, rx))
            .map_err(storage)?;
        Ok(Arc::new(RedbGroupStore {
            db,
            writes: Some(tx),
            writer: Some(writer),
        }))
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

impl Drop for RedbGroupStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer loop once it has answered what it holds.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            // A panicked writer has nothing left to clean up.
            let _ = writer.join();
        }
    }
}

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<Save>) {
    while let Some(first) = rx.blocking_recv() {
        let mut saves = vec![first];
        while saves.len() < GROUP_MAX_SAVES {
            match rx.try_recv() {
                Ok(save) => saves.push(save),
                Err(_) => break,
            }
        }
        match write_group(db, &saves) {
            Ok(outcomes) => {
                for (save, outcome) in saves.into_iter().zip(outcomes) {
                    // A caller that stopped waiting has nothing to learn.
                    let _ = save.done.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "redb group commit of group saves failed");
                for save in saves {
                    let _ = save.done.send(Err(e.clone()));
                }
            }
        }
    }
}

struct Tables<'t> {
    groups: Table<'t, u64, (u64, &'static [u8])>,
    user_groups: Table<'t, (u64, u64), (u64, u64)>,
}

/// Applies every save in one transaction and commits it durably. The outer error fails
/// the whole group (nothing committed); a save refused on its own merits gets its own
/// error and writes nothing, the others still commit. Saves see the ones before them in
/// the same group, so a group commit behaves like the saves one after another.
fn write_group(db: &Database, saves: &[Save]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut txn: WriteTransaction = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut outcomes = Vec::with_capacity(saves.len());
    {
        let mut t = Tables {
            groups: txn.open_table(GROUPS).map_err(storage)?,
            user_groups: txn.open_table(USER_GROUPS).map_err(storage)?,
        };
        for save in saves {
            outcomes.push(apply_save(&mut t, save)?);
        }
    }
    txn.commit().map_err(storage)?;
    Ok(outcomes)
}

/// Outer `Err`: the storage failed. Inner `Err`: this save is refused, nothing written.
fn apply_save(t: &mut Tables<'_>, save: &Save) -> Result<Result<(), StoreError>, StoreError> {
    // Check everything before writing anything, so a refused save leaves no trace.
    let stored = t.groups.get(save.group).map_err(storage)?.map(|g| {
        let (version, bytes) = g.value();
        (version, bytes.to_vec())
    });
    let old_entries = match (&stored, save.previous_version) {
        (None, None) => IndexEntries::new(),
        (Some((stored, bytes)), Some(expected)) if *stored == expected => {
            // Diff against what is stored (not the caller's copy), so the index follows
            // the stored records whatever the caller passed.
            match decode_record(bytes).and_then(|r| index_entries(&r)) {
                Ok(entries) => entries,
                Err(e) => return Ok(Err(e)),
            }
        }
        (Some((stored, _)), _) => {
            return Ok(Err(StoreError::Conflict(format!(
                "group {} is at version {stored}, not {}",
                save.group,
                save.previous_version
                    .map_or_else(|| "absent".to_owned(), |v| v.to_string())
            ))));
        }
        (None, Some(expected)) => {
            return Ok(Err(StoreError::Conflict(format!(
                "group {} does not exist (expected version {expected})",
                save.group
            ))));
        }
    };
    t.groups
        .insert(save.group, (save.version, save.encoded.as_slice()))
        .map_err(storage)?;
    let changes = index_changes(&old_entries, &save.entries);
    for (user, entry) in changes.writes {
        t.user_groups
            .insert((user, save.group), entry)
            .map_err(storage)?;
    }
    for user in changes.removals {
        t.user_groups.remove((user, save.group)).map_err(storage)?;
    }
    Ok(Ok(()))
}

#[async_trait::async_trait]
impl GroupStore for RedbGroupStore {
    async fn load(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.read(move |txn| {
            let groups = txn.open_table(GROUPS).map_err(storage)?;
            let found = groups.get(group.get()).map_err(storage)?;
            found.map(|g| decode_record(g.value().1)).transpose()
        })
        .await
    }

    async fn save(
        &self,
        record: &GroupRecord,
        previous: Option<&GroupRecord>,
    ) -> Result<(), StoreError> {
        let checked = check_save(record, previous)?;
        let writes = self.writes.as_ref().ok_or(StoreError::Closed)?;
        let (done, rx) = oneshot::channel();
        let save = Save {
            group: checked.group,
            version: checked.version,
            previous_version: checked.previous_version,
            entries: checked.entries,
            encoded: record.encode_to_vec(),
            done,
        };
        writes.send(save).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<GroupAccess>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(USER_GROUPS).map_err(storage)?;
            let mut out = Vec::new();
            let range = table
                .range((user.get(), 0u64)..=(user.get(), u64::MAX))
                .map_err(storage)?;
            for entry in range {
                let (k, v) = entry.map_err(storage)?;
                let (_, group_id) = k.value();
                let (joined_seq, left_seq) = v.value();
                out.push(GroupAccess {
                    group_id,
                    joined_seq,
                    left_seq,
                    user_id: user.get(),
                });
            }
            Ok(out)
        })
        .await
    }
    async fn list_groups(
        &self,
        after: u64,
        limit: usize,
        member: Option<UserId>,
    ) -> Result<GroupPage, StoreError> {
        check_list_limit(limit)?;
        let Some(first) = after.checked_add(1) else {
            return Ok(GroupPage::default());
        };
        self.read(move |txn| {
            let groups = txn.open_table(GROUPS).map_err(storage)?;
            let mut page = GroupPage::default();
            // One more than asked tells whether more follow.
            let mut take = |record: GroupRecord| {
                if page.groups.len() == limit {
                    page.more = true;
                    return false;
                }
                page.groups.push(record);
                true
            };
            match member {
                None => {
                    for entry in groups.range(first..).map_err(storage)? {
                        let (_, g) = entry.map_err(storage)?;
                        if !take(decode_record(g.value().1)?) {
                            break;
                        }
                    }
                }
                Some(user) => {
                    // The index is written with the records: it names exactly the groups
                    // the user is in. The record is checked anyway, as the trait says.
                    let index = txn.open_table(USER_GROUPS).map_err(storage)?;
                    let range = index
                        .range((user.get(), first)..=(user.get(), u64::MAX))
                        .map_err(storage)?;
                    for entry in range {
                        let (k, v) = entry.map_err(storage)?;
                        let ((_, group), (_, left_seq)) = (k.value(), v.value());
                        if left_seq != 0 {
                            continue;
                        }
                        let Some(g) = groups.get(group).map_err(storage)? else {
                            continue;
                        };
                        let record = decode_record(g.value().1)?;
                        if is_member(&record, user) && !take(record) {
                            break;
                        }
                    }
                }
            }
            Ok(page)
        })
        .await
    }
}

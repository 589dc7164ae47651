//! The ScyllaDB [`GroupStore`], for cluster mode. It passes the same
//! [`crate::conformance`] suite as [`crate::RedbGroupStore`]
//! (`tests/scylla_conformance.rs`, when `NATTER_TEST_SCYLLA` names a node).
//!
//! # Schema
//!
//! `deploy/cql/schema.cql` (the "groups" part), embedded and run statement by statement
//! (all `IF NOT EXISTS`) by [`ScyllaGroupStore::connect`] through natter-cql, exactly as
//! natter-messages' `ScyllaStore` runs it: the whole file, so whichever store connects
//! first creates the keyspace's complete schema, and both see one definition of it.
//!
//! - `groups (group_id) → version, record, indexed_version, unindexed_drops`: `record` is
//!   the prost-encoded `GroupRecord`, `version` its `info.version` (what the lightweight
//!   transactions compare). The last two columns keep the user index repairable (below).
//! - `user_groups (user_id, group_id) → joined_seq, left_seq`: what
//!   [`GroupStore::user_groups`] reads (one partition, clustered by group id). Written
//!   only `USING TIMESTAMP <group version>`, so the entry of the newest version wins
//!   whatever the order in which writes (or driver retries) arrive, and a removal by
//!   version n is undone only by a write of a later version.
//!
//! # How `save` works
//!
//! 1. Validate without I/O ([`StoreError::Invalid`]; ids and seqs must also fit a CQL
//!    bigint).
//! 2. For an update, read the row's `version`, `indexed_version` and `unindexed_drops`
//!    (LOCAL_QUORUM, then LOCAL_SERIAL if the version is not the expected one, which also
//!    completes a commit still in flight). A version other than `previous`'s is a
//!    [`StoreError::Conflict`] before anything is written.
//! 3. Plan the index writes (see below).
//! 4. Commit the record with a lightweight transaction (Paxos, LOCAL_SERIAL): `INSERT ...
//!    IF NOT EXISTS` for a create, `UPDATE ... IF version = <previous>` otherwise. Of two
//!    racing saves with the same `previous`, exactly one applies; the other gets
//!    `Conflict` and writes nothing else. When the outcome is unknown (a timeout), a
//!    LOCAL_SERIAL read tells whether this very record is stored.
//! 5. Write the index entries and remove the dropped ones (LOCAL_QUORUM, at most
//!    [`natter_cql::MAX_IN_FLIGHT`] at a time), then set `indexed_version` to the new
//!    version.
//!
//! ## The index window, and how the next save closes it
//!
//! Steps 4 and 5 are not atomic: if the process dies (or step 5 fails, reported as
//! [`StoreError::Storage`] although the record is stored) between them, `user_groups`
//! shows the users whose entry changed in that save as they were before it, until the
//! group's next save. Rewriting every entry on every save (the simple fix) would cost a
//! 1,024-member group 1,024 writes per change and would still never remove the entry of a
//! user the failed save dropped from the record entirely (the next save cannot see that
//! user: it is in neither its previous nor its new record). Instead:
//!
//! - `indexed_version` names the last version whose index writes all completed. It is
//!   the row's only cell written without a lightweight transaction (`USING TIMESTAMP
//!   <version>`, so a late write of an older mark never hides a newer one), and no
//!   lightweight transaction writes it, so the two kinds of write never race on a cell;
//! - `unindexed_drops`, written in the same lightweight transaction as the record, lists
//!   the users whose entries that save removes (carried over while saves keep failing).
//!
//! Step 3 writes only the entries that differ between `previous` and the new record when
//! `indexed_version` is `previous`'s version (the normal case), else every entry of the
//! new record and the removal of `unindexed_drops` as well. So one successful save of the
//! group repairs everything a failed one left, whatever the group's size. The diff trusts
//! that `previous` is what is stored, which the version check makes true for callers that
//! pass what they loaded (a version is stored once).
//!
//! # Driver settings
//!
//! natter-cql's, as for natter-messages' `ScyllaStore`: statements prepared once at
//! connect; default load balancing policy, token-aware, restricted to `local_dc` when it
//! is set; LOCAL_QUORUM reads and writes, LOCAL_SERIAL for lightweight transactions and
//! serial reads; the configured request timeout; the default retry policy, which retries
//! only statements marked idempotent (reads and the timestamped writes, never a
//! lightweight transaction). On ScyllaDB versions whose tablets do not support
//! lightweight transactions, the keyspace is created with tablets disabled.

use std::{collections::BinaryHeap, fmt, sync::Arc};

use bytes::Bytes;
use futures::{FutureExt as _, TryStreamExt as _, future::BoxFuture};
use natter_cql::{
    Kind, Read, ReadStatement, bounded_ok, corrupt, execute, from_cql, lwt_applied, next_row_error,
    prepare, query_opt, query_paged, storage, to_cql,
};
use natter_proto::{
    GroupId, UserId,
    bus::{GroupAccess, GroupRecord},
};
use prost::Message as _;
use scylla::{client::session::Session, statement::prepared::PreparedStatement};

use crate::store::{
    CheckedSave, GroupPage, GroupStore, IndexChanges, IndexEntries, StoreError, check_list_limit,
    check_save, index_changes, is_member,
};

/// How to reach ScyllaDB: natter-cql's config, the very type natter-messages exports as
/// `ScyllaConfig`, so one configuration section fills both.
pub use natter_cql::ScyllaConfig as ScyllaGroupConfig;

impl From<natter_cql::Error> for StoreError {
    fn from(e: natter_cql::Error) -> Self {
        match e {
            natter_cql::Error::Storage(e) => StoreError::Storage(e),
            natter_cql::Error::Invalid(e) => StoreError::Invalid(e),
            natter_cql::Error::Corrupt(e) => StoreError::Corrupt(e),
        }
    }
}

/// [`check_save`], plus what only this store needs: every number fits a bigint.
fn check_save_cql(
    record: &GroupRecord,
    previous: Option<&GroupRecord>,
) -> Result<CheckedSave, StoreError> {
    let checked = check_save(record, previous)?;
    to_cql(checked.group, "group id")?;
    to_cql(checked.version, "version")?;
    for (&user, &(joined, left)) in &checked.entries {
        to_cql(user, "user id")?;
        to_cql(joined, "joined_seq")?;
        to_cql(left, "left_seq")?;
    }
    Ok(checked)
}

// ---------------------------------------------------------------------------------------
// Planning the index writes (no I/O)

/// What the stored row says about its index (step 2 of `save`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct IndexState {
    /// True if every index write of the stored version completed.
    complete: bool,
    /// Removals the stored version's save made (or still owed), if not complete.
    unindexed_drops: Vec<u64>,
}

/// The index writes that take `user_groups` from the stored version (`old` entries, in
/// the state `state`) to `new`. See the module docs.
fn plan_index(old: &IndexEntries, new: &IndexEntries, state: &IndexState) -> IndexChanges {
    if state.complete {
        return index_changes(old, new);
    }
    let mut removals: Vec<u64> = old
        .keys()
        .chain(&state.unindexed_drops)
        .filter(|user| !new.contains_key(user))
        .copied()
        .collect();
    removals.sort_unstable();
    removals.dedup();
    IndexChanges {
        writes: new.iter().map(|(&user, &entry)| (user, entry)).collect(),
        removals,
    }
}

// ---------------------------------------------------------------------------------------
// Prepared statements

/// Every statement the store runs after connecting.
struct Statements {
    load: ReadStatement,
    index_state: ReadStatement,
    create: PreparedStatement,
    update: PreparedStatement,
    mark_indexed: PreparedStatement,
    put_entry: PreparedStatement,
    remove_entry: PreparedStatement,
    user_groups: PreparedStatement,
    /// Every group id (a scan of the table's partition keys, in token order).
    group_ids: PreparedStatement,
    /// A user's groups above a group id, in group id order.
    user_groups_after: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        let p = |cql: String, kind| prepare(session, cql, kind);
        let load = ReadStatement::prepare(
            session,
            format!("SELECT version, record FROM {ks}.groups WHERE group_id = ?"),
        )
        .await?;
        let index_state = ReadStatement::prepare(
            session,
            format!(
                "SELECT version, indexed_version, unindexed_drops FROM {ks}.groups \
                 WHERE group_id = ?"
            ),
        )
        .await?;
        Ok(Statements {
            load,
            index_state,
            create: p(
                format!(
                    "INSERT INTO {ks}.groups (group_id, version, record) VALUES (?, ?, ?) \
                     IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            update: p(
                format!(
                    "UPDATE {ks}.groups SET record = ?, version = ?, unindexed_drops = ? \
                     WHERE group_id = ? IF version = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            mark_indexed: p(
                format!(
                    "UPDATE {ks}.groups USING TIMESTAMP ? SET indexed_version = ? \
                     WHERE group_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            put_entry: p(
                format!(
                    "INSERT INTO {ks}.user_groups (user_id, group_id, joined_seq, left_seq) \
                     VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                Kind::Write,
            )
            .await?,
            remove_entry: p(
                format!(
                    "DELETE FROM {ks}.user_groups USING TIMESTAMP ? \
                     WHERE user_id = ? AND group_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            user_groups: p(
                format!(
                    "SELECT group_id, joined_seq, left_seq FROM {ks}.user_groups \
                     WHERE user_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            group_ids: p(
                format!("SELECT DISTINCT group_id FROM {ks}.groups"),
                Kind::Read,
            )
            .await?,
            user_groups_after: p(
                format!(
                    "SELECT group_id, left_seq FROM {ks}.user_groups \
                     WHERE user_id = ? AND group_id > ?"
                ),
                Kind::Read,
            )
            .await?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The store

/// The ScyllaDB-backed group store: one driver session (connection pools to every node)
/// and the prepared statements. Dropping it closes the connections.
pub struct ScyllaGroupStore {
    session: Session,
    keyspace: String,
    st: Statements,
}

impl fmt::Debug for ScyllaGroupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaGroupStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

impl ScyllaGroupStore {
    /// Connects, creates the keyspace and tables if missing (see the module docs) and
    /// prepares every statement. Fails with [`StoreError::Invalid`] on a bad config and
    /// [`StoreError::Storage`] if the cluster cannot be reached or refuses the schema.
    pub async fn connect(config: ScyllaGroupConfig) -> Result<Arc<ScyllaGroupStore>, StoreError> {
        let session = natter_cql::connect(&config).await?;
        let st = Statements::prepare(&session, &config.keyspace).await?;
        Ok(Arc::new(ScyllaGroupStore {
            session,
            keyspace: config.keyspace,
            st,
        }))
    }

    /// The stored version and encoded record of a group.
    async fn read_record(
        &self,
        group: i64,
        read: Read,
    ) -> Result<Option<(u64, Bytes)>, StoreError> {
        const WHAT: &str = "reading a group";
        let statement = self.st.load.at(read);
        let row: Option<(Option<i64>, Option<Bytes>)> =
            query_opt(&self.session, statement, (group,), WHAT).await?;
        match row {
            None => Ok(None),
            Some((Some(version), Some(record))) => {
                Ok(Some((from_cql(version, "group version")?, record)))
            }
            Some(_) => Err(corrupt(
                WHAT,
                format_args!("group {group} has a row without version or record"),
            )
            .into()),
        }
    }

    /// Step 2 of `save`: where the index of the stored version stands. `Conflict` if the
    /// stored version is not `expected`.
    async fn index_state(&self, group: i64, expected: u64) -> Result<IndexState, StoreError> {
        const WHAT: &str = "reading a group's index state";
        type StateRow = (Option<i64>, Option<i64>, Option<Vec<i64>>);
        let mut row: Option<StateRow> = None;
        for read in [Read::Quorum, Read::Serial] {
            row = query_opt(&self.session, self.st.index_state.at(read), (group,), WHAT).await?;
            if let Some((Some(version), _, _)) = row
                && from_cql(version, "group version")? == expected
            {
                break;
            }
        }
        let (version, indexed, drops) = match row {
            Some((Some(version), indexed, drops)) => (version, indexed, drops),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "group {group} does not exist (expected version {expected})"
                )));
            }
        };
        let version = from_cql(version, "group version")?;
        if version != expected {
            return Err(StoreError::Conflict(format!(
                "group {group} is at version {version}, not {expected}"
            )));
        }
        let complete = indexed
            .map(|v| from_cql(v, "indexed version"))
            .transpose()?
            == Some(version);
        let unindexed_drops = drops
            .unwrap_or_default()
            .into_iter()
            .map(|u| from_cql(u, "dropped user id"))
            .collect::<Result<_, _>>()?;
        Ok(IndexState {
            complete,
            unindexed_drops,
        })
    }

    /// Step 4: the lightweight transaction. `Ok(false)`: another save got there first.
    async fn commit(
        &self,
        checked: &CheckedSave,
        encoded: &[u8],
        removals: &[u64],
    ) -> Result<bool, StoreError> {
        let group = to_cql(checked.group, "group id")?;
        let version = to_cql(checked.version, "version")?;
        let result = match checked.previous_version {
            None => {
                self.session
                    .execute_unpaged(&self.st.create, (group, version, encoded))
                    .await
            }
            Some(previous) => {
                let drops = removals
                    .iter()
                    .map(|&u| to_cql(u, "user id"))
                    .collect::<Result<Vec<i64>, _>>()?;
                self.session
                    .execute_unpaged(
                        &self.st.update,
                        (
                            encoded,
                            version,
                            drops,
                            group,
                            to_cql(previous, "previous version")?,
                        ),
                    )
                    .await
            }
        };
        match result {
            Ok(result) => Ok(lwt_applied(result)?),
            Err(e) => {
                let failed = storage(
                    format_args!(
                        "storing group {} version {}",
                        checked.group, checked.version
                    ),
                    e,
                );
                // The outcome is unknown: the transaction may have been applied. A serial
                // read finds it if it was (this record, not another at the same version).
                match self.read_record(group, Read::Serial).await {
                    Ok(Some((stored, record)))
                        if stored == checked.version && record.as_ref() == encoded =>
                    {
                        tracing::info!(
                            group = checked.group,
                            version = checked.version,
                            "an ambiguous group commit applied"
                        );
                        Ok(true)
                    }
                    _ => Err(failed.into()),
                }
            }
        }
    }

    /// The records of `groups` (loaded concurrently, at most
    /// [`natter_cql::MAX_IN_FLIGHT`] at a time), in that order; groups without a record
    /// are left out.
    async fn load_many(&self, groups: &[u64]) -> Result<Vec<GroupRecord>, StoreError> {
        let tasks: Vec<BoxFuture<'_, Result<Option<GroupRecord>, StoreError>>> =
            groups.iter().map(|&g| self.load(GroupId(g))).collect();
        Ok(bounded_ok(tasks).await?.into_iter().flatten().collect())
    }

    /// [`GroupStore::list_groups`] of every group. The table is keyed by group id, so
    /// its partitions come in token order, not id order: this scans every group id (not
    /// the records) and keeps the `limit + 1` smallest above `after` in a heap, so its
    /// memory is bounded by the page but its time grows with the number of groups. Fine
    /// for the admin API's occasional listing; an id-ordered index table would be needed
    /// to page through millions of groups quickly.
    async fn list_all(&self, after: i64, limit: usize) -> Result<GroupPage, StoreError> {
        const WHAT: &str = "listing group ids";
        let mut rows = self
            .session
            .execute_iter(self.st.group_ids.clone(), ())
            .await
            .map_err(|e| storage(WHAT, e))?
            .rows_stream::<(i64,)>()
            .map_err(|e| corrupt(WHAT, e))?;
        // A max-heap of the smallest ids seen: the largest is the one to drop.
        let mut smallest: BinaryHeap<i64> = BinaryHeap::with_capacity(limit + 2);
        while let Some((id,)) = rows.try_next().await.map_err(|e| next_row_error(WHAT, e))? {
            if id <= after {
                continue;
            }
            if smallest.len() <= limit {
                smallest.push(id);
            } else if smallest.peek().is_some_and(|&largest| id < largest) {
                smallest.pop();
                smallest.push(id);
            }
        }
        let mut ids = smallest
            .into_sorted_vec()
            .into_iter()
            .map(|id| from_cql(id, "group id"))
            .collect::<Result<Vec<u64>, _>>()?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        Ok(GroupPage {
            groups: self.load_many(&ids).await?,
            more,
        })
    }

    /// [`GroupStore::list_groups`] of one member's groups: their index partition above
    /// `after`, in id order, each checked against its record (the index may run ahead
    /// of a record, see the module docs), loaded in batches of what the page still
    /// lacks.
    async fn list_member(
        &self,
        user: UserId,
        after: i64,
        limit: usize,
    ) -> Result<GroupPage, StoreError> {
        const WHAT: &str = "listing a user's groups";
        let mut rows = self
            .session
            .execute_iter(
                self.st.user_groups_after.clone(),
                (to_cql(user.get(), "user id")?, after),
            )
            .await
            .map_err(|e| storage(WHAT, e))?
            .rows_stream::<(i64, Option<i64>)>()
            .map_err(|e| corrupt(WHAT, e))?;
        let mut page = GroupPage::default();
        let mut batch: Vec<u64> = Vec::new();
        loop {
            let row = rows.try_next().await.map_err(|e| next_row_error(WHAT, e))?;
            let done = row.is_none();
            if let Some((group, left_seq)) = row
                && left_seq.unwrap_or(0) == 0
            {
                batch.push(from_cql(group, "group id")?);
            }
            // One more than asked tells whether more follow.
            let wanted = limit + 1 - page.groups.len();
            if batch.len() >= wanted || (done && !batch.is_empty()) {
                for record in self.load_many(&batch).await? {
                    if !is_member(&record, user) {
                        continue;
                    }
                    if page.groups.len() == limit {
                        page.more = true;
                        return Ok(page);
                    }
                    page.groups.push(record);
                }
                batch.clear();
            }
            if done {
                return Ok(page);
            }
        }
    }

    /// Step 5: the index writes, then the mark that they are complete.
    async fn write_index(
        &self,
        checked: &CheckedSave,
        plan: &IndexChanges,
    ) -> Result<(), StoreError> {
        let group = to_cql(checked.group, "group id")?;
        let at = to_cql(checked.version, "version")?;
        let mut tasks: Vec<BoxFuture<'_, Result<(), natter_cql::Error>>> =
            Vec::with_capacity(plan.writes.len() + plan.removals.len());
        for &(user, (joined, left)) in &plan.writes {
            let values = (
                to_cql(user, "user id")?,
                group,
                to_cql(joined, "joined_seq")?,
                to_cql(left, "left_seq")?,
                at,
            );
            tasks.push(
                execute(
                    &self.session,
                    &self.st.put_entry,
                    values,
                    "writing a user's group",
                )
                .boxed(),
            );
        }
        for &user in &plan.removals {
            let values = (at, to_cql(user, "user id")?, group);
            tasks.push(
                execute(
                    &self.session,
                    &self.st.remove_entry,
                    values,
                    "removing a user's group",
                )
                .boxed(),
            );
        }
        bounded_ok(tasks).await?;
        execute(
            &self.session,
            &self.st.mark_indexed,
            (at, at, group),
            "marking a group's index complete",
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl GroupStore for ScyllaGroupStore {
    async fn load(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        let Some((version, bytes)) = self
            .read_record(to_cql(group.get(), "group id")?, Read::Quorum)
            .await?
        else {
            return Ok(None);
        };
        let record = GroupRecord::decode(bytes.as_ref())
            .map_err(|e| corrupt(format_args!("decoding group {group}"), e))?;
        let recorded = record.info.as_ref().map(|i| i.version);
        if recorded != Some(version) {
            return Err(corrupt(
                format_args!("group {group}"),
                format_args!("row version {version}, record version {recorded:?}"),
            )
            .into());
        }
        Ok(Some(record))
    }

    async fn save(
        &self,
        record: &GroupRecord,
        previous: Option<&GroupRecord>,
    ) -> Result<(), StoreError> {
        let checked = check_save_cql(record, previous)?;
        let (old, state) = match (previous, checked.previous_version) {
            (Some(previous), Some(expected)) => (
                crate::store::index_entries(previous)?,
                self.index_state(to_cql(checked.group, "group id")?, expected)
                    .await?,
            ),
            // A create: nothing indexed yet, nothing owed.
            _ => (
                IndexEntries::new(),
                IndexState {
                    complete: true,
                    unindexed_drops: Vec::new(),
                },
            ),
        };
        let plan = plan_index(&old, &checked.entries, &state);
        let encoded = record.encode_to_vec();
        if !self.commit(&checked, &encoded, &plan.removals).await? {
            return Err(StoreError::Conflict(match checked.previous_version {
                None => format!("group {} exists", checked.group),
                Some(v) => format!("group {} is no longer at version {v}", checked.group),
            }));
        }
        self.write_index(&checked, &plan).await.map_err(|e| {
            StoreError::Storage(format!(
                "group {} version {} stored, but its user index was not fully updated \
                 (the group's next save repairs it): {e}",
                checked.group, checked.version
            ))
        })
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<GroupAccess>, StoreError> {
        let rows: Vec<(i64, Option<i64>, Option<i64>)> = query_paged(
            &self.session,
            &self.st.user_groups,
            (to_cql(user.get(), "user id")?,),
            "reading a user's groups",
        )
        .await?;
        rows.into_iter()
            .map(|(group, joined, left)| {
                Ok(GroupAccess {
                    group_id: from_cql(group, "group id")?,
                    joined_seq: from_cql(joined.unwrap_or(0), "joined_seq")?,
                    left_seq: from_cql(left.unwrap_or(0), "left_seq")?,
                    user_id: user.get(),
                })
            })
            .collect()
    }

    async fn list_groups(
        &self,
        after: u64,
        limit: usize,
        member: Option<UserId>,
    ) -> Result<GroupPage, StoreError> {
        check_list_limit(limit)?;
        // No stored id is above i64::MAX (`to_cql`): nothing follows such an `after`.
        let Ok(after) = i64::try_from(after) else {
            return Ok(GroupPage::default());
        };
        match member {
            None => self.list_all(after, limit).await,
            Some(user) => self.list_member(user, after, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::v1::{GroupInfo, GroupMember};

    use super::*;

    fn entries(list: &[(u64, u64, u64)]) -> IndexEntries {
        list.iter().map(|&(u, j, l)| (u, (j, l))).collect()
    }

    fn complete() -> IndexState {
        IndexState {
            complete: true,
            unindexed_drops: Vec::new(),
        }
    }

    #[test]
    fn a_complete_index_gets_only_the_changes() {
        let old = entries(&[(1, 1, 0), (2, 1, 0), (3, 2, 0), (4, 1, 3)]);
        // 2 left, 3 unchanged, 4 dropped entirely, 5 joined, 1 unchanged.
        let new = entries(&[(1, 1, 0), (2, 1, 7), (3, 2, 0), (5, 7, 0)]);
        let plan = plan_index(&old, &new, &complete());
        assert_eq!(plan.writes, vec![(2, (1, 7)), (5, (7, 0))]);
        assert_eq!(plan.removals, vec![4]);
    }

    #[test]
    fn an_incomplete_index_is_rewritten_and_owed_removals_are_redone() {
        let old = entries(&[(1, 1, 0), (2, 1, 0), (4, 1, 3)]);
        let new = entries(&[(1, 1, 0), (2, 1, 7), (6, 8, 0)]);
        let state = IndexState {
            complete: false,
            // 9 was dropped by the failed save; 6 too, but is back now; 4 twice.
            unindexed_drops: vec![9, 6, 4],
        };
        let plan = plan_index(&old, &new, &state);
        assert_eq!(plan.writes, vec![(1, (1, 0)), (2, (1, 7)), (6, (8, 0))]);
        assert_eq!(plan.removals, vec![4, 9]);
    }

    #[test]
    fn unchanged_records_write_nothing() {
        let same = entries(&[(1, 1, 0), (2, 3, 5)]);
        assert_eq!(
            plan_index(&same, &same, &complete()),
            IndexChanges::default()
        );
    }

    #[test]
    fn numbers_must_fit_a_bigint() {
        let record = |user: u64, group: u64| GroupRecord {
            info: Some(GroupInfo {
                group_id: group,
                version: 1,
                members: vec![GroupMember {
                    user_id: user,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_save_cql(&record(7, 9), None).is_ok());
        for bad in [record(1 << 63, 9), record(7, u64::MAX)] {
            assert!(matches!(
                check_save_cql(&bad, None),
                Err(StoreError::Invalid(_))
            ));
        }
    }
}

//! The [`GroupStore`] trait: everything the groups service keeps durably. One record per
//! group (members, roles, settings, invites, bans, the newest change) and an index from
//! each user to the groups they are or were in. Implementations: [`crate::RedbGroupStore`]
//! (embedded) and [`crate::ScyllaGroupStore`]; both pass [`crate::conformance`].

use natter_proto::{
    GroupId, UserId,
    bus::{GroupAccess, GroupRecord},
};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, timeout, ...). Nothing of the call was stored,
    /// unless the failure was ambiguous (a timeout after the write was sent).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The stored version is not the one the caller expected: someone else changed the
    /// group first (or created it). Nothing was stored.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The arguments are malformed (a record without info, group id 0, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

/// Most groups one [`GroupStore::list_groups`] returns.
pub const MAX_LIST_GROUPS: usize = 500;

/// One page of [`GroupStore::list_groups`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPage {
    /// The groups' records, in group id order.
    pub groups: Vec<GroupRecord>,
    /// More groups follow the last one (list again with it as `after`).
    pub more: bool,
}

/// Durable state of the groups service. All methods are safe to call concurrently.
#[async_trait::async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// The group's record, if it was ever created.
    async fn load(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError>;

    /// Stores `record` (group id `record.info.group_id`, version `record.info.version`)
    /// durably, if and only if what is stored is `previous`: absent when `previous` is
    /// `None` (a create), else the record with `previous.info.version`. Otherwise
    /// [`StoreError::Conflict`] and nothing is stored. The new version must be the
    /// previous one + 1 (1 for a create), else [`StoreError::Invalid`].
    ///
    /// Also keeps the user index that [`GroupStore::user_groups`] reads: every user who is
    /// a member (`record.info.members`, with `joined_seq`, `left_seq` 0) or a former
    /// member (`record.former`) of the group after this save has exactly that entry for
    /// this group; users in neither lose theirs. `previous` tells which entries changed.
    ///
    /// The arguments are checked before the stored version, so a malformed call is
    /// [`StoreError::Invalid`] whatever is stored: no info, group id 0, a `previous` of
    /// another group, a wrong version, a user id 0, a user listed twice (among members and
    /// former members together), or a former member with `left_seq` 0.
    async fn save(
        &self,
        record: &GroupRecord,
        previous: Option<&GroupRecord>,
    ) -> Result<(), StoreError>;

    /// Every group the user is or was a member of, ordered by group id, each with the
    /// part of its conversation the user may read (`left_seq` 0: still a member) and
    /// `user_id` set to `user`.
    async fn user_groups(&self, user: UserId) -> Result<Vec<GroupAccess>, StoreError>;

    /// The records of up to `limit` groups with ids above `after`, in group id order, and
    /// whether more follow (for the admin API). Deleted groups are listed (their
    /// `info.deleted` says so). With `member`, only the groups whose record lists that
    /// user as a current member (`info.members`; former members do not count). `limit`
    /// must be 1 to [`MAX_LIST_GROUPS`], else [`StoreError::Invalid`].
    async fn list_groups(
        &self,
        after: u64,
        limit: usize,
        member: Option<UserId>,
    ) -> Result<GroupPage, StoreError>;
}

// ---------------------------------------------------------------------------------------
// What both implementations check and index the same way (crate-private).

/// The user index's entries for one group: user id → (joined_seq, left_seq), left_seq 0
/// for a current member.
pub(crate) type IndexEntries = std::collections::BTreeMap<u64, (u64, u64)>;

/// A save that passed [`check_save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedSave {
    pub(crate) group: u64,
    /// The version being stored.
    pub(crate) version: u64,
    /// The version that must be stored now (`None`: the group must not exist).
    pub(crate) previous_version: Option<u64>,
    /// The index entries of the record being stored.
    pub(crate) entries: IndexEntries,
}

/// Validates a save without touching storage, so both stores refuse the same calls with
/// [`StoreError::Invalid`] before reading anything.
pub(crate) fn check_save(
    record: &GroupRecord,
    previous: Option<&GroupRecord>,
) -> Result<CheckedSave, StoreError> {
    let info = record
        .info
        .as_ref()
        .ok_or_else(|| StoreError::Invalid("the record has no group info".into()))?;
    let group = info.group_id;
    if group == 0 {
        return Err(StoreError::Invalid("group id 0".into()));
    }
    let previous_version = match previous {
        None => None,
        Some(p) => {
            let p = p.info.as_ref().ok_or_else(|| {
                StoreError::Invalid("the previous record has no group info".into())
            })?;
            if p.group_id != group {
                return Err(StoreError::Invalid(format!(
                    "the previous record is of group {}, not {group}",
                    p.group_id
                )));
            }
            Some(p.version)
        }
    };
    let expected = match previous_version {
        None => Some(1),
        Some(v) => v.checked_add(1),
    };
    if expected != Some(info.version) {
        return Err(StoreError::Invalid(match previous_version {
            None => format!(
                "group {group}: a create stores version 1, not {}",
                info.version
            ),
            Some(v) => format!(
                "group {group}: version {} does not follow {v}",
                info.version
            ),
        }));
    }
    Ok(CheckedSave {
        group,
        version: info.version,
        previous_version,
        entries: index_entries(record)?,
    })
}

/// The index entries `record` calls for. Refuses a user id 0, a user listed twice (as a
/// member, a former member or both: the index could hold only one of the entries) and a
/// former member with `left_seq` 0 (which would read as a current member).
pub(crate) fn index_entries(record: &GroupRecord) -> Result<IndexEntries, StoreError> {
    let group = record.info.as_ref().map_or(0, |i| i.group_id);
    let members = record.info.iter().flat_map(|i| &i.members);
    let mut entries = IndexEntries::new();
    let mut add = |user: u64, entry: (u64, u64)| {
        if user == 0 {
            return Err(StoreError::Invalid(format!("group {group}: user id 0")));
        }
        if entries.insert(user, entry).is_some() {
            return Err(StoreError::Invalid(format!(
                "group {group}: user {user} is listed twice among members and former members"
            )));
        }
        Ok(())
    };
    for m in members {
        add(m.user_id, (m.joined_seq, 0))?;
    }
    for f in &record.former {
        if f.left_seq == 0 {
            return Err(StoreError::Invalid(format!(
                "group {group}: former member {} has left_seq 0",
                f.user_id
            )));
        }
        add(f.user_id, (f.joined_seq, f.left_seq))?;
    }
    Ok(entries)
}

/// What moving the index from one set of entries to another takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct IndexChanges {
    /// Entries to write (new or different): user → (joined_seq, left_seq).
    pub(crate) writes: Vec<(u64, (u64, u64))>,
    /// Users whose entry for the group goes.
    pub(crate) removals: Vec<u64>,
}

/// What moving the index from `old` to `new` takes.
pub(crate) fn index_changes(old: &IndexEntries, new: &IndexEntries) -> IndexChanges {
    IndexChanges {
        writes: new
            .iter()
            .filter(|(user, entry)| old.get(user) != Some(entry))
            .map(|(&user, &entry)| (user, entry))
            .collect(),
        removals: old
            .keys()
            .filter(|user| !new.contains_key(user))
            .copied()
            .collect(),
    }
}

/// Refuses a [`GroupStore::list_groups`] limit out of range (both stores alike).
pub(crate) fn check_list_limit(limit: usize) -> Result<(), StoreError> {
    if limit == 0 || limit > MAX_LIST_GROUPS {
        return Err(StoreError::Invalid(format!(
            "a list takes 1 to {MAX_LIST_GROUPS} groups, not {limit}"
        )));
    }
    Ok(())
}

/// Whether `record` lists `user` as a current member.
pub(crate) fn is_member(record: &GroupRecord, user: UserId) -> bool {
    // The store does not require sorted members: no binary search.
    record
        .info
        .as_ref()
        .is_some_and(|i| i.members.iter().any(|m| m.user_id == user.get()))
}

//! The embedded [`PeopleStore`]: one redb file. Every write is one write transaction,
//! committed with immediate durability (fsync) before the caller hears back; the checks a
//! write depends on (the contact and block limits, a status's post id) read inside that
//! same transaction, and redb runs one write transaction at a time, so they hold under
//! any concurrency. Reads run on the blocking pool, each in its own read transaction (a
//! snapshot).
//!
//! Writes are rare user actions (a profile edit, a new contact, a status), so each is one
//! `spawn_blocking` call rather than a writer thread with group commit as in
//! natter-groups' `RedbGroupStore`.
//!
//! # Tables
//!
//! - `profiles`: user → the profile (JSON).
//! - `privacy`: user → 4 bytes, one [`Audience`] code per setting.
//! - `contacts`: (owner, contact) → (name, added_at_ms).
//! - `blocks`: (owner, blocked) → blocked_at_ms.
//! - `statuses`: status id → the status (JSON).
//! - `user_statuses`: (user, created_at_ms, status id) → expires_at_ms: a user's statuses
//!   in posting order.
//! - `status_posts`: (user, post_id) → status id, for idempotent posting.
//! - `status_views`: (status id, viewer) → viewed_at_ms.
//! - `expiries`: (expires_at_ms, status id) → (): what [`PeopleStore::prune`] walks.
//!   Written by a post and by every view (with the expiry the view was given), so views
//!   of a status that is already gone are pruned too.

use std::{
    fmt::Display,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use natter_proto::UserId;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::store::{
    Added, Audience, ContactRecord, PeopleStore, Privacy, ProfileRecord, StatusRecord, StoreError,
    View,
};

/// user → JSON [`StoredProfile`].
const PROFILES: TableDefinition<u64, &[u8]> = TableDefinition::new("profiles");
/// user → [last_seen, online, profile_photo, about] as [`audience_code`]s.
const PRIVACY: TableDefinition<u64, &[u8]> = TableDefinition::new("privacy");
/// (owner, contact) → (name, added_at_ms).
const CONTACTS: TableDefinition<(u64, u64), (&str, u64)> = TableDefinition::new("contacts");
/// (owner, blocked) → blocked_at_ms.
const BLOCKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("blocks");

/// Whether `owner` already has `limit` entries in a per-owner table keyed (owner, other):
/// counted up to the limit, not further.
fn holds_limit<V: redb::Value + 'static>(
    table: &redb::Table<(u64, u64), V>,
    owner: u64,
    limit: u32,
) -> Result<bool, StoreError> {
    let mut count: u64 = 0;
    for entry in table
        .range((owner, 0u64)..=(owner, u64::MAX))
        .map_err(storage)?
    {
        if count >= u64::from(limit) {
            return Ok(true);
        }
        entry.map_err(storage)?;
        count += 1;
    }
    Ok(count >= u64::from(limit))
}

/// Removes the (owner, other) entry of a per-owner table; whether there was one.
fn remove_pair<V: redb::Value + 'static>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<(u64, u64), V>,
    key: (u64, u64),
) -> Result<Wrote<bool>, StoreError> {
    let removed = txn
        .open_table(table)
        .map_err(storage)?
        .remove(key)
        .map_err(storage)?
        .is_some();
    Ok(Wrote {
        value: removed,
        changed: removed,
    })
}
/// status id → JSON [`StoredStatus`].
const STATUSES: TableDefinition<u64, &[u8]> = TableDefinition::new("statuses");
/// (user, created_at_ms, status id) → expires_at_ms.
const USER_STATUSES: TableDefinition<(u64, u64, u64), u64> = TableDefinition::new("user_statuses");
/// (user, post_id) → status id.
const STATUS_POSTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("status_posts");
/// (status id, viewer) → viewed_at_ms.
const STATUS_VIEWS: TableDefinition<(u64, u64), u64> = TableDefinition::new("status_views");
/// (expires_at_ms, status id) → ().
const EXPIRIES: TableDefinition<(u64, u64), ()> = TableDefinition::new("expiries");

/// How long dropping the store waits for calls still running on the blocking pool.
const DROP_WAIT: Duration = Duration::from_secs(30);

fn storage(e: impl Display) -> StoreError {
    StoreError::Storage(format!("redb: {e}"))
}

fn corrupt(what: impl Display, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("redb: {what}: {e}"))
}

/// The stored code of an [`Audience`] (also the ScyllaDB store's).
pub(crate) fn audience_code(audience: Audience) -> u8 {
    match audience {
        Audience::Everyone => 0,
        Audience::Contacts => 1,
        Audience::Nobody => 2,
    }
}

/// The [`Audience`] of a stored code.
pub(crate) fn audience_from_code(code: u8) -> Result<Audience, StoreError> {
    match code {
        0 => Ok(Audience::Everyone),
        1 => Ok(Audience::Contacts),
        2 => Ok(Audience::Nobody),
        other => Err(StoreError::Corrupt(format!(
            "unknown privacy audience code {other}"
        ))),
    }
}

fn encode_privacy(p: Privacy) -> [u8; 4] {
    [
        audience_code(p.last_seen),
        audience_code(p.online),
        audience_code(p.profile_photo),
        audience_code(p.about),
    ]
}

fn decode_privacy(bytes: &[u8]) -> Result<Privacy, StoreError> {
    let &[last_seen, online, profile_photo, about] = bytes else {
        return Err(StoreError::Corrupt(format!(
            "privacy settings of {} bytes, not 4",
            bytes.len()
        )));
    };
    Ok(Privacy {
        last_seen: audience_from_code(last_seen)?,
        online: audience_from_code(online)?,
        profile_photo: audience_from_code(profile_photo)?,
        about: audience_from_code(about)?,
    })
}

/// A profile as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredProfile {
    display_name: String,
    about: String,
    avatar_media_id: String,
    updated_at_ms: u64,
}

fn encode_profile(p: &ProfileRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&StoredProfile {
        display_name: p.display_name.clone(),
        about: p.about.clone(),
        avatar_media_id: p.avatar_media_id.clone(),
        updated_at_ms: p.updated_at_ms,
    })
    .map_err(|e| StoreError::Storage(format!("encoding a profile: {e}")))
}

fn decode_profile(user: u64, bytes: &[u8]) -> Result<ProfileRecord, StoreError> {
    let p: StoredProfile =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format_args!("profile of {user}"), e))?;
    Ok(ProfileRecord {
        display_name: p.display_name,
        about: p.about,
        avatar_media_id: p.avatar_media_id,
        updated_at_ms: p.updated_at_ms,
    })
}

/// A status as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredStatus {
    id: u64,
    user: u64,
    post_id: String,
    text: String,
    media_id: String,
    created_at_ms: u64,
    expires_at_ms: u64,
}

fn encode_status(s: &StatusRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&StoredStatus {
        id: s.id,
        user: s.user.get(),
        post_id: s.post_id.clone(),
        text: s.text.clone(),
        media_id: s.media_id.clone(),
        created_at_ms: s.created_at_ms,
        expires_at_ms: s.expires_at_ms,
    })
    .map_err(|e| StoreError::Storage(format!("encoding a status: {e}")))
}

fn decode_status(id: u64, bytes: &[u8]) -> Result<StatusRecord, StoreError> {
    let s: StoredStatus =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format_args!("status {id}"), e))?;
    if s.id != id {
        return Err(corrupt(
            format_args!("status {id}"),
            format_args!("the record says id {}", s.id),
        ));
    }
    Ok(StatusRecord {
        id: s.id,
        user: UserId(s.user),
        post_id: s.post_id,
        text: s.text,
        media_id: s.media_id,
        created_at_ms: s.created_at_ms,
        expires_at_ms: s.expires_at_ms,
    })
}

/// What a write closure did: `changed: false` aborts the transaction instead of paying
/// for a commit that writes nothing.
struct Wrote<T> {
    value: T,
    changed: bool,
}

fn changed<T>(value: T) -> Result<Wrote<T>, StoreError> {
    Ok(Wrote {
        value,
        changed: true,
    })
}

fn unchanged<T>(value: T) -> Result<Wrote<T>, StoreError> {
    Ok(Wrote {
        value,
        changed: false,
    })
}

/// The redb-backed people store. Dropping it closes the file (after waiting for calls
/// still running on the blocking pool, even ones whose caller gave up), so the same path
/// can be opened again as soon as `drop` returns.
pub struct RedbPeopleStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbPeopleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbPeopleStore")
    }
}

impl RedbPeopleStore {
    /// Opens (creating if needed) the store at `path`. Blocking. Fails with
    /// [`StoreError::Storage`] if the file cannot be opened, e.g. because another store
    /// has it open.
    pub fn open(path: &Path) -> Result<RedbPeopleStore, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Storage(format!("redb: opening {}: {e}", path.display())))?;
        // Create every table up front so read transactions always find them.
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            txn.open_table(PROFILES).map_err(storage)?;
            txn.open_table(PRIVACY).map_err(storage)?;
            txn.open_table(CONTACTS).map_err(storage)?;
            txn.open_table(BLOCKS).map_err(storage)?;
            txn.open_table(STATUSES).map_err(storage)?;
            txn.open_table(USER_STATUSES).map_err(storage)?;
            txn.open_table(STATUS_POSTS).map_err(storage)?;
            txn.open_table(STATUS_VIEWS).map_err(storage)?;
            txn.open_table(EXPIRIES).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(RedbPeopleStore { db: Arc::new(db) })
    }

    /// Runs `f` in a read transaction on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            f(&txn)
        })
        .await
        .map_err(storage)?
    }

    /// Runs `f` in a write transaction on the blocking pool and commits it durably if it
    /// changed anything. An error from `f` aborts the transaction: nothing is written.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<Wrote<T>, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            let wrote = f(&txn)?;
            if wrote.changed {
                txn.commit().map_err(storage)?;
            } else {
                txn.abort().map_err(storage)?;
            }
            Ok(wrote.value)
        })
        .await
        .map_err(storage)?
    }
}

impl Drop for RedbPeopleStore {
    fn drop(&mut self) {
        // Every call in progress on the blocking pool holds a clone of `db`; the file
        // closes when the last one goes. Nothing can start a new call any more (we have
        // the store exclusively), so wait for those to end. They are short (one
        // transaction each); the bound only guards against a wedged disk.
        let started = Instant::now();
        while Arc::strong_count(&self.db) > 1 {
            if started.elapsed() > DROP_WAIT {
                tracing::warn!(
                    "redb people store dropped while calls are still running: the file \
                     closes when they end"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Deletes status `id` (stored as `status`) with its index entries and views.
fn delete_status_in(txn: &WriteTransaction, status: &StatusRecord) -> Result<(), StoreError> {
    let user = status.user.get();
    txn.open_table(STATUSES)
        .map_err(storage)?
        .remove(status.id)
        .map_err(storage)?;
    txn.open_table(USER_STATUSES)
        .map_err(storage)?
        .remove((user, status.created_at_ms, status.id))
        .map_err(storage)?;
    txn.open_table(EXPIRIES)
        .map_err(storage)?
        .remove((status.expires_at_ms, status.id))
        .map_err(storage)?;
    let mut posts = txn.open_table(STATUS_POSTS).map_err(storage)?;
    // The post id may name a newer status by now (this one expired, then was posted
    // again): leave that mapping alone.
    let maps_here = posts
        .get((user, status.post_id.as_str()))
        .map_err(storage)?
        .is_some_and(|g| g.value() == status.id);
    if maps_here {
        posts
            .remove((user, status.post_id.as_str()))
            .map_err(storage)?;
    }
    delete_views_in(txn, status.id)
}

/// Deletes every view of status `id`.
fn delete_views_in(txn: &WriteTransaction, id: u64) -> Result<(), StoreError> {
    let mut views = txn.open_table(STATUS_VIEWS).map_err(storage)?;
    views
        .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
        .map_err(storage)?;
    Ok(())
}

/// The stored status `id`, whether live or not.
fn stored_status(
    statuses: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<StatusRecord>, StoreError> {
    statuses
        .get(id)
        .map_err(storage)?
        .map(|g| decode_status(id, g.value()))
        .transpose()
}

#[async_trait::async_trait]
impl PeopleStore for RedbPeopleStore {
    async fn profile(&self, user: UserId) -> Result<Option<ProfileRecord>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(PROFILES).map_err(storage)?;
            let found = table.get(user.get()).map_err(storage)?;
            found
                .map(|g| decode_profile(user.get(), g.value()))
                .transpose()
        })
        .await
    }

    async fn put_profile(&self, user: UserId, profile: &ProfileRecord) -> Result<(), StoreError> {
        let encoded = encode_profile(profile)?;
        self.write(move |txn| {
            txn.open_table(PROFILES)
                .map_err(storage)?
                .insert(user.get(), encoded.as_slice())
                .map_err(storage)?;
            changed(())
        })
        .await
    }

    async fn privacy(&self, user: UserId) -> Result<Privacy, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(PRIVACY).map_err(storage)?;
            let found = table.get(user.get()).map_err(storage)?;
            found.map_or(Ok(Privacy::default()), |g| decode_privacy(g.value()))
        })
        .await
    }

    async fn put_privacy(&self, user: UserId, privacy: Privacy) -> Result<(), StoreError> {
        let encoded = encode_privacy(privacy);
        self.write(move |txn| {
            txn.open_table(PRIVACY)
                .map_err(storage)?
                .insert(user.get(), encoded.as_slice())
                .map_err(storage)?;
            changed(())
        })
        .await
    }

    async fn add_contact(
        &self,
        owner: UserId,
        contact: &ContactRecord,
        limit: u32,
    ) -> Result<Added, StoreError> {
        let (owner, other, name, at) = (
            owner.get(),
            contact.user.get(),
            contact.name.clone(),
            contact.added_at_ms,
        );
        self.write(move |txn| {
            let mut table = txn.open_table(CONTACTS).map_err(storage)?;
            let existing = table
                .get((owner, other))
                .map_err(storage)?
                .map(|g| g.value().1);
            if let Some(added_at) = existing {
                // Still counted once; the first time it was added stays.
                table
                    .insert((owner, other), (name.as_str(), added_at))
                    .map_err(storage)?;
                return changed(Added::Updated);
            }
            // Counted inside the transaction: no other write runs until it commits.
            if holds_limit(&table, owner, limit)? {
                return unchanged(Added::LimitReached);
            }
            table
                .insert((owner, other), (name.as_str(), at))
                .map_err(storage)?;
            changed(Added::Added)
        })
        .await
    }

    async fn remove_contact(&self, owner: UserId, contact: UserId) -> Result<bool, StoreError> {
        let key = (owner.get(), contact.get());
        self.write(move |txn| remove_pair(txn, CONTACTS, key)).await
    }

    async fn contacts(&self, owner: UserId) -> Result<Vec<ContactRecord>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(CONTACTS).map_err(storage)?;
            let owner = owner.get();
            let mut out = Vec::new();
            for entry in table
                .range((owner, 0u64)..=(owner, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = entry.map_err(storage)?;
                let (_, user) = k.value();
                let (name, added_at_ms) = v.value();
                out.push(ContactRecord {
                    user: UserId(user),
                    name: name.to_owned(),
                    added_at_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn is_contact(&self, owner: UserId, other: UserId) -> Result<bool, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(CONTACTS).map_err(storage)?;
            Ok(table
                .get((owner.get(), other.get()))
                .map_err(storage)?
                .is_some())
        })
        .await
    }

    async fn add_block(
        &self,
        owner: UserId,
        blocked: UserId,
        at_ms: u64,
        limit: u32,
    ) -> Result<Added, StoreError> {
        let (owner, blocked) = (owner.get(), blocked.get());
        self.write(move |txn| {
            let mut table = txn.open_table(BLOCKS).map_err(storage)?;
            if table.get((owner, blocked)).map_err(storage)?.is_some() {
                // The first time stays.
                return unchanged(Added::Updated);
            }
            if holds_limit(&table, owner, limit)? {
                return unchanged(Added::LimitReached);
            }
            table.insert((owner, blocked), at_ms).map_err(storage)?;
            changed(Added::Added)
        })
        .await
    }

    async fn remove_block(&self, owner: UserId, blocked: UserId) -> Result<bool, StoreError> {
        let key = (owner.get(), blocked.get());
        self.write(move |txn| remove_pair(txn, BLOCKS, key)).await
    }

    async fn blocks(&self, owner: UserId) -> Result<Vec<UserId>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(BLOCKS).map_err(storage)?;
            let owner = owner.get();
            let mut out = Vec::new();
            for entry in table
                .range((owner, 0u64)..=(owner, u64::MAX))
                .map_err(storage)?
            {
                let (k, _) = entry.map_err(storage)?;
                out.push(UserId(k.value().1));
            }
            Ok(out)
        })
        .await
    }

    async fn post_status(
        &self,
        status: &StatusRecord,
        now_ms: u64,
    ) -> Result<StatusRecord, StoreError> {
        let status = status.clone();
        let encoded = encode_status(&status)?;
        self.write(move |txn| {
            let user = status.user.get();
            let mut statuses = txn.open_table(STATUSES).map_err(storage)?;
            let mut posts = txn.open_table(STATUS_POSTS).map_err(storage)?;
            let posted = posts
                .get((user, status.post_id.as_str()))
                .map_err(storage)?
                .map(|g| g.value());
            if let Some(id) = posted
                && let Some(existing) = stored_status(&statuses, id)?
                && existing.expires_at_ms > now_ms
            {
                return unchanged(existing);
            }
            if let Some(taken) = stored_status(&statuses, status.id)? {
                // Ids are random in [1, 2^53): this is a caller's bug, not bad luck.
                return Err(StoreError::Storage(format!(
                    "status id {} is taken (by user {})",
                    status.id, taken.user
                )));
            }
            statuses
                .insert(status.id, encoded.as_slice())
                .map_err(storage)?;
            posts
                .insert((user, status.post_id.as_str()), status.id)
                .map_err(storage)?;
            txn.open_table(USER_STATUSES)
                .map_err(storage)?
                .insert(
                    (user, status.created_at_ms, status.id),
                    status.expires_at_ms,
                )
                .map_err(storage)?;
            txn.open_table(EXPIRIES)
                .map_err(storage)?
                .insert((status.expires_at_ms, status.id), ())
                .map_err(storage)?;
            changed(status)
        })
        .await
    }

    async fn statuses(&self, user: UserId, now_ms: u64) -> Result<Vec<StatusRecord>, StoreError> {
        self.read(move |txn| {
            let index = txn.open_table(USER_STATUSES).map_err(storage)?;
            let statuses = txn.open_table(STATUSES).map_err(storage)?;
            let user = user.get();
            let mut out = Vec::new();
            for entry in index
                .range((user, 0u64, 0u64)..=(user, u64::MAX, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = entry.map_err(storage)?;
                let (_, _, id) = k.value();
                if v.value() <= now_ms {
                    continue;
                }
                match stored_status(&statuses, id)? {
                    Some(status) => out.push(status),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "redb: user {user}'s status {id} is indexed but not stored"
                        )));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn status(&self, id: u64, now_ms: u64) -> Result<Option<StatusRecord>, StoreError> {
        self.read(move |txn| {
            let statuses = txn.open_table(STATUSES).map_err(storage)?;
            Ok(stored_status(&statuses, id)?.filter(|s| s.expires_at_ms > now_ms))
        })
        .await
    }

    async fn count_statuses_since(
        &self,
        user: UserId,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<u32, StoreError> {
        self.read(move |txn| {
            let index = txn.open_table(USER_STATUSES).map_err(storage)?;
            let user = user.get();
            let mut count: u32 = 0;
            for entry in index
                .range((user, since_ms, 0u64)..=(user, u64::MAX, u64::MAX))
                .map_err(storage)?
            {
                let (_, expires_at) = entry.map_err(storage)?;
                if expires_at.value() > now_ms {
                    count = count.saturating_add(1);
                }
            }
            Ok(count)
        })
        .await
    }

    async fn delete_status(&self, user: UserId, id: u64) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let status = {
                let statuses = txn.open_table(STATUSES).map_err(storage)?;
                stored_status(&statuses, id)?
            };
            match status {
                Some(status) if status.user == user => {
                    delete_status_in(txn, &status)?;
                    changed(true)
                }
                _ => unchanged(false),
            }
        })
        .await
    }

    async fn add_view(&self, id: u64, expires_at_ms: u64, view: View) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let mut views = txn.open_table(STATUS_VIEWS).map_err(storage)?;
            let key = (id, view.viewer.get());
            if views.get(key).map_err(storage)?.is_some() {
                return unchanged(false);
            }
            views.insert(key, view.viewed_at_ms).map_err(storage)?;
            // So the view goes at `expires_at_ms` even if the status is gone already.
            txn.open_table(EXPIRIES)
                .map_err(storage)?
                .insert((expires_at_ms, id), ())
                .map_err(storage)?;
            changed(true)
        })
        .await
    }

    async fn views(&self, id: u64) -> Result<Vec<View>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(STATUS_VIEWS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in table.range((id, 0u64)..=(id, u64::MAX)).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                out.push(View {
                    viewer: UserId(k.value().1),
                    viewed_at_ms: v.value(),
                });
            }
            out.sort_by_key(|v| (v.viewed_at_ms, v.viewer));
            Ok(out)
        })
        .await
    }

    async fn has_viewed(&self, id: u64, viewer: UserId) -> Result<bool, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(STATUS_VIEWS).map_err(storage)?;
            Ok(table.get((id, viewer.get())).map_err(storage)?.is_some())
        })
        .await
    }

    async fn delete_user(&self, user: UserId) -> Result<(), StoreError> {
        let u = user.get();
        self.write(move |txn| {
            txn.open_table(PROFILES)
                .map_err(storage)?
                .remove(u)
                .map_err(storage)?;
            txn.open_table(PRIVACY)
                .map_err(storage)?
                .remove(u)
                .map_err(storage)?;
            txn.open_table(CONTACTS)
                .map_err(storage)?
                .retain_in((u, 0u64)..=(u, u64::MAX), |_, _| false)
                .map_err(storage)?;
            txn.open_table(BLOCKS)
                .map_err(storage)?
                .retain_in((u, 0u64)..=(u, u64::MAX), |_, _| false)
                .map_err(storage)?;
            let indexed: Vec<(u64, u64, u64)> = {
                let index = txn.open_table(USER_STATUSES).map_err(storage)?;
                let mut keys = Vec::new();
                for entry in index
                    .range((u, 0u64, 0u64)..=(u, u64::MAX, u64::MAX))
                    .map_err(storage)?
                {
                    keys.push(entry.map_err(storage)?.0.value());
                }
                keys
            };
            for key in indexed {
                let (_, _, id) = key;
                let status = {
                    let statuses = txn.open_table(STATUSES).map_err(storage)?;
                    stored_status(&statuses, id)?
                };
                match status {
                    Some(status) if status.user == user => delete_status_in(txn, &status)?,
                    // Indexed but not stored (or not theirs): only the index entry is
                    // theirs to drop.
                    _ => {
                        txn.open_table(USER_STATUSES)
                            .map_err(storage)?
                            .remove(key)
                            .map_err(storage)?;
                    }
                }
            }
            // Post ids whose statuses are gone already (deleting a status drops its own).
            let post_ids: Vec<String> = {
                let posts = txn.open_table(STATUS_POSTS).map_err(storage)?;
                let mut ids = Vec::new();
                for entry in posts.range((u, "")..).map_err(storage)? {
                    let (k, _) = entry.map_err(storage)?;
                    let (owner, post_id) = k.value();
                    if owner != u {
                        break;
                    }
                    ids.push(post_id.to_owned());
                }
                ids
            };
            let mut posts = txn.open_table(STATUS_POSTS).map_err(storage)?;
            for post_id in &post_ids {
                posts.remove((u, post_id.as_str())).map_err(storage)?;
            }
            changed(())
        })
        .await
    }

    async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.write(move |txn| {
            let due: Vec<(u64, u64)> = {
                let expiries = txn.open_table(EXPIRIES).map_err(storage)?;
                let mut due = Vec::new();
                for entry in expiries
                    .range((0u64, 0u64)..=(now_ms, u64::MAX))
                    .map_err(storage)?
                {
                    let (k, _) = entry.map_err(storage)?;
                    due.push(k.value());
                }
                due
            };
            if due.is_empty() {
                return unchanged(0);
            }
            let mut deleted = 0;
            for &(expires_at, id) in &due {
                let status = {
                    let statuses = txn.open_table(STATUSES).map_err(storage)?;
                    stored_status(&statuses, id)?
                };
                match status {
                    // The status's own expiry: it goes, with its views.
                    Some(status) if status.expires_at_ms == expires_at => {
                        delete_status_in(txn, &status)?;
                        deleted += 1;
                    }
                    // A view's expiry that differs from the status's: the status (still
                    // live) takes its views with it when it goes.
                    Some(_) => {}
                    // Views of a status that is gone already.
                    None => delete_views_in(txn, id)?,
                }
                txn.open_table(EXPIRIES)
                    .map_err(storage)?
                    .remove((expires_at, id))
                    .map_err(storage)?;
            }
            changed(deleted)
        })
        .await
    }
}

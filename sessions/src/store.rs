//! The redb store. Every function here blocks (disk and fsync): async callers go through
//! `spawn_blocking`. Each write is one transaction committed with redb's default
//! durability (fsync before commit returns), and checks-then-writes happen inside that
//! transaction, so concurrent registrations or refreshes cannot both win.

use std::path::Path;

use natter_proto::{DeviceId, UserId};
use rand::Rng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// user id → [`UserRecord`] (JSON).
const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// username → user id.
const USERNAMES: TableDefinition<&str, u64> = TableDefinition::new("usernames");
/// (user id, device id) → [`DeviceRecord`] (JSON).
const DEVICES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("devices");
/// device id → user id: finds a device from a refresh token and keeps device ids unique.
const DEVICE_OWNERS: TableDefinition<u64, u64> = TableDefinition::new("device_owners");
/// push token → (user id, device id): the one device holding each token (the token is
/// also in that device's [`DeviceRecord`]). Registering a token another device holds
/// moves it.
const PUSH_TOKENS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("push_tokens");
/// (user id, conversation id) → muted until (ms since the epoch; `u64::MAX`: forever).
/// Unmuting deletes the row; rows whose time has passed are not in force and are
/// dropped when the user reaches [`MAX_MUTES`].
const MUTES: TableDefinition<(u64, &str), u64> = TableDefinition::new("mutes");

/// Mutes one user can hold (expired ones are dropped before refusing a new one).
pub(crate) const MAX_MUTES: usize = 10_000;

/// Ids are random in [1, 2^53) so JavaScript numbers hold them exactly.
const ID_LIMIT: u64 = 1 << 53;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("{0}")]
    Corrupt(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Debug, Serialize, Deserialize)]
struct UserRecord {
    username: String,
    /// PHC string (`$argon2id$v=19$m=...`).
    password_hash: String,
    created_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeviceRecord {
    name: String,
    created_at_ms: u64,
    revoked: bool,
    /// SHA-256 of the secret part of the current refresh token; `None` once revoked.
    refresh_hash: Option<[u8; 32]>,
    refresh_expires_at_ms: u64,
    /// Where to push notifications for this device; records written before push tokens
    /// existed have no such field and decode as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    push: Option<PushToken>,
}

/// A device's push registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PushToken {
    /// Opaque to natter: what the device's push service gave it.
    pub(crate) token: String,
    /// "fcm", "apns", "webpush" or "other".
    pub(crate) platform: String,
}

/// Where to push for one user about one conversation.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PushTargets {
    pub(crate) muted: bool,
    /// The user's logged-in devices holding a token, by device id.
    pub(crate) devices: Vec<(DeviceId, PushToken)>,
}

/// What setting a push token did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SetPush {
    /// Stored. `moved_from` names the other device that held the same token until now.
    Stored {
        moved_from: Option<(UserId, DeviceId)>,
    },
    /// The device does not exist or is logged out.
    NoDevice,
}

/// What setting a mute did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SetMute {
    Done,
    /// The user already has [`MAX_MUTES`] mutes in force.
    TooMany,
}

/// What a refresh attempt found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// The token matched and was replaced by the new one.
    Rotated { user: UserId, username: String },
    /// Unknown device, revoked, expired, or not the current token.
    Refused,
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and byte arrays always serialize.
    serde_json::to_vec(record).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn random_id() -> u64 {
    rand::rng().random_range(1..ID_LIMIT)
}

pub(crate) struct Store {
    db: Database,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            // Opening a table in a write transaction creates it.
            txn.open_table(USERS)?;
            txn.open_table(USERNAMES)?;
            txn.open_table(DEVICES)?;
            txn.open_table(DEVICE_OWNERS)?;
            txn.open_table(PUSH_TOKENS)?;
            txn.open_table(MUTES)?;
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// Every user (id, username) and every device (user, device, active).
    #[allow(clippy::type_complexity)]
    pub(crate) fn load_all(
        &self,
    ) -> Result<(Vec<(UserId, String)>, Vec<(UserId, DeviceId, bool)>), StoreError> {
        let txn = self.db.begin_read()?;
        let mut users = Vec::new();
        for row in txn.open_table(USERS)?.iter()? {
            let (id, value) = row?;
            let record: UserRecord = decode(value.value(), "user")?;
            users.push((UserId(id.value()), record.username));
        }
        let mut devices = Vec::new();
        for row in txn.open_table(DEVICES)?.iter()? {
            let (key, value) = row?;
            let (user, device) = key.value();
            let record: DeviceRecord = decode(value.value(), "device")?;
            devices.push((UserId(user), DeviceId(device), !record.revoked));
        }
        Ok((users, devices))
    }

    /// Creates a user; `None` if the username is taken.
    pub(crate) fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<Option<UserId>, StoreError> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut names = txn.open_table(USERNAMES)?;
            if names.get(username)?.is_some() {
                return Ok(None);
            }
            let mut users = txn.open_table(USERS)?;
            let id = loop {
                let id = random_id();
                if users.get(id)?.is_none() {
                    break id;
                }
            };
            let record = UserRecord {
                username: username.to_owned(),
                password_hash: password_hash.to_owned(),
                created_at_ms: now_ms,
            };
            users.insert(id, encode(&record).as_slice())?;
            names.insert(username, id)?;
            id
        };
        txn.commit()?;
        Ok(Some(UserId(id)))
    }

    /// The id and password hash of a user, by username.
    pub(crate) fn credentials(
        &self,
        username: &str,
    ) -> Result<Option<(UserId, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(id) = txn.open_table(USERNAMES)?.get(username)?.map(|g| g.value()) else {
            return Ok(None);
        };
        let users = txn.open_table(USERS)?;
        let Some(value) = users.get(id)? else {
            return Err(StoreError::Corrupt(format!(
                "username {username:?} points at missing user {id}"
            )));
        };
        let record: UserRecord = decode(value.value(), "user")?;
        Ok(Some((UserId(id), record.password_hash)))
    }

    /// Creates a logged-in device for `user` holding the given refresh token hash.
    pub(crate) fn create_device(
        &self,
        user: UserId,
        name: &str,
        refresh_hash: [u8; 32],
        refresh_expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<DeviceId, StoreError> {
        let txn = self.db.begin_write()?;
        let device = {
            let mut owners = txn.open_table(DEVICE_OWNERS)?;
            let device = loop {
                let id = random_id();
                if owners.get(id)?.is_none() {
                    break id;
                }
            };
            owners.insert(device, user.get())?;
            let record = DeviceRecord {
                name: name.to_owned(),
                created_at_ms: now_ms,
                revoked: false,
                refresh_hash: Some(refresh_hash),
                refresh_expires_at_ms,
                push: None,
            };
            txn.open_table(DEVICES)?
                .insert((user.get(), device), encode(&record).as_slice())?;
            device
        };
        txn.commit()?;
        Ok(DeviceId(device))
    }

    /// Swaps the device's refresh token for a new one if `presented` is its current,
    /// unexpired token.
    pub(crate) fn rotate_refresh(
        &self,
        device: DeviceId,
        presented: [u8; 32],
        new_hash: [u8; 32],
        new_expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<Refresh, StoreError> {
        let txn = self.db.begin_write()?;
        let outcome = {
            let Some(user) = txn
                .open_table(DEVICE_OWNERS)?
                .get(device.get())?
                .map(|g| g.value())
            else {
                return Ok(Refresh::Refused);
            };
            let mut devices = txn.open_table(DEVICES)?;
            let mut record: DeviceRecord = match devices.get((user, device.get()))? {
                Some(v) => decode(v.value(), "device")?,
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "device {device} of user {user} is missing"
                    )));
                }
            };
            let matches = record
                .refresh_hash
                .is_some_and(|stored| hashes_equal(&stored, &presented));
            if record.revoked || !matches || record.refresh_expires_at_ms <= now_ms {
                // Dropping the transaction aborts it: nothing was written.
                return Ok(Refresh::Refused);
            }
            record.refresh_hash = Some(new_hash);
            record.refresh_expires_at_ms = new_expires_at_ms;
            devices.insert((user, device.get()), encode(&record).as_slice())?;
            let users = txn.open_table(USERS)?;
            let Some(value) = users.get(user)? else {
                return Err(StoreError::Corrupt(format!(
                    "device {device} belongs to missing user {user}"
                )));
            };
            let username = decode::<UserRecord>(value.value(), "user")?.username;
            Refresh::Rotated {
                user: UserId(user),
                username,
            }
        };
        txn.commit()?;
        Ok(outcome)
    }

    /// Marks a device revoked and forgets its refresh token and push token. False if
    /// there is no such device of this user.
    pub(crate) fn revoke(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut devices = txn.open_table(DEVICES)?;
            let key = (user.get(), device.get());
            let mut record: DeviceRecord = match devices.get(key)? {
                Some(v) => decode(v.value(), "device")?,
                None => return Ok(false),
            };
            record.revoked = true;
            record.refresh_hash = None;
            record.refresh_expires_at_ms = 0;
            if let Some(old) = record.push.take() {
                unindex_token(&mut txn.open_table(PUSH_TOKENS)?, &old.token, key)?;
            }
            devices.insert(key, encode(&record).as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Gives a logged-in device this push token, replacing its previous one and taking
    /// the token from any other device (of any user) that held it.
    pub(crate) fn set_push(
        &self,
        user: UserId,
        device: DeviceId,
        push: PushToken,
    ) -> Result<SetPush, StoreError> {
        let txn = self.db.begin_write()?;
        let moved_from = {
            let mut devices = txn.open_table(DEVICES)?;
            let mut tokens = txn.open_table(PUSH_TOKENS)?;
            let key = (user.get(), device.get());
            let mut record: DeviceRecord = match devices.get(key)? {
                Some(v) => decode(v.value(), "device")?,
                None => return Ok(SetPush::NoDevice),
            };
            if record.revoked {
                return Ok(SetPush::NoDevice);
            }
            if let Some(old) = record.push.take() {
                unindex_token(&mut tokens, &old.token, key)?;
            }
            let holder = tokens.get(push.token.as_str())?.map(|g| g.value());
            let moved_from = match holder {
                Some(other) if other != key => {
                    let other_record = devices.get(other)?.map(|v| v.value().to_vec());
                    match other_record {
                        Some(bytes) => {
                            let mut other_record: DeviceRecord = decode(&bytes, "device")?;
                            if other_record
                                .push
                                .as_ref()
                                .is_some_and(|p| p.token == push.token)
                            {
                                other_record.push = None;
                                devices.insert(other, encode(&other_record).as_slice())?;
                            }
                        }
                        None => {
                            tracing::warn!(
                                user = other.0,
                                device = other.1,
                                "push token index named a missing device"
                            );
                        }
                    }
                    Some((UserId(other.0), DeviceId(other.1)))
                }
                _ => None,
            };
            tokens.insert(push.token.as_str(), key)?;
            record.push = Some(push);
            devices.insert(key, encode(&record).as_slice())?;
            moved_from
        };
        txn.commit()?;
        Ok(SetPush::Stored { moved_from })
    }

    /// Forgets the device's push token. False if it had none (or there is no device).
    pub(crate) fn clear_push(&self, user: UserId, device: DeviceId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut devices = txn.open_table(DEVICES)?;
            let key = (user.get(), device.get());
            let mut record: DeviceRecord = match devices.get(key)? {
                Some(v) => decode(v.value(), "device")?,
                None => return Ok(false),
            };
            let Some(old) = record.push.take() else {
                return Ok(false);
            };
            unindex_token(&mut txn.open_table(PUSH_TOKENS)?, &old.token, key)?;
            devices.insert(key, encode(&record).as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Mutes `conversation` for `user` until `until_ms` (0 unmutes). Refused when the
    /// user already has [`MAX_MUTES`] mutes in force at `now_ms` and this one is new.
    pub(crate) fn set_mute(
        &self,
        user: UserId,
        conversation: &str,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<SetMute, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut mutes = txn.open_table(MUTES)?;
            let key = (user.get(), conversation);
            if until_ms == 0 {
                mutes.remove(key)?;
            } else {
                if mutes.get(key)?.is_none() {
                    let range = (user.get(), "")..(user.get().saturating_add(1), "");
                    let mut count = 0usize;
                    let mut expired = Vec::new();
                    for row in mutes.range(range.clone())? {
                        let (k, v) = row?;
                        if v.value() <= now_ms {
                            expired.push(k.value().1.to_owned());
                        }
                        count += 1;
                    }
                    if count >= MAX_MUTES {
                        if count - expired.len() >= MAX_MUTES {
                            return Ok(SetMute::TooMany);
                        }
                        for c in &expired {
                            mutes.remove((user.get(), c.as_str()))?;
                        }
                    }
                }
                mutes.insert(key, until_ms)?;
            }
        }
        txn.commit()?;
        Ok(SetMute::Done)
    }

    /// The user's mutes in force at `now_ms`: (conversation, until), by conversation.
    pub(crate) fn mutes(
        &self,
        user: UserId,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mutes = txn.open_table(MUTES)?;
        let mut out = Vec::new();
        for row in mutes.range((user.get(), "")..(user.get().saturating_add(1), ""))? {
            let (k, v) = row?;
            if v.value() > now_ms {
                out.push((k.value().1.to_owned(), v.value()));
            }
        }
        Ok(out)
    }

    /// Whether `user` muted `conversation` and where to push for them.
    pub(crate) fn push_targets(
        &self,
        user: UserId,
        conversation: &str,
        now_ms: u64,
    ) -> Result<PushTargets, StoreError> {
        let txn = self.db.begin_read()?;
        let muted = txn
            .open_table(MUTES)?
            .get((user.get(), conversation))?
            .is_some_and(|g| g.value() > now_ms);
        let mut devices = Vec::new();
        let table = txn.open_table(DEVICES)?;
        for row in table.range((user.get(), 0)..=(user.get(), u64::MAX))? {
            let (k, v) = row?;
            let record: DeviceRecord = decode(v.value(), "device")?;
            if let (false, Some(push)) = (record.revoked, record.push) {
                devices.push((DeviceId(k.value().1), push));
            }
        }
        Ok(PushTargets { muted, devices })
    }
}

/// Removes `token` from the index if it points at `key` (it may have moved on).
fn unindex_token(
    tokens: &mut redb::Table<'_, &'static str, (u64, u64)>,
    token: &str,
    key: (u64, u64),
) -> Result<(), StoreError> {
    let holder = tokens.get(token)?.map(|g| g.value());
    if holder == Some(key) {
        tokens.remove(token)?;
    }
    Ok(())
}

/// Compares two hashes without stopping at the first difference. (They are hashes of
/// secrets, so timing would leak little anyway; this removes even that.)
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_devices_round_trip_and_usernames_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let alice = store.create_user("alice", "h", 1).unwrap().unwrap();
        assert!(alice.get() > 0 && alice.get() < ID_LIMIT);
        assert_eq!(store.create_user("alice", "h2", 2).unwrap(), None);
        let d = store
            .create_device(alice, "phone", [1; 32], u64::MAX, 3)
            .unwrap();
        assert_eq!(
            store
                .rotate_refresh(d, [2; 32], [3; 32], u64::MAX, 4)
                .unwrap(),
            Refresh::Refused,
            "wrong hash"
        );
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [3; 32], u64::MAX, 4)
                .unwrap(),
            Refresh::Rotated {
                user: alice,
                username: "alice".into()
            }
        );
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [4; 32], u64::MAX, 5)
                .unwrap(),
            Refresh::Refused,
            "old hash after rotation"
        );
        assert!(store.revoke(alice, d).unwrap());
        assert!(!store.revoke(UserId(alice.get() + 1), d).unwrap());
        drop(store);

        let store = Store::open(&path).unwrap();
        let (users, devices) = store.load_all().unwrap();
        assert_eq!(users, vec![(alice, "alice".to_owned())]);
        assert_eq!(devices, vec![(alice, d, false)]);
        assert_eq!(
            store.credentials("alice").unwrap(),
            Some((alice, "h".to_owned()))
        );
        assert_eq!(store.credentials("bob").unwrap(), None);
        assert_eq!(
            store
                .rotate_refresh(d, [3; 32], [5; 32], u64::MAX, 6)
                .unwrap(),
            Refresh::Refused,
            "revoked"
        );
    }

    #[test]
    fn expired_refresh_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("bob", "h", 1).unwrap().unwrap();
        let d = store.create_device(u, "x", [7; 32], 100, 1).unwrap();
        assert_eq!(
            store.rotate_refresh(d, [7; 32], [8; 32], 200, 100).unwrap(),
            Refresh::Refused
        );
        assert_eq!(
            store
                .rotate_refresh(DeviceId(12345), [7; 32], [8; 32], 200, 1)
                .unwrap(),
            Refresh::Refused,
            "unknown device"
        );
    }

    fn push(token: &str, platform: &str) -> PushToken {
        PushToken {
            token: token.into(),
            platform: platform.into(),
        }
    }

    fn targets(store: &Store, user: UserId) -> Vec<(DeviceId, PushToken)> {
        store.push_targets(user, "g.1", 0).unwrap().devices
    }

    #[test]
    fn device_records_without_push_still_decode() {
        // A record as written before push tokens existed.
        let old = br#"{"name":"phone","created_at_ms":1,"revoked":false,"refresh_hash":null,"refresh_expires_at_ms":5}"#;
        let record: DeviceRecord = decode(old, "device").unwrap();
        assert_eq!(record.push, None);
        assert_eq!(record.name, "phone");
        // And one without a token is written as before (older binaries read it too).
        assert!(!String::from_utf8(encode(&record)).unwrap().contains("push"));
        let with = DeviceRecord {
            push: Some(push("t", "fcm")),
            ..record
        };
        let back: DeviceRecord = decode(&encode(&with), "device").unwrap();
        assert_eq!(back.push, Some(push("t", "fcm")));
    }

    #[test]
    fn push_tokens_round_trip_replace_move_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let alice = store.create_user("alice", "h", 1).unwrap().unwrap();
        let bob = store.create_user("bob", "h", 1).unwrap().unwrap();
        let a1 = store
            .create_device(alice, "a1", [1; 32], u64::MAX, 1)
            .unwrap();
        let a2 = store
            .create_device(alice, "a2", [1; 32], u64::MAX, 1)
            .unwrap();
        let b1 = store
            .create_device(bob, "b1", [1; 32], u64::MAX, 1)
            .unwrap();
        assert!(targets(&store, alice).is_empty());

        let stored = SetPush::Stored { moved_from: None };
        assert_eq!(
            store.set_push(alice, a1, push("t1", "fcm")).unwrap(),
            stored
        );
        assert_eq!(
            store.set_push(alice, a2, push("t2", "apns")).unwrap(),
            stored
        );
        let mut want = vec![(a1, push("t1", "fcm")), (a2, push("t2", "apns"))];
        want.sort_by_key(|(d, _)| *d);
        assert_eq!(targets(&store, alice), want);
        assert!(targets(&store, bob).is_empty());
        // Another user's device: not found.
        assert_eq!(
            store.set_push(bob, a1, push("x", "fcm")).unwrap(),
            SetPush::NoDevice
        );

        // Replacing a device's token frees the old one: registering it elsewhere moves
        // nothing.
        assert_eq!(
            store.set_push(alice, a1, push("t1b", "webpush")).unwrap(),
            stored
        );
        assert_eq!(store.set_push(bob, b1, push("t1", "fcm")).unwrap(), stored);
        // Re-registering the same token on the same device is no move either.
        assert_eq!(store.set_push(bob, b1, push("t1", "fcm")).unwrap(), stored);

        // The same token from another device (of another user) moves it.
        assert_eq!(
            store.set_push(bob, b1, push("t2", "other")).unwrap(),
            SetPush::Stored {
                moved_from: Some((alice, a2))
            }
        );
        assert_eq!(targets(&store, alice), vec![(a1, push("t1b", "webpush"))]);
        assert_eq!(targets(&store, bob), vec![(b1, push("t2", "other"))]);
        // b1 gave up "t1" when it took "t2": a2 can take "t1" without moving anything.
        assert_eq!(
            store.set_push(alice, a2, push("t1", "fcm")).unwrap(),
            stored
        );
        // And moving back within one user.
        assert_eq!(
            store.set_push(alice, a1, push("t1", "fcm")).unwrap(),
            SetPush::Stored {
                moved_from: Some((alice, a2))
            }
        );
        assert_eq!(targets(&store, alice), vec![(a1, push("t1", "fcm"))]);

        // Clearing is idempotent and frees the token.
        assert!(store.clear_push(alice, a1).unwrap());
        assert!(!store.clear_push(alice, a1).unwrap());
        assert!(targets(&store, alice).is_empty());
        assert_eq!(
            store.set_push(alice, a2, push("t1", "fcm")).unwrap(),
            stored
        );
        drop(store);

        // Everything survives a reopen.
        let store = Store::open(&path).unwrap();
        assert_eq!(targets(&store, alice), vec![(a2, push("t1", "fcm"))]);
        assert_eq!(targets(&store, bob), vec![(b1, push("t2", "other"))]);
        assert_eq!(
            store.set_push(bob, b1, push("t1", "fcm")).unwrap(),
            SetPush::Stored {
                moved_from: Some((alice, a2))
            }
        );
    }

    #[test]
    fn revoking_a_device_drops_its_push_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let v = store.create_user("bob", "h", 1).unwrap().unwrap();
        let d = store.create_device(u, "x", [1; 32], u64::MAX, 1).unwrap();
        let e = store.create_device(v, "y", [1; 32], u64::MAX, 1).unwrap();
        store.set_push(u, d, push("tok", "fcm")).unwrap();
        assert!(store.revoke(u, d).unwrap());
        assert!(targets(&store, u).is_empty());
        // The token is free: nothing moves when another device registers it.
        assert_eq!(
            store.set_push(v, e, push("tok", "fcm")).unwrap(),
            SetPush::Stored { moved_from: None }
        );
        // A revoked device cannot register one.
        assert_eq!(
            store.set_push(u, d, push("tok2", "fcm")).unwrap(),
            SetPush::NoDevice
        );
        assert!(targets(&store, u).is_empty());
    }

    #[test]
    fn mutes_round_trip_expire_and_unmute() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let (u, v) = (UserId(5), UserId(6));
        let now = 1_000;
        assert_eq!(
            store.set_mute(u, "g.1", u64::MAX, now).unwrap(),
            SetMute::Done
        );
        assert_eq!(
            store.set_mute(u, "d.5.6", now + 1, now).unwrap(),
            SetMute::Done
        );
        assert_eq!(store.set_mute(u, "g.2", now, now).unwrap(), SetMute::Done);
        assert_eq!(
            store.set_mute(v, "g.3", u64::MAX, now).unwrap(),
            SetMute::Done
        );
        assert_eq!(
            store.mutes(u, now).unwrap(),
            vec![("d.5.6".to_owned(), now + 1), ("g.1".to_owned(), u64::MAX)],
            "g.2 ended at `now`"
        );
        assert!(store.push_targets(u, "g.1", now).unwrap().muted);
        assert!(store.push_targets(u, "d.5.6", now).unwrap().muted);
        assert!(
            !store.push_targets(u, "d.5.6", now + 1).unwrap().muted,
            "expired"
        );
        assert!(!store.push_targets(u, "g.2", now).unwrap().muted);
        assert!(
            !store.push_targets(u, "g.3", now).unwrap().muted,
            "v's mute"
        );
        assert!(store.push_targets(v, "g.3", now).unwrap().muted);
        assert_eq!(
            store.mutes(u, now + 1).unwrap(),
            vec![("g.1".to_owned(), u64::MAX)]
        );
        // Unmuting removes; unmuting what is not muted is fine.
        assert_eq!(store.set_mute(u, "g.1", 0, now).unwrap(), SetMute::Done);
        assert_eq!(store.set_mute(u, "g.9", 0, now).unwrap(), SetMute::Done);
        assert!(!store.push_targets(u, "g.1", now).unwrap().muted);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.mutes(u, now).unwrap(),
            vec![("d.5.6".to_owned(), now + 1)]
        );
        assert_eq!(
            store.mutes(v, now).unwrap(),
            vec![("g.3".to_owned(), u64::MAX)]
        );
    }

    #[test]
    fn mutes_per_user_are_limited_and_expired_ones_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = UserId(5);
        let now = 1_000;
        // One transaction for the bulk, as set_mute would write them.
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut mutes = txn.open_table(MUTES).unwrap();
                for g in 1..=MAX_MUTES as u64 {
                    // The first ten have already ended.
                    let until = if g <= 10 { now - 1 } else { u64::MAX };
                    mutes
                        .insert((u.get(), format!("g.{g}").as_str()), until)
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        assert_eq!(store.mutes(u, now).unwrap().len(), MAX_MUTES - 10);
        // Full: a new one drops the expired ones and goes in.
        assert_eq!(
            store.set_mute(u, "g.100000", u64::MAX, now).unwrap(),
            SetMute::Done
        );
        for g in 0..9 {
            let c = format!("g.{}", 200_000 + g);
            assert_eq!(store.set_mute(u, &c, u64::MAX, now).unwrap(), SetMute::Done);
        }
        assert_eq!(store.mutes(u, now).unwrap().len(), MAX_MUTES);
        assert_eq!(
            store.set_mute(u, "g.300000", u64::MAX, now).unwrap(),
            SetMute::TooMany
        );
        // Changing an existing one is still allowed, and another user is not limited.
        assert_eq!(
            store.set_mute(u, "g.500", now + 5, now).unwrap(),
            SetMute::Done
        );
        assert_eq!(
            store
                .set_mute(UserId(6), "g.300000", u64::MAX, now)
                .unwrap(),
            SetMute::Done
        );
        // Unmuting one makes room.
        assert_eq!(store.set_mute(u, "g.500", 0, now).unwrap(), SetMute::Done);
        assert_eq!(
            store.set_mute(u, "g.300000", u64::MAX, now).unwrap(),
            SetMute::Done
        );
    }

    #[test]
    fn hash_comparison() {
        assert!(hashes_equal(&[9; 32], &[9; 32]));
        let mut b = [9; 32];
        b[31] = 8;
        assert!(!hashes_equal(&[9; 32], &b));
    }
}

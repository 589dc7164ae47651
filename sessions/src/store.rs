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

    /// Marks a device revoked and forgets its refresh token. False if there is no such
    /// device of this user.
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
            devices.insert(key, encode(&record).as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }
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

    #[test]
    fn hash_comparison() {
        assert!(hashes_equal(&[9; 32], &[9; 32]));
        let mut b = [9; 32];
        b[31] = 8;
        assert!(!hashes_equal(&[9; 32], &b));
    }
}

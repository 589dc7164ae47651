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
/// user id → deleted at (ms since the epoch): ids of deleted accounts, never given out
/// again.
const DELETED_USERS: TableDefinition<u64, u64> = TableDefinition::new("deleted_users");
/// announcement id (1, 2, 3...) → [`AnnouncementRecord`] (JSON).
const ANNOUNCEMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("announcements");

/// Mutes one user can hold (expired ones are dropped before refusing a new one).
pub(crate) const MAX_MUTES: usize = 10_000;

/// Ids are random in [1, 2^53) so JavaScript numbers hold them exactly.
const ID_LIMIT: u64 = 1 << 53;

/// Superseded refresh tokens remembered per device (see [`DeviceRecord::superseded`]): a
/// token rotated away up to this many refreshes ago is recognised when presented again.
/// At the default 15-minute access tokens that is about 8 hours of continuous use; an
/// older one is only refused, like any unknown token.
pub(crate) const SUPERSEDED_KEPT: usize = 32;

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

#[derive(Serialize, Deserialize)]
struct UserRecord {
    username: String,
    /// PHC string (`$argon2id$v=19$m=...`).
    password_hash: String,
    created_at_ms: u64,
    /// An administrator disabled the account (a ban). Records written before bans
    /// existed have none of these three fields and decode as enabled; an enabled
    /// account is written without them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    /// Why, for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    disabled_reason: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    disabled_at_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the password hash: it is for argon2, never for a log.
        f.debug_struct("UserRecord")
            .field("username", &self.username)
            .field("created_at_ms", &self.created_at_ms)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AnnouncementRecord {
    text: String,
    created_at_ms: u64,
}

/// A user as the cache loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadedUser {
    pub(crate) id: UserId,
    pub(crate) username: String,
    pub(crate) disabled: bool,
}

/// An account as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) id: UserId,
    pub(crate) username: String,
    pub(crate) created_at_ms: u64,
    pub(crate) disabled: bool,
    pub(crate) disabled_reason: String,
    pub(crate) disabled_at_ms: u64,
    /// Logged-in devices.
    pub(crate) active_devices: u32,
    /// Every device, newest first; filled by [`Store::account`] only.
    pub(crate) devices: Vec<DeviceInfo>,
}

/// A device as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceInfo {
    pub(crate) id: DeviceId,
    pub(crate) name: String,
    pub(crate) created_at_ms: u64,
    pub(crate) active: bool,
    /// Empty when no push token is registered.
    pub(crate) push_platform: String,
}

/// What deleting an account removed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Deleted {
    /// The account as it was.
    pub(crate) account: Account,
    /// Its devices (the cache forgets them).
    pub(crate) devices: Vec<DeviceId>,
}

/// A stored announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announcement {
    pub(crate) id: u64,
    pub(crate) text: String,
    pub(crate) created_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeviceRecord {
    name: String,
    created_at_ms: u64,
    revoked: bool,
    /// SHA-256 of the secret part of the current refresh token; `None` once revoked.
    refresh_hash: Option<[u8; 32]>,
    refresh_expires_at_ms: u64,
    /// Fingerprints ([`fingerprint`]) of the refresh tokens this device's refreshes
    /// replaced, oldest first, at most [`SUPERSEDED_KEPT`]: the rest of the token family.
    /// One presented again means two parties hold the device's tokens (one of them
    /// stole it), so the device is revoked. Records written before reuse detection have
    /// none, and a device without any is written as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    superseded: Vec<String>,
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
    /// Unknown device, revoked, expired, or not a token this device ever had (as far as
    /// [`SUPERSEDED_KEPT`] reaches back).
    Refused,
    /// A token of this device that an earlier refresh replaced: reuse, so the device
    /// was revoked (in the same transaction) like a logout.
    Reused { user: UserId },
    /// The token is good but an administrator disabled the account; nothing changed,
    /// so the token works again once the account is enabled (if it has not expired).
    Disabled,
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
            txn.open_table(DELETED_USERS)?;
            txn.open_table(ANNOUNCEMENTS)?;
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// Every user and every device (user, device, active).
    #[allow(clippy::type_complexity)]
    pub(crate) fn load_all(
        &self,
    ) -> Result<(Vec<LoadedUser>, Vec<(UserId, DeviceId, bool)>), StoreError> {
        let txn = self.db.begin_read()?;
        let mut users = Vec::new();
        for row in txn.open_table(USERS)?.iter()? {
            let (id, value) = row?;
            let record: UserRecord = decode(value.value(), "user")?;
            users.push(LoadedUser {
                id: UserId(id.value()),
                username: record.username,
                disabled: record.disabled,
            });
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
            let deleted = txn.open_table(DELETED_USERS)?;
            let id = loop {
                let id = random_id();
                if users.get(id)?.is_none() && deleted.get(id)?.is_none() {
                    break id;
                }
            };
            let record = UserRecord {
                username: username.to_owned(),
                password_hash: password_hash.to_owned(),
                created_at_ms: now_ms,
                disabled: false,
                disabled_reason: String::new(),
                disabled_at_ms: 0,
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

    /// Creates a logged-in device for `user` holding the given refresh token hash;
    /// `None` if the user does not exist (deleted since its password was checked).
    pub(crate) fn create_device(
        &self,
        user: UserId,
        name: &str,
        refresh_hash: [u8; 32],
        refresh_expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<Option<DeviceId>, StoreError> {
        let txn = self.db.begin_write()?;
        let device = {
            if txn.open_table(USERS)?.get(user.get())?.is_none() {
                return Ok(None);
            }
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
                superseded: Vec::new(),
                push: None,
            };
            txn.open_table(DEVICES)?
                .insert((user.get(), device), encode(&record).as_slice())?;
            device
        };
        txn.commit()?;
        Ok(Some(DeviceId(device)))
    }

    /// Swaps the device's refresh token for a new one if `presented` is its current,
    /// unexpired token, remembering the old one's fingerprint. A token the device held
    /// before (one a refresh already replaced) revokes the device instead:
    /// [`Refresh::Reused`]. Two refreshes racing with the same token therefore end with
    /// one rotation and one revocation, in the order redb commits them.
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
            if record.revoked {
                // Dropping the transaction aborts it: nothing was written.
                return Ok(Refresh::Refused);
            }
            let matches = record
                .refresh_hash
                .is_some_and(|stored| hashes_equal(&stored, &presented));
            if !matches {
                let seen = fingerprint(&presented);
                // Every entry is compared, whichever matched.
                let reused = record.superseded.iter().fold(false, |acc, old| {
                    acc | bytes_equal(old.as_bytes(), seen.as_bytes())
                });
                if !reused {
                    return Ok(Refresh::Refused);
                }
                // Whatever the token's own expiry or the account's state: someone else
                // holds this device's tokens.
                revoke_record(&txn, &mut devices, (user, device.get()), record)?;
                drop(devices);
                txn.commit()?;
                return Ok(Refresh::Reused { user: UserId(user) });
            }
            if record.refresh_expires_at_ms <= now_ms {
                return Ok(Refresh::Refused);
            }
            let owner: UserRecord = {
                let users = txn.open_table(USERS)?;
                let Some(value) = users.get(user)? else {
                    return Err(StoreError::Corrupt(format!(
                        "device {device} belongs to missing user {user}"
                    )));
                };
                decode(value.value(), "user")?
            };
            if owner.disabled {
                // Not rotated: the presented token stays the current one.
                return Ok(Refresh::Disabled);
            }
            if let Some(old) = record.refresh_hash.replace(new_hash) {
                record.superseded.push(fingerprint(&old));
                let excess = record.superseded.len().saturating_sub(SUPERSEDED_KEPT);
                record.superseded.drain(..excess);
            }
            record.refresh_expires_at_ms = new_expires_at_ms;
            devices.insert((user, device.get()), encode(&record).as_slice())?;
            Refresh::Rotated {
                user: UserId(user),
                username: owner.username,
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
            let record: DeviceRecord = match devices.get(key)? {
                Some(v) => decode(v.value(), "device")?,
                None => return Ok(false),
            };
            revoke_record(&txn, &mut devices, key, record)?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Revokes every logged-in device of `user` in one transaction (logout everywhere);
    /// returns those it revoked (devices already logged out are not counted).
    pub(crate) fn revoke_all(&self, user: UserId) -> Result<Vec<DeviceId>, StoreError> {
        let txn = self.db.begin_write()?;
        let revoked = {
            let mut devices = txn.open_table(DEVICES)?;
            let mut active = Vec::new();
            for row in devices.range((user.get(), 0)..=(user.get(), u64::MAX))? {
                let (k, v) = row?;
                let record: DeviceRecord = decode(v.value(), "device")?;
                if !record.revoked {
                    active.push((k.value(), record));
                }
            }
            let mut revoked = Vec::with_capacity(active.len());
            for (key, record) in active {
                revoke_record(&txn, &mut devices, key, record)?;
                revoked.push(DeviceId(key.1));
            }
            revoked
        };
        txn.commit()?;
        Ok(revoked)
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

    /// Disables (bans) or enables an account. Disabling one already disabled keeps its
    /// `disabled_at_ms` and takes the new reason; enabling clears both. Devices are
    /// left as they are: logged in, their refresh tokens good again once enabled.
    /// `None` if there is no such user.
    pub(crate) fn set_disabled(
        &self,
        user: UserId,
        disabled: bool,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<Account>, StoreError> {
        let txn = self.db.begin_write()?;
        let account = {
            let mut users = txn.open_table(USERS)?;
            let mut record: UserRecord = match users.get(user.get())? {
                Some(v) => decode(v.value(), "user")?,
                None => return Ok(None),
            };
            if disabled {
                if !record.disabled {
                    record.disabled_at_ms = now_ms;
                }
                record.disabled = true;
                record.disabled_reason = reason.to_owned();
            } else {
                record.disabled = false;
                record.disabled_reason.clear();
                record.disabled_at_ms = 0;
            }
            users.insert(user.get(), encode(&record).as_slice())?;
            let active = count_active(&txn.open_table(DEVICES)?, user)?;
            account_of(user, record, active)
        };
        txn.commit()?;
        Ok(Some(account))
    }

    /// Deletes an account with its devices (and so their refresh tokens), push tokens
    /// and mutes. Its username is free again; its id is kept in [`DELETED_USERS`] so it
    /// is never given out again. `None` if there is no such user.
    pub(crate) fn delete_user(
        &self,
        user: UserId,
        now_ms: u64,
    ) -> Result<Option<Deleted>, StoreError> {
        let txn = self.db.begin_write()?;
        let deleted = {
            let mut users = txn.open_table(USERS)?;
            let record: UserRecord = match users.remove(user.get())? {
                Some(v) => decode(v.value(), "user")?,
                None => return Ok(None),
            };
            let mut names = txn.open_table(USERNAMES)?;
            let holder = names.get(record.username.as_str())?.map(|g| g.value());
            if holder == Some(user.get()) {
                names.remove(record.username.as_str())?;
            }
            let mut devices = txn.open_table(DEVICES)?;
            let mut owners = txn.open_table(DEVICE_OWNERS)?;
            let mut tokens = txn.open_table(PUSH_TOKENS)?;
            let mut rows = Vec::new();
            for row in devices.range((user.get(), 0)..=(user.get(), u64::MAX))? {
                let (k, v) = row?;
                rows.push((k.value(), decode::<DeviceRecord>(v.value(), "device")?));
            }
            let mut removed = Vec::with_capacity(rows.len());
            let mut active = 0u32;
            for (key, device) in rows {
                if !device.revoked {
                    active = active.saturating_add(1);
                }
                if let Some(push) = &device.push {
                    unindex_token(&mut tokens, &push.token, key)?;
                }
                devices.remove(key)?;
                owners.remove(key.1)?;
                removed.push(DeviceId(key.1));
            }
            let mut mutes = txn.open_table(MUTES)?;
            let muted: Vec<String> = mutes
                .range((user.get(), "")..(user.get().saturating_add(1), ""))?
                .map(|row| row.map(|(k, _)| k.value().1.to_owned()))
                .collect::<Result<_, _>>()?;
            for conversation in &muted {
                mutes.remove((user.get(), conversation.as_str()))?;
            }
            txn.open_table(DELETED_USERS)?.insert(user.get(), now_ms)?;
            Deleted {
                account: account_of(user, record, active),
                devices: removed,
            }
        };
        txn.commit()?;
        Ok(Some(deleted))
    }

    /// One account with every device, newest first. `None` if there is no such user.
    pub(crate) fn account(&self, user: UserId) -> Result<Option<Account>, StoreError> {
        let txn = self.db.begin_read()?;
        let record: UserRecord = match txn.open_table(USERS)?.get(user.get())? {
            Some(v) => decode(v.value(), "user")?,
            None => return Ok(None),
        };
        let mut devices = Vec::new();
        for row in txn
            .open_table(DEVICES)?
            .range((user.get(), 0)..=(user.get(), u64::MAX))?
        {
            let (k, v) = row?;
            let device: DeviceRecord = decode(v.value(), "device")?;
            devices.push(DeviceInfo {
                id: DeviceId(k.value().1),
                name: device.name,
                created_at_ms: device.created_at_ms,
                active: !device.revoked,
                push_platform: device.push.map(|p| p.platform).unwrap_or_default(),
            });
        }
        devices.sort_by_key(|d| std::cmp::Reverse((d.created_at_ms, d.id.get())));
        let active = devices.iter().filter(|d| d.active).count();
        let mut account = account_of(user, record, u32::try_from(active).unwrap_or(u32::MAX));
        account.devices = devices;
        Ok(Some(account))
    }

    /// Up to `limit` accounts whose username starts with `prefix` and sorts after
    /// `after` (all of them when empty), in username order, and whether there are more.
    pub(crate) fn search_users(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Account>, bool), StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read()?;
        let names = txn.open_table(USERNAMES)?;
        let users = txn.open_table(USERS)?;
        let devices = txn.open_table(DEVICES)?;
        // Start at the later of the prefix (included) and `after` (excluded).
        let start = if !after.is_empty() && after >= prefix {
            Bound::Excluded(after)
        } else {
            Bound::Included(prefix)
        };
        let mut out = Vec::new();
        let mut more = false;
        for row in names.range::<&str>((start, Bound::Unbounded))? {
            let (name, id) = row?;
            if !name.value().starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            let id = UserId(id.value());
            let Some(value) = users.get(id.get())? else {
                return Err(StoreError::Corrupt(format!(
                    "username {:?} points at missing user {id}",
                    name.value()
                )));
            };
            let record: UserRecord = decode(value.value(), "user")?;
            let active = count_active(&devices, id)?;
            out.push(account_of(id, record, active));
        }
        Ok((out, more))
    }

    /// Stores an announcement under the next id (1 for the first).
    pub(crate) fn append_announcement(
        &self,
        text: &str,
        now_ms: u64,
    ) -> Result<Announcement, StoreError> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut table = txn.open_table(ANNOUNCEMENTS)?;
            let last = table.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            let id = last.saturating_add(1);
            let record = AnnouncementRecord {
                text: text.to_owned(),
                created_at_ms: now_ms,
            };
            table.insert(id, encode(&record).as_slice())?;
            id
        };
        txn.commit()?;
        Ok(Announcement {
            id,
            text: text.to_owned(),
            created_at_ms: now_ms,
        })
    }

    /// Up to `limit` announcements with ids above `after_id`, oldest first.
    pub(crate) fn announcements_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Announcement>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ANNOUNCEMENTS)?;
        let mut out = Vec::new();
        if after_id == u64::MAX {
            return Ok(out);
        }
        for row in table.range(after_id + 1..)?.take(limit) {
            let (k, v) = row?;
            let record: AnnouncementRecord = decode(v.value(), "announcement")?;
            out.push(Announcement {
                id: k.value(),
                text: record.text,
                created_at_ms: record.created_at_ms,
            });
        }
        Ok(out)
    }
}

/// The logged-in devices of `user`.
fn count_active(
    devices: &impl ReadableTable<(u64, u64), &'static [u8]>,
    user: UserId,
) -> Result<u32, StoreError> {
    let mut active = 0u32;
    for row in devices.range((user.get(), 0)..=(user.get(), u64::MAX))? {
        let (_, v) = row?;
        if !decode::<DeviceRecord>(v.value(), "device")?.revoked {
            active = active.saturating_add(1);
        }
    }
    Ok(active)
}

fn account_of(id: UserId, record: UserRecord, active_devices: u32) -> Account {
    Account {
        id,
        username: record.username,
        created_at_ms: record.created_at_ms,
        disabled: record.disabled,
        disabled_reason: record.disabled_reason,
        disabled_at_ms: record.disabled_at_ms,
        active_devices,
        devices: Vec::new(),
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

/// Marks `record` (the device at `key`) revoked inside `txn`: no refresh token, no token
/// family, no push token.
fn revoke_record(
    txn: &redb::WriteTransaction,
    devices: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
    key: (u64, u64),
    mut record: DeviceRecord,
) -> Result<(), StoreError> {
    record.revoked = true;
    record.refresh_hash = None;
    record.refresh_expires_at_ms = 0;
    record.superseded.clear();
    if let Some(old) = record.push.take() {
        unindex_token(&mut txn.open_table(PUSH_TOKENS)?, &old.token, key)?;
    }
    devices.insert(key, encode(&record).as_slice())?;
    Ok(())
}

/// What a device remembers of a superseded refresh token: the first 16 bytes of its
/// hash, in hex. Enough to recognise it (a guess matches with odds of 2^-128) at half the
/// size of the whole hash, which matters because every device record is read whole.
fn fingerprint(hash: &[u8; 32]) -> String {
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two hashes without stopping at the first difference. (They are hashes of
/// secrets, so timing would leak little anyway; this removes even that.)
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bytes_equal(a, b)
}

/// Byte strings equal, compared without stopping at the first difference (fold of xor),
/// for anything derived from a secret. Lengths are not secret.
fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
            .unwrap()
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
            Refresh::Reused { user: alice },
            "old hash after rotation"
        );
        assert!(store.revoke(alice, d).unwrap());
        assert!(!store.revoke(UserId(alice.get() + 1), d).unwrap());
        drop(store);

        let store = Store::open(&path).unwrap();
        let (users, devices) = store.load_all().unwrap();
        assert_eq!(
            users,
            vec![LoadedUser {
                id: alice,
                username: "alice".to_owned(),
                disabled: false
            }]
        );
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
        let d = store
            .create_device(u, "x", [7; 32], 100, 1)
            .unwrap()
            .unwrap();
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
            .unwrap()
            .unwrap();
        let a2 = store
            .create_device(alice, "a2", [1; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        let b1 = store
            .create_device(bob, "b1", [1; 32], u64::MAX, 1)
            .unwrap()
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
        let d = store
            .create_device(u, "x", [1; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        let e = store
            .create_device(v, "y", [1; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
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
    fn user_records_without_ban_fields_still_decode() {
        // A record as written before bans existed.
        let old = br#"{"username":"alice","password_hash":"h","created_at_ms":7}"#;
        let record: UserRecord = decode(old, "user").unwrap();
        assert!(!record.disabled);
        assert_eq!(record.disabled_reason, "");
        assert_eq!(record.disabled_at_ms, 0);
        // An enabled account is written as before (older binaries read it too).
        let written = String::from_utf8(encode(&record)).unwrap();
        assert!(!written.contains("disabled"), "{written}");
        let banned = UserRecord {
            disabled: true,
            disabled_reason: "spam".into(),
            disabled_at_ms: 9,
            ..record
        };
        let back: UserRecord = decode(&encode(&banned), "user").unwrap();
        assert!(back.disabled);
        assert_eq!(back.disabled_reason, "spam");
        assert_eq!(back.disabled_at_ms, 9);
    }

    #[test]
    fn disable_and_enable_round_trip_and_keep_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let d = store
            .create_device(u, "x", [1; 32], u64::MAX, 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .set_disabled(UserId(u.get() + 1), true, "r", 5)
                .unwrap(),
            None,
            "unknown user"
        );

        let a = store.set_disabled(u, true, "spam", 10).unwrap().unwrap();
        assert!(a.disabled);
        assert_eq!((a.disabled_reason.as_str(), a.disabled_at_ms), ("spam", 10));
        assert_eq!(a.active_devices, 1);
        // Again: still disabled since 10, with the new reason.
        let a = store.set_disabled(u, true, "abuse", 20).unwrap().unwrap();
        assert_eq!(
            (a.disabled_reason.as_str(), a.disabled_at_ms),
            ("abuse", 10)
        );
        // A disabled account's refresh token is refused without being used up.
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [2; 32], u64::MAX, 30)
                .unwrap(),
            Refresh::Disabled
        );
        assert_eq!(
            store
                .rotate_refresh(d, [9; 32], [2; 32], u64::MAX, 30)
                .unwrap(),
            Refresh::Refused,
            "a wrong token is still just refused"
        );
        drop(store);

        let store = Store::open(&path).unwrap();
        let (users, devices) = store.load_all().unwrap();
        assert!(users[0].disabled);
        assert_eq!(devices, vec![(u, d, true)], "the ban revokes no device");
        let a = store
            .set_disabled(u, false, "ignored", 40)
            .unwrap()
            .unwrap();
        assert!(!a.disabled);
        assert_eq!((a.disabled_reason.as_str(), a.disabled_at_ms), ("", 0));
        assert!(!store.load_all().unwrap().0[0].disabled);
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [2; 32], u64::MAX, 50)
                .unwrap(),
            Refresh::Rotated {
                user: u,
                username: "alice".into()
            },
            "the old token works again"
        );
    }

    #[test]
    fn deleting_a_user_frees_the_username_and_removes_everything_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let v = store.create_user("bob", "h", 1).unwrap().unwrap();
        let d1 = store
            .create_device(u, "a1", [1; 32], u64::MAX, 2)
            .unwrap()
            .unwrap();
        let d2 = store
            .create_device(u, "a2", [2; 32], u64::MAX, 3)
            .unwrap()
            .unwrap();
        let e = store
            .create_device(v, "b1", [3; 32], u64::MAX, 3)
            .unwrap()
            .unwrap();
        store.set_push(u, d1, push("tok", "fcm")).unwrap();
        store.set_mute(u, "g.1", u64::MAX, 1).unwrap();
        store.set_mute(v, "g.1", u64::MAX, 1).unwrap();
        assert!(store.revoke(u, d2).unwrap());
        store.set_disabled(u, true, "x", 4).unwrap();

        let deleted = store.delete_user(u, 5).unwrap().unwrap();
        assert_eq!(deleted.account.username, "alice");
        assert!(deleted.account.disabled, "as it was");
        assert_eq!(deleted.account.active_devices, 1);
        let mut gone = deleted.devices.clone();
        gone.sort();
        let mut want = vec![d1, d2];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(store.delete_user(u, 6).unwrap(), None, "already gone");
        assert_eq!(store.account(u).unwrap(), None);
        assert_eq!(store.credentials("alice").unwrap(), None);
        let (users, devices) = store.load_all().unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(devices, vec![(v, e, true)]);
        assert_eq!(
            store
                .rotate_refresh(d1, [1; 32], [4; 32], u64::MAX, 7)
                .unwrap(),
            Refresh::Refused
        );
        assert!(store.mutes(u, 1).unwrap().is_empty());
        assert_eq!(store.mutes(v, 1).unwrap().len(), 1, "bob's mute stays");
        // The push token is free: another device takes it without moving anything.
        assert_eq!(
            store.set_push(v, e, push("tok", "fcm")).unwrap(),
            SetPush::Stored { moved_from: None }
        );
        // A device cannot be created for the deleted user.
        assert_eq!(
            store
                .create_device(u, "late", [5; 32], u64::MAX, 8)
                .unwrap(),
            None
        );
        // The name is free; the id is not given out again.
        let again = store.create_user("alice", "h2", 9).unwrap().unwrap();
        assert_ne!(again, u);
        assert!(
            store
                .db
                .begin_read()
                .unwrap()
                .open_table(DELETED_USERS)
                .unwrap()
                .get(u.get())
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn inspect_lists_devices_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let old = store
            .create_device(u, "old", [1; 32], u64::MAX, 10)
            .unwrap()
            .unwrap();
        let new = store
            .create_device(u, "new", [1; 32], u64::MAX, 30)
            .unwrap()
            .unwrap();
        let mid = store
            .create_device(u, "mid", [1; 32], u64::MAX, 20)
            .unwrap()
            .unwrap();
        store.set_push(u, new, push("t", "apns")).unwrap();
        store.revoke(u, mid).unwrap();
        let a = store.account(u).unwrap().unwrap();
        assert_eq!((a.username.as_str(), a.created_at_ms), ("alice", 1));
        assert_eq!(a.active_devices, 2);
        let seen: Vec<_> = a
            .devices
            .iter()
            .map(|d| (d.id, d.name.as_str(), d.active, d.push_platform.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (new, "new", true, "apns"),
                (mid, "mid", false, ""),
                (old, "old", true, ""),
            ]
        );
        assert_eq!(store.account(UserId(u.get() + 1)).unwrap(), None);
    }

    #[test]
    fn search_pages_through_usernames_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        for name in ["bob", "al", "alice", "alfred", "alz", "am", "ala"] {
            store.create_user(name, "h", 1).unwrap().unwrap();
        }
        let names = |r: &(Vec<Account>, bool)| -> Vec<String> {
            r.0.iter().map(|a| a.username.clone()).collect()
        };
        let page = store.search_users("al", "", 2).unwrap();
        assert_eq!(
            (names(&page), page.1),
            (vec!["al".into(), "ala".into()], true)
        );
        let page = store.search_users("al", "ala", 2).unwrap();
        assert_eq!(
            (names(&page), page.1),
            (vec!["alfred".into(), "alice".into()], true)
        );
        let page = store.search_users("al", "alice", 2).unwrap();
        assert_eq!((names(&page), page.1), (vec!["alz".into()], false));
        let page = store.search_users("al", "alz", 2).unwrap();
        assert_eq!((names(&page), page.1), (vec![], false));
        // Exactly a page left: no more.
        let page = store.search_users("al", "alfred", 2).unwrap();
        assert_eq!(
            (names(&page), page.1),
            (vec!["alice".into(), "alz".into()], false)
        );
        // `after` before the prefix starts at the prefix.
        let page = store.search_users("b", "a", 10).unwrap();
        assert_eq!((names(&page), page.1), (vec!["bob".into()], false));
        // No prefix: everyone in order.
        let page = store.search_users("", "", 500).unwrap();
        assert_eq!(
            names(&page),
            ["al", "ala", "alfred", "alice", "alz", "am", "bob"]
        );
        assert_eq!(store.search_users("zz", "", 5).unwrap().0, vec![]);
        let u = store.credentials("alice").unwrap().unwrap().0;
        store
            .create_device(u, "x", [1; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        store.set_disabled(u, true, "r", 3).unwrap();
        let page = store.search_users("alice", "", 5).unwrap();
        assert_eq!(page.0[0].active_devices, 1);
        assert!(page.0[0].disabled);
        assert_eq!(page.0[0].id, u);
    }

    #[test]
    fn announcements_get_increasing_ids_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        assert!(store.announcements_after(0, 10).unwrap().is_empty());
        for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
            let a = store.append_announcement(text, 100 + i as u64).unwrap();
            assert_eq!(a.id, i as u64 + 1);
        }
        drop(store);
        let store = Store::open(&path).unwrap();
        let texts = |after, limit| -> Vec<(u64, String)> {
            store
                .announcements_after(after, limit)
                .unwrap()
                .into_iter()
                .map(|a| (a.id, a.text))
                .collect()
        };
        assert_eq!(texts(0, 2), vec![(1, "one".into()), (2, "two".into())]);
        assert_eq!(texts(2, 2), vec![(3, "three".into())]);
        assert_eq!(texts(3, 2), vec![]);
        assert_eq!(texts(u64::MAX, 2), vec![]);
        assert_eq!(
            store.announcements_after(1, 1).unwrap()[0].created_at_ms,
            101
        );
        assert_eq!(store.append_announcement("four", 200).unwrap().id, 4);
    }

    #[test]
    fn a_superseded_token_revokes_the_device_and_a_wrong_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let d = store
            .create_device(u, "x", [1; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        let other = store
            .create_device(u, "y", [7; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        store.set_push(u, d, push("tok", "fcm")).unwrap();
        let rotated = Refresh::Rotated {
            user: u,
            username: "alice".into(),
        };
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [2; 32], u64::MAX, 2)
                .unwrap(),
            rotated
        );
        assert_eq!(
            store
                .rotate_refresh(d, [2; 32], [3; 32], u64::MAX, 3)
                .unwrap(),
            rotated
        );
        // Guesses, another device's token and an unknown device change nothing.
        for (device, presented) in [(d, [9; 32]), (d, [7; 32]), (DeviceId(4242), [1; 32])] {
            assert_eq!(
                store
                    .rotate_refresh(device, presented, [5; 32], u64::MAX, 4)
                    .unwrap(),
                Refresh::Refused
            );
        }
        assert_eq!(store.load_all().unwrap().1.len(), 2);
        assert!(
            store
                .load_all()
                .unwrap()
                .1
                .iter()
                .all(|(_, _, active)| *active)
        );

        // The first token, two rotations old: reuse.
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [5; 32], u64::MAX, 5)
                .unwrap(),
            Refresh::Reused { user: u }
        );
        let mut devices = store.load_all().unwrap().1;
        devices.sort_by_key(|(_, id, _)| *id == d);
        assert_eq!(devices, vec![(u, other, true), (u, d, false)]);
        // The current token died with the family; presenting anything now is refused.
        for presented in [[3; 32], [1; 32], [2; 32]] {
            assert_eq!(
                store
                    .rotate_refresh(d, presented, [6; 32], u64::MAX, 6)
                    .unwrap(),
                Refresh::Refused
            );
        }
        assert!(targets(&store, u).is_empty(), "push token dropped too");
        // The other device is untouched.
        assert_eq!(
            store
                .rotate_refresh(other, [7; 32], [8; 32], u64::MAX, 7)
                .unwrap(),
            rotated
        );
    }

    #[test]
    fn reuse_counts_even_when_disabled_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let d = store
            .create_device(u, "x", [0; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        let token = |i: usize| {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&(i as u64).to_le_bytes());
            t
        };
        let rotations = SUPERSEDED_KEPT + 3;
        for i in 0..rotations {
            let outcome = store
                .rotate_refresh(d, token(i), token(i + 1), u64::MAX, 2)
                .unwrap();
            assert!(
                matches!(outcome, Refresh::Rotated { .. }),
                "{i}: {outcome:?}"
            );
        }
        // Beyond the history: only refused, the device stays.
        assert_eq!(
            store
                .rotate_refresh(d, token(2), token(99), u64::MAX, 3)
                .unwrap(),
            Refresh::Refused
        );
        assert_eq!(store.load_all().unwrap().1, vec![(u, d, true)]);
        // Within it, even on a disabled account (whose current token is merely paused).
        store.set_disabled(u, true, "spam", 4).unwrap();
        assert_eq!(
            store
                .rotate_refresh(d, token(rotations), token(99), u64::MAX, 5)
                .unwrap(),
            Refresh::Disabled
        );
        assert_eq!(
            store
                .rotate_refresh(
                    d,
                    token(rotations - SUPERSEDED_KEPT),
                    token(99),
                    u64::MAX,
                    5
                )
                .unwrap(),
            Refresh::Reused { user: u }
        );
        assert_eq!(store.load_all().unwrap().1, vec![(u, d, false)]);
    }

    #[test]
    fn device_records_before_reuse_detection_still_decode_and_rotate() {
        // A record as written before token families were kept.
        let old = br#"{"name":"phone","created_at_ms":1,"revoked":false,"refresh_hash":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"refresh_expires_at_ms":18446744073709551615}"#;
        let record: DeviceRecord = decode(old, "device").unwrap();
        assert!(record.superseded.is_empty());
        assert!(
            !String::from_utf8(encode(&record))
                .unwrap()
                .contains("superseded"),
            "written as before while empty"
        );
        // Stored as such, it rotates and then recognises its old token.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(DEVICE_OWNERS)
                .unwrap()
                .insert(77, u.get())
                .unwrap();
            txn.open_table(DEVICES)
                .unwrap()
                .insert((u.get(), 77), old.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let d = DeviceId(77);
        assert!(matches!(
            store
                .rotate_refresh(d, [1; 32], [2; 32], u64::MAX, 2)
                .unwrap(),
            Refresh::Rotated { .. }
        ));
        assert_eq!(
            store
                .rotate_refresh(d, [1; 32], [3; 32], u64::MAX, 3)
                .unwrap(),
            Refresh::Reused { user: u }
        );
    }

    #[test]
    fn revoke_all_revokes_every_logged_in_device_of_the_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let u = store.create_user("alice", "h", 1).unwrap().unwrap();
        let v = store.create_user("bob", "h", 1).unwrap().unwrap();
        let mut mine = Vec::new();
        for name in ["a", "b", "c"] {
            mine.push(
                store
                    .create_device(u, name, [1; 32], u64::MAX, 1)
                    .unwrap()
                    .unwrap(),
            );
        }
        let bobs = store
            .create_device(v, "b", [2; 32], u64::MAX, 1)
            .unwrap()
            .unwrap();
        store.set_push(u, mine[0], push("t", "fcm")).unwrap();
        assert!(store.revoke(u, mine[2]).unwrap());
        let mut revoked = store.revoke_all(u).unwrap();
        revoked.sort();
        let mut want = mine[..2].to_vec();
        want.sort();
        assert_eq!(
            revoked, want,
            "the already logged-out device is not counted"
        );
        assert!(store.revoke_all(u).unwrap().is_empty());
        assert!(targets(&store, u).is_empty());
        let (_, devices) = store.load_all().unwrap();
        for (owner, device, active) in devices {
            assert_eq!(active, owner == v && device == bobs, "{owner} {device}");
        }
        for d in &mine {
            assert_eq!(
                store
                    .rotate_refresh(*d, [1; 32], [3; 32], u64::MAX, 2)
                    .unwrap(),
                Refresh::Refused
            );
        }
    }

    #[test]
    fn hash_comparison() {
        assert!(hashes_equal(&[9; 32], &[9; 32]));
        let mut b = [9; 32];
        b[31] = 8;
        assert!(!hashes_equal(&[9; 32], &b));
        assert!(bytes_equal(b"abc", b"abc"));
        assert!(!bytes_equal(b"abc", b"abd"));
        assert!(!bytes_equal(b"abc", b"ab"));
        assert_eq!(fingerprint(&[0xab; 32]), "ab".repeat(16));
    }
}

//! The [`PeopleStore`] trait: everything the people service keeps durably (profiles,
//! privacy settings, contacts, blocks, status updates and who viewed them).
//! Implementations: [`crate::RedbPeopleStore`] (embedded) and
//! [`crate::ScyllaPeopleStore`]; both pass the [`crate::conformance`] suite.
//!
//! The store checks nothing about who may do what (the service does); it keeps limits
//! that must hold under concurrency (contacts, blocks) atomically where it can.

use natter_proto::UserId;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, timeout, ...). Nothing of the call may be assumed
    /// stored.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

/// Who may see one item of a user's profile or presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audience {
    #[default]
    Everyone,
    Contacts,
    Nobody,
}

/// A user's privacy settings, as stored. The default is what a new account has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privacy {
    pub last_seen: Audience,
    pub online: Audience,
    pub profile_photo: Audience,
    pub about: Audience,
}

/// A user's profile, as stored (the username lives with the account, in sessions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileRecord {
    pub display_name: String,
    pub about: String,
    pub avatar_media_id: String,
    pub updated_at_ms: u64,
}

/// One entry of a contact list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRecord {
    pub user: UserId,
    /// The owner's own name for the contact (may be empty).
    pub name: String,
    pub added_at_ms: u64,
}

/// What adding to a bounded list did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    Added,
    /// The entry was there already; it was updated (contacts: the name) and still counts
    /// once.
    Updated,
    /// The list holds `limit` entries already; nothing changed.
    LimitReached,
}

/// One status update, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// Unique across users (random, in [1, 2^53)).
    pub id: u64,
    pub user: UserId,
    /// The poster's idempotency key: posting again with the same `post_id` returns the
    /// stored status instead of a second one.
    pub post_id: String,
    pub text: String,
    pub media_id: String,
    pub created_at_ms: u64,
    /// After this the status is gone: no read returns it, and the store deletes it
    /// (ScyllaDB: a TTL; redb: [`PeopleStore::prune`]).
    pub expires_at_ms: u64,
}

/// Who viewed a status, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub viewer: UserId,
    pub viewed_at_ms: u64,
}

/// Durable state of the people service. Every method is safe to call concurrently.
/// `now_ms` arguments are the caller's clock: stores never read the clock themselves, so
/// tests can move time.
#[async_trait::async_trait]
pub trait PeopleStore: Send + Sync + 'static {
    /// The user's profile; `None` if they never set one.
    async fn profile(&self, user: UserId) -> Result<Option<ProfileRecord>, StoreError>;
    /// Replaces the user's profile.
    async fn put_profile(&self, user: UserId, profile: &ProfileRecord) -> Result<(), StoreError>;

    /// The user's privacy settings ([`Privacy::default`] if never set).
    async fn privacy(&self, user: UserId) -> Result<Privacy, StoreError>;
    /// Replaces the user's privacy settings.
    async fn put_privacy(&self, user: UserId, privacy: Privacy) -> Result<(), StoreError>;

    /// Adds `contact` to `owner`'s contacts, or updates its name if it is there. Refuses
    /// (changing nothing) when `owner` has `limit` contacts and this one is new; under
    /// concurrent adds the limit may be exceeded by at most the number of racing calls
    /// (ScyllaDB), never in redb.
    async fn add_contact(
        &self,
        owner: UserId,
        contact: &ContactRecord,
        limit: u32,
    ) -> Result<Added, StoreError>;
    /// Removes a contact; true if it was there.
    async fn remove_contact(&self, owner: UserId, contact: UserId) -> Result<bool, StoreError>;
    /// `owner`'s contacts, ascending by user id.
    async fn contacts(&self, owner: UserId) -> Result<Vec<ContactRecord>, StoreError>;
    /// Is `other` in `owner`'s contacts?
    async fn is_contact(&self, owner: UserId, other: UserId) -> Result<bool, StoreError>;

    /// `owner` blocks `blocked` (at `at_ms`). Same limit rule as [`add_contact`]
    /// (`Updated` when already blocked; the time stays the first one).
    ///
    /// [`add_contact`]: PeopleStore::add_contact
    async fn add_block(
        &self,
        owner: UserId,
        blocked: UserId,
        at_ms: u64,
        limit: u32,
    ) -> Result<Added, StoreError>;
    /// Unblocks; true if `blocked` was blocked.
    async fn remove_block(&self, owner: UserId, blocked: UserId) -> Result<bool, StoreError>;
    /// The users `owner` blocked, ascending.
    async fn blocks(&self, owner: UserId) -> Result<Vec<UserId>, StoreError>;

    /// Stores a status, unless `status.user` already has a live status with the same
    /// `post_id`: then returns that one (and stores nothing). Returns the stored status.
    async fn post_status(
        &self,
        status: &StatusRecord,
        now_ms: u64,
    ) -> Result<StatusRecord, StoreError>;
    /// The user's live statuses (`expires_at_ms > now_ms`), oldest first.
    async fn statuses(&self, user: UserId, now_ms: u64) -> Result<Vec<StatusRecord>, StoreError>;
    /// One live status by id.
    async fn status(&self, id: u64, now_ms: u64) -> Result<Option<StatusRecord>, StoreError>;
    /// How many statuses `user` posted since `since_ms` (live ones; for the daily limit).
    async fn count_statuses_since(
        &self,
        user: UserId,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<u32, StoreError>;
    /// Deletes the user's status `id` and its views; true if it was there (and theirs).
    async fn delete_status(&self, user: UserId, id: u64) -> Result<bool, StoreError>;
    /// Records that `viewer` viewed status `id` (which expires at `expires_at_ms`, so the
    /// view goes with it); the first view's time is kept. True if this is the first view.
    async fn add_view(&self, id: u64, expires_at_ms: u64, view: View) -> Result<bool, StoreError>;
    /// Who viewed status `id`, in view order (then by user id).
    async fn views(&self, id: u64) -> Result<Vec<View>, StoreError>;
    /// Has `viewer` viewed status `id`?
    async fn has_viewed(&self, id: u64, viewer: UserId) -> Result<bool, StoreError>;

    /// Deletes everything the store keeps of `user` (their account is being deleted):
    /// profile, privacy settings, their contacts and blocks, their statuses with the
    /// views of them and their post ids. Left alone, because neither store indexes them
    /// by that user (finding them would take a scan of every list): `user` in other
    /// users' contacts and blocks (the service leaves users sessions no longer knows out
    /// of contact lists), and views `user` made of others' statuses (they go with those
    /// statuses, within a status's lifetime). Idempotent: a call that failed part way is
    /// finished by calling it again.
    async fn delete_user(&self, user: UserId) -> Result<(), StoreError>;

    /// Deletes statuses (and their views) that expired at or before `now_ms`; returns how
    /// many statuses it deleted. Stores that expire data by themselves (ScyllaDB TTL)
    /// return 0.
    async fn prune(&self, now_ms: u64) -> Result<usize, StoreError>;
}

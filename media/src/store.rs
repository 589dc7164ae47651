//! The media metadata store: what natter knows about each upload and each stored blob.
//! The bytes themselves live in the object store (`objects.rs`); this store holds the
//! records that say which object holds which content, who uploaded what, and how much
//! each user stores. Two implementations run the same conformance suite
//! (`conformance.rs`): `redb_store.rs` (embedded, `natter serve`) and `scylla_store.rs`.
//!
//! Model:
//! - A **blob** is one stored content, keyed by its SHA-256. It names the object that
//!   holds it (`key`, unique per write: a blob that is deleted and uploaded again gets a
//!   new key, so a garbage collector deleting the old object can never delete the new
//!   one) and what natter found in it (type, dimensions, duration, thumbnail). `refs`
//!   counts the media records pointing at it; at 0 it is deleted with its objects.
//! - A **media** record is one user's upload: a random id, the owner, the blob's hash,
//!   the file name. The same user uploading the same content again gets the same record
//!   back; another user gets their own record on the same blob. Each record counts its
//!   size against its owner's quota.
//! - An **upload** is a resumable upload in progress: its parts (objects written one per
//!   `PATCH`), the declared size and the expected hash.

use async_trait::async_trait;
use bytes::Bytes;
use natter_proto::UserId;

/// What natter found in a content (the same for every upload of it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobRecord {
    /// Lowercase hex SHA-256 (64 characters).
    pub sha256: String,
    /// The object holding the content, e.g. `blobs/<random>`.
    pub key: String,
    pub size: u64,
    /// `natter_proto::v1::MediaKind` as i32.
    pub kind: i32,
    pub mime: String,
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
    /// The small inline JPEG preview (≤ 64 px), empty if none.
    pub preview: Bytes,
    /// The object holding the larger thumbnail, empty if none.
    pub thumbnail_key: String,
    /// Media records pointing at this blob.
    pub refs: u64,
    pub created_at_ms: u64,
}

/// One user's upload of a content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    /// 22 URL-safe characters (128 random bits).
    pub id: String,
    pub owner: UserId,
    /// The blob's SHA-256.
    pub sha256: String,
    /// The blob's size, counted against the owner's quota.
    pub size: u64,
    pub filename: String,
    pub created_at_ms: u64,
    /// Some message references it (set by `natter.media.describe`): it is never
    /// garbage-collected. An unreferenced record is collected after the grace period.
    pub referenced: bool,
}

/// A part of a resumable upload: `len` bytes at `offset`, in the object `key`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadPart {
    pub offset: u64,
    pub len: u64,
    pub key: String,
}

/// A resumable upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// 22 URL-safe characters.
    pub id: String,
    pub owner: UserId,
    /// The declared total size.
    pub size: u64,
    /// The hash the client expects (lowercase hex), empty if none was given.
    pub expected_sha256: String,
    pub filename: String,
    /// The client's hint for ambiguous containers ("audio" for a voice note in WebM).
    pub kind_hint: String,
    pub voice: bool,
    pub created_at_ms: u64,
    /// Last time a part was added (or the upload was created).
    pub updated_at_ms: u64,
    /// In offset order, contiguous from 0: the upload's offset is the end of the last.
    pub parts: Vec<UploadPart>,
}

impl UploadRecord {
    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.offset + p.len)
    }
}

/// What `commit_media` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// The record was stored. `blob_existed`: the content was already stored under
    /// another key, so the caller's new objects (`blob.key`, `blob.thumbnail_key`) are
    /// not needed and must be deleted by the caller. Otherwise the caller's blob was
    /// stored as given, with `refs` 1.
    Stored {
        record: MediaRecord,
        blob_existed: bool,
    },
    /// The owner already had this content: their existing record, unchanged. The
    /// caller's new objects are not needed.
    Existing(MediaRecord),
    /// The owner's usage plus this size would exceed the quota. Nothing was stored.
    QuotaExceeded { used: u64, quota: u64 },
}

/// What one [`MediaStore::delete_owner_media`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnerDeleted {
    /// The owner's records this call dealt with (deleted by it, or by a racing garbage
    /// collection). Fewer than the limit: the owner has none left.
    pub records: usize,
    /// Blobs whose last ref went with those records: their blob records are gone, and
    /// the caller deletes their objects (`key`, `thumbnail_key`).
    pub orphaned: Vec<BlobRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("media store: {0}")]
    Storage(String),
    #[error("media store: corrupt record: {0}")]
    Corrupt(String),
    #[error("media store: conflict: {0}")]
    Conflict(String),
}

#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// A blob by hash.
    async fn blob(&self, sha256: &str) -> Result<Option<BlobRecord>, StoreError>;

    /// A media record by id.
    async fn media(&self, id: &str) -> Result<Option<MediaRecord>, StoreError>;

    /// One atomic step: if `record.owner` already has a record for `record.sha256`,
    /// return it (`Existing`); else if their usage + `record.size` > `quota`, refuse
    /// (`QuotaExceeded`); else store `record` (its `id` must be new), add its size to the
    /// owner's usage, and either add a ref to the stored blob of that hash or store
    /// `blob` (with `refs` 1). `blob.sha256 == record.sha256` and
    /// `blob.size == record.size`.
    async fn commit_media(
        &self,
        record: MediaRecord,
        blob: BlobRecord,
        quota: u64,
    ) -> Result<Commit, StoreError>;

    /// Marks a record referenced (idempotent). False if there is no such record.
    async fn mark_referenced(&self, id: &str) -> Result<bool, StoreError>;

    /// Unreferenced records created before `before_ms`, at most `limit`, for the
    /// garbage collector.
    async fn unreferenced(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<MediaRecord>, StoreError>;

    /// Deletes a record *if it is still unreferenced*: subtracts its size from the
    /// owner's usage and a ref from its blob. Returns `Some(blob)` when that was the
    /// blob's last ref: the blob record is gone and the caller deletes its objects.
    /// `Ok(None)` when the record was deleted but the blob lives on, or when there was
    /// nothing to delete (no such record, or it became referenced meanwhile).
    async fn delete_unreferenced(&self, id: &str) -> Result<Option<BlobRecord>, StoreError>;

    /// Bytes a user's records count against their quota.
    async fn usage(&self, owner: UserId) -> Result<u64, StoreError>;

    /// How many media records `owner` has (the files [`MediaStore::usage`] counts).
    async fn media_count(&self, owner: UserId) -> Result<u64, StoreError>;

    /// Deletes up to `limit` of `owner`'s media records, referenced or not (the admin
    /// API deletes the user's uploads; messages naming them then find no such media):
    /// each as [`MediaStore::delete_unreferenced`] deletes one, so its size leaves the
    /// owner's usage and a ref leaves its blob. A blob another record still holds stays;
    /// one whose last ref went is returned for the caller to delete its objects, as the
    /// garbage collector does. Call again until it deals with fewer than `limit`.
    /// Resumable uploads are not touched (they expire).
    async fn delete_owner_media(
        &self,
        owner: UserId,
        limit: usize,
    ) -> Result<OwnerDeleted, StoreError>;

    /// Stores a new upload, unless the owner already has `max_open` uploads in progress
    /// (returns false, nothing stored).
    async fn create_upload(
        &self,
        upload: UploadRecord,
        max_open: usize,
    ) -> Result<bool, StoreError>;

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;

    /// Appends a part if the upload's current offset is `part.offset` (compare and set;
    /// `Conflict` otherwise) and sets `updated_at_ms`. Returns the updated record, or
    /// `None` if there is no such upload.
    async fn add_part(
        &self,
        id: &str,
        part: UploadPart,
        now_ms: u64,
    ) -> Result<Option<UploadRecord>, StoreError>;

    /// Removes an upload (finished or abandoned); the caller deletes its part objects.
    async fn delete_upload(&self, id: &str) -> Result<(), StoreError>;

    /// Uploads not updated since `before_ms`, at most `limit`, for the garbage collector.
    async fn stale_uploads(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError>;
}

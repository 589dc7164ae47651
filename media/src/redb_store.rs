//! The embedded [`MediaStore`]: one redb file. Every write is one write transaction,
//! committed with immediate durability (fsync) before the caller hears back; everything a
//! write checks (the owner's record for a hash, their usage against the quota, the blob's
//! refs, an upload's offset, the open-upload limit) is read inside that same transaction,
//! and redb runs one write transaction at a time, so [`MediaStore::commit_media`] and
//! [`MediaStore::delete_unreferenced`] are atomic as a whole and limits hold exactly under
//! any concurrency. Reads run on the blocking pool, each in its own read transaction (a
//! snapshot).
//!
//! Writes are one per upload or garbage-collected record, so each is one `spawn_blocking`
//! call, as in natter-people's `RedbPeopleStore`.
//!
//! # Tables
//!
//! - `media_blobs`: sha256 → the blob (JSON, the preview in base64).
//! - `media`: media id → the record (JSON).
//! - `media_by_owner_sha`: (owner, sha256) → media id: one record per owner and content.
//! - `media_unreferenced`: (created_at_ms, media id) → (): the unreferenced records in
//!   creation order, what [`MediaStore::unreferenced`] walks (no full scan).
//! - `media_usage`: owner → bytes counted against their quota (no row: 0).
//! - `media_uploads`: upload id → the upload with its parts (JSON).
//! - `media_uploads_by_owner`: (owner, upload id) → (): counted against `max_open`.
//! - `media_uploads_by_update`: (updated_at_ms, upload id) → (): what
//!   [`MediaStore::stale_uploads`] walks.

use std::{
    fmt::Display,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use natter_proto::UserId;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::store::{
    BlobRecord, Commit, MediaRecord, MediaStore, OwnerDeleted, StoreError, UploadPart, UploadRecord,
};

/// sha256 → JSON [`StoredBlob`].
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("media_blobs");
/// media id → JSON [`StoredMedia`].
const MEDIA: TableDefinition<&str, &[u8]> = TableDefinition::new("media");
/// (owner, sha256) → media id.
const BY_OWNER_SHA: TableDefinition<(u64, &str), &str> = TableDefinition::new("media_by_owner_sha");
/// (created_at_ms, media id) → (), for unreferenced records only.
const UNREFERENCED: TableDefinition<(u64, &str), ()> = TableDefinition::new("media_unreferenced");
/// owner → bytes used.
const USAGE: TableDefinition<u64, u64> = TableDefinition::new("media_usage");
/// upload id → JSON [`StoredUpload`].
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("media_uploads");
/// (owner, upload id) → ().
const UPLOADS_BY_OWNER: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("media_uploads_by_owner");
/// (updated_at_ms, upload id) → ().
const UPLOADS_BY_UPDATE: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("media_uploads_by_update");

/// How long dropping the store waits for calls still running on the blocking pool.
const DROP_WAIT: Duration = Duration::from_secs(30);

fn storage(e: impl Display) -> StoreError {
    StoreError::Storage(format!("redb: {e}"))
}

fn corrupt(what: impl Display, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("redb: {what}: {e}"))
}

fn encoding(what: &str, e: impl Display) -> StoreError {
    StoreError::Storage(format!("encoding {what}: {e}"))
}

/// A blob as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredBlob {
    sha256: String,
    key: String,
    size: u64,
    kind: i32,
    mime: String,
    width: u32,
    height: u32,
    duration_ms: u32,
    /// Base64: JSON would spell the bytes out as numbers.
    preview: String,
    thumbnail_key: String,
    refs: u64,
    created_at_ms: u64,
}

fn encode_blob(b: &BlobRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&StoredBlob {
        sha256: b.sha256.clone(),
        key: b.key.clone(),
        size: b.size,
        kind: b.kind,
        mime: b.mime.clone(),
        width: b.width,
        height: b.height,
        duration_ms: b.duration_ms,
        preview: BASE64.encode(&b.preview),
        thumbnail_key: b.thumbnail_key.clone(),
        refs: b.refs,
        created_at_ms: b.created_at_ms,
    })
    .map_err(|e| encoding("a blob", e))
}

fn decode_blob(sha256: &str, bytes: &[u8]) -> Result<BlobRecord, StoreError> {
    let what = || format!("blob {sha256}");
    let b: StoredBlob = serde_json::from_slice(bytes).map_err(|e| corrupt(what(), e))?;
    if b.sha256 != sha256 {
        return Err(corrupt(
            what(),
            format_args!("the record says {}", b.sha256),
        ));
    }
    Ok(BlobRecord {
        preview: Bytes::from(BASE64.decode(&b.preview).map_err(|e| corrupt(what(), e))?),
        sha256: b.sha256,
        key: b.key,
        size: b.size,
        kind: b.kind,
        mime: b.mime,
        width: b.width,
        height: b.height,
        duration_ms: b.duration_ms,
        thumbnail_key: b.thumbnail_key,
        refs: b.refs,
        created_at_ms: b.created_at_ms,
    })
}

/// A media record as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredMedia {
    id: String,
    owner: u64,
    sha256: String,
    size: u64,
    filename: String,
    created_at_ms: u64,
    referenced: bool,
}

fn encode_media(m: &MediaRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&StoredMedia {
        id: m.id.clone(),
        owner: m.owner.get(),
        sha256: m.sha256.clone(),
        size: m.size,
        filename: m.filename.clone(),
        created_at_ms: m.created_at_ms,
        referenced: m.referenced,
    })
    .map_err(|e| encoding("a media record", e))
}

fn decode_media(id: &str, bytes: &[u8]) -> Result<MediaRecord, StoreError> {
    let m: StoredMedia =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format_args!("media {id}"), e))?;
    if m.id != id {
        return Err(corrupt(
            format_args!("media {id}"),
            format_args!("the record says id {}", m.id),
        ));
    }
    Ok(MediaRecord {
        id: m.id,
        owner: UserId(m.owner),
        sha256: m.sha256,
        size: m.size,
        filename: m.filename,
        created_at_ms: m.created_at_ms,
        referenced: m.referenced,
    })
}

/// An upload as stored (JSON), its parts inline: an upload has a handful of parts and
/// every `add_part` rewrites the row anyway.
#[derive(Serialize, Deserialize)]
struct StoredUpload {
    id: String,
    owner: u64,
    size: u64,
    expected_sha256: String,
    filename: String,
    kind_hint: String,
    voice: bool,
    created_at_ms: u64,
    updated_at_ms: u64,
    /// (offset, len, key) of each part, in offset order.
    parts: Vec<(u64, u64, String)>,
}

fn encode_upload(u: &UploadRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&StoredUpload {
        id: u.id.clone(),
        owner: u.owner.get(),
        size: u.size,
        expected_sha256: u.expected_sha256.clone(),
        filename: u.filename.clone(),
        kind_hint: u.kind_hint.clone(),
        voice: u.voice,
        created_at_ms: u.created_at_ms,
        updated_at_ms: u.updated_at_ms,
        parts: u
            .parts
            .iter()
            .map(|p| (p.offset, p.len, p.key.clone()))
            .collect(),
    })
    .map_err(|e| encoding("an upload", e))
}

fn decode_upload(id: &str, bytes: &[u8]) -> Result<UploadRecord, StoreError> {
    let u: StoredUpload =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format_args!("upload {id}"), e))?;
    if u.id != id {
        return Err(corrupt(
            format_args!("upload {id}"),
            format_args!("the record says id {}", u.id),
        ));
    }
    Ok(UploadRecord {
        id: u.id,
        owner: UserId(u.owner),
        size: u.size,
        expected_sha256: u.expected_sha256,
        filename: u.filename,
        kind_hint: u.kind_hint,
        voice: u.voice,
        created_at_ms: u.created_at_ms,
        updated_at_ms: u.updated_at_ms,
        parts: u
            .parts
            .into_iter()
            .map(|(offset, len, key)| UploadPart { offset, len, key })
            .collect(),
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

/// The redb-backed media store. Dropping it closes the file (after waiting for calls
/// still running on the blocking pool, even ones whose caller gave up), so the same path
/// can be opened again as soon as `drop` returns.
pub struct RedbMediaStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbMediaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbMediaStore")
    }
}

impl RedbMediaStore {
    /// Opens (creating if needed) the store at `path`. Blocking. Fails with
    /// [`StoreError::Storage`] if the file cannot be opened, e.g. because another store
    /// has it open.
    pub fn open(path: &Path) -> Result<RedbMediaStore, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Storage(format!("redb: opening {}: {e}", path.display())))?;
        // Create every table up front so read transactions always find them.
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            txn.open_table(BLOBS).map_err(storage)?;
            txn.open_table(MEDIA).map_err(storage)?;
            txn.open_table(BY_OWNER_SHA).map_err(storage)?;
            txn.open_table(UNREFERENCED).map_err(storage)?;
            txn.open_table(USAGE).map_err(storage)?;
            txn.open_table(UPLOADS).map_err(storage)?;
            txn.open_table(UPLOADS_BY_OWNER).map_err(storage)?;
            txn.open_table(UPLOADS_BY_UPDATE).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(RedbMediaStore { db: Arc::new(db) })
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

impl Drop for RedbMediaStore {
    fn drop(&mut self) {
        // Every call in progress on the blocking pool holds a clone of `db`; the file
        // closes when the last one goes. Nothing can start a new call any more (we have
        // the store exclusively), so wait for those to end. They are short (one
        // transaction each); the bound only guards against a wedged disk.
        let started = Instant::now();
        while Arc::strong_count(&self.db) > 1 {
            if started.elapsed() > DROP_WAIT {
                tracing::warn!(
                    "redb media store dropped while calls are still running: the file \
                     closes when they end"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn stored_media(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<MediaRecord>, StoreError> {
    table
        .get(id)
        .map_err(storage)?
        .map(|g| decode_media(id, g.value()))
        .transpose()
}

fn stored_blob(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    sha256: &str,
) -> Result<Option<BlobRecord>, StoreError> {
    table
        .get(sha256)
        .map_err(storage)?
        .map(|g| decode_blob(sha256, g.value()))
        .transpose()
}

fn stored_upload(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<UploadRecord>, StoreError> {
    table
        .get(id)
        .map_err(storage)?
        .map(|g| decode_upload(id, g.value()))
        .transpose()
}

/// The ids of `owner`'s media records (one per content), at most `limit`.
fn owner_media_ids(
    index: &impl ReadableTable<(u64, &'static str), &'static str>,
    owner: u64,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    if limit == 0 {
        return Ok(ids);
    }
    for entry in index.range((owner, "")..).map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        if k.value().0 != owner {
            break;
        }
        ids.push(v.value().to_owned());
        if ids.len() >= limit {
            break;
        }
    }
    Ok(ids)
}

/// Deletes a stored media record with everything that counts it: its index entries, its
/// size from the owner's usage, a ref from its blob. Returns the blob if that was its
/// last ref (the blob record is deleted; the caller deletes its objects).
fn delete_record_in(
    txn: &WriteTransaction,
    record: &MediaRecord,
) -> Result<Option<BlobRecord>, StoreError> {
    let (id, owner) = (record.id.as_str(), record.owner.get());
    txn.open_table(MEDIA)
        .map_err(storage)?
        .remove(id)
        .map_err(storage)?;
    txn.open_table(UNREFERENCED)
        .map_err(storage)?
        .remove((record.created_at_ms, id))
        .map_err(storage)?;
    let mut by_owner_sha = txn.open_table(BY_OWNER_SHA).map_err(storage)?;
    let maps_here = by_owner_sha
        .get((owner, record.sha256.as_str()))
        .map_err(storage)?
        .is_some_and(|g| g.value() == id);
    if maps_here {
        by_owner_sha
            .remove((owner, record.sha256.as_str()))
            .map_err(storage)?;
    }
    let mut usage = txn.open_table(USAGE).map_err(storage)?;
    let used = usage.get(owner).map_err(storage)?.map_or(0, |g| g.value());
    match used.saturating_sub(record.size) {
        0 => usage.remove(owner).map_err(storage)?,
        left => usage.insert(owner, left).map_err(storage)?,
    };
    let mut blobs = txn.open_table(BLOBS).map_err(storage)?;
    let Some(mut blob) = stored_blob(&blobs, &record.sha256)? else {
        return Err(StoreError::Corrupt(format!(
            "redb: media {id} names blob {}, which is not stored",
            record.sha256
        )));
    };
    blob.refs = blob.refs.saturating_sub(1);
    if blob.refs == 0 {
        blobs.remove(record.sha256.as_str()).map_err(storage)?;
        return Ok(Some(blob));
    }
    blobs
        .insert(record.sha256.as_str(), encode_blob(&blob)?.as_slice())
        .map_err(storage)?;
    Ok(None)
}

/// The ids of an index keyed (time, id) with time < `before_ms`, oldest first, at most
/// `limit`.
fn ids_before(
    index: &impl ReadableTable<(u64, &'static str), ()>,
    before_ms: u64,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    if limit == 0 {
        return Ok(ids);
    }
    for entry in index.range((0u64, "")..(before_ms, "")).map_err(storage)? {
        let (k, _) = entry.map_err(storage)?;
        ids.push(k.value().1.to_owned());
        if ids.len() >= limit {
            break;
        }
    }
    Ok(ids)
}

#[async_trait::async_trait]
impl MediaStore for RedbMediaStore {
    async fn blob(&self, sha256: &str) -> Result<Option<BlobRecord>, StoreError> {
        let sha256 = sha256.to_owned();
        self.read(move |txn| {
            let blobs = txn.open_table(BLOBS).map_err(storage)?;
            stored_blob(&blobs, &sha256)
        })
        .await
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let media = txn.open_table(MEDIA).map_err(storage)?;
            stored_media(&media, &id)
        })
        .await
    }

    async fn commit_media(
        &self,
        record: MediaRecord,
        blob: BlobRecord,
        quota: u64,
    ) -> Result<Commit, StoreError> {
        if blob.sha256 != record.sha256 {
            return Err(StoreError::Storage(format!(
                "media {}: blob {} committed for content {}",
                record.id, blob.sha256, record.sha256
            )));
        }
        let encoded_record = encode_media(&record)?;
        self.write(move |txn| {
            let owner = record.owner.get();
            let mut by_owner_sha = txn.open_table(BY_OWNER_SHA).map_err(storage)?;
            let mut media = txn.open_table(MEDIA).map_err(storage)?;
            let existing = by_owner_sha
                .get((owner, record.sha256.as_str()))
                .map_err(storage)?
                .map(|g| g.value().to_owned());
            if let Some(id) = existing {
                return match stored_media(&media, &id)? {
                    Some(existing) => unchanged(Commit::Existing(existing)),
                    None => Err(StoreError::Corrupt(format!(
                        "redb: media {id} of {owner} for {} is indexed but not stored",
                        record.sha256
                    ))),
                };
            }
            let mut usage = txn.open_table(USAGE).map_err(storage)?;
            let used = usage.get(owner).map_err(storage)?.map_or(0, |g| g.value());
            if used.saturating_add(record.size) > quota {
                return unchanged(Commit::QuotaExceeded { used, quota });
            }
            if let Some(taken) = stored_media(&media, &record.id)? {
                // Ids are 128 random bits: this is a caller's bug, not bad luck.
                return Err(StoreError::Storage(format!(
                    "media id {} is taken (by user {})",
                    record.id, taken.owner
                )));
            }
            let mut blobs = txn.open_table(BLOBS).map_err(storage)?;
            let (stored_blob_record, blob_existed) = match stored_blob(&blobs, &record.sha256)? {
                Some(mut old) => {
                    old.refs = old.refs.saturating_add(1);
                    (old, true)
                }
                None => (BlobRecord { refs: 1, ..blob }, false),
            };
            blobs
                .insert(
                    record.sha256.as_str(),
                    encode_blob(&stored_blob_record)?.as_slice(),
                )
                .map_err(storage)?;
            media
                .insert(record.id.as_str(), encoded_record.as_slice())
                .map_err(storage)?;
            by_owner_sha
                .insert((owner, record.sha256.as_str()), record.id.as_str())
                .map_err(storage)?;
            if !record.referenced {
                txn.open_table(UNREFERENCED)
                    .map_err(storage)?
                    .insert((record.created_at_ms, record.id.as_str()), ())
                    .map_err(storage)?;
            }
            usage.insert(owner, used + record.size).map_err(storage)?;
            changed(Commit::Stored {
                record,
                blob_existed,
            })
        })
        .await
    }

    async fn mark_referenced(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut media = txn.open_table(MEDIA).map_err(storage)?;
            let Some(mut record) = stored_media(&media, &id)? else {
                return unchanged(false);
            };
            if record.referenced {
                return unchanged(true);
            }
            record.referenced = true;
            media
                .insert(id.as_str(), encode_media(&record)?.as_slice())
                .map_err(storage)?;
            txn.open_table(UNREFERENCED)
                .map_err(storage)?
                .remove((record.created_at_ms, id.as_str()))
                .map_err(storage)?;
            changed(true)
        })
        .await
    }

    async fn unreferenced(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<MediaRecord>, StoreError> {
        self.read(move |txn| {
            let index = txn.open_table(UNREFERENCED).map_err(storage)?;
            let media = txn.open_table(MEDIA).map_err(storage)?;
            ids_before(&index, before_ms, limit)?
                .into_iter()
                .map(|id| {
                    stored_media(&media, &id)?.ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "redb: media {id} is listed unreferenced but not stored"
                        ))
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_unreferenced(&self, id: &str) -> Result<Option<BlobRecord>, StoreError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let record = {
                let media = txn.open_table(MEDIA).map_err(storage)?;
                match stored_media(&media, &id)? {
                    Some(record) if !record.referenced => record,
                    _ => return unchanged(None),
                }
            };
            changed(delete_record_in(txn, &record)?)
        })
        .await
    }

    async fn usage(&self, owner: UserId) -> Result<u64, StoreError> {
        self.read(move |txn| {
            let usage = txn.open_table(USAGE).map_err(storage)?;
            Ok(usage
                .get(owner.get())
                .map_err(storage)?
                .map_or(0, |g| g.value()))
        })
        .await
    }

    async fn media_count(&self, owner: UserId) -> Result<u64, StoreError> {
        self.read(move |txn| {
            let index = txn.open_table(BY_OWNER_SHA).map_err(storage)?;
            Ok(owner_media_ids(&index, owner.get(), usize::MAX)?.len() as u64)
        })
        .await
    }

    async fn delete_owner_media(
        &self,
        owner: UserId,
        limit: usize,
    ) -> Result<OwnerDeleted, StoreError> {
        self.write(move |txn| {
            let ids = {
                let index = txn.open_table(BY_OWNER_SHA).map_err(storage)?;
                owner_media_ids(&index, owner.get(), limit)?
            };
            let mut done = OwnerDeleted {
                records: ids.len(),
                orphaned: Vec::new(),
            };
            for id in &ids {
                let record = {
                    let media = txn.open_table(MEDIA).map_err(storage)?;
                    stored_media(&media, id)?
                };
                let Some(record) = record else {
                    return Err(StoreError::Corrupt(format!(
                        "redb: media {id} of {owner} is indexed but not stored"
                    )));
                };
                done.orphaned.extend(delete_record_in(txn, &record)?);
            }
            if ids.is_empty() {
                return unchanged(done);
            }
            changed(done)
        })
        .await
    }

    async fn create_upload(
        &self,
        upload: UploadRecord,
        max_open: usize,
    ) -> Result<bool, StoreError> {
        let encoded = encode_upload(&upload)?;
        self.write(move |txn| {
            let owner = upload.owner.get();
            let mut by_owner = txn.open_table(UPLOADS_BY_OWNER).map_err(storage)?;
            // Counted inside the transaction: no other write runs until it commits.
            let mut open = 0usize;
            for entry in by_owner
                .range((owner, "")..(owner.saturating_add(1), ""))
                .map_err(storage)?
            {
                let (k, _) = entry.map_err(storage)?;
                if k.value().0 != owner {
                    break;
                }
                open += 1;
                if open >= max_open {
                    break;
                }
            }
            if open >= max_open {
                return unchanged(false);
            }
            let mut uploads = txn.open_table(UPLOADS).map_err(storage)?;
            if let Some(taken) = stored_upload(&uploads, &upload.id)? {
                return Err(StoreError::Storage(format!(
                    "upload id {} is taken (by user {})",
                    upload.id, taken.owner
                )));
            }
            uploads
                .insert(upload.id.as_str(), encoded.as_slice())
                .map_err(storage)?;
            by_owner
                .insert((owner, upload.id.as_str()), ())
                .map_err(storage)?;
            txn.open_table(UPLOADS_BY_UPDATE)
                .map_err(storage)?
                .insert((upload.updated_at_ms, upload.id.as_str()), ())
                .map_err(storage)?;
            changed(true)
        })
        .await
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let uploads = txn.open_table(UPLOADS).map_err(storage)?;
            stored_upload(&uploads, &id)
        })
        .await
    }

    async fn add_part(
        &self,
        id: &str,
        part: UploadPart,
        now_ms: u64,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut uploads = txn.open_table(UPLOADS).map_err(storage)?;
            let Some(mut upload) = stored_upload(&uploads, &id)? else {
                return unchanged(None);
            };
            let offset = upload.offset();
            if part.offset != offset {
                return Err(StoreError::Conflict(format!(
                    "upload {id} is at offset {offset}, not {}",
                    part.offset
                )));
            }
            let mut by_update = txn.open_table(UPLOADS_BY_UPDATE).map_err(storage)?;
            by_update
                .remove((upload.updated_at_ms, id.as_str()))
                .map_err(storage)?;
            upload.parts.push(part);
            upload.updated_at_ms = now_ms;
            uploads
                .insert(id.as_str(), encode_upload(&upload)?.as_slice())
                .map_err(storage)?;
            by_update
                .insert((now_ms, id.as_str()), ())
                .map_err(storage)?;
            changed(Some(upload))
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut uploads = txn.open_table(UPLOADS).map_err(storage)?;
            let Some(upload) = stored_upload(&uploads, &id)? else {
                return unchanged(());
            };
            uploads.remove(id.as_str()).map_err(storage)?;
            txn.open_table(UPLOADS_BY_OWNER)
                .map_err(storage)?
                .remove((upload.owner.get(), id.as_str()))
                .map_err(storage)?;
            txn.open_table(UPLOADS_BY_UPDATE)
                .map_err(storage)?
                .remove((upload.updated_at_ms, id.as_str()))
                .map_err(storage)?;
            changed(())
        })
        .await
    }

    async fn stale_uploads(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        self.read(move |txn| {
            let index = txn.open_table(UPLOADS_BY_UPDATE).map_err(storage)?;
            let uploads = txn.open_table(UPLOADS).map_err(storage)?;
            ids_before(&index, before_ms, limit)?
                .into_iter()
                .map(|id| {
                    stored_upload(&uploads, &id)?.ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "redb: upload {id} is indexed by update time but not stored"
                        ))
                    })
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::conformance;

    fn open(path: &Path) -> Arc<dyn MediaStore> {
        Arc::new(RedbMediaStore::open(path).expect("open"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redb_media_store_passes_the_suite_on_one_shared_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("media.redb"));
        conformance::run_all(|| store.clone()).await;
        conformance::concurrent_creates_never_exceed_max_open(store.clone()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redb_media_store_passes_the_suite_on_fresh_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = AtomicUsize::new(0);
        let fresh = || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            open(&dir.path().join(format!("m{i}.redb")))
        };
        conformance::run_all(fresh).await;
        conformance::concurrent_creates_never_exceed_max_open(fresh()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_media_store_is_durable_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("media.redb");
        conformance::durability_across_reopen(|| open(&path)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_open_of_a_live_file_is_refused_until_the_store_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("media.redb");
        let first = open(&path);
        // Used once, so a call has been on the blocking pool.
        first.usage(UserId(7)).await.expect("read");
        assert!(RedbMediaStore::open(&path).is_err());
        drop(first);
        RedbMediaStore::open(&path).expect("open after drop");
    }

    #[test]
    fn blobs_round_trip_through_their_encoding() {
        let blob = BlobRecord {
            sha256: "ab".repeat(32),
            key: "blobs/k".into(),
            size: 5,
            kind: 1,
            mime: "image/png".into(),
            width: u32::MAX,
            height: 1,
            duration_ms: 2,
            preview: Bytes::from((0..=255u8).collect::<Vec<u8>>()),
            thumbnail_key: "thumbs/k".into(),
            refs: 3,
            created_at_ms: 4,
        };
        let encoded = encode_blob(&blob).expect("encode");
        assert_eq!(decode_blob(&blob.sha256, &encoded).expect("decode"), blob);
        assert!(matches!(
            decode_blob("other", &encoded),
            Err(StoreError::Corrupt(_))
        ));
    }
}

//! The ScyllaDB [`MediaStore`], for cluster mode. It passes the same
//! [`crate::conformance`] suite as [`crate::redb_store::RedbMediaStore`] (the tests
//! below, when `NATTER_TEST_SCYLLA` names a node), except that concurrent
//! `create_upload`s may overshoot `max_open` (below).
//!
//! # Schema
//!
//! `deploy/cql/media.cql`, embedded and run statement by statement (all `IF NOT EXISTS`)
//! by [`ScyllaMediaStore::connect`], after natter-cql has run `deploy/cql/schema.cql`
//! (which creates the keyspace and the other services' tables). See that file for the
//! tables.
//!
//! # Consistency
//!
//! natter-cql's driver settings: LOCAL_QUORUM reads and writes, LOCAL_SERIAL for
//! lightweight transactions and for the reads a compare-and-set starts from. The rows
//! that hold state (blobs, records, claims, usage, uploads) are written only by
//! lightweight transactions; the index tables only by plain writes, and every read of an
//! index checks the row it names (and drops the entry if that row says otherwise).
//!
//! A commit is a sequence of lightweight transactions on different partitions, each
//! atomic on its own:
//!
//! 1. claim (owner, sha256) in `media_by_owner_sha` (`INSERT IF NOT EXISTS`, holding the
//!    record): of racing commits of one owner and content, one wins; the others read the
//!    claim, wait (bounded) for its record and answer `Existing`;
//! 2. add the size to `media_usage` (`IF used = ?`, or `IF NOT EXISTS` for the first),
//!    checking the quota against the value it replaces, so racing commits of one owner
//!    never pass the quota together; refused: the claim is released;
//! 3. add a ref to the blob (`IF refs = ?`) or create it with refs 1 (`IF NOT EXISTS`);
//! 4. write the unreferenced index entry (plain), then the record (`IF NOT EXISTS`).
//!
//! A delete takes the record first (`DELETE IF referenced = false`, which a racing
//! `mark_referenced`'s `UPDATE IF EXISTS` excludes), then releases the claim
//! (`IF id = ?`), subtracts the usage and a ref (`IF refs = ?`, or removes the blob row
//! `IF refs = 1`, so a commit can never add a ref to a blob being removed: it finds the
//! row gone and stores its own blob with its own key).
//!
//! ## Where it is not atomic
//!
//! A failed step of a commit undoes the earlier ones (best effort). What a crash (or a
//! lost connection) between two steps leaves behind is always an over-count, never a
//! record without its blob or its usage:
//!
//! - after 1: a claim without a record. The owner's next upload of that content finds
//!   the claim with no record; once the claim is older than [`CLAIM_TIMEOUT_MS`] (by
//!   the new record's `created_at_ms`), it takes the claim over (`IF id = <old>`).
//! - after 2: as above, and the owner's usage is too high by the record's size.
//! - after 3: as above, and the blob has one ref too many: it is never collected.
//! - in a delete, after the record is gone: the claim (taken over as above), the usage
//!   or the ref may stay counted.
//!
//! Each crash leaks at most one record's size from its owner's quota and one ref. Usage
//! is exactly the sum of the sizes of the owner's `media` rows and refs the count of
//! records per hash, so an offline recount (not part of this store) repairs both.
//! Index entries left behind are harmless: `media_unreferenced` entries whose record is
//! referenced or gone are dropped by the reader; `media_uploads_by_owner` rows whose
//! upload is gone count against `max_open` for [`CLAIM_TIMEOUT_MS`] (a create may still
//! be storing it), then `create_upload` drops them.
//!
//! ## Garbage collection queries
//!
//! [`MediaStore::unreferenced`] reads `media_unreferenced`, partitioned by day and
//! [`SHARDS`] shards (a hash of the id), starting from the days listed in
//! `media_unreferenced_days` (one partition, one row per day, written once per day per
//! process). No full-table scan: the cost is the days listed (days whose entries were
//! all collected and that ended more than [`PRUNE_MARGIN_MS`] before the cutoff are
//! removed from the list) times the shards. An entry written for a day already removed
//! (a commit whose `created_at_ms` is more than that margin in the past of the
//! collector's cutoff: a clock far off) would not be found; its record stays, counted.
//!
//! [`MediaStore::stale_uploads`] scans `media_uploads` (`ALLOW FILTERING`): the table
//! holds only unfinished uploads, at most `max_open` per user.
//!
//! [`MediaStore::media_count`] and [`MediaStore::delete_owner_media`] (the admin API's,
//! rare) scan `media` for the owner's rows (`ALLOW FILTERING`): no table lists a user's
//! records (`media_by_owner_sha` is partitioned by owner and content). Their cost grows
//! with the whole table; an index table by owner would make them one partition read.
//! A delete takes each record with `DELETE IF EXISTS` (so of it and a racing collector
//! exactly one deletes it), then goes on as the collector's delete does.
//!
//! `create_upload` counts the owner's uploads, then inserts: racing creates may each see
//! room, so an owner may exceed `max_open` by the number of racing calls.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use futures::TryStreamExt as _;
use natter_cql::{
    Kind, Read, ReadStatement, corrupt, execute, from_cql, lwt_applied, next_row_error, prepare,
    query_all, query_opt, query_paged, storage, to_cql,
};
use natter_proto::UserId;
use scylla::{client::session::Session, statement::prepared::PreparedStatement};
use tokio::time::Instant;

use crate::store::{
    BlobRecord, Commit, MediaRecord, MediaStore, OwnerDeleted, StoreError, UploadPart, UploadRecord,
};

/// How to reach ScyllaDB: natter-cql's config, the very type the other services' stores
/// use, so one configuration section fills all of them.
pub use natter_cql::ScyllaConfig as ScyllaMediaConfig;

/// The media tables (see the module docs).
const SCHEMA_TEMPLATE: &str = include_str!("../../deploy/cql/media.cql");
/// Partitions per day of `media_unreferenced`.
pub const SHARDS: i32 = 8;
const DAY_MS: u64 = 86_400_000;
/// How long after its end an empty day may leave `media_unreferenced_days`.
pub const PRUNE_MARGIN_MS: u64 = 30 * DAY_MS;
/// How old (by the caller's `created_at_ms`) a claim without a record must be before a
/// commit takes it over: its writer is surely gone.
pub const CLAIM_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// How long a commit that lost the claim waits for the winner's record.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// Rounds of a compare-and-set loop before giving up (each round, some racer wins).
const CAS_ATTEMPTS: usize = 64;
/// Rounds of claiming before giving up (the claim changes hands every round).
const CLAIM_ATTEMPTS: usize = 8;
/// `media_unreferenced_days`' only partition.
const DAYS_BUCKET: i32 = 0;

impl From<natter_cql::Error> for StoreError {
    fn from(e: natter_cql::Error) -> Self {
        match e {
            natter_cql::Error::Storage(e) => StoreError::Storage(e),
            // The trait has no "invalid" error: a bad config or a number that does not fit
            // a bigint is a failure to store.
            natter_cql::Error::Invalid(e) => StoreError::Storage(format!("invalid input: {e}")),
            natter_cql::Error::Corrupt(e) => StoreError::Corrupt(e),
        }
    }
}

fn required(value: Option<i64>, what: &str) -> Result<u64, StoreError> {
    let value = value.ok_or_else(|| StoreError::Corrupt(format!("scylla: {what} is missing")))?;
    Ok(from_cql(value, what)?)
}

fn small(value: Option<i64>, what: &str) -> Result<u32, StoreError> {
    let value = value.unwrap_or(0);
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("scylla: {what} {value}")))
}

/// The day of `media_unreferenced` a record created at `created_at_ms` is listed in.
fn day_of(created_at_ms: u64) -> u64 {
    created_at_ms / DAY_MS
}

/// The shard of `media_unreferenced` media `id` is listed in (a stable hash: every
/// process must agree).
fn shard_of(id: &str) -> i32 {
    let hash = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    // SHARDS is small and positive: the remainder fits.
    i32::try_from(hash % SHARDS.unsigned_abs()).unwrap_or(0)
}

/// A CQL `LIMIT` value.
fn cql_limit(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------------------
// Rows

#[derive(scylla::DeserializeRow)]
struct BlobRow {
    sha256: String,
    key: Option<String>,
    size: Option<i64>,
    kind: Option<i32>,
    mime: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    duration_ms: Option<i64>,
    preview: Option<Bytes>,
    thumbnail_key: Option<String>,
    refs: Option<i64>,
    created_at_ms: Option<i64>,
}

const BLOB_COLUMNS: &str = "sha256, key, size, kind, mime, width, height, duration_ms, preview, \
                            thumbnail_key, refs, created_at_ms";

impl BlobRow {
    fn into_blob(self) -> Result<BlobRecord, StoreError> {
        Ok(BlobRecord {
            key: self.key.unwrap_or_default(),
            size: required(self.size, "blob size")?,
            kind: self.kind.unwrap_or(0),
            mime: self.mime.unwrap_or_default(),
            width: small(self.width, "blob width")?,
            height: small(self.height, "blob height")?,
            duration_ms: small(self.duration_ms, "blob duration_ms")?,
            preview: self.preview.unwrap_or_default(),
            thumbnail_key: self.thumbnail_key.unwrap_or_default(),
            refs: required(self.refs, "blob refs")?,
            created_at_ms: required(self.created_at_ms, "blob created_at_ms")?,
            sha256: self.sha256,
        })
    }
}

#[derive(scylla::DeserializeRow)]
struct MediaRow {
    id: String,
    owner: Option<i64>,
    sha256: Option<String>,
    size: Option<i64>,
    filename: Option<String>,
    created_at_ms: Option<i64>,
    referenced: Option<bool>,
}

const MEDIA_COLUMNS: &str = "id, owner, sha256, size, filename, created_at_ms, referenced";

impl MediaRow {
    fn into_media(self) -> Result<MediaRecord, StoreError> {
        Ok(MediaRecord {
            owner: UserId(required(self.owner, "media owner")?),
            sha256: self.sha256.ok_or_else(|| {
                StoreError::Corrupt(format!("scylla: media {} has no hash", self.id))
            })?,
            size: required(self.size, "media size")?,
            filename: self.filename.unwrap_or_default(),
            created_at_ms: required(self.created_at_ms, "media created_at_ms")?,
            referenced: self.referenced.unwrap_or(false),
            id: self.id,
        })
    }
}

/// A claim on (owner, sha256): the record that holds it.
#[derive(scylla::DeserializeRow)]
struct ClaimRow {
    id: Option<String>,
    created_at_ms: Option<i64>,
}

#[derive(scylla::DeserializeRow)]
struct UploadRow {
    id: String,
    owner: Option<i64>,
    size: Option<i64>,
    expected_sha256: Option<String>,
    filename: Option<String>,
    kind_hint: Option<String>,
    voice: Option<bool>,
    created_at_ms: Option<i64>,
    updated_at_ms: Option<i64>,
    part_count: Option<i32>,
    parts: Option<Vec<(i64, i64, String)>>,
}

const UPLOAD_COLUMNS: &str = "id, owner, size, expected_sha256, filename, kind_hint, voice, \
                              created_at_ms, updated_at_ms, part_count, parts";

impl UploadRow {
    /// The upload and its stored part count.
    fn into_upload(self) -> Result<(UploadRecord, i32), StoreError> {
        let parts = self
            .parts
            .unwrap_or_default()
            .into_iter()
            .map(|(offset, len, key)| {
                Ok(UploadPart {
                    offset: from_cql(offset, "part offset")?,
                    len: from_cql(len, "part len")?,
                    key,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let count = self.part_count.unwrap_or(0);
        if usize::try_from(count).ok() != Some(parts.len()) {
            return Err(StoreError::Corrupt(format!(
                "scylla: upload {} counts {count} parts and holds {}",
                self.id,
                parts.len()
            )));
        }
        Ok((
            UploadRecord {
                owner: UserId(required(self.owner, "upload owner")?),
                size: required(self.size, "upload size")?,
                expected_sha256: self.expected_sha256.unwrap_or_default(),
                filename: self.filename.unwrap_or_default(),
                kind_hint: self.kind_hint.unwrap_or_default(),
                voice: self.voice.unwrap_or(false),
                created_at_ms: required(self.created_at_ms, "upload created_at_ms")?,
                updated_at_ms: required(self.updated_at_ms, "upload updated_at_ms")?,
                parts,
                id: self.id,
            },
            count,
        ))
    }
}

fn cql_parts(parts: &[UploadPart]) -> Result<Vec<(i64, i64, &str)>, StoreError> {
    parts
        .iter()
        .map(|p| {
            Ok((
                to_cql(p.offset, "part offset")?,
                to_cql(p.len, "part len")?,
                p.key.as_str(),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Prepared statements

/// Every statement the store runs after connecting.
struct Statements {
    blob: ReadStatement,
    insert_blob: PreparedStatement,
    set_refs: PreparedStatement,
    delete_blob: PreparedStatement,

    media: PreparedStatement,
    insert_media: PreparedStatement,
    mark_referenced: PreparedStatement,
    delete_media: PreparedStatement,
    /// A record whatever its state (the admin API's delete of a user).
    delete_any_media: PreparedStatement,
    /// A user's records (a filtered scan).
    owner_media: PreparedStatement,
    /// The ids of a user's records (a filtered scan, paged).
    owner_media_ids: PreparedStatement,

    claim: ReadStatement,
    insert_claim: PreparedStatement,
    replace_claim: PreparedStatement,
    release_claim: PreparedStatement,

    usage: ReadStatement,
    insert_usage: PreparedStatement,
    set_usage: PreparedStatement,

    put_day: PreparedStatement,
    days: PreparedStatement,
    delete_day: PreparedStatement,
    put_unreferenced: PreparedStatement,
    unreferenced_in: PreparedStatement,
    delete_unreferenced: PreparedStatement,

    upload: ReadStatement,
    insert_upload: PreparedStatement,
    add_part: PreparedStatement,
    delete_upload: PreparedStatement,
    owner_uploads: PreparedStatement,
    put_owner_upload: PreparedStatement,
    delete_owner_upload: PreparedStatement,
    stale_uploads: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        let p = |cql: String, kind| prepare(session, cql, kind);
        let r = |cql: String| ReadStatement::prepare(session, cql);
        Ok(Statements {
            blob: r(format!(
                "SELECT {BLOB_COLUMNS} FROM {ks}.media_blobs WHERE sha256 = ?"
            ))
            .await?,
            insert_blob: p(
                format!(
                    "INSERT INTO {ks}.media_blobs ({BLOB_COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            set_refs: p(
                format!("UPDATE {ks}.media_blobs SET refs = ? WHERE sha256 = ? IF refs = ?"),
                Kind::Lwt,
            )
            .await?,
            delete_blob: p(
                format!("DELETE FROM {ks}.media_blobs WHERE sha256 = ? IF refs = ?"),
                Kind::Lwt,
            )
            .await?,

            media: p(
                format!("SELECT {MEDIA_COLUMNS} FROM {ks}.media WHERE id = ?"),
                Kind::Read,
            )
            .await?,
            insert_media: p(
                format!(
                    "INSERT INTO {ks}.media ({MEDIA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) \
                     IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            mark_referenced: p(
                format!("UPDATE {ks}.media SET referenced = true WHERE id = ? IF EXISTS"),
                Kind::Lwt,
            )
            .await?,
            delete_media: p(
                format!("DELETE FROM {ks}.media WHERE id = ? IF referenced = false"),
                Kind::Lwt,
            )
            .await?,
            delete_any_media: p(
                format!("DELETE FROM {ks}.media WHERE id = ? IF EXISTS"),
                Kind::Lwt,
            )
            .await?,
            owner_media: p(
                format!(
                    "SELECT {MEDIA_COLUMNS} FROM {ks}.media WHERE owner = ? LIMIT ? \
                     ALLOW FILTERING"
                ),
                Kind::Read,
            )
            .await?,
            owner_media_ids: p(
                format!("SELECT id FROM {ks}.media WHERE owner = ? ALLOW FILTERING"),
                Kind::Read,
            )
            .await?,

            claim: r(format!(
                "SELECT id, created_at_ms FROM {ks}.media_by_owner_sha \
                 WHERE owner = ? AND sha256 = ?"
            ))
            .await?,
            insert_claim: p(
                format!(
                    "INSERT INTO {ks}.media_by_owner_sha \
                     (owner, sha256, id, created_at_ms) VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            replace_claim: p(
                format!(
                    "UPDATE {ks}.media_by_owner_sha \
                     SET id = ?, created_at_ms = ? \
                     WHERE owner = ? AND sha256 = ? IF id = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            release_claim: p(
                format!(
                    "DELETE FROM {ks}.media_by_owner_sha WHERE owner = ? AND sha256 = ? \
                     IF id = ?"
                ),
                Kind::Lwt,
            )
            .await?,

            usage: r(format!("SELECT used FROM {ks}.media_usage WHERE owner = ?")).await?,
            insert_usage: p(
                format!("INSERT INTO {ks}.media_usage (owner, used) VALUES (?, ?) IF NOT EXISTS"),
                Kind::Lwt,
            )
            .await?,
            set_usage: p(
                format!("UPDATE {ks}.media_usage SET used = ? WHERE owner = ? IF used = ?"),
                Kind::Lwt,
            )
            .await?,

            put_day: p(
                format!("INSERT INTO {ks}.media_unreferenced_days (bucket, day) VALUES (?, ?)"),
                Kind::Write,
            )
            .await?,
            days: p(
                format!(
                    "SELECT day FROM {ks}.media_unreferenced_days WHERE bucket = ? AND day <= ?"
                ),
                Kind::Read,
            )
            .await?,
            delete_day: p(
                format!("DELETE FROM {ks}.media_unreferenced_days WHERE bucket = ? AND day = ?"),
                Kind::Write,
            )
            .await?,
            put_unreferenced: p(
                format!(
                    "INSERT INTO {ks}.media_unreferenced (day, shard, created_at_ms, id) \
                     VALUES (?, ?, ?, ?)"
                ),
                Kind::Write,
            )
            .await?,
            unreferenced_in: p(
                format!(
                    "SELECT created_at_ms, id FROM {ks}.media_unreferenced \
                     WHERE day = ? AND shard = ? AND created_at_ms < ? LIMIT ?"
                ),
                Kind::Read,
            )
            .await?,
            delete_unreferenced: p(
                format!(
                    "DELETE FROM {ks}.media_unreferenced \
                     WHERE day = ? AND shard = ? AND created_at_ms = ? AND id = ?"
                ),
                Kind::Write,
            )
            .await?,

            upload: r(format!(
                "SELECT {UPLOAD_COLUMNS} FROM {ks}.media_uploads WHERE id = ?"
            ))
            .await?,
            insert_upload: p(
                format!(
                    "INSERT INTO {ks}.media_uploads ({UPLOAD_COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            add_part: p(
                format!(
                    "UPDATE {ks}.media_uploads SET parts = ?, part_count = ?, updated_at_ms = ? \
                     WHERE id = ? IF part_count = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            delete_upload: p(
                format!("DELETE FROM {ks}.media_uploads WHERE id = ? IF EXISTS"),
                Kind::Lwt,
            )
            .await?,
            owner_uploads: p(
                format!(
                    "SELECT id, created_at_ms FROM {ks}.media_uploads_by_owner WHERE owner = ?"
                ),
                Kind::Read,
            )
            .await?,
            put_owner_upload: p(
                format!(
                    "INSERT INTO {ks}.media_uploads_by_owner (owner, id, created_at_ms) \
                     VALUES (?, ?, ?)"
                ),
                Kind::Write,
            )
            .await?,
            delete_owner_upload: p(
                format!("DELETE FROM {ks}.media_uploads_by_owner WHERE owner = ? AND id = ?"),
                Kind::Write,
            )
            .await?,
            stale_uploads: p(
                format!(
                    "SELECT {UPLOAD_COLUMNS} FROM {ks}.media_uploads WHERE updated_at_ms < ? \
                     LIMIT ? ALLOW FILTERING"
                ),
                Kind::Read,
            )
            .await?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The store

/// The ScyllaDB-backed media store: one driver session (connection pools to every node)
/// and the prepared statements. Dropping it closes the connections.
pub struct ScyllaMediaStore {
    session: Session,
    keyspace: String,
    st: Statements,
    /// The last day this process listed in `media_unreferenced_days` (+1; 0: none), so
    /// that row is written once a day, not once per commit.
    listed_day: AtomicU64,
}

impl fmt::Debug for ScyllaMediaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaMediaStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

/// What a commit found on its (owner, sha256).
enum Claimed {
    /// Taken by this commit.
    Mine,
    /// Held by a record that is stored: the answer.
    Existing(MediaRecord),
    /// Free (or free to take over), but the owner's usage leaves no room.
    Quota(u64),
    /// Changed hands while we looked: look again.
    Again,
}

impl ScyllaMediaStore {
    /// Connects (natter-cql: checks the config, creates the keyspace and
    /// `deploy/cql/schema.cql`'s tables if missing), creates the media tables if missing
    /// and prepares every statement. Fails with [`StoreError::Storage`] on a bad config,
    /// if the cluster cannot be reached or if it refuses the schema.
    pub async fn connect(config: ScyllaMediaConfig) -> Result<ScyllaMediaStore, StoreError> {
        let session = natter_cql::connect_with(&config, &[SCHEMA_TEMPLATE]).await?;
        let st = Statements::prepare(&session, &config.keyspace).await?;
        Ok(ScyllaMediaStore {
            session,
            keyspace: config.keyspace,
            st,
            listed_day: AtomicU64::new(0),
        })
    }

    /// Runs a lightweight transaction; true if it applied.
    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        what: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| storage(what, e))?;
        Ok(lwt_applied(result)?)
    }

    async fn blob_at(&self, sha256: &str, read: Read) -> Result<Option<BlobRecord>, StoreError> {
        let row: Option<BlobRow> = query_opt(
            &self.session,
            self.st.blob.at(read),
            (sha256,),
            "reading a blob",
        )
        .await?;
        row.map(BlobRow::into_blob).transpose()
    }

    async fn used(&self, owner: i64, read: Read) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> = query_opt(
            &self.session,
            self.st.usage.at(read),
            (owner,),
            "reading usage",
        )
        .await?;
        row.map(|(used,)| Ok(from_cql(used.unwrap_or(0), "usage")?))
            .transpose()
    }

    async fn claim_of(
        &self,
        owner: i64,
        sha256: &str,
    ) -> Result<Option<(String, ClaimRow)>, StoreError> {
        let row: Option<ClaimRow> = query_opt(
            &self.session,
            self.st.claim.at(Read::Serial),
            (owner, sha256),
            "reading a content claim",
        )
        .await?;
        Ok(row.and_then(|c| c.id.clone().map(|id| (id, c))))
    }

    /// Takes (owner, sha256) for `record`, or finds the record holding it. The owner's
    /// record wins over the quota; a free claim is taken only if the quota leaves room
    /// (a cheap read: a refused commit costs no Paxos round; the usage's compare-and-set
    /// checks it again, exactly).
    async fn claim(
        &self,
        record: &MediaRecord,
        owner: i64,
        quota: u64,
    ) -> Result<Claimed, StoreError> {
        const WHAT: &str = "claiming a content";
        let sha256 = record.sha256.as_str();
        let (id, created) = (
            record.id.as_str(),
            to_cql(record.created_at_ms, "created_at_ms")?,
        );
        let Some((held_by, claim)) = self.claim_of(owner, sha256).await? else {
            if let Some(used) = self.over_quota(owner, record.size, quota).await? {
                return Ok(Claimed::Quota(used));
            }
            let values = (owner, sha256, id, created);
            return Ok(if self.lwt(&self.st.insert_claim, values, WHAT).await? {
                Claimed::Mine
            } else {
                Claimed::Again
            });
        };
        if let Some(existing) = self.media(&held_by).await? {
            return Ok(Claimed::Existing(existing));
        }
        let claimed_at = claim.created_at_ms.unwrap_or(0);
        let claimed_at = u64::try_from(claimed_at).unwrap_or(0);
        if claimed_at.saturating_add(CLAIM_TIMEOUT_MS) < record.created_at_ms {
            // Its writer died before storing the record (or its delete died before
            // releasing it): take it over.
            if let Some(used) = self.over_quota(owner, record.size, quota).await? {
                return Ok(Claimed::Quota(used));
            }
            let values = (id, created, owner, sha256, held_by);
            return Ok(if self.lwt(&self.st.replace_claim, values, WHAT).await? {
                Claimed::Mine
            } else {
                Claimed::Again
            });
        }
        // A racing commit holds it and is storing its record: wait for it.
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut pause = Duration::from_millis(5);
        while Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            if let Some(existing) = self.media(&held_by).await? {
                return Ok(Claimed::Existing(existing));
            }
            match self.claim_of(owner, sha256).await? {
                Some((id, _)) if id == held_by => {}
                // Released (its quota check failed) or taken over.
                _ => return Ok(Claimed::Again),
            }
        }
        Err(StoreError::Storage(format!(
            "scylla: media {held_by} of {} for content {sha256} is still being stored; \
             try again",
            record.owner
        )))
    }

    /// The owner's usage if adding `size` would pass `quota` (a quorum read).
    async fn over_quota(
        &self,
        owner: i64,
        size: u64,
        quota: u64,
    ) -> Result<Option<u64>, StoreError> {
        let used = self.used(owner, Read::Quorum).await?.unwrap_or(0);
        Ok((used.saturating_add(size) > quota).then_some(used))
    }

    /// Releases the claim of `id` on (owner, sha256), if it still holds it.
    async fn release_claim(&self, owner: i64, sha256: &str, id: &str) -> Result<(), StoreError> {
        self.lwt(
            &self.st.release_claim,
            (owner, sha256, id),
            "releasing a content claim",
        )
        .await?;
        Ok(())
    }

    /// Adds `size` to the owner's usage unless that passes `quota`; `Err(used)` then.
    async fn add_usage(
        &self,
        owner: i64,
        size: u64,
        quota: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        const WHAT: &str = "adding usage";
        for _ in 0..CAS_ATTEMPTS {
            let used = self.used(owner, Read::Serial).await?;
            let now = used.unwrap_or(0);
            if now.saturating_add(size) > quota {
                return Ok(Err(now));
            }
            let new = to_cql(now + size, "usage")?;
            let applied = match used {
                None => self.lwt(&self.st.insert_usage, (owner, new), WHAT).await?,
                Some(old) => {
                    let old = to_cql(old, "usage")?;
                    self.lwt(&self.st.set_usage, (new, owner, old), WHAT)
                        .await?
                }
            };
            if applied {
                return Ok(Ok(()));
            }
        }
        Err(StoreError::Storage(format!(
            "scylla: usage of {owner} keeps changing; try again"
        )))
    }

    async fn subtract_usage(&self, owner: i64, size: u64) -> Result<(), StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(old) = self.used(owner, Read::Serial).await? else {
                return Ok(());
            };
            let values = (
                to_cql(old.saturating_sub(size), "usage")?,
                owner,
                to_cql(old, "usage")?,
            );
            if self
                .lwt(&self.st.set_usage, values, "subtracting usage")
                .await?
            {
                return Ok(());
            }
        }
        Err(StoreError::Storage(format!(
            "scylla: usage of {owner} keeps changing; try again"
        )))
    }

    /// Adds a ref to the blob of `blob.sha256`, or stores `blob` with refs 1; true if
    /// the blob was stored already.
    async fn add_ref(&self, blob: &BlobRecord) -> Result<bool, StoreError> {
        const WHAT: &str = "adding a blob ref";
        let sha256 = blob.sha256.as_str();
        for _ in 0..CAS_ATTEMPTS {
            let applied = match self.blob_at(sha256, Read::Serial).await? {
                Some(stored) => {
                    let values = (
                        to_cql(stored.refs.saturating_add(1), "refs")?,
                        sha256,
                        to_cql(stored.refs, "refs")?,
                    );
                    if self.lwt(&self.st.set_refs, values, WHAT).await? {
                        return Ok(true);
                    }
                    false
                }
                None => {
                    let values = (
                        sha256,
                        blob.key.as_str(),
                        to_cql(blob.size, "size")?,
                        blob.kind,
                        blob.mime.as_str(),
                        i64::from(blob.width),
                        i64::from(blob.height),
                        i64::from(blob.duration_ms),
                        &blob.preview,
                        blob.thumbnail_key.as_str(),
                        1i64,
                        to_cql(blob.created_at_ms, "created_at_ms")?,
                    );
                    self.lwt(&self.st.insert_blob, values, WHAT).await?
                }
            };
            if applied {
                return Ok(false);
            }
        }
        Err(StoreError::Storage(format!(
            "scylla: refs of blob {sha256} keep changing; try again"
        )))
    }

    /// Takes a ref from the blob of `sha256`; the blob if that was its last (the row is
    /// gone then).
    async fn remove_ref(&self, sha256: &str) -> Result<Option<BlobRecord>, StoreError> {
        const WHAT: &str = "removing a blob ref";
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut stored) = self.blob_at(sha256, Read::Serial).await? else {
                tracing::warn!(sha256, "media store: a deleted record's blob is not stored");
                return Ok(None);
            };
            let refs = to_cql(stored.refs, "refs")?;
            if stored.refs <= 1 {
                if self.lwt(&self.st.delete_blob, (sha256, refs), WHAT).await? {
                    stored.refs = 0;
                    return Ok(Some(stored));
                }
            } else if self
                .lwt(&self.st.set_refs, (refs - 1, sha256, refs), WHAT)
                .await?
            {
                return Ok(None);
            }
        }
        Err(StoreError::Storage(format!(
            "scylla: refs of blob {sha256} keep changing; try again"
        )))
    }

    /// Lists `record` in `media_unreferenced` (and its day, once a day per process).
    async fn list_unreferenced(&self, record: &MediaRecord) -> Result<(), StoreError> {
        let day = day_of(record.created_at_ms);
        if self.listed_day.load(Ordering::Relaxed) != day + 1 {
            execute(
                &self.session,
                &self.st.put_day,
                (DAYS_BUCKET, to_cql(day, "day")?),
                "listing a day of unreferenced media",
            )
            .await?;
            self.listed_day.store(day + 1, Ordering::Relaxed);
        }
        execute(
            &self.session,
            &self.st.put_unreferenced,
            (
                to_cql(day, "day")?,
                shard_of(&record.id),
                to_cql(record.created_at_ms, "created_at_ms")?,
                record.id.as_str(),
            ),
            "listing unreferenced media",
        )
        .await?;
        Ok(())
    }

    async fn unlist(&self, created_at_ms: u64, id: &str) -> Result<(), StoreError> {
        execute(
            &self.session,
            &self.st.delete_unreferenced,
            (
                to_cql(day_of(created_at_ms), "day")?,
                shard_of(id),
                to_cql(created_at_ms, "created_at_ms")?,
                id,
            ),
            "unlisting unreferenced media",
        )
        .await?;
        Ok(())
    }

    /// Steps 2 to 4 of a commit (see the module docs), the claim taken.
    async fn store_claimed(
        &self,
        record: &MediaRecord,
        blob: &BlobRecord,
        owner: i64,
        quota: u64,
    ) -> Result<Commit, StoreError> {
        if let Err(used) = self.add_usage(owner, record.size, quota).await? {
            return Ok(Commit::QuotaExceeded { used, quota });
        }
        let blob_existed = match self.add_ref(blob).await {
            Ok(existed) => existed,
            Err(e) => {
                self.undo(owner, record, false).await;
                return Err(e);
            }
        };
        let stored = async {
            if !record.referenced {
                self.list_unreferenced(record).await?;
            }
            let values = (
                record.id.as_str(),
                owner,
                record.sha256.as_str(),
                to_cql(record.size, "size")?,
                record.filename.as_str(),
                to_cql(record.created_at_ms, "created_at_ms")?,
                record.referenced,
            );
            if self
                .lwt(&self.st.insert_media, values, "storing a media record")
                .await?
            {
                Ok(())
            } else {
                // Ids are 128 random bits: this is a caller's bug, not bad luck.
                Err(StoreError::Storage(format!(
                    "media id {} is taken",
                    record.id
                )))
            }
        }
        .await;
        match stored {
            Ok(()) => Ok(Commit::Stored {
                record: record.clone(),
                blob_existed,
            }),
            Err(e) => {
                self.undo(owner, record, true).await;
                Err(e)
            }
        }
    }

    /// Undoes a failed commit's usage (and ref), best effort: what fails stays counted
    /// (see the module docs). The caller releases the claim.
    async fn undo(&self, owner: i64, record: &MediaRecord, ref_added: bool) {
        if ref_added && let Err(e) = self.remove_ref(&record.sha256).await {
            tracing::warn!(error = %e, id = record.id, "media store: undoing a blob ref");
        }
        if let Err(e) = self.subtract_usage(owner, record.size).await {
            tracing::warn!(error = %e, id = record.id, "media store: undoing usage");
        }
    }

    /// The records listed unreferenced on `day` before `before_ms`, oldest first, at most
    /// `limit` per shard.
    async fn listed_on(
        &self,
        day: i64,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let reads = (0..SHARDS).map(|shard| {
            query_all::<(i64, String)>(
                &self.session,
                &self.st.unreferenced_in,
                (day, shard, before_ms, cql_limit(limit)),
                "reading unreferenced media",
            )
        });
        let mut all = Vec::new();
        for rows in futures::future::join_all(reads).await {
            all.extend(rows?);
        }
        all.sort();
        Ok(all)
    }
}

#[async_trait::async_trait]
impl MediaStore for ScyllaMediaStore {
    async fn blob(&self, sha256: &str) -> Result<Option<BlobRecord>, StoreError> {
        self.blob_at(sha256, Read::Quorum).await
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRecord>, StoreError> {
        let row: Option<MediaRow> =
            query_opt(&self.session, &self.st.media, (id,), "reading media").await?;
        row.map(MediaRow::into_media).transpose()
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
        let owner = to_cql(record.owner.get(), "owner")?;
        for _ in 0..CLAIM_ATTEMPTS {
            match self.claim(&record, owner, quota).await? {
                Claimed::Existing(existing) => return Ok(Commit::Existing(existing)),
                Claimed::Quota(used) => return Ok(Commit::QuotaExceeded { used, quota }),
                Claimed::Again => continue,
                Claimed::Mine => {}
            }
            let outcome = self.store_claimed(&record, &blob, owner, quota).await;
            if !matches!(outcome, Ok(Commit::Stored { .. }))
                && let Err(e) = self.release_claim(owner, &record.sha256, &record.id).await
            {
                // Taken over later (see the module docs).
                tracing::warn!(error = %e, id = record.id, "media store: releasing a claim");
            }
            return outcome;
        }
        Err(StoreError::Storage(format!(
            "scylla: the claim of {} on content {} keeps changing hands; try again",
            record.owner, record.sha256
        )))
    }

    async fn mark_referenced(&self, id: &str) -> Result<bool, StoreError> {
        let Some(record) = self.media(id).await? else {
            return Ok(false);
        };
        if !record.referenced
            && !self
                .lwt(&self.st.mark_referenced, (id,), "marking media referenced")
                .await?
        {
            // Deleted meanwhile.
            return Ok(false);
        }
        // Also when it was referenced already: a retry finishes an earlier call.
        self.unlist(record.created_at_ms, id).await?;
        Ok(true)
    }

    async fn unreferenced(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<MediaRecord>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 || before_ms == 0 {
            return Ok(out);
        }
        let last_day = day_of(before_ms - 1);
        let days: Vec<(i64,)> = query_paged(
            &self.session,
            &self.st.days,
            (DAYS_BUCKET, to_cql(last_day, "day")?),
            "reading the days of unreferenced media",
        )
        .await?;
        let cutoff = i64::try_from(before_ms).unwrap_or(i64::MAX);
        for (day,) in days {
            let listed = self.listed_on(day, cutoff, limit - out.len()).await?;
            let day_end = from_cql(day, "day")?
                .saturating_add(1)
                .saturating_mul(DAY_MS);
            if listed.is_empty() && day_end.saturating_add(PRUNE_MARGIN_MS) <= before_ms {
                execute(
                    &self.session,
                    &self.st.delete_day,
                    (DAYS_BUCKET, day),
                    "unlisting a day of unreferenced media",
                )
                .await?;
                continue;
            }
            for (created, id) in listed {
                match self.media(&id).await? {
                    Some(record) if !record.referenced => {
                        out.push(record);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                    // Referenced or collected, and the entry left behind.
                    _ => {
                        self.unlist(from_cql(created, "created_at_ms")?, &id)
                            .await?
                    }
                }
            }
        }
        Ok(out)
    }

    async fn delete_unreferenced(&self, id: &str) -> Result<Option<BlobRecord>, StoreError> {
        let Some(record) = self.media(id).await? else {
            return Ok(None);
        };
        if record.referenced {
            self.unlist(record.created_at_ms, id).await?;
            return Ok(None);
        }
        if !self
            .lwt(&self.st.delete_media, (id,), "deleting media")
            .await?
        {
            // Referenced (or deleted) meanwhile.
            return Ok(None);
        }
        let owner = to_cql(record.owner.get(), "owner")?;
        self.release_claim(owner, &record.sha256, id).await?;
        self.unlist(record.created_at_ms, id).await?;
        self.subtract_usage(owner, record.size).await?;
        self.remove_ref(&record.sha256).await
    }

    async fn usage(&self, owner: UserId) -> Result<u64, StoreError> {
        Ok(self
            .used(to_cql(owner.get(), "owner")?, Read::Quorum)
            .await?
            .unwrap_or(0))
    }

    async fn media_count(&self, owner: UserId) -> Result<u64, StoreError> {
        const WHAT: &str = "counting a user's media";
        let mut rows = self
            .session
            .execute_iter(
                self.st.owner_media_ids.clone(),
                (to_cql(owner.get(), "owner")?,),
            )
            .await
            .map_err(|e| storage(WHAT, e))?
            .rows_stream::<(String,)>()
            .map_err(|e| corrupt(WHAT, e))?;
        let mut count = 0;
        while rows
            .try_next()
            .await
            .map_err(|e| next_row_error(WHAT, e))?
            .is_some()
        {
            count += 1;
        }
        Ok(count)
    }

    async fn delete_owner_media(
        &self,
        owner: UserId,
        limit: usize,
    ) -> Result<OwnerDeleted, StoreError> {
        if limit == 0 {
            return Ok(OwnerDeleted::default());
        }
        let cql_owner = to_cql(owner.get(), "owner")?;
        let rows: Vec<MediaRow> = query_paged(
            &self.session,
            &self.st.owner_media,
            (cql_owner, cql_limit(limit)),
            "reading a user's media",
        )
        .await?;
        let mut done = OwnerDeleted {
            records: rows.len(),
            orphaned: Vec::new(),
        };
        for row in rows {
            let record = row.into_media()?;
            let id = record.id.as_str();
            if !self
                .lwt(&self.st.delete_any_media, (id,), "deleting media")
                .await?
            {
                // Collected meanwhile: the collector finishes its delete.
                continue;
            }
            self.release_claim(cql_owner, &record.sha256, id).await?;
            self.unlist(record.created_at_ms, id).await?;
            self.subtract_usage(cql_owner, record.size).await?;
            done.orphaned.extend(self.remove_ref(&record.sha256).await?);
        }
        Ok(done)
    }

    async fn create_upload(
        &self,
        upload: UploadRecord,
        max_open: usize,
    ) -> Result<bool, StoreError> {
        if max_open == 0 {
            return Ok(false);
        }
        let owner = to_cql(upload.owner.get(), "owner")?;
        let listed: Vec<(String, Option<i64>)> = query_paged(
            &self.session,
            &self.st.owner_uploads,
            (owner,),
            "reading a user's uploads",
        )
        .await?;
        if listed.len() >= max_open {
            // Index rows may outlive their upload (a crash in a create or a delete):
            // count those only while a create may still be storing the upload, and drop
            // them once they are older than that.
            let mut open = 0;
            for (id, listed_at) in &listed {
                let listed_at = u64::try_from(listed_at.unwrap_or(0)).unwrap_or(0);
                let in_flight = listed_at.saturating_add(CLAIM_TIMEOUT_MS) >= upload.created_at_ms;
                if in_flight || self.upload(id).await?.is_some() {
                    open += 1;
                } else {
                    execute(
                        &self.session,
                        &self.st.delete_owner_upload,
                        (owner, id.as_str()),
                        "unlisting a user's upload",
                    )
                    .await?;
                }
            }
            if open >= max_open {
                return Ok(false);
            }
        }
        // Listed first: an upload is never stored without being counted.
        execute(
            &self.session,
            &self.st.put_owner_upload,
            (
                owner,
                upload.id.as_str(),
                to_cql(upload.created_at_ms, "created_at_ms")?,
            ),
            "listing a user's upload",
        )
        .await?;
        let values = (
            upload.id.as_str(),
            owner,
            to_cql(upload.size, "size")?,
            upload.expected_sha256.as_str(),
            upload.filename.as_str(),
            upload.kind_hint.as_str(),
            upload.voice,
            to_cql(upload.created_at_ms, "created_at_ms")?,
            to_cql(upload.updated_at_ms, "updated_at_ms")?,
            i32::try_from(upload.parts.len())
                .map_err(|_| StoreError::Storage("too many parts".into()))?,
            cql_parts(&upload.parts)?,
        );
        if !self
            .lwt(&self.st.insert_upload, values, "storing an upload")
            .await?
        {
            return Err(StoreError::Storage(format!(
                "upload id {} is taken",
                upload.id
            )));
        }
        Ok(true)
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let row: Option<UploadRow> = query_opt(
            &self.session,
            self.st.upload.at(Read::Quorum),
            (id,),
            "reading an upload",
        )
        .await?;
        Ok(row.map(UploadRow::into_upload).transpose()?.map(|(u, _)| u))
    }

    async fn add_part(
        &self,
        id: &str,
        part: UploadPart,
        now_ms: u64,
    ) -> Result<Option<UploadRecord>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let row: Option<UploadRow> = query_opt(
                &self.session,
                self.st.upload.at(Read::Serial),
                (id,),
                "reading an upload",
            )
            .await?;
            let Some((mut upload, count)) = row.map(UploadRow::into_upload).transpose()? else {
                return Ok(None);
            };
            let offset = upload.offset();
            if part.offset != offset {
                return Err(StoreError::Conflict(format!(
                    "upload {id} is at offset {offset}, not {}",
                    part.offset
                )));
            }
            upload.parts.push(part.clone());
            upload.updated_at_ms = now_ms;
            let values = (
                cql_parts(&upload.parts)?,
                count.saturating_add(1),
                to_cql(now_ms, "updated_at_ms")?,
                id,
                count,
            );
            if self
                .lwt(&self.st.add_part, values, "adding an upload part")
                .await?
            {
                return Ok(Some(upload));
            }
            // Another part landed, or the upload went: look again.
        }
        Err(StoreError::Storage(format!(
            "scylla: upload {id} keeps changing; try again"
        )))
    }

    async fn delete_upload(&self, id: &str) -> Result<(), StoreError> {
        let Some(upload) = self.upload(id).await? else {
            return Ok(());
        };
        self.lwt(&self.st.delete_upload, (id,), "deleting an upload")
            .await?;
        // Unlisted last: an upload is never stored without being counted.
        execute(
            &self.session,
            &self.st.delete_owner_upload,
            (to_cql(upload.owner.get(), "owner")?, id),
            "unlisting a user's upload",
        )
        .await?;
        Ok(())
    }

    async fn stale_uploads(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<UploadRow> = query_paged(
            &self.session,
            &self.st.stale_uploads,
            (
                i64::try_from(before_ms).unwrap_or(i64::MAX),
                cql_limit(limit),
            ),
            "reading stale uploads",
        )
        .await?;
        rows.into_iter()
            .map(|row| Ok(row.into_upload()?.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use natter_cql::test_support::in_fresh_keyspace;

    use super::*;
    use crate::conformance;

    /// What the skip message calls these tests.
    const TESTS: &str = "ScyllaDB media store tests";

    async fn connect(config: &ScyllaMediaConfig) -> Arc<dyn MediaStore> {
        let store = ScyllaMediaStore::connect(config.clone())
            .await
            .expect("connect to ScyllaDB");
        Arc::new(store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn scylla_media_store_passes_the_suite() {
        in_fresh_keyspace(TESTS, |config| async move {
            let store = connect(&config).await;
            // Its max_open is checked by counting, then inserting: concurrent creates may
            // overshoot (by at most the racers), which run_all allows.
            conformance::run_all(|| store.clone()).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn scylla_media_store_is_durable_across_reconnect() {
        in_fresh_keyspace(TESTS, |config| async move {
            // Create the schema once, so every reconnect below finds it.
            drop(connect(&config).await);
            conformance::durability_across_reopen(|| {
                // `open` is synchronous: connect on this runtime (multi-threaded, so
                // blocking one worker is fine).
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(connect(&config))
                })
            })
            .await;
        })
        .await;
    }

    #[test]
    fn the_media_schema_is_templated_with_the_keyspace() {
        let statements = natter_cql::schema_statements(SCHEMA_TEMPLATE, "natter_x", "", "");
        let creates = SCHEMA_TEMPLATE
            .lines()
            .filter(|l| l.starts_with("CREATE "))
            .count();
        assert_eq!(statements.len(), creates, "{statements:#?}");
        for table in [
            "media_blobs",
            "media",
            "media_by_owner_sha",
            "media_usage",
            "media_unreferenced_days",
            "media_unreferenced",
            "media_uploads",
            "media_uploads_by_owner",
        ] {
            let create = format!("CREATE TABLE IF NOT EXISTS natter_x.{table} (");
            assert!(
                statements.iter().any(|s| s.starts_with(&create)),
                "{table} missing"
            );
        }
        for s in &statements {
            assert!(!s.contains("{{") && !s.contains("--"), "{s}");
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(
            shard_of("AAAAAAAAAAAAAAAAAAAAAA"),
            shard_of("AAAAAAAAAAAAAAAAAAAAAA")
        );
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let s = shard_of(&format!("id-{i}"));
            assert!((0..SHARDS).contains(&s));
            seen.insert(s);
        }
        assert_eq!(seen.len(), SHARDS as usize, "every shard is used");
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
    }
}

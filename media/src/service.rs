//! What the media endpoints do. Uploads stream into the object store while they are
//! hashed, counted against the limits and sniffed; nothing holds a whole upload in
//! memory (images, bounded by their limit, are read back whole once to make their
//! thumbnails). Records are committed only once the content is stored, so a crash
//! leaves at worst an unrecorded object, never a record without content.

use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    ops::Range,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use natter_bus::Bus;
use natter_proto::{DeviceId, ErrorCode, Subject, UserId, bus, v1};
use natter_sessions::{DeviceAuth, DeviceAuthError, Identity};
use prost::Message as _;
use rand::Rng as _;
use serde::Serialize;

use crate::{
    BlobRecord, Commit, MediaRecord, MediaStore, StoreError, UploadPart, UploadRecord,
    objects::{ObjectError, Objects, hex},
    probe::{self, RangeSource},
    sniff::{self, Detected, SNIFF_BYTES},
    thumb,
};

const MIB: u64 = 1 << 20;
/// Download grants (user, media) remembered before the cache is emptied.
const MAX_GRANTS: usize = 100_000;
/// How long a checked download right is remembered (a video's range requests ask once).
const GRANT_TTL: Duration = Duration::from_secs(300);
/// How long (and how many) completed uploads are remembered, for retried completes.
const COMPLETED_TTL: Duration = Duration::from_secs(3600);
const MAX_COMPLETED: usize = 10_000;
/// Records and uploads the garbage collector handles per round and query.
const GC_BATCH: usize = 256;
pub const MAX_FILENAME_BYTES: usize = 255;

/// Size limits per kind, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub image: u64,
    pub video: u64,
    pub audio: u64,
    pub document: u64,
}

impl Default for Limits {
    /// WhatsApp's: images 16 MiB, video 100 MiB, audio 16 MiB, documents 2 GiB.
    fn default() -> Self {
        Limits {
            image: 16 * MIB,
            video: 100 * MIB,
            audio: 16 * MIB,
            document: 2048 * MIB,
        }
    }
}

impl Limits {
    pub fn of(&self, kind: v1::MediaKind) -> u64 {
        match kind {
            v1::MediaKind::Image => self.image,
            v1::MediaKind::Video => self.video,
            v1::MediaKind::Audio => self.audio,
            v1::MediaKind::Document | v1::MediaKind::Unspecified => self.document,
        }
    }

    pub fn max(&self) -> u64 {
        self.image
            .max(self.video)
            .max(self.audio)
            .max(self.document)
    }
}

/// How the media service runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    /// Accepted MIME types; `None`: every type natter recognises.
    pub allow: Option<HashSet<String>>,
    /// Largest single-shot upload (`POST /v1/media`).
    pub single_max: u64,
    /// Bytes each user may store.
    pub quota: u64,
    /// Resumable uploads a user may have open.
    pub max_open_uploads: usize,
    /// A resumable upload untouched this long is deleted.
    pub upload_ttl: Duration,
    /// An upload no message references is deleted this long after it was made.
    pub gc_grace: Duration,
    /// How often the garbage collector runs.
    pub gc_interval: Duration,
    /// Bus requests (device checks, history lookups).
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            allow: None,
            single_max: 16 * MIB,
            quota: 10 * 1024 * MIB,
            max_open_uploads: 8,
            upload_ttl: Duration::from_secs(24 * 3600),
            gc_grace: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a media request failed; each maps to one HTTP status and a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The caller's account is disabled by an administrator.
    #[error("this account is disabled")]
    AccountDisabled,
    #[error("{0}")]
    NotFound(String),
    #[error("the upload stands at offset {offset}")]
    OffsetMismatch { offset: u64 },
    #[error("the upload has {offset} of its {size} bytes")]
    Incomplete { offset: u64, size: u64 },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the content's SHA-256 is {actual}, not {expected}")]
    HashMismatch { expected: String, actual: String },
    #[error("this upload would take you over your storage quota ({used} of {quota} bytes used)")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("{0} uploads are open already; complete or delete one")]
    TooManyUploads(usize),
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl MediaError {
    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            MediaError::BadRequest(_) => (400, "invalid_argument"),
            MediaError::Unauthorized(_) => (401, "unauthorized"),
            MediaError::Forbidden(_) => (403, "forbidden"),
            MediaError::AccountDisabled => (403, "account_disabled"),
            MediaError::NotFound(_) => (404, "not_found"),
            MediaError::OffsetMismatch { .. } => (409, "offset_mismatch"),
            MediaError::Incomplete { .. } => (409, "incomplete"),
            MediaError::TooLarge(_) => (413, "too_large"),
            MediaError::Unsupported(_) => (415, "unsupported_type"),
            MediaError::RangeNotSatisfiable { .. } => (416, "range_not_satisfiable"),
            MediaError::HashMismatch { .. } => (422, "hash_mismatch"),
            MediaError::QuotaExceeded { .. } => (429, "quota_exceeded"),
            MediaError::TooManyUploads(_) => (429, "too_many_uploads"),
            MediaError::Unavailable(_) => (503, "unavailable"),
            MediaError::Internal(_) => (500, "internal"),
        }
    }
}

impl From<StoreError> for MediaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Storage(_) | StoreError::Conflict(_) => {
                tracing::warn!(error = %e, "media store failed");
                MediaError::Unavailable("media store unavailable, retry".into())
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "media store corrupt");
                MediaError::Internal("internal error".into())
            }
        }
    }
}

fn object_failure(e: ObjectError) -> MediaError {
    tracing::warn!(error = %e, "media object store failed");
    MediaError::Unavailable("media storage unavailable, retry".into())
}

/// The media as the endpoints answer it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MediaInfo {
    /// What messages, profiles and downloads name the media by.
    #[schema(example = "k3F9yQ2mT8bWc1xZ0aP7dA")]
    pub id: String,
    /// `image`, `video`, `audio` or `document`.
    #[schema(example = "image")]
    pub kind: &'static str,
    /// The sniffed type.
    #[schema(example = "image/jpeg")]
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Pixels, as displayed (0 when not an image or video).
    pub width: u32,
    pub height: u32,
    /// Audio and video length (0 otherwise).
    pub duration_ms: u32,
    /// Base64 of the inline JPEG preview, empty if none.
    pub preview: String,
    pub filename: String,
    /// A voice note.
    pub voice: bool,
}

pub fn kind_name(kind: i32) -> &'static str {
    match v1::MediaKind::try_from(kind) {
        Ok(v1::MediaKind::Image) => "image",
        Ok(v1::MediaKind::Video) => "video",
        Ok(v1::MediaKind::Audio) => "audio",
        _ => "document",
    }
}

fn info(record: &MediaRecord, blob: &BlobRecord, voice: bool) -> MediaInfo {
    MediaInfo {
        id: record.id.clone(),
        kind: kind_name(blob.kind),
        mime: blob.mime.clone(),
        size: blob.size,
        sha256: blob.sha256.clone(),
        width: blob.width,
        height: blob.height,
        duration_ms: blob.duration_ms,
        preview: base64::engine::general_purpose::STANDARD.encode(&blob.preview),
        filename: record.filename.clone(),
        voice,
    }
}

/// What the client says about an upload (query of `POST /v1/media`, body of
/// `POST /v1/media/uploads`).
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    pub filename: String,
    /// Lowercase or uppercase hex; checked.
    pub sha256: Option<String>,
    /// "audio" classifies ambiguous containers (WebM, MP4) as audio.
    pub kind_hint: String,
    pub voice: bool,
}

impl UploadOptions {
    fn validate(&self) -> Result<Option<String>, MediaError> {
        if self.filename.len() > MAX_FILENAME_BYTES {
            return Err(MediaError::BadRequest(format!(
                "filename is longer than {MAX_FILENAME_BYTES} bytes"
            )));
        }
        if self.filename.chars().any(char::is_control) {
            return Err(MediaError::BadRequest(
                "filename has control characters".into(),
            ));
        }
        match self.kind_hint.as_str() {
            "" | "audio" | "image" | "video" | "document" => {}
            other => {
                return Err(MediaError::BadRequest(format!(
                    "kind `{other}` is not image, video, audio or document"
                )));
            }
        }
        match &self.sha256 {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(s.to_ascii_lowercase()))
            }
            Some(_) => Err(MediaError::BadRequest(
                "sha256 must be 64 hex characters".into(),
            )),
        }
    }

    fn hint_audio(&self) -> bool {
        self.voice || self.kind_hint == "audio"
    }
}

/// A resumable upload's state as the endpoints answer it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UploadInfo {
    pub upload_id: String,
    /// Bytes received so far: where the next `PATCH` starts.
    pub offset: u64,
    /// The announced size.
    pub size: u64,
    /// Seconds until the untouched upload is deleted.
    pub expires_in_s: u64,
}

/// What to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Original,
    Thumbnail,
}

/// A download that passed its checks: what to stream.
#[derive(Debug, Clone)]
pub struct Download {
    pub record: MediaRecord,
    pub blob: BlobRecord,
}

/// Through what a downloader reaches someone else's media.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    /// Message `seq` of `conversation`, which carries it (`?conversation=&seq=`).
    Message { conversation: String, seq: u64 },
    /// This user's profile photo (`?profile=`).
    Profile(UserId),
    /// One of this user's status updates (`?status=`).
    Status(UserId),
}

/// A checked download right: this user may reach media `id` through this [`Via`].
type Grant = (UserId, String, Via);

/// The media service. Cheap to clone.
#[derive(Clone)]
pub struct Media {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<dyn MediaStore>,
    objects: Objects,
    bus: Arc<dyn Bus>,
    auth: DeviceAuth,
    grants: Mutex<HashMap<Grant, Instant>>,
    /// Resumable uploads this instance completed lately (id → owner, answer), so a
    /// client whose `complete` answer was lost gets it again instead of 404.
    completed: Mutex<HashMap<String, (UserId, MediaInfo, Instant)>>,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("objects", &self.inner.objects)
            .finish_non_exhaustive()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 22 URL-safe characters: 128 random bits.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn valid_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads ranges of one object for the container probes.
struct ObjectRange<'a> {
    objects: &'a Objects,
    key: &'a str,
}

#[async_trait::async_trait]
impl RangeSource for ObjectRange<'_> {
    async fn read(&self, range: Range<u64>) -> std::io::Result<Bytes> {
        self.objects
            .read_range(self.key, range)
            .await
            .map_err(std::io::Error::other)
    }
}

impl Media {
    pub fn new(
        config: Config,
        store: Arc<dyn MediaStore>,
        objects: Objects,
        bus: Arc<dyn Bus>,
        auth: DeviceAuth,
    ) -> Media {
        Media {
            inner: Arc::new(Inner {
                config,
                store,
                objects,
                bus,
                auth,
                grants: Mutex::new(HashMap::new()),
                completed: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn objects(&self) -> &Objects {
        &self.inner.objects
    }

    /// The caller of an HTTP request.
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Identity, MediaError> {
        self.inner
            .auth
            .authenticate(headers, query_token)
            .await
            .map_err(|e| match e {
                DeviceAuthError::Unauthorized(m) => MediaError::Unauthorized(m),
                DeviceAuthError::Unavailable => {
                    MediaError::Unavailable("sessions unavailable, retry".into())
                }
                DeviceAuthError::Internal => MediaError::Internal("internal error".into()),
                DeviceAuthError::AccountDisabled => MediaError::AccountDisabled,
            })
    }

    /// The type of a content from its first bytes, if natter accepts it.
    fn detect(&self, head: &[u8], options: &UploadOptions) -> Result<Detected, MediaError> {
        let detected = sniff::sniff(head, options.hint_audio())
            .ok_or_else(|| MediaError::Unsupported("this type of file is not accepted".into()))?;
        if let Some(allow) = &self.inner.config.allow
            && !allow.contains(detected.mime)
        {
            return Err(MediaError::Unsupported(format!(
                "{} files are not accepted here",
                detected.mime
            )));
        }
        Ok(detected)
    }

    fn too_large(&self, kind: v1::MediaKind) -> MediaError {
        let limit = self.inner.config.limits.of(kind);
        MediaError::TooLarge(format!(
            "a {} may be at most {} bytes ({} MiB)",
            kind_name(kind as i32),
            limit,
            limit / MIB
        ))
    }

    async fn check_quota(&self, user: UserId, more: u64) -> Result<(), MediaError> {
        let used = self.inner.store.usage(user).await?;
        let quota = self.inner.config.quota;
        if used.saturating_add(more) > quota {
            return Err(MediaError::QuotaExceeded { used, quota });
        }
        Ok(())
    }

    /// `GET /v1/media/usage`.
    pub async fn usage(&self, who: &Identity) -> Result<(u64, u64), MediaError> {
        Ok((
            self.inner.store.usage(who.user).await?,
            self.inner.config.quota,
        ))
    }

    /// `POST /v1/media`: a single-shot upload streamed from `body`.
    pub async fn upload<S, E>(
        &self,
        who: &Identity,
        options: UploadOptions,
        content_length: Option<u64>,
        mut body: S,
    ) -> Result<MediaInfo, MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let expected = options.validate()?;
        let config = &self.inner.config;
        let cap = config.single_max.min(config.limits.max());
        let single_too_large = || {
            MediaError::TooLarge(format!(
                "single-shot uploads are at most {cap} bytes; use a resumable upload (POST /v1/media/uploads)"
            ))
        };
        // The quota is checked when the records are committed, not here: the same
        // content uploaded again by the same user counts once, and that is known only
        // once it is hashed (a single-shot upload wastes at most `single_max` of
        // bandwidth).
        if content_length.is_some_and(|n| n > cap) {
            return Err(single_too_large());
        }
        let id = new_id();
        let key = Objects::blob_key(&id);
        let mut writer = self
            .inner
            .objects
            .writer(&key)
            .await
            .map_err(object_failure)?;
        let mut head = BytesMut::new();
        let mut detected: Option<Detected> = None;
        let mut limit = cap;
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    writer.abort().await;
                    return Err(MediaError::BadRequest(format!("upload interrupted: {e}")));
                }
            };
            if detected.is_none() {
                let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() >= SNIFF_BYTES {
                    match self.detect(&head, &options) {
                        Ok(d) => {
                            limit = cap.min(config.limits.of(d.kind));
                            detected = Some(d);
                        }
                        Err(e) => {
                            writer.abort().await;
                            return Err(e);
                        }
                    }
                }
            }
            if writer.len() + chunk.len() as u64 > limit {
                writer.abort().await;
                return Err(match detected {
                    Some(d) if limit < cap => self.too_large(d.kind),
                    _ => single_too_large(),
                });
            }
            if let Err(e) = writer.write(chunk).await {
                writer.abort().await;
                return Err(object_failure(e));
            }
        }
        if writer.is_empty() {
            writer.abort().await;
            return Err(MediaError::BadRequest("the upload is empty".into()));
        }
        let detected = match detected {
            Some(d) => d,
            None => match self.detect(&head, &options) {
                Ok(d) => d,
                Err(e) => {
                    writer.abort().await;
                    return Err(e);
                }
            },
        };
        if writer.len() > config.limits.of(detected.kind) {
            writer.abort().await;
            return Err(self.too_large(detected.kind));
        }
        let (size, sha) = writer.finish().await.map_err(object_failure)?;
        let sha = hex(&sha);
        if let Some(expected) = expected
            && expected != sha
        {
            self.inner.objects.delete_quietly(&[&key]).await;
            return Err(MediaError::HashMismatch {
                expected,
                actual: sha,
            });
        }
        self.finalize(who.user, id, key, size, sha, detected, &options)
            .await
    }

    /// A content is stored under `key`: analyse it (unless the same content is stored
    /// already) and commit the records. On any error `key` is deleted.
    #[allow(clippy::too_many_arguments)]
    async fn finalize(
        &self,
        owner: UserId,
        id: String,
        key: String,
        size: u64,
        sha: String,
        detected: Detected,
        options: &UploadOptions,
    ) -> Result<MediaInfo, MediaError> {
        let objects = &self.inner.objects;
        let existing = match self.inner.store.blob(&sha).await {
            Ok(b) => b,
            Err(e) => {
                objects.delete_quietly(&[&key]).await;
                return Err(e.into());
            }
        };
        let blob = match existing {
            Some(blob) => blob,
            None => match self.analyse(&id, &key, size, &sha, detected).await {
                Ok(blob) => blob,
                Err(e) => {
                    objects.delete_quietly(&[&key]).await;
                    return Err(e);
                }
            },
        };
        let ours_is_new = blob.key == key;
        let our_keys = [
            key.as_str(),
            if ours_is_new {
                blob.thumbnail_key.as_str()
            } else {
                ""
            },
        ];
        let record = MediaRecord {
            id,
            owner,
            sha256: sha.clone(),
            size,
            filename: options.filename.clone(),
            created_at_ms: now_ms(),
            referenced: false,
        };
        let committed = match self
            .inner
            .store
            .commit_media(record, blob.clone(), self.inner.config.quota)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                objects.delete_quietly(&our_keys).await;
                return Err(e.into());
            }
        };
        // `blob` is the stored blob record unless another upload of the same content
        // committed its own first: only then is it read again.
        let (record, stored_elsewhere) = match committed {
            Commit::Stored {
                record,
                blob_existed,
            } => {
                if blob_existed && ours_is_new {
                    // The same content was stored meanwhile: ours is a spare copy.
                    objects.delete_quietly(&our_keys).await;
                } else if !ours_is_new {
                    objects.delete_quietly(&[&key]).await;
                }
                (record, blob_existed && ours_is_new)
            }
            Commit::Existing(record) => {
                objects.delete_quietly(&our_keys).await;
                (record, ours_is_new)
            }
            Commit::QuotaExceeded { used, quota } => {
                objects.delete_quietly(&our_keys).await;
                return Err(MediaError::QuotaExceeded { used, quota });
            }
        };
        let stored = if stored_elsewhere {
            self.inner.store.blob(&record.sha256).await?.unwrap_or(blob)
        } else {
            blob
        };
        Ok(info(&record, &stored, options.voice))
    }

    /// What natter finds in a new content: thumbnails of an image, the duration of
    /// audio and video.
    async fn analyse(
        &self,
        id: &str,
        key: &str,
        size: u64,
        sha: &str,
        detected: Detected,
    ) -> Result<BlobRecord, MediaError> {
        let objects = &self.inner.objects;
        let mut blob = BlobRecord {
            sha256: sha.to_owned(),
            key: key.to_owned(),
            size,
            kind: detected.kind as i32,
            mime: detected.mime.to_owned(),
            refs: 1,
            created_at_ms: now_ms(),
            ..BlobRecord::default()
        };
        match detected.kind {
            v1::MediaKind::Image => {
                // Bounded by the image limit (checked before this).
                let data = objects.read_all(key).await.map_err(object_failure)?;
                let mime = detected.mime;
                let made = tokio::task::spawn_blocking(move || thumb::image_info(&data, mime))
                    .await
                    .map_err(|e| MediaError::Internal(format!("thumbnailer failed: {e}")))?;
                let image = made.map_err(|e| {
                    MediaError::Unsupported(format!("the image could not be read: {e}"))
                })?;
                blob.width = image.width;
                blob.height = image.height;
                blob.preview = image.preview;
                let thumbnail_key = Objects::thumbnail_key(id);
                objects
                    .put(&thumbnail_key, image.thumbnail)
                    .await
                    .map_err(object_failure)?;
                blob.thumbnail_key = thumbnail_key;
            }
            v1::MediaKind::Video | v1::MediaKind::Audio => {
                let source = ObjectRange { objects, key };
                let found = probe::probe(&source, size, detected.mime).await;
                blob.duration_ms = found.duration_ms.unwrap_or(0);
                blob.width = found.width;
                blob.height = found.height;
            }
            v1::MediaKind::Document | v1::MediaKind::Unspecified => {}
        }
        Ok(blob)
    }

    // ---- resumable uploads ------------------------------------------------------

    fn upload_info(&self, upload: &UploadRecord) -> UploadInfo {
        let ttl_ms = self.inner.config.upload_ttl.as_millis() as u64;
        let expires = upload.updated_at_ms.saturating_add(ttl_ms);
        UploadInfo {
            upload_id: upload.id.clone(),
            offset: upload.offset(),
            size: upload.size,
            expires_in_s: expires.saturating_sub(now_ms()) / 1000,
        }
    }

    /// `POST /v1/media/uploads`.
    pub async fn create_upload(
        &self,
        who: &Identity,
        size: u64,
        options: UploadOptions,
    ) -> Result<UploadInfo, MediaError> {
        let expected = options.validate()?;
        if size == 0 {
            return Err(MediaError::BadRequest("size must be at least 1".into()));
        }
        let max = self.inner.config.limits.max();
        if size > max {
            return Err(MediaError::TooLarge(format!(
                "uploads are at most {max} bytes ({} MiB)",
                max / MIB
            )));
        }
        // Refused early rather than after gigabytes, unless the client names content
        // that is stored already (possibly theirs, which counts once): then the commit
        // decides.
        let known = match &expected {
            Some(sha) => self.inner.store.blob(sha).await?.is_some(),
            None => false,
        };
        if !known {
            self.check_quota(who.user, size).await?;
        }
        let now = now_ms();
        let upload = UploadRecord {
            id: new_id(),
            owner: who.user,
            size,
            expected_sha256: expected.unwrap_or_default(),
            filename: options.filename,
            kind_hint: options.kind_hint,
            voice: options.voice,
            created_at_ms: now,
            updated_at_ms: now,
            parts: Vec::new(),
        };
        let max_open = self.inner.config.max_open_uploads;
        if !self
            .inner
            .store
            .create_upload(upload.clone(), max_open)
            .await?
        {
            return Err(MediaError::TooManyUploads(max_open));
        }
        Ok(self.upload_info(&upload))
    }

    async fn owned_upload(&self, who: &Identity, id: &str) -> Result<UploadRecord, MediaError> {
        let not_found = || MediaError::NotFound("no such upload".into());
        if !valid_id(id) {
            return Err(not_found());
        }
        match self.inner.store.upload(id).await? {
            Some(u) if u.owner == who.user => Ok(u),
            _ => Err(not_found()),
        }
    }

    /// `HEAD`/`GET /v1/media/uploads/{id}`.
    pub async fn upload_state(&self, who: &Identity, id: &str) -> Result<UploadInfo, MediaError> {
        let upload = self.owned_upload(who, id).await?;
        Ok(self.upload_info(&upload))
    }

    /// `PATCH /v1/media/uploads/{id}`: the bytes at `offset`. A body cut off keeps what
    /// arrived (the part is completed with it), so the client resumes from the offset
    /// `HEAD` reports. Runs to the end even if the caller's future is dropped (a client
    /// gone mid-body must still leave its bytes recorded): spawn it.
    pub async fn append<S, E>(
        &self,
        who: &Identity,
        id: &str,
        offset: u64,
        content_length: Option<u64>,
        mut body: S,
    ) -> Result<UploadInfo, MediaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let upload = self.owned_upload(who, id).await?;
        let current = upload.offset();
        if offset != current {
            return Err(MediaError::OffsetMismatch { offset: current });
        }
        let remaining = upload.size - current;
        let past_end = || {
            MediaError::BadRequest(format!(
                "the body goes past the upload's declared size ({} bytes)",
                upload.size
            ))
        };
        if content_length.is_some_and(|n| n > remaining) {
            return Err(past_end());
        }
        let options = UploadOptions {
            filename: upload.filename.clone(),
            sha256: None,
            kind_hint: upload.kind_hint.clone(),
            voice: upload.voice,
        };
        let objects = &self.inner.objects;
        let key = Objects::part_key(id, offset);
        let mut writer = objects.writer(&key).await.map_err(object_failure)?;
        // The first bytes decide the type: a refused type (or a declared size over its
        // kind's limit) ends the upload before the rest is sent.
        let mut head = BytesMut::new();
        let mut sniffed = offset != 0;
        let mut cut = None;
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    cut = Some(e.to_string());
                    break;
                }
            };
            if writer.len() + chunk.len() as u64 > remaining {
                writer.abort().await;
                return Err(past_end());
            }
            if !sniffed {
                let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() >= SNIFF_BYTES || head.len() as u64 == upload.size {
                    sniffed = true;
                    let verdict = self.detect(&head, &options).and_then(|d| {
                        if upload.size > self.inner.config.limits.of(d.kind) {
                            Err(self.too_large(d.kind))
                        } else {
                            Ok(())
                        }
                    });
                    if let Err(e) = verdict {
                        writer.abort().await;
                        self.discard_upload(&upload).await;
                        return Err(e);
                    }
                }
            }
            if let Err(e) = writer.write(chunk).await {
                writer.abort().await;
                return Err(object_failure(e));
            }
        }
        if writer.is_empty() {
            writer.abort().await;
            return match cut {
                Some(e) => Err(MediaError::BadRequest(format!("upload interrupted: {e}"))),
                None => Ok(self.upload_info(&upload)),
            };
        }
        let (len, _) = writer.finish().await.map_err(object_failure)?;
        let part = UploadPart {
            offset,
            len,
            key: key.clone(),
        };
        let updated = match self.inner.store.add_part(id, part, now_ms()).await {
            Ok(Some(u)) => u,
            Ok(None) => {
                objects.delete_quietly(&[&key]).await;
                return Err(MediaError::NotFound("no such upload".into()));
            }
            Err(StoreError::Conflict(_)) => {
                // A concurrent PATCH at the same offset won.
                objects.delete_quietly(&[&key]).await;
                let now = self.owned_upload(who, id).await?;
                return Err(MediaError::OffsetMismatch {
                    offset: now.offset(),
                });
            }
            Err(e) => {
                objects.delete_quietly(&[&key]).await;
                return Err(e.into());
            }
        };
        match cut {
            Some(e) => Err(MediaError::BadRequest(format!(
                "upload interrupted at offset {}: {e}",
                updated.offset()
            ))),
            None => Ok(self.upload_info(&updated)),
        }
    }

    /// Deletes an upload and its parts.
    async fn discard_upload(&self, upload: &UploadRecord) {
        let keys: Vec<&str> = upload.parts.iter().map(|p| p.key.as_str()).collect();
        self.inner.objects.delete_quietly(&keys).await;
        if let Err(e) = self.inner.store.delete_upload(&upload.id).await {
            tracing::warn!(upload = upload.id, error = %e, "could not delete an upload record; the collector will");
        }
    }

    /// `DELETE /v1/media/uploads/{id}`.
    pub async fn delete_upload(&self, who: &Identity, id: &str) -> Result<(), MediaError> {
        let upload = self.owned_upload(who, id).await?;
        self.discard_upload(&upload).await;
        Ok(())
    }

    /// `POST /v1/media/uploads/{id}/complete`: the parts become one object (copied in
    /// order, hashed on the way), then as a single-shot upload.
    pub async fn complete(&self, who: &Identity, id: &str) -> Result<MediaInfo, MediaError> {
        let upload = match self.owned_upload(who, id).await {
            Ok(upload) => upload,
            Err(MediaError::NotFound(m)) => {
                return self
                    .completed_answer(who.user, id)
                    .ok_or(MediaError::NotFound(m));
            }
            Err(e) => return Err(e),
        };
        let offset = upload.offset();
        if offset < upload.size {
            return Err(MediaError::Incomplete {
                offset,
                size: upload.size,
            });
        }
        let options = UploadOptions {
            filename: upload.filename.clone(),
            sha256: None,
            kind_hint: upload.kind_hint.clone(),
            voice: upload.voice,
        };
        let objects = &self.inner.objects;
        let media_id = new_id();
        let key = Objects::blob_key(&media_id);
        let parts: Vec<(String, u64)> = upload
            .parts
            .iter()
            .map(|p| (p.key.clone(), p.len))
            .collect();
        let (size, sha) = objects.concat(&parts, &key).await.map_err(object_failure)?;
        let sha = hex(&sha);
        let checked = async {
            if size != upload.size {
                return Err(MediaError::Internal(format!(
                    "the parts hold {size} bytes, not {}",
                    upload.size
                )));
            }
            let head = objects
                .read_range(&key, 0..size.min(SNIFF_BYTES as u64))
                .await
                .map_err(object_failure)?;
            let detected = self.detect(&head, &options)?;
            if size > self.inner.config.limits.of(detected.kind) {
                return Err(self.too_large(detected.kind));
            }
            if !upload.expected_sha256.is_empty() && upload.expected_sha256 != sha {
                return Err(MediaError::HashMismatch {
                    expected: upload.expected_sha256.clone(),
                    actual: sha.clone(),
                });
            }
            Ok(detected)
        }
        .await;
        let detected = match checked {
            Ok(d) => d,
            Err(e) => {
                objects.delete_quietly(&[&key]).await;
                if !matches!(e, MediaError::Unavailable(_)) {
                    self.discard_upload(&upload).await;
                }
                return Err(e);
            }
        };
        let result = self
            .finalize(who.user, media_id, key, size, sha, detected, &options)
            .await;
        if let Ok(info) = &result {
            self.remember_completed(who.user, id, info.clone());
        }
        if !matches!(result, Err(MediaError::Unavailable(_))) {
            self.discard_upload(&upload).await;
        }
        result
    }

    fn completions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (UserId, MediaInfo, Instant)>> {
        // Each update is one insert or a clear: a poisoned map is still consistent.
        self.inner
            .completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn remember_completed(&self, owner: UserId, id: &str, info: MediaInfo) {
        let mut completed = self.completions();
        if completed.len() >= MAX_COMPLETED {
            completed.retain(|_, (_, _, at)| at.elapsed() < COMPLETED_TTL);
            if completed.len() >= MAX_COMPLETED {
                completed.clear();
            }
        }
        completed.insert(id.to_owned(), (owner, info, Instant::now()));
    }

    /// The answer of a `complete` of upload `id` by `owner` this instance gave lately.
    fn completed_answer(&self, owner: UserId, id: &str) -> Option<MediaInfo> {
        let completed = self.completions();
        completed
            .get(id)
            .filter(|(o, _, at)| *o == owner && at.elapsed() < COMPLETED_TTL)
            .map(|(_, info, _)| info.clone())
    }

    // ---- downloads ---------------------------------------------------------------

    /// May `who` download media `id`? The uploader may; anyone else must name how they
    /// reach it (`via`): a message they can read that carries it (answered by the
    /// messages service's own history rules: membership, a group's joined/left seqs,
    /// withheld messages), or a user whose profile photo it is or whose status update
    /// carries it (answered by the people service as it shows that user to `who`:
    /// privacy settings, blocks, who sees statuses). No rule is written twice.
    pub async fn open(
        &self,
        who: &Identity,
        id: &str,
        via: Option<Via>,
    ) -> Result<Download, MediaError> {
        let not_found = || MediaError::NotFound("no such media".into());
        if !valid_id(id) {
            return Err(not_found());
        }
        let record = self.inner.store.media(id).await?.ok_or_else(not_found)?;
        if record.owner != who.user {
            let Some(via) = via else {
                return Err(MediaError::Forbidden(
                    "name what carries this media (conversation and seq, profile or status)".into(),
                ));
            };
            let grant = (who.user, id.to_owned(), via);
            if !self.granted(&grant) {
                let (bus, timeout) = (self.inner.bus.as_ref(), self.inner.config.request_timeout);
                let (allowed, refusal) = match &grant.2 {
                    Via::Message { conversation, seq } => (
                        self.message_carries(who.user, who.device, id, conversation, *seq)
                            .await?,
                        "you cannot read a message with this media there",
                    ),
                    Via::Profile(owner) => (
                        crate::people::profile_shows(
                            bus, timeout, who.user, who.device, *owner, id,
                        )
                        .await?,
                        "this media is not a profile photo of that user you may see",
                    ),
                    Via::Status(owner) => (
                        crate::people::status_shows(bus, timeout, who.user, who.device, *owner, id)
                            .await?,
                        "this media is in no status update of that user you may see",
                    ),
                };
                if !allowed {
                    return Err(MediaError::Forbidden(refusal.into()));
                }
                self.grant(grant);
            }
        }
        let Some(blob) = self.inner.store.blob(&record.sha256).await? else {
            // The collector deleted the record (and its blob, its last ref) since it was
            // read: gone, as if it had been a moment earlier.
            if self.inner.store.media(id).await?.is_none() {
                return Err(not_found());
            }
            tracing::error!(media = id, "a media record without its blob");
            return Err(MediaError::Internal("media content missing".into()));
        };
        Ok(Download { record, blob })
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<Grant, Instant>> {
        // Each update is one insert, remove or clear: a poisoned map is still consistent.
        self.inner.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A right checked less than `GRANT_TTL` ago (a video's range requests ask once; a
    /// member removed meanwhile keeps it that long at most).
    fn granted(&self, grant: &Grant) -> bool {
        let mut grants = self.grants();
        match grants.get(grant) {
            Some(at) if at.elapsed() < GRANT_TTL => true,
            Some(_) => {
                grants.remove(grant);
                false
            }
            None => false,
        }
    }

    fn grant(&self, grant: Grant) {
        let mut grants = self.grants();
        if grants.len() >= MAX_GRANTS {
            grants.clear();
        }
        grants.insert(grant, Instant::now());
    }

    /// Does message `seq` of `conversation`, as `user` may read it, carry media `id`?
    async fn message_carries(
        &self,
        user: UserId,
        device: DeviceId,
        id: &str,
        conversation: &str,
        seq: u64,
    ) -> Result<bool, MediaError> {
        let Some(before) = seq.checked_add(1) else {
            return Ok(false);
        };
        if seq == 0 || conversation.is_empty() || conversation.len() > 128 {
            return Ok(false);
        }
        let request = bus::HistoryRequest {
            caller: Some(bus::Caller {
                user_id: user.get(),
                device_id: device.get(),
            }),
            history: Some(v1::History {
                conversation_id: conversation.to_owned(),
                before_seq: before,
                limit: 1,
            }),
        };
        let reply = self
            .inner
            .bus
            .request(
                &Subject::history(),
                Bytes::from(request.encode_to_vec()),
                self.inner.config.request_timeout,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "messages service did not answer a media access check");
                MediaError::Unavailable("messages service unavailable, retry".into())
            })?;
        let reply = bus::HistoryReply::decode(reply)
            .map_err(|e| MediaError::Internal(format!("undecodable history reply: {e}")))?;
        if let Some(error) = reply.error {
            return match ErrorCode::try_from(error.code) {
                Ok(ErrorCode::Unavailable) | Ok(ErrorCode::Internal) => Err(
                    MediaError::Unavailable("messages service unavailable, retry".into()),
                ),
                _ => Ok(false),
            };
        }
        Ok(reply.page.is_some_and(|page| {
            page.messages.iter().any(|m| {
                m.seq == seq && !m.withheld && m.media.as_ref().is_some_and(|r| r.id == id)
            })
        }))
    }

    /// `natter.media.describe`: may the caller share this media, and what is it. Pins
    /// the media (a message is about to reference it).
    pub async fn describe(&self, request: bus::MediaDescribe) -> bus::MediaDescribeReply {
        match self.describe_inner(request).await {
            Ok(media) => bus::MediaDescribeReply {
                media: Some(media),
                error: None,
            },
            Err(error) => bus::MediaDescribeReply {
                media: None,
                error: Some(error),
            },
        }
    }

    async fn describe_inner(&self, request: bus::MediaDescribe) -> Result<v1::MediaRef, v1::Error> {
        use natter_proto::error;
        let unavailable = |e: MediaError| match e {
            MediaError::Internal(m) => error(ErrorCode::Internal, m),
            other => error(ErrorCode::Unavailable, other.to_string()),
        };
        let caller = request
            .caller
            .ok_or_else(|| error(ErrorCode::InvalidArgument, "caller missing"))?;
        let (user, device) = (UserId(caller.user_id), DeviceId(caller.device_id));
        let wanted = request
            .media
            .ok_or_else(|| error(ErrorCode::InvalidArgument, "media missing"))?;
        let no_such = || error(ErrorCode::NotFound, "no such media");
        if !valid_id(&wanted.id) {
            return Err(no_such());
        }
        let record = self
            .inner
            .store
            .media(&wanted.id)
            .await
            .map_err(|e| unavailable(e.into()))?
            .ok_or_else(no_such)?;
        if record.owner != user {
            if wanted.forwarded_from_conversation.is_empty() {
                return Err(error(
                    ErrorCode::MediaRefused,
                    "this media was uploaded by someone else: forward it from a message you can read (forwarded_from_conversation, forwarded_from_seq)",
                ));
            }
            let carries = self
                .message_carries(
                    user,
                    device,
                    &wanted.id,
                    &wanted.forwarded_from_conversation,
                    wanted.forwarded_from_seq,
                )
                .await
                .map_err(unavailable)?;
            if !carries {
                return Err(error(
                    ErrorCode::MediaRefused,
                    "you cannot read a message with this media at forwarded_from",
                ));
            }
        }
        if !self
            .inner
            .store
            .mark_referenced(&wanted.id)
            .await
            .map_err(|e| unavailable(e.into()))?
        {
            return Err(no_such());
        }
        let blob = self
            .inner
            .store
            .blob(&record.sha256)
            .await
            .map_err(|e| unavailable(e.into()))?
            .ok_or_else(|| error(ErrorCode::Internal, "media content missing"))?;
        Ok(v1::MediaRef {
            id: record.id,
            kind: blob.kind,
            mime: blob.mime,
            size: blob.size,
            sha256: blob.sha256,
            width: blob.width,
            height: blob.height,
            duration_ms: blob.duration_ms,
            preview: blob.preview,
            ..v1::MediaRef::default()
        })
    }

    // ---- the admin API ---------------------------------------------------------------

    /// What `user` stores, for the admin API: the bytes counted against their quota and
    /// how many uploads (media records) count them.
    pub async fn admin_usage(&self, user: UserId) -> Result<(u64, u64), MediaError> {
        let store = &self.inner.store;
        let (bytes, files) = tokio::try_join!(store.usage(user), store.media_count(user))?;
        Ok((bytes, files))
    }

    /// Deletes every media record of `user` (the admin API deletes the user), referenced
    /// or not, [`GC_BATCH`] per round, and then, as the collector does, the objects of
    /// the blobs no other record holds. Messages carrying the user's media then find no
    /// such media. Returns what the records counted (bytes, records) before. Idempotent:
    /// a retry finishes what a failed (or timed out) call left.
    pub async fn delete_user_media(&self, user: UserId) -> Result<(u64, u64), MediaError> {
        let store = &self.inner.store;
        let bytes = store.usage(user).await?;
        let mut files: u64 = 0;
        loop {
            let round = store.delete_owner_media(user, GC_BATCH).await?;
            files = files.saturating_add(round.records as u64);
            for blob in &round.orphaned {
                self.inner
                    .objects
                    .delete_quietly(&[&blob.key, &blob.thumbnail_key])
                    .await;
            }
            if round.records < GC_BATCH {
                break;
            }
        }
        tracing::info!(user = user.get(), files, bytes, "a user's media deleted");
        Ok((bytes, files))
    }

    // ---- garbage collection ---------------------------------------------------------

    /// One round: unreferenced uploads past the grace period and resumable uploads past
    /// their TTL are deleted, with the objects nothing else needs. Returns (media
    /// records, uploads) deleted.
    pub async fn collect_garbage(&self) -> Result<(usize, usize), MediaError> {
        let store = &self.inner.store;
        let objects = &self.inner.objects;
        let now = now_ms();
        let grace = self.inner.config.gc_grace.as_millis() as u64;
        let mut records = 0;
        for record in store
            .unreferenced(now.saturating_sub(grace), GC_BATCH)
            .await?
        {
            if let Some(blob) = store.delete_unreferenced(&record.id).await? {
                objects
                    .delete_quietly(&[&blob.key, &blob.thumbnail_key])
                    .await;
            }
            records += 1;
        }
        let ttl = self.inner.config.upload_ttl.as_millis() as u64;
        let mut uploads = 0;
        for upload in store
            .stale_uploads(now.saturating_sub(ttl), GC_BATCH)
            .await?
        {
            // Parts written but not recorded (a crash mid-PATCH) are under the same
            // prefix.
            let mut keys: Vec<String> = upload.parts.iter().map(|p| p.key.clone()).collect();
            if let Ok(listed) = objects.list(&format!("parts/{}", upload.id)).await {
                keys.extend(listed);
            }
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            objects.delete_quietly(&keys).await;
            store.delete_upload(&upload.id).await?;
            uploads += 1;
        }
        Ok((records, uploads))
    }

    /// Runs the collector every `gc_interval` until `stop`.
    pub fn start_gc(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let media = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(media.inner.config.gc_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match media.collect_garbage().await {
                    Ok((0, 0)) => {}
                    Ok((records, uploads)) => {
                        tracing::info!(records, uploads, "media garbage collected");
                    }
                    Err(e) => tracing::warn!(error = %e, "media garbage collection failed"),
                }
            }
        })
    }
}

/// The media of a download, as JSON.
pub fn media_info(d: &Download) -> MediaInfo {
    info(&d.record, &d.blob, false)
}

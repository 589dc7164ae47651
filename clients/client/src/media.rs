//! Media over REST (docs/protocol.md "Media"): uploads, downloads and the caller's usage.
//!
//! - Uploads up to [`UploadOptions::single_shot_max`] (8 MiB by default) go in one
//!   `POST /v1/media`; larger ones are resumable (`POST /v1/media/uploads`, then `PATCH`
//!   chunks of [`UploadOptions::chunk_size`]). Data is read chunk by chunk, never whole.
//!   After a transport error or a 5xx the client asks `HEAD` where the upload stands and
//!   sends from there, a bounded number of times with backoff.
//! - The client computes the SHA-256 of what it uploads. A single-shot upload and a
//!   resumable upload from a file send it up front (the server refuses content that does
//!   not match); a resumable upload from a stream hashes while it reads and checks the
//!   server's answer.
//! - Downloads: whole ([`HttpClient::download_media`]), streamed to a file
//!   ([`HttpClient::download_media_to`], checked against the `ETag` hash) or a range.
//!   Someone else's media is reached through what carries it ([`MediaVia`]): a message,
//!   a profile photo or a status update.
//!
//! A media message is then sent with [`crate::Client::send_media`], usually with
//! [`MediaInfo::media_ref`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use natter_proto::{UserId, v1};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url, header};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    error::HttpError,
    http::{HttpClient, api_error},
};

/// One MiB.
pub const MIB: u64 = 1024 * 1024;
/// Uploads up to this size go in one request by default.
pub const DEFAULT_SINGLE_SHOT_MAX: u64 = 8 * MIB;
/// Chunk size of resumable uploads by default.
pub const DEFAULT_CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// The header of resumable uploads that says where an upload stands.
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// An uploaded media, as the server describes it (the JSON of `POST /v1/media`,
/// `.../complete` and `GET /v1/media/{id}/info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    pub id: String,
    /// `image`, `video`, `audio` or `document`.
    #[serde(default, deserialize_with = "or_default")]
    pub kind: String,
    /// The sniffed type, e.g. `image/png`.
    #[serde(default, deserialize_with = "or_default")]
    pub mime: String,
    #[serde(default, deserialize_with = "or_default")]
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    #[serde(default, deserialize_with = "or_default")]
    pub sha256: String,
    #[serde(default, deserialize_with = "or_default")]
    pub width: u32,
    #[serde(default, deserialize_with = "or_default")]
    pub height: u32,
    #[serde(default, deserialize_with = "or_default")]
    pub duration_ms: u32,
    /// Images: a small JPEG preview, base64 (see [`MediaInfo::preview_bytes`]).
    #[serde(default, deserialize_with = "or_default")]
    pub preview: String,
    #[serde(default, deserialize_with = "or_default")]
    pub filename: String,
    #[serde(default, deserialize_with = "or_default")]
    pub voice: bool,
}

/// `null` reads as the default, like a missing field.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// How a download reaches a media (docs/protocol.md, "Downloading"): the uploader needs
/// nothing; anyone else names what carries it. Every download helper takes
/// `impl Into<MediaVia>`, so `None`/`Some((conversation, seq))` still work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaVia<'a> {
    /// The caller's own upload: no query.
    #[default]
    Own,
    /// Message `seq` of conversation `.0`, which carries it (`?conversation=&seq=`).
    Message(&'a str, u64),
    /// This user's profile photo (`?profile=`).
    Profile(UserId),
    /// One of this user's status updates (`?status=`).
    Status(UserId),
}

impl<'a> From<Option<(&'a str, u64)>> for MediaVia<'a> {
    fn from(message: Option<(&'a str, u64)>) -> Self {
        message.map_or(MediaVia::Own, MediaVia::from)
    }
}

impl<'a> From<(&'a str, u64)> for MediaVia<'a> {
    fn from((conversation, seq): (&'a str, u64)) -> Self {
        MediaVia::Message(conversation, seq)
    }
}

/// `image` → `MediaKind::Image`; anything unknown is `Unspecified`.
pub fn media_kind(name: &str) -> v1::MediaKind {
    match name {
        "image" => v1::MediaKind::Image,
        "video" => v1::MediaKind::Video,
        "audio" => v1::MediaKind::Audio,
        "document" => v1::MediaKind::Document,
        _ => v1::MediaKind::Unspecified,
    }
}

/// `MediaKind::Image` → `image` (the REST spelling).
pub fn media_kind_name(kind: v1::MediaKind) -> &'static str {
    match kind {
        v1::MediaKind::Image => "image",
        v1::MediaKind::Video => "video",
        v1::MediaKind::Audio => "audio",
        v1::MediaKind::Document => "document",
        v1::MediaKind::Unspecified => "unknown",
    }
}

impl MediaInfo {
    pub fn media_kind(&self) -> v1::MediaKind {
        media_kind(&self.kind)
    }

    /// The decoded preview (a JPEG), if there is one.
    pub fn preview_bytes(&self) -> Option<Vec<u8>> {
        if self.preview.is_empty() {
            return None;
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.preview)
            .ok()
    }

    /// The whole description as a `MediaRef` (what receivers see), without a caption.
    pub fn to_media_ref(&self) -> v1::MediaRef {
        v1::MediaRef {
            id: self.id.clone(),
            kind: self.media_kind() as i32,
            mime: self.mime.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            width: self.width,
            height: self.height,
            duration_ms: self.duration_ms,
            preview: self.preview_bytes().map(Bytes::from).unwrap_or_default(),
            filename: self.filename.clone(),
            voice: self.voice,
            ..Default::default()
        }
    }

    /// What a Send carries for this media: its id, `caption`, and the file name and voice
    /// flag of the upload (the server fills in the rest).
    pub fn media_ref(&self, caption: &str) -> v1::MediaRef {
        v1::MediaRef {
            id: self.id.clone(),
            caption: caption.to_owned(),
            filename: self.filename.clone(),
            voice: self.voice,
            ..Default::default()
        }
    }
}

/// `GET /v1/media/usage`: bytes stored by the caller, and their quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUsage {
    pub used: u64,
    pub quota: u64,
}

/// Called with (bytes the server has, total bytes) as an upload advances.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How an upload is made. `Default` suits most uses.
#[derive(Clone)]
pub struct UploadOptions {
    /// The file's name as the user had it (kept with the media, at most 255 bytes).
    pub filename: Option<String>,
    /// Lowercase hex SHA-256 of the content, if the caller knows it (else computed).
    pub sha256: Option<String>,
    /// Ask for `kind=audio` (a WebM recording is audio, not video).
    pub kind_hint_audio: bool,
    /// A voice note recorded in the app.
    pub voice: bool,
    /// Bytes per `PATCH` of a resumable upload (8 MiB).
    pub chunk_size: usize,
    /// Larger uploads are resumable (8 MiB; the server's own limit is 16 MiB by default).
    pub single_shot_max: u64,
    /// Failed attempts in a row (transport errors, 5xx) before giving up (5).
    pub max_retries: u32,
    /// The first delay between attempts, doubling up to 5 s (250 ms).
    pub retry_delay: Duration,
    /// How long one request may take, its body included (5 minutes).
    pub request_timeout: Duration,
    pub progress: Option<Progress>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            filename: None,
            sha256: None,
            kind_hint_audio: false,
            voice: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            single_shot_max: DEFAULT_SINGLE_SHOT_MAX,
            max_retries: 5,
            retry_delay: Duration::from_millis(250),
            request_timeout: Duration::from_secs(300),
            progress: None,
        }
    }
}

impl std::fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadOptions")
            .field("filename", &self.filename)
            .field("sha256", &self.sha256)
            .field("kind_hint_audio", &self.kind_hint_audio)
            .field("voice", &self.voice)
            .field("chunk_size", &self.chunk_size)
            .field("single_shot_max", &self.single_shot_max)
            .field("max_retries", &self.max_retries)
            .field("retry_delay", &self.retry_delay)
            .field("request_timeout", &self.request_timeout)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl UploadOptions {
    /// Options for the file at `path`: its name as the filename.
    pub fn for_path(path: &Path) -> Self {
        Self {
            filename: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            ..Self::default()
        }
    }

    fn report(&self, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(done, total);
        }
    }
}

/// An upload or download failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The server refused, or could not be reached (after the retries).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Reading the upload or writing the download.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// What arrived is not what was sent (or what the server says it stored).
    #[error("SHA-256 mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    /// The call cannot be made (e.g. a stream shorter than its stated size).
    #[error("invalid media request: {0}")]
    Invalid(String),
}

impl MediaError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            MediaError::Http(e) => e.status(),
            _ => None,
        }
    }

    /// natter's error code string, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            MediaError::Http(e) => e.code(),
            _ => None,
        }
    }

    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MediaError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Part of a media, from a ranged download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    /// First and last byte (inclusive) of `bytes` in the media.
    pub start: u64,
    pub end: u64,
    /// The media's whole size.
    pub total: u64,
    pub bytes: Bytes,
}

/// Where `download_media_to` wrote, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    pub size: u64,
    /// The `Content-Type` the server sent (the sniffed type).
    pub mime: String,
    /// Lowercase hex SHA-256 of what was written.
    pub sha256: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether trying the same request again may work: no answer, or a 5xx.
fn transient(e: &HttpError) -> bool {
    match e {
        HttpError::Transport(_) => true,
        HttpError::Api { status, .. } | HttpError::Unexpected { status, .. } => *status >= 500,
        HttpError::Url(_) => false,
    }
}

/// Retries after transient failures, with doubling delays.
struct Retry {
    left: u32,
    delay: Duration,
    max: u32,
    first: Duration,
}

impl Retry {
    fn new(o: &UploadOptions) -> Self {
        Retry {
            left: o.max_retries,
            delay: o.retry_delay,
            max: o.max_retries,
            first: o.retry_delay,
        }
    }

    /// After a failure: `Err(e)` when it is final (not transient, or no retries left),
    /// else waits and returns `Ok`.
    async fn after(&mut self, e: HttpError) -> Result<(), HttpError> {
        if !transient(&e) {
            return Err(e);
        }
        tracing::debug!(error = %e, left = self.left, "media request failed");
        if self.wait().await { Ok(()) } else { Err(e) }
    }

    /// Spends one retry, waiting first; false when none is left.
    async fn wait(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }

    /// Progress was made: the next failure starts afresh.
    fn reset(&mut self) {
        self.left = self.max;
        self.delay = self.first;
    }
}

/// The body of an error response, as an error.
async fn fail(resp: Response) -> HttpError {
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(b) => api_error(status, &b),
        Err(e) => HttpError::Transport(e),
    }
}

async fn json_of<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, HttpError> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| HttpError::Unexpected {
        status,
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(200)
                .collect::<String>()
        ),
    })
}

fn offset_header(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(UPLOAD_OFFSET)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[derive(Deserialize)]
struct UploadCreated {
    upload_id: String,
    #[serde(default)]
    offset: u64,
}

/// What one `PATCH` came to.
enum Patched {
    /// The server has this many bytes.
    At(u64),
    /// 409 `offset_mismatch`: the server stands here.
    Mismatch(u64),
}

/// Parses `Content-Range: bytes a-b/total`.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

/// The `bytes=` value of a Range header: `start..=end`, or from `start` to the end.
pub fn range_header(start: u64, end: Option<u64>) -> String {
    match end {
        Some(end) => format!("bytes={start}-{end}"),
        None => format!("bytes={start}-"),
    }
}

/// Reads until `buf` is full or the reader ends; how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// SHA-256 of a file, read in 1 MiB pieces.
async fn hash_file(path: &Path) -> Result<String, MediaError> {
    let what = || format!("reading {}", path.display());
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| MediaError::io(what(), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| MediaError::io(what(), e))?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn check_hash(expected: &str, info: &MediaInfo) -> Result<(), MediaError> {
    if !info.sha256.is_empty() && !info.sha256.eq_ignore_ascii_case(expected) {
        return Err(MediaError::HashMismatch {
            expected: expected.to_owned(),
            actual: info.sha256.clone(),
        });
    }
    Ok(())
}

impl HttpClient {
    fn media_request(&self, method: Method, url: Url, token: &str) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(token)
    }

    /// `GET /v1/media/{id}` (and its `/thumbnail`, `/info`), with what carries the
    /// media when it is someone else's: `?conversation=&seq=` (a message), `?profile=`
    /// (a profile photo) or `?status=` (a status update).
    pub fn media_url<'a>(
        &self,
        id: &str,
        suffix: Option<&str>,
        via: impl Into<MediaVia<'a>>,
    ) -> Url {
        let mut segments = vec!["v1", "media", id];
        segments.extend(suffix);
        let mut url = self.url(&segments);
        match via.into() {
            MediaVia::Own => {}
            MediaVia::Message(conversation, seq) => {
                url.query_pairs_mut()
                    .append_pair("conversation", conversation)
                    .append_pair("seq", &seq.to_string());
            }
            MediaVia::Profile(user) => {
                url.query_pairs_mut()
                    .append_pair("profile", &user.get().to_string());
            }
            MediaVia::Status(user) => {
                url.query_pairs_mut()
                    .append_pair("status", &user.get().to_string());
            }
        }
        url
    }

    /// Uploads the file at `path`: in one request up to `single_shot_max`, else
    /// resumable, in chunks read from the file, with its SHA-256 (computed in a first
    /// pass unless `opts.sha256` has it) given up front so the server checks it.
    pub async fn upload_media(
        &self,
        token: &str,
        path: &Path,
        opts: &UploadOptions,
    ) -> Result<MediaInfo, MediaError> {
        let what = || format!("reading {}", path.display());
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| MediaError::io(what(), e))?
            .len();
        if size <= opts.single_shot_max {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| MediaError::io(what(), e))?;
            return self
                .upload_media_bytes(token, Bytes::from(data), opts)
                .await;
        }
        let sha256 = match &opts.sha256 {
            Some(s) => s.to_ascii_lowercase(),
            None => hash_file(path).await?,
        };
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| MediaError::io(what(), e))?;
        let info = self
            .upload_resumable(token, file, size, Some(&sha256), opts)
            .await?;
        check_hash(&sha256, &info)?;
        Ok(info)
    }

    /// Uploads `data` (in one request up to `single_shot_max`, else resumable).
    pub async fn upload_media_bytes(
        &self,
        token: &str,
        data: Bytes,
        opts: &UploadOptions,
    ) -> Result<MediaInfo, MediaError> {
        let sha256 = match &opts.sha256 {
            Some(s) => s.to_ascii_lowercase(),
            None => sha256_hex(&data),
        };
        let size = data.len() as u64;
        let info = if size <= opts.single_shot_max {
            self.upload_single(token, data, &sha256, opts).await?
        } else {
            self.upload_resumable(token, &data[..], size, Some(&sha256), opts)
                .await?
        };
        check_hash(&sha256, &info)?;
        Ok(info)
    }

    /// Uploads `size` bytes read from `reader`, which is read once, one chunk at a time
    /// (a chunk is kept until the server has it, so a resume never needs to rewind).
    /// The SHA-256 is computed while reading and checked against the server's answer
    /// (`opts.sha256`, if given, is sent up front).
    pub async fn upload_media_reader<R: AsyncRead + Unpin>(
        &self,
        token: &str,
        mut reader: R,
        size: u64,
        opts: &UploadOptions,
    ) -> Result<MediaInfo, MediaError> {
        if size <= opts.single_shot_max {
            let mut data = vec![0u8; size as usize];
            let n = read_full(&mut reader, &mut data)
                .await
                .map_err(|e| MediaError::io("reading the upload", e))?;
            if n != data.len() {
                return Err(MediaError::Invalid(format!(
                    "the data ended after {n} of {size} bytes"
                )));
            }
            return self
                .upload_media_bytes(token, Bytes::from(data), opts)
                .await;
        }
        let given = opts.sha256.as_ref().map(|s| s.to_ascii_lowercase());
        self.upload_resumable(token, reader, size, given.as_deref(), opts)
            .await
    }

    /// `POST /v1/media?filename=&sha256=&kind=&voice=` with the bytes as the body.
    async fn upload_single(
        &self,
        token: &str,
        data: Bytes,
        sha256: &str,
        opts: &UploadOptions,
    ) -> Result<MediaInfo, MediaError> {
        let mut url = self.url(&["v1", "media"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(f) = &opts.filename {
                q.append_pair("filename", f);
            }
            q.append_pair("sha256", sha256);
            if opts.kind_hint_audio {
                q.append_pair("kind", "audio");
            }
            if opts.voice {
                q.append_pair("voice", "true");
            }
        }
        let total = data.len() as u64;
        let mut retry = Retry::new(opts);
        loop {
            let sent = self
                .media_request(Method::POST, url.clone(), token)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .timeout(opts.request_timeout)
                .body(data.clone())
                .send()
                .await;
            let result = match sent {
                Ok(resp) if resp.status().is_success() => json_of::<MediaInfo>(resp).await,
                Ok(resp) => Err(fail(resp).await),
                Err(e) => Err(HttpError::Transport(e)),
            };
            match result {
                Ok(info) => {
                    opts.report(total, total);
                    return Ok(info);
                }
                Err(e) => retry.after(e).await?,
            }
        }
    }

    /// A resumable upload of `size` bytes from `reader`, hashed as it is read.
    async fn upload_resumable<R: AsyncRead + Unpin>(
        &self,
        token: &str,
        mut reader: R,
        size: u64,
        sha256: Option<&str>,
        opts: &UploadOptions,
    ) -> Result<MediaInfo, MediaError> {
        let chunk_size = opts.chunk_size.max(1);
        let mut body = serde_json::json!({ "size": size });
        if let Some(s) = sha256 {
            body["sha256"] = s.into();
        }
        if let Some(f) = &opts.filename {
            body["filename"] = f.as_str().into();
        }
        if opts.kind_hint_audio {
            body["kind"] = "audio".into();
        }
        if opts.voice {
            body["voice"] = true.into();
        }
        let mut retry = Retry::new(opts);
        let created: UploadCreated = loop {
            let sent = self
                .media_request(Method::POST, self.url(&["v1", "media", "uploads"]), token)
                .json(&body)
                .send()
                .await;
            let result = match sent {
                Ok(resp) if resp.status().is_success() => json_of(resp).await,
                Ok(resp) => Err(fail(resp).await),
                Err(e) => Err(HttpError::Transport(e)),
            };
            match result {
                Ok(c) => break c,
                Err(e) => retry.after(e).await?,
            }
        };
        let id = created.upload_id;
        let result = self
            .send_chunks(
                token,
                &id,
                &mut reader,
                size,
                created.offset,
                chunk_size,
                opts,
            )
            .await;
        let hash = match result {
            Ok(h) => h,
            Err(e) => {
                // Retries cannot help: free the server's parts at once (best effort).
                if !matches!(&e, MediaError::Http(h) if transient(h)) {
                    let _ = self
                        .media_request(Method::DELETE, self.upload_url(&id, None), token)
                        .send()
                        .await;
                }
                return Err(e);
            }
        };
        retry.reset();
        let info: MediaInfo = loop {
            let sent = self
                .media_request(Method::POST, self.upload_url(&id, Some("complete")), token)
                .timeout(opts.request_timeout)
                .send()
                .await;
            let result = match sent {
                Ok(resp) if resp.status().is_success() => json_of(resp).await,
                Ok(resp) => Err(fail(resp).await),
                Err(e) => Err(HttpError::Transport(e)),
            };
            match result {
                Ok(info) => break info,
                Err(e) => retry.after(e).await?,
            }
        };
        check_hash(&hash, &info)?;
        Ok(info)
    }

    fn upload_url(&self, id: &str, suffix: Option<&str>) -> Url {
        let mut segments = vec!["v1", "media", "uploads", id];
        segments.extend(suffix);
        self.url(&segments)
    }

    /// Sends everything from `offset` on, one chunk at a time; the SHA-256 of it all.
    #[allow(clippy::too_many_arguments)]
    async fn send_chunks<R: AsyncRead + Unpin>(
        &self,
        token: &str,
        id: &str,
        reader: &mut R,
        size: u64,
        mut offset: u64,
        chunk_size: usize,
        opts: &UploadOptions,
    ) -> Result<String, MediaError> {
        if offset != 0 {
            return Err(MediaError::Invalid(format!(
                "a new upload starts at offset {offset}"
            )));
        }
        let mut hasher = Sha256::new();
        // The chunk being sent: bytes [chunk_start, chunk_start + chunk.len()).
        let mut chunk = Bytes::new();
        let mut chunk_start = 0u64;
        let mut retry = Retry::new(opts);
        opts.report(0, size);
        while offset < size {
            let chunk_end = chunk_start + chunk.len() as u64;
            if offset == chunk_end {
                // The server has the whole chunk: read the next one.
                let want = (size - offset).min(chunk_size as u64) as usize;
                let mut buf = vec![0u8; want];
                let n = read_full(reader, &mut buf)
                    .await
                    .map_err(|e| MediaError::io("reading the upload", e))?;
                if n != want {
                    return Err(MediaError::Invalid(format!(
                        "the data ended after {} of {size} bytes",
                        offset + n as u64
                    )));
                }
                hasher.update(&buf);
                chunk_start = offset;
                chunk = Bytes::from(buf);
            } else if offset < chunk_start || offset > chunk_end {
                // Only the current chunk is at hand: the server cannot have lost bytes it
                // confirmed, nor have more than it was sent.
                return Err(MediaError::Http(HttpError::Unexpected {
                    status: 200,
                    detail: format!(
                        "the upload stands at {offset}, outside the chunk {chunk_start}..{chunk_end}"
                    ),
                }));
            }
            let part = chunk.slice((offset - chunk_start) as usize..);
            match self.patch(token, id, offset, part, opts).await {
                Ok(Patched::At(at)) if at > offset => {
                    offset = at;
                    retry.reset();
                    opts.report(offset, size);
                }
                Ok(Patched::At(at)) | Ok(Patched::Mismatch(at)) => {
                    // Sent from the server's offset next; a retry is spent, so that a
                    // server that never advances cannot keep us here.
                    if !retry.wait().await {
                        return Err(MediaError::Http(HttpError::Unexpected {
                            status: 409,
                            detail: format!("the upload does not advance from {at}"),
                        }));
                    }
                    offset = at;
                }
                Err(e) => {
                    retry.after(e).await?;
                    offset = self.upload_offset(token, id, &mut retry).await?;
                }
            }
        }
        Ok(hex(&hasher.finalize()))
    }

    /// One `PATCH` with `Upload-Offset: offset`.
    async fn patch(
        &self,
        token: &str,
        id: &str,
        offset: u64,
        part: Bytes,
        opts: &UploadOptions,
    ) -> Result<Patched, HttpError> {
        let sent = part.len() as u64;
        let resp = self
            .media_request(Method::PATCH, self.upload_url(id, None), token)
            .header(UPLOAD_OFFSET, offset.to_string())
            .header(header::CONTENT_TYPE, "application/offset+octet-stream")
            .timeout(opts.request_timeout)
            .body(part)
            .send()
            .await?;
        let status = resp.status();
        if status.is_success() {
            // A server that leaves the header out took everything.
            return Ok(Patched::At(offset_header(&resp).unwrap_or(offset + sent)));
        }
        if status == StatusCode::CONFLICT
            && let Some(at) = offset_header(&resp)
        {
            let e = fail(resp).await;
            if e.code() != Some("incomplete") {
                return Ok(Patched::Mismatch(at));
            }
            return Err(e);
        }
        Err(fail(resp).await)
    }

    /// `HEAD /v1/media/uploads/{id}`: where the upload stands (retried like the rest).
    async fn upload_offset(
        &self,
        token: &str,
        id: &str,
        retry: &mut Retry,
    ) -> Result<u64, HttpError> {
        loop {
            let result = match self
                .media_request(Method::HEAD, self.upload_url(id, None), token)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    offset_header(&resp).ok_or_else(|| HttpError::Unexpected {
                        status: resp.status().as_u16(),
                        detail: "no Upload-Offset header".into(),
                    })
                }
                // A HEAD answer has no body: the status is all there is.
                Ok(resp) => Err(HttpError::Api {
                    status: resp.status().as_u16(),
                    code: if resp.status() == StatusCode::NOT_FOUND {
                        "not_found".into()
                    } else {
                        format!("http_{}", resp.status().as_u16())
                    },
                    message: "asking where the upload stands".into(),
                }),
                Err(e) => Err(HttpError::Transport(e)),
            };
            match result {
                Ok(at) => return Ok(at),
                Err(e) => retry.after(e).await?,
            }
        }
    }

    /// `DELETE /v1/media/uploads/{id}`: abandons a resumable upload.
    pub async fn abandon_upload(&self, token: &str, upload_id: &str) -> Result<(), HttpError> {
        let resp = self
            .media_request(Method::DELETE, self.upload_url(upload_id, None), token)
            .send()
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(fail(resp).await)
        }
    }

    async fn media_get(
        &self,
        token: &str,
        url: Url,
        range: Option<String>,
    ) -> Result<Response, HttpError> {
        let mut req = self
            .media_request(Method::GET, url, token)
            // Whole videos take a while: no 30 s cap on downloads.
            .timeout(Duration::from_secs(6 * 3600));
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let resp = req.send().await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(fail(resp).await)
        }
    }

    /// The whole media. `via`: what carries it ([`MediaVia`]; needed for media someone
    /// else uploaded), e.g. `Some((conversation, seq))` of a message.
    pub async fn download_media(
        &self,
        token: &str,
        id: &str,
        via: impl Into<MediaVia<'_>>,
    ) -> Result<Bytes, HttpError> {
        let resp = self
            .media_get(token, self.media_url(id, None, via), None)
            .await?;
        Ok(resp.bytes().await?)
    }

    /// Part of the media: bytes `start..=end` (`end` `None`: to the end). 416
    /// (`HttpError::Api`/`Unexpected` with that status) for a range outside the media.
    pub async fn download_media_range(
        &self,
        token: &str,
        id: &str,
        via: impl Into<MediaVia<'_>>,
        start: u64,
        end: Option<u64>,
    ) -> Result<MediaRange, HttpError> {
        let resp = self
            .media_get(
                token,
                self.media_url(id, None, via),
                Some(range_header(start, end)),
            )
            .await?;
        let status = resp.status();
        let range = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range);
        let bytes = resp.bytes().await?;
        Ok(match (status, range) {
            (StatusCode::PARTIAL_CONTENT, Some((start, end, total))) => MediaRange {
                start,
                end,
                total,
                bytes,
            },
            (StatusCode::PARTIAL_CONTENT, None) => {
                return Err(HttpError::Unexpected {
                    status: 206,
                    detail: "no Content-Range".into(),
                });
            }
            // The whole media (the server ignored the range).
            _ => MediaRange {
                start: 0,
                end: (bytes.len() as u64).saturating_sub(1),
                total: bytes.len() as u64,
                bytes,
            },
        })
    }

    /// Streams the media into the file at `path` (through `<path>.part`, renamed when
    /// complete), checking its SHA-256 against the server's `ETag`.
    pub async fn download_media_to(
        &self,
        token: &str,
        id: &str,
        via: impl Into<MediaVia<'_>>,
        path: &Path,
    ) -> Result<Downloaded, MediaError> {
        let mut resp = self
            .media_get(token, self.media_url(id, None, via), None)
            .await?;
        let mime = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.trim_start_matches("W/")
                    .trim_matches('"')
                    .to_ascii_lowercase()
            })
            .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let what = || format!("writing {}", part.display());
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| MediaError::io(what(), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let written: Result<(), MediaError> = async {
            while let Some(piece) = resp.chunk().await.map_err(HttpError::Transport)? {
                hasher.update(&piece);
                size += piece.len() as u64;
                file.write_all(&piece)
                    .await
                    .map_err(|e| MediaError::io(what(), e))?;
            }
            file.flush().await.map_err(|e| MediaError::io(what(), e))?;
            file.sync_all()
                .await
                .map_err(|e| MediaError::io(what(), e))?;
            Ok(())
        }
        .await;
        drop(file);
        let sha256 = hex(&hasher.finalize());
        let checked = written.and_then(|()| match etag {
            Some(expected) if expected != sha256 => Err(MediaError::HashMismatch {
                expected,
                actual: sha256.clone(),
            }),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| MediaError::io(format!("renaming to {}", path.display()), e))?;
        Ok(Downloaded {
            path: path.to_owned(),
            size,
            mime,
            sha256,
        })
    }

    /// `GET /v1/media/{id}/info`.
    pub async fn media_info(
        &self,
        token: &str,
        id: &str,
        via: impl Into<MediaVia<'_>>,
    ) -> Result<MediaInfo, HttpError> {
        let resp = self
            .media_get(token, self.media_url(id, Some("info"), via), None)
            .await?;
        json_of(resp).await
    }

    /// `GET /v1/media/{id}/thumbnail` (images: a JPEG of at most 320 px).
    pub async fn media_thumbnail(
        &self,
        token: &str,
        id: &str,
        via: impl Into<MediaVia<'_>>,
    ) -> Result<Bytes, HttpError> {
        let resp = self
            .media_get(token, self.media_url(id, Some("thumbnail"), via), None)
            .await?;
        Ok(resp.bytes().await?)
    }

    /// `GET /v1/media/usage`: what the caller stores, and their quota.
    pub async fn media_usage(&self, token: &str) -> Result<MediaUsage, HttpError> {
        let resp = self
            .media_get(token, self.url(&["v1", "media", "usage"]), None)
            .await?;
        json_of(resp).await
    }
}

/// A file name for a download: the sender's (its last path component, without
/// characters file systems refuse), else `<id>.<extension of the type>`.
pub fn download_name(m: &v1::MediaRef) -> String {
    let given: String = m
        .filename
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|'))
        .collect();
    let given = given.trim().trim_start_matches('.');
    if !given.is_empty() {
        return given.to_owned();
    }
    let id: String =
        m.id.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .collect();
    let id = if id.is_empty() { "media".into() } else { id };
    match extension(&m.mime) {
        Some(ext) => format!("{id}.{ext}"),
        None => id,
    }
}

/// The usual extension of a MIME type natter accepts.
pub fn extension(mime: &str) -> Option<&'static str> {
    let base = mime.split(';').next().unwrap_or("").trim();
    Some(match base {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        "video/quicktime" => "mov",
        "video/webm" => "webm",
        "video/x-matroska" => "mkv",
        "video/3gpp" => "3gp",
        "audio/mpeg" => "mp3",
        "audio/ogg" => "ogg",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => "m4a",
        "audio/aac" => "aac",
        "audio/amr" => "amr",
        "audio/wav" | "audio/x-wav" | "audio/vnd.wave" => "wav",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/webm" => "webm",
        "application/pdf" => "pdf",
        "application/zip" => "zip",
        "application/rtf" | "text/rtf" => "rtf",
        "application/gzip" => "gz",
        "application/x-7z-compressed" => "7z",
        "application/x-tar" => "tar",
        "text/plain" => "txt",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => "pptx",
        "application/epub+zip" => "epub",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_reads_the_servers_json() {
        let info: MediaInfo = serde_json::from_str(
            r#"{"id":"k3F9yQ2mT8bWc1xZ0aP7dA","kind":"image","mime":"image/jpeg","size":183204,
                "sha256":"9f86","width":1600,"height":1200,"duration_ms":0,
                "preview":"AAEC","filename":null,"voice":false,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(info.media_kind(), v1::MediaKind::Image);
        assert_eq!(info.filename, "");
        assert_eq!(info.preview_bytes(), Some(vec![0, 1, 2]));
        let r = info.to_media_ref();
        assert_eq!((r.width, r.height, r.size), (1600, 1200, 183204));
        assert_eq!(r.kind, v1::MediaKind::Image as i32);
        assert_eq!(&r.preview[..], &[0, 1, 2]);
        let send = info.media_ref("look");
        assert_eq!(send.id, info.id);
        assert_eq!(send.caption, "look");
        assert_eq!(send.size, 0, "the server fills in the rest");
    }

    #[test]
    fn urls_name_what_carries_the_media() {
        let http = HttpClient::new("http://natter.test/").unwrap();
        let url = |suffix, via: MediaVia<'_>| http.media_url("m1", suffix, via).to_string();
        assert_eq!(url(None, MediaVia::Own), "http://natter.test/v1/media/m1");
        assert_eq!(
            http.media_url("m1", None, Some(("d.1.2", 7))).to_string(),
            "http://natter.test/v1/media/m1?conversation=d.1.2&seq=7"
        );
        assert_eq!(
            url(Some("thumbnail"), MediaVia::Profile(UserId(42))),
            "http://natter.test/v1/media/m1/thumbnail?profile=42"
        );
        assert_eq!(
            url(Some("info"), MediaVia::Status(UserId(43))),
            "http://natter.test/v1/media/m1/info?status=43"
        );
    }

    #[test]
    fn ranges_and_names() {
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(content_range("bytes */100"), None);
        assert_eq!(range_header(5, None), "bytes=5-");
        assert_eq!(range_header(5, Some(9)), "bytes=5-9");
        let m = |filename: &str, mime: &str| v1::MediaRef {
            id: "abc_-1".into(),
            filename: filename.into(),
            mime: mime.into(),
            ..Default::default()
        };
        assert_eq!(
            download_name(&m("report.pdf", "application/pdf")),
            "report.pdf"
        );
        assert_eq!(
            download_name(&m("../../etc/passwd", "text/plain")),
            "passwd"
        );
        assert_eq!(download_name(&m("..", "image/png")), "abc_-1.png");
        assert_eq!(download_name(&m("", "image/png")), "abc_-1.png");
        assert_eq!(download_name(&m("", "application/x-unknown")), "abc_-1");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

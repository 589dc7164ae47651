//! The REST endpoints under `/v1/media` (docs/protocol.md, "Media"). Upload bodies are
//! taken as streams (no body limit layer: the service counts bytes itself, per kind);
//! small JSON bodies are read with a 16 KiB cap.

use std::ops::Range;

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use natter_proto::UserId;
use natter_sessions::{
    Identity,
    openapi::{Binary, ErrorBody},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    Media,
    service::{Download, MediaError, MediaInfo, UploadInfo, UploadOptions, Variant, Via},
};

const JSON_MAX_BYTES: usize = 16 << 10;
const UPLOAD_OFFSET: &str = "upload-offset";
const UPLOAD_LENGTH: &str = "upload-length";

/// The `/v1/media` routes, each registered with its OpenAPI operation (`routes!` takes
/// the path and method from the handler's `#[utoipa::path]`, so a route cannot be added
/// here without its documentation).
fn routes() -> OpenApiRouter<Media> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(usage))
        .routes(routes!(create_upload))
        .routes(routes!(
            upload_state,
            upload_state_head,
            append,
            delete_upload
        ))
        .routes(routes!(complete))
        .routes(routes!(download))
        .routes(routes!(thumbnail))
        .routes(routes!(info))
}

/// The `/v1/media` routes.
pub fn router(media: Media) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        // Upload bodies are streamed and counted by the service against each kind's
        // limit; the JSON bodies are read with their own cap.
        .layer(DefaultBodyLimit::disable())
        .with_state(media)
}

/// The OpenAPI document of [`router`]'s routes (security schemes `bearer` and
/// `access_token` are declared where the documents are merged).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

impl IntoResponse for MediaError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            MediaError::OffsetMismatch { offset } | MediaError::Incomplete { offset, .. } => {
                headers.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
            }
            MediaError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            MediaError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[derive(Debug, Deserialize, Default)]
struct TokenQuery {
    access_token: Option<String>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// The file's name, kept for receivers (documents are downloaded under it).
    filename: Option<String>,
    /// Lowercase hex SHA-256 of the content: checked (422 if it differs).
    sha256: Option<String>,
    /// `audio` makes a WebM audio-only upload an audio file rather than a video.
    kind: Option<String>,
    /// A voice note.
    voice: Option<bool>,
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, MediaError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| MediaError::BadRequest("bad Content-Length".into())),
    }
}

/// A query string as `Query<T>` reads it, refused like every other bad input: a 400
/// with a JSON `invalid_argument` (axum's own rejection is plain text).
struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = MediaError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, MediaError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| MediaError::BadRequest(e.body_text()))
    }
}

/// The caller of a request, authenticated by its bearer token or `?access_token=`
/// (which the web client's `<img>` and `<video>` use: they cannot set headers).
struct Caller(Identity);

impl FromRequestParts<Media> for Caller {
    type Rejection = MediaError;

    async fn from_request_parts(parts: &mut Parts, media: &Media) -> Result<Self, MediaError> {
        let Query(q) = Query::<TokenQuery>::from_request_parts(parts, media)
            .await
            .map_err(|e| MediaError::BadRequest(e.body_text()))?;
        let who = media
            .authenticate(&parts.headers, q.access_token.as_deref())
            .await?;
        Ok(Caller(who))
    }
}

/// The body of `GET /v1/media/usage`.
#[derive(Serialize, ToSchema)]
struct Usage {
    /// Bytes the caller's uploads take (the same content counted once).
    used: u64,
    /// Bytes the caller may store.
    quota: u64,
}

/// The caller's storage use.
#[utoipa::path(
    get,
    path = "/v1/media/usage",
    operation_id = "media_usage",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(TokenParam),
    responses(
        (status = 200, description = "Bytes used and allowed", body = Usage),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 503, description = "A store did not answer; retry", body = ErrorBody),
    )
)]
async fn usage(State(media): State<Media>, Caller(who): Caller) -> Result<Response, MediaError> {
    let (used, quota) = media.usage(&who).await?;
    Ok(Json(Usage { used, quota }).into_response())
}

/// `?access_token=`: the bearer token for clients that cannot set headers. Documented
/// on every media operation (the `Caller` extractor reads it).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation only
struct TokenParam {
    /// The access token, instead of `Authorization: Bearer` (for `<img>`, `<video>`).
    access_token: Option<String>,
}

/// Uploads a file in one request (up to the single-shot limit, 16 MiB by default). The
/// type is sniffed from the content; the answer is the media to send in a message.
#[utoipa::path(
    post,
    path = "/v1/media",
    operation_id = "upload_media",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(UploadQuery, TokenParam),
    request_body(content = Binary, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
        (status = 201, description = "Stored (the same content uploaded again answers the same id)", body = MediaInfo),
        (status = 400, description = "A malformed query, header or hash", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 413, description = "Larger than its kind's limit or the single-shot limit", body = ErrorBody),
        (status = 415, description = "A type natter does not accept, or an image that does not decode", body = ErrorBody),
        (status = 422, description = "The content's SHA-256 is not the `sha256` given", body = ErrorBody),
        (status = 429, description = "The upload would exceed the caller's quota", body = ErrorBody),
        (status = 503, description = "The object store or a service did not answer; retry", body = ErrorBody),
    )
)]
async fn upload(
    State(media): State<Media>,
    Params(q): Params<UploadQuery>,
    Caller(who): Caller,
    request: Request,
) -> Result<Response, MediaError> {
    let headers = request.headers().clone();
    let options = UploadOptions {
        filename: q.filename.unwrap_or_default(),
        sha256: q.sha256,
        kind_hint: q.kind.unwrap_or_default(),
        voice: q.voice.unwrap_or(false),
    };
    let length = content_length(&headers)?;
    let body = request.into_body().into_data_stream();
    let info = media.upload(&who, options, length, body).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// The body of `POST /v1/media/uploads`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUpload {
    /// The file's size in bytes.
    size: u64,
    /// Lowercase hex SHA-256 of the content: checked at completion (422 if it differs);
    /// content natter already holds completes without its bytes.
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    filename: Option<String>,
    /// `audio` makes a WebM audio-only upload an audio file.
    #[serde(default)]
    kind: Option<String>,
    /// A voice note.
    #[serde(default)]
    voice: Option<bool>,
}

/// Starts a resumable upload: send the bytes with `PATCH`, then `complete` it.
#[utoipa::path(
    post,
    path = "/v1/media/uploads",
    operation_id = "create_upload",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(TokenParam),
    request_body = CreateUpload,
    responses(
        (status = 201, description = "Created, at offset 0", body = UploadInfo,
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64))),
        (status = 400, description = "A malformed body", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 413, description = "Larger than its kind's limit", body = ErrorBody),
        (status = 429, description = "Over the quota, or 8 uploads already open", body = ErrorBody),
        (status = 503, description = "A store did not answer; retry", body = ErrorBody),
    )
)]
async fn create_upload(
    State(media): State<Media>,
    Caller(who): Caller,
    request: Request,
) -> Result<Response, MediaError> {
    let bytes = axum::body::to_bytes(request.into_body(), JSON_MAX_BYTES)
        .await
        .map_err(|_| {
            MediaError::BadRequest(format!(
                "the body must be JSON of at most {JSON_MAX_BYTES} bytes"
            ))
        })?;
    let create: CreateUpload = serde_json::from_slice(&bytes)
        .map_err(|e| MediaError::BadRequest(format!("bad JSON: {e}")))?;
    let options = UploadOptions {
        filename: create.filename.unwrap_or_default(),
        sha256: create.sha256,
        kind_hint: create.kind.unwrap_or_default(),
        voice: create.voice.unwrap_or(false),
    };
    let state = media.create_upload(&who, create.size, options).await?;
    Ok((StatusCode::CREATED, upload_headers(&state), Json(state)).into_response())
}

fn upload_headers(state: &UploadInfo) -> [(&'static str, HeaderValue); 2] {
    [
        (UPLOAD_OFFSET, HeaderValue::from(state.offset)),
        (UPLOAD_LENGTH, HeaderValue::from(state.size)),
    ]
}

/// Where a resumable upload stands: its state as JSON, and in headers like `HEAD`.
#[utoipa::path(
    get,
    path = "/v1/media/uploads/{id}",
    operation_id = "get_upload",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(("id" = String, Path, description = "The `upload_id`"), TokenParam),
    responses(
        (status = 200, description = "The upload's state", body = UploadInfo,
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64))),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 404, description = "No such upload (or not the caller's)", body = ErrorBody),
        (status = 503, description = "A store did not answer; retry", body = ErrorBody),
    )
)]
async fn upload_state(
    State(media): State<Media>,
    Path(id): Path<String>,
    Caller(who): Caller,
    method: Method,
) -> Result<Response, MediaError> {
    let state = media.upload_state(&who, &id).await?;
    let mut response = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        Json(&state).into_response()
    };
    for (name, value) in upload_headers(&state) {
        response.headers_mut().insert(name, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Where a resumable upload stands, in headers only: after a dropped connection, the
/// offset to resume from.
#[utoipa::path(
    head,
    path = "/v1/media/uploads/{id}",
    operation_id = "head_upload",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(("id" = String, Path, description = "The `upload_id`"), TokenParam),
    responses(
        (status = 200, description = "The upload's state, no body",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64))),
        (status = 401, description = "No token, a bad or expired one, a logged-out device"),
        (status = 404, description = "No such upload (or not the caller's)"),
        (status = 503, description = "A store did not answer; retry"),
    )
)]
async fn upload_state_head(
    media: State<Media>,
    id: Path<String>,
    who: Caller,
) -> Result<Response, MediaError> {
    upload_state(media, id, who, Method::HEAD).await
}

/// Appends the next bytes of a resumable upload at `Upload-Offset`. A request cut off
/// mid-body keeps the bytes that arrived: ask `HEAD` for the offset and resume.
#[utoipa::path(
    patch,
    path = "/v1/media/uploads/{id}",
    operation_id = "append_upload",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(
        ("id" = String, Path, description = "The `upload_id`"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start: the upload's offset"),
        TokenParam,
    ),
    request_body(content = Binary, content_type = "application/octet-stream", description = "The next bytes"),
    responses(
        (status = 204, description = "Appended", headers(("Upload-Offset" = u64, description = "The new offset"), ("Upload-Length" = u64))),
        (status = 400, description = "No or a malformed `Upload-Offset`", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 404, description = "No such upload (or not the caller's)", body = ErrorBody),
        (status = 409, description = "`offset_mismatch`: the offset is not where the upload stands (header `Upload-Offset` = the server's)", body = ErrorBody,
            headers(("Upload-Offset" = u64))),
        (status = 413, description = "More bytes than the announced size", body = ErrorBody),
        (status = 415, description = "The first bytes are of a type natter does not accept", body = ErrorBody),
        (status = 503, description = "The object store did not answer; retry", body = ErrorBody),
    )
)]
async fn append(
    State(media): State<Media>,
    Path(id): Path<String>,
    Caller(who): Caller,
    request: Request,
) -> Result<Response, MediaError> {
    let headers = request.headers().clone();
    let offset: u64 = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            MediaError::BadRequest("the Upload-Offset header is missing or not a number".into())
        })?;
    let length = content_length(&headers)?;
    let body = request.into_body().into_data_stream();
    // Its own task: if the client goes away mid-body, hyper drops this handler, but the
    // bytes that arrived must still be recorded so the client can resume after them.
    let task = tokio::spawn(async move { media.append(&who, &id, offset, length, body).await });
    let state = task
        .await
        .map_err(|e| MediaError::Internal(format!("upload task failed: {e}")))??;
    Ok((StatusCode::NO_CONTENT, upload_headers(&state)).into_response())
}

/// Abandons a resumable upload; its parts are deleted.
#[utoipa::path(
    delete,
    path = "/v1/media/uploads/{id}",
    operation_id = "delete_upload",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(("id" = String, Path, description = "The `upload_id`"), TokenParam),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 404, description = "No such upload (or not the caller's)", body = ErrorBody),
        (status = 503, description = "A store did not answer; retry", body = ErrorBody),
    )
)]
async fn delete_upload(
    State(media): State<Media>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, MediaError> {
    media.delete_upload(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Completes a resumable upload once every byte is in: the answer is the media. A retry
/// after a lost answer gets the same answer for an hour.
#[utoipa::path(
    post,
    path = "/v1/media/uploads/{id}/complete",
    operation_id = "complete_upload",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(("id" = String, Path, description = "The `upload_id`"), TokenParam),
    responses(
        (status = 201, description = "Stored", body = MediaInfo),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 404, description = "No such upload (or not the caller's)", body = ErrorBody),
        (status = 409, description = "`incomplete`: bytes are missing (header `Upload-Offset`)", body = ErrorBody,
            headers(("Upload-Offset" = u64))),
        (status = 415, description = "A type natter does not accept, or an image that does not decode", body = ErrorBody),
        (status = 422, description = "The content's SHA-256 is not the `sha256` given", body = ErrorBody),
        (status = 429, description = "The upload would exceed the caller's quota", body = ErrorBody),
        (status = 503, description = "The object store or a service did not answer; retry", body = ErrorBody),
    )
)]
async fn complete(
    State(media): State<Media>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, MediaError> {
    // Its own task: a client that gives up waiting must not leave a half-finished
    // completion behind.
    let task = tokio::spawn(async move { media.complete(&who, &id).await });
    let info = task
        .await
        .map_err(|e| MediaError::Internal(format!("completion task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// How the caller reaches someone else's media: at most one of `conversation` with
/// `seq`, `profile`, `status` (none for the caller's own uploads).
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    /// A conversation (`d.<user>.<user>` or `g.<group>`) whose message `seq` carries
    /// this media.
    conversation: Option<String>,
    /// The message's sequence number in `conversation`.
    seq: Option<u64>,
    /// A user whose profile photo this media is.
    profile: Option<u64>,
    /// A user whose status update carries this media.
    status: Option<u64>,
}

impl DownloadQuery {
    /// How the caller reaches the media: nothing (their own upload) or exactly one of
    /// conversation and seq, profile, status.
    fn via(&self) -> Result<Option<Via>, MediaError> {
        let bad = |m: &str| Err(MediaError::BadRequest(m.into()));
        let user = |raw: u64| {
            UserId::new(raw).map_err(|_| MediaError::BadRequest("a user id is never 0".into()))
        };
        let message = match (&self.conversation, self.seq) {
            (Some(c), Some(s)) => Some(Via::Message {
                conversation: c.clone(),
                seq: s,
            }),
            (None, None) => None,
            _ => return bad("give both conversation and seq, or neither"),
        };
        let profile = self.profile.map(user).transpose()?.map(Via::Profile);
        let status = self.status.map(user).transpose()?.map(Via::Status);
        let mut given = [message, profile, status].into_iter().flatten();
        let via = given.next();
        if given.next().is_some() {
            return bad("give only one of conversation and seq, profile or status");
        }
        Ok(via)
    }
}

async fn opened(
    media: &Media,
    id: &str,
    q: &DownloadQuery,
    who: &Identity,
) -> Result<Download, MediaError> {
    let via = q.via()?;
    media.open(who, id, via).await
}

/// The media as JSON (the same checks as a download).
#[utoipa::path(
    get,
    path = "/v1/media/{id}/info",
    operation_id = "media_info",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(("id" = String, Path, description = "The media's id"),
        DownloadQuery, TokenParam),
    responses(
        (status = 200, description = "The media", body = MediaInfo),
        (status = 400, description = "More than one way to the media, or half of `conversation` and `seq`", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 403, description = "The caller may not see this media that way", body = ErrorBody),
        (status = 404, description = "The id names nothing", body = ErrorBody),
        (status = 503, description = "A store or service did not answer; retry", body = ErrorBody),
    )
)]
async fn info(
    State(media): State<Media>,
    Path(id): Path<String>,
    Params(q): Params<DownloadQuery>,
    Caller(who): Caller,
) -> Result<Response, MediaError> {
    let d = opened(&media, &id, &q, &who).await?;
    Ok(Json(crate::service::media_info(&d)).into_response())
}

/// Downloads the media: its bytes with the sniffed `Content-Type`, `ETag` (the
/// SHA-256), ranges for seeking, `304` for a matching `If-None-Match`.
#[utoipa::path(
    get,
    path = "/v1/media/{id}",
    operation_id = "download_media",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(
        ("id" = String, Path, description = "The media's id"),
        DownloadQuery,
        ("Range" = Option<String>, Header, description = "`bytes=a-b`, `bytes=a-` or `bytes=-n`"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a cached copy"),
        TokenParam,
    ),
    responses(
        (status = 200, description = "The whole file (`Content-Disposition: attachment` for documents)",
            body = Binary, content_type = "application/octet-stream"),
        (status = 206, description = "The requested range, with `Content-Range`",
            body = Binary, content_type = "application/octet-stream"),
        (status = 304, description = "Not modified"),
        (status = 400, description = "More than one way to the media, or half of `conversation` and `seq`", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 403, description = "The caller may not see this media that way", body = ErrorBody),
        (status = 404, description = "The id names nothing", body = ErrorBody),
        (status = 416, description = "The range is outside the file (`Content-Range: bytes */<size>`)", body = ErrorBody),
        (status = 503, description = "A store or service did not answer; retry", body = ErrorBody),
    )
)]
async fn download(
    State(media): State<Media>,
    Path(id): Path<String>,
    Params(q): Params<DownloadQuery>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let d = opened(&media, &id, &q, &who).await?;
    serve(&media, &d, Variant::Original, &headers).await
}

/// The thumbnail of an image or video: a JPEG of at most 320 px.
#[utoipa::path(
    get,
    path = "/v1/media/{id}/thumbnail",
    operation_id = "media_thumbnail",
    tag = "media",
    security(("bearer" = []), ("access_token" = [])),
    params(
        ("id" = String, Path, description = "The media's id"),
        DownloadQuery,
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a cached copy"),
        TokenParam,
    ),
    responses(
        (status = 200, description = "The thumbnail", body = Binary, content_type = "image/jpeg"),
        (status = 304, description = "Not modified"),
        (status = 400, description = "More than one way to the media, or half of `conversation` and `seq`", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 403, description = "The caller may not see this media that way", body = ErrorBody),
        (status = 404, description = "The id names nothing, or the media has no thumbnail", body = ErrorBody),
        (status = 503, description = "A store or service did not answer; retry", body = ErrorBody),
    )
)]
async fn thumbnail(
    State(media): State<Media>,
    Path(id): Path<String>,
    Params(q): Params<DownloadQuery>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let d = opened(&media, &id, &q, &who).await?;
    if d.blob.thumbnail_key.is_empty() {
        return Err(MediaError::NotFound("this media has no thumbnail".into()));
    }
    serve(&media, &d, Variant::Thumbnail, &headers).await
}

/// A `Range` header against an object of `size` bytes: `Ok(None)` to send it whole
/// (no header, or one natter ignores as RFC 9110 allows: several ranges, other units,
/// bad syntax), the one range to send, or 416.
pub fn parse_range(value: Option<&str>, size: u64) -> Result<Option<Range<u64>>, MediaError> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = || MediaError::RangeNotSatisfiable { size };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // The last `n` bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        return Ok(Some(size.saturating_sub(n)..size));
    }
    let Ok(start) = first.parse::<u64>() else {
        return Ok(None);
    };
    let end = if last.is_empty() {
        size
    } else {
        let Ok(last) = last.parse::<u64>() else {
            return Ok(None);
        };
        if last < start {
            return Ok(None);
        }
        last.saturating_add(1).min(size)
    };
    if start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some(start..end))
}

/// Quotes a file name for `Content-Disposition` (RFC 6266): an ASCII fallback and the
/// UTF-8 name percent-encoded.
fn disposition(filename: &str, fallback: &str) -> String {
    let name = if filename.is_empty() {
        fallback
    } else {
        filename
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

fn unreadable(key: &str) -> impl FnOnce(crate::objects::ObjectError) -> MediaError + '_ {
    move |e| {
        tracing::warn!(key, error = %e, "media object unreadable");
        MediaError::Unavailable("media storage unavailable, retry".into())
    }
}

async fn serve(
    media: &Media,
    d: &Download,
    variant: Variant,
    request: &HeaderMap,
) -> Result<Response, MediaError> {
    let (key, etag, mime) = match variant {
        Variant::Original => (
            d.blob.key.as_str(),
            format!("\"{}\"", d.blob.sha256),
            d.blob.mime.as_str(),
        ),
        Variant::Thumbnail => (
            d.blob.thumbnail_key.as_str(),
            format!("\"{}-t\"", d.blob.sha256),
            "image/jpeg",
        ),
    };
    let mut headers = HeaderMap::new();
    let static_headers = [
        (header::ACCEPT_RANGES, "bytes"),
        (
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Served from natter's origin: never let user content run as a page.
        (
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'",
        ),
    ];
    for (name, value) in static_headers {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    if let Ok(v) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if variant == Variant::Original && crate::service::kind_name(d.blob.kind) == "document" {
        let fallback = format!("{}.{}", d.record.id, crate::sniff::extension(mime));
        if let Ok(v) = HeaderValue::from_str(&disposition(&d.record.filename, &fallback)) {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    let objects = media.objects();
    let (status, range) = match variant {
        Variant::Original => {
            let size = d.blob.size;
            let range = parse_range(
                request.get(header::RANGE).and_then(|v| v.to_str().ok()),
                size,
            )?;
            match range {
                Some(r) => {
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
                    {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    (StatusCode::PARTIAL_CONTENT, r)
                }
                None => (StatusCode::OK, 0..size),
            }
        }
        Variant::Thumbnail => {
            let size = objects.size(key).await.map_err(unreadable(key))?;
            (StatusCode::OK, 0..size)
        }
    };
    let len = range.end - range.start;
    let stream = objects
        .stream(key, range)
        .await
        .map_err(unreadable(key))?
        .map(|r| r.map_err(std::io::Error::other));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok((status, headers, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |v: &str, size| parse_range(Some(v), size);
        assert_eq!(r("bytes=0-99", 1000), Ok(Some(0..100)));
        assert_eq!(r("bytes=100-", 1000), Ok(Some(100..1000)));
        assert_eq!(r("bytes=-50", 1000), Ok(Some(950..1000)));
        assert_eq!(r("bytes=-5000", 1000), Ok(Some(0..1000)));
        assert_eq!(r("bytes=990-5000", 1000), Ok(Some(990..1000)));
        assert_eq!(
            r("bytes=1000-", 1000),
            Err(MediaError::RangeNotSatisfiable { size: 1000 })
        );
        assert_eq!(
            r("bytes=-0", 1000),
            Err(MediaError::RangeNotSatisfiable { size: 1000 })
        );
        // Ignored (the whole object is sent): other units, several ranges, nonsense.
        assert_eq!(r("items=0-1", 1000), Ok(None));
        assert_eq!(r("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(r("bytes=5-1", 1000), Ok(None));
        assert_eq!(r("bytes=a-b", 1000), Ok(None));
        assert_eq!(parse_range(None, 1000), Ok(None));
    }

    #[test]
    fn dispositions_are_quoted() {
        assert_eq!(
            disposition("résumé \"final\".pdf", "x.pdf"),
            "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
        );
        assert_eq!(
            disposition("", "abc.pdf"),
            "attachment; filename=\"abc.pdf\"; filename*=UTF-8''abc.pdf"
        );
    }
}

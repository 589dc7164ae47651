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
    routing::{get, post},
};
use futures::StreamExt as _;
use natter_proto::UserId;
use natter_sessions::Identity;
use serde::Deserialize;

use crate::{
    Media,
    service::{Download, MediaError, UploadInfo, UploadOptions, Variant, Via},
};

const JSON_MAX_BYTES: usize = 16 << 10;
const UPLOAD_OFFSET: &str = "upload-offset";
const UPLOAD_LENGTH: &str = "upload-length";

/// The `/v1/media` routes.
pub fn router(media: Media) -> Router {
    Router::new()
        .route("/v1/media", post(upload))
        .route("/v1/media/usage", get(usage))
        .route("/v1/media/uploads", post(create_upload))
        .route(
            "/v1/media/uploads/{id}",
            get(upload_state)
                .head(upload_state)
                .patch(append)
                .delete(delete_upload),
        )
        .route("/v1/media/uploads/{id}/complete", post(complete))
        .route("/v1/media/{id}", get(download))
        .route("/v1/media/{id}/thumbnail", get(thumbnail))
        .route("/v1/media/{id}/info", get(info))
        // Upload bodies are streamed and counted by the service against each kind's
        // limit; the JSON bodies are read with their own cap.
        .layer(DefaultBodyLimit::disable())
        .with_state(media)
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

#[derive(Debug, Deserialize, Default)]
struct UploadQuery {
    filename: Option<String>,
    sha256: Option<String>,
    kind: Option<String>,
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

async fn usage(State(media): State<Media>, Caller(who): Caller) -> Result<Response, MediaError> {
    let (used, quota) = media.usage(&who).await?;
    Ok(Json(serde_json::json!({ "used": used, "quota": quota })).into_response())
}

async fn upload(
    State(media): State<Media>,
    Query(q): Query<UploadQuery>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUpload {
    size: u64,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    voice: Option<bool>,
}

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

async fn delete_upload(
    State(media): State<Media>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, MediaError> {
    media.delete_upload(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

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

#[derive(Debug, Deserialize, Default)]
struct DownloadQuery {
    conversation: Option<String>,
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

async fn info(
    State(media): State<Media>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    Caller(who): Caller,
) -> Result<Response, MediaError> {
    let d = opened(&media, &id, &q, &who).await?;
    Ok(Json(crate::service::media_info(&d)).into_response())
}

async fn download(
    State(media): State<Media>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let d = opened(&media, &id, &q, &who).await?;
    serve(&media, &d, Variant::Original, &headers).await
}

async fn thumbnail(
    State(media): State<Media>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
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

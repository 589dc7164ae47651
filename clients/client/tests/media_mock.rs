//! Media uploads and downloads against a scripted in-test HTTP server (axum): which
//! requests the client makes (single-shot or resumable, offsets, the SHA-256 it sends),
//! how it resumes after a PATCH cut short by a 503 or a dropped answer, and what it does
//! with a server whose answer does not match.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use natter_client::{HttpClient, MediaError, UploadOptions, media::sha256_hex};
use serde_json::{Value, json};

#[derive(Default)]
struct Upload {
    size: u64,
    sha256: Option<String>,
    data: Vec<u8>,
}

#[derive(Default)]
struct Mock {
    uploads: HashMap<String, Upload>,
    stored: HashMap<String, Vec<u8>>,
    /// Every request: "METHOD path [offset]".
    log: Vec<String>,
    /// PATCH numbers (1-based) that keep half of their body and answer 503.
    cut: Vec<usize>,
    patches: usize,
    /// HEADs that answer 503 before one answers.
    head_failures: usize,
    /// Answer uploads with this sha256 instead of the content's.
    lie_sha: Option<String>,
    /// Refuse every upload with 415.
    refuse: bool,
    single_query: Vec<(String, String)>,
    created: Option<Value>,
}

type Shared = Arc<Mutex<Mock>>;

fn info(id: &str, data: &[u8], m: &Mock) -> Value {
    json!({
        "id": id, "kind": "document", "mime": "application/octet-stream",
        "size": data.len(), "sha256": m.lie_sha.clone().unwrap_or_else(|| sha256_hex(data)),
        "width": 0, "height": 0, "duration_ms": 0, "preview": null, "filename": "f.bin",
        "voice": false
    })
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": code}})),
    )
        .into_response()
}

async fn single(
    State(s): State<Shared>,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let mut m = s.lock().unwrap();
    m.log.push("POST /v1/media".into());
    m.single_query = q.clone();
    if m.refuse {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_type");
    }
    let want = q
        .iter()
        .find(|(k, _)| k == "sha256")
        .map(|(_, v)| v.clone());
    if want.as_deref() != Some(sha256_hex(&body).as_str()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "hash_mismatch");
    }
    let id = format!("m{}", m.stored.len());
    let v = info(&id, &body, &m);
    m.stored.insert(id, body.to_vec());
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn create(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut m = s.lock().unwrap();
    m.log.push("POST /v1/media/uploads".into());
    m.created = Some(body.clone());
    let id = format!("u{}", m.uploads.len());
    m.uploads.insert(
        id.clone(),
        Upload {
            size: body["size"].as_u64().unwrap(),
            sha256: body["sha256"].as_str().map(str::to_owned),
            data: Vec::new(),
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({"upload_id": id, "offset": 0, "size": body["size"], "expires_in_s": 86400})),
    )
        .into_response()
}

fn offset_of(headers: &HeaderMap) -> u64 {
    headers["upload-offset"].to_str().unwrap().parse().unwrap()
}

async fn patch_upload(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut m = s.lock().unwrap();
    let offset = offset_of(&headers);
    m.patches += 1;
    let n = m.patches;
    m.log.push(format!("PATCH {offset}"));
    let cut = m.cut.contains(&n);
    if m.refuse && n == 2 {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_type");
    }
    let up = m.uploads.get_mut(&id).unwrap();
    let at = up.data.len() as u64;
    if offset != at {
        return (
            StatusCode::CONFLICT,
            [("upload-offset", at.to_string())],
            Json(json!({"error": {"code": "offset_mismatch", "message": "no"}})),
        )
            .into_response();
    }
    if cut {
        // The connection broke mid-body: what arrived is kept.
        up.data.extend_from_slice(&body[..body.len() / 2]);
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    up.data.extend_from_slice(&body);
    (
        StatusCode::NO_CONTENT,
        [("upload-offset", up.data.len().to_string())],
    )
        .into_response()
}

async fn head_upload(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let mut m = s.lock().unwrap();
    m.log.push("HEAD".into());
    if m.head_failures > 0 {
        m.head_failures -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let up = &m.uploads[&id];
    (
        StatusCode::OK,
        [
            ("upload-offset", up.data.len().to_string()),
            ("upload-length", up.size.to_string()),
        ],
    )
        .into_response()
}

async fn complete(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let mut m = s.lock().unwrap();
    m.log.push("COMPLETE".into());
    let up = m.uploads.remove(&id).unwrap();
    if up.data.len() as u64 != up.size {
        return error(StatusCode::CONFLICT, "incomplete");
    }
    if let Some(want) = &up.sha256
        && *want != sha256_hex(&up.data)
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "hash_mismatch");
    }
    let media = format!("m{}", m.stored.len());
    let v = info(&media, &up.data, &m);
    m.stored.insert(media, up.data);
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn delete_upload(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let mut m = s.lock().unwrap();
    m.log.push("DELETE".into());
    m.uploads.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn download(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let m = s.lock().unwrap();
    assert_eq!(q.get("conversation").map(String::as_str), Some("d.1.2"));
    assert_eq!(q.get("seq").map(String::as_str), Some("7"));
    let Some(data) = m.stored.get(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found");
    };
    let etag = format!(
        "\"{}\"",
        m.lie_sha.clone().unwrap_or_else(|| sha256_hex(data))
    );
    if let Some(r) = headers.get(header::RANGE) {
        let r = r.to_str().unwrap().trim_start_matches("bytes=");
        let (a, b) = r.split_once('-').unwrap();
        let a: usize = a.parse().unwrap();
        let b: usize = if b.is_empty() {
            data.len() - 1
        } else {
            b.parse().unwrap()
        };
        return (
            StatusCode::PARTIAL_CONTENT,
            [
                (
                    header::CONTENT_RANGE,
                    format!("bytes {a}-{b}/{}", data.len()),
                ),
                (header::ETAG, etag),
            ],
            data[a..=b].to_vec(),
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::ETAG, etag),
        ],
        data.clone(),
    )
        .into_response()
}

async fn usage() -> Json<Value> {
    Json(json!({"used": 10, "quota": 100}))
}

async fn start(mock: Mock) -> (HttpClient, Shared) {
    let shared = Arc::new(Mutex::new(mock));
    let app = Router::new()
        .route("/v1/media", post(single))
        .route("/v1/media/usage", get(usage))
        .route("/v1/media/uploads", post(create))
        .route(
            "/v1/media/uploads/{id}",
            patch(patch_upload).head(head_upload).delete(delete_upload),
        )
        .route("/v1/media/uploads/{id}/complete", post(complete))
        .route("/v1/media/{id}", get(download))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = HttpClient::new(&format!("http://{addr}")).unwrap();
    (http, shared)
}

fn data(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn small_chunks() -> UploadOptions {
    UploadOptions {
        filename: Some("f.bin".into()),
        chunk_size: 3000,
        single_shot_max: 1000,
        retry_delay: Duration::from_millis(5),
        ..UploadOptions::default()
    }
}

#[tokio::test]
async fn small_files_go_in_one_request_with_their_hash() {
    let (http, mock) = start(Mock::default()).await;
    let bytes = data(900);
    let opts = UploadOptions {
        voice: true,
        kind_hint_audio: true,
        ..small_chunks()
    };
    let info = http
        .upload_media_bytes("tok", bytes.clone().into(), &opts)
        .await
        .unwrap();
    assert_eq!(info.size, 900);
    let m = mock.lock().unwrap();
    assert_eq!(m.log, ["POST /v1/media"]);
    let q: HashMap<_, _> = m.single_query.iter().cloned().collect();
    assert_eq!(q["sha256"], sha256_hex(&bytes));
    assert_eq!(q["filename"], "f.bin");
    assert_eq!(q["kind"], "audio");
    assert_eq!(q["voice"], "true");
    assert_eq!(m.stored[&info.id], bytes);
}

#[tokio::test]
async fn large_files_resume_where_the_server_stands() {
    // PATCH 2 is cut short (half kept, 503), and the first HEAD fails too.
    let (http, mock) = start(Mock {
        cut: vec![2],
        head_failures: 1,
        ..Mock::default()
    })
    .await;
    let bytes = data(10_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &bytes).unwrap();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let opts = UploadOptions {
        progress: Some(Arc::new(move |done, total| {
            seen.lock().unwrap().push((done, total))
        })),
        ..small_chunks()
    };
    let info = http.upload_media("tok", &path, &opts).await.unwrap();
    let m = mock.lock().unwrap();
    assert_eq!(m.stored[&info.id], bytes);
    assert_eq!(
        m.log,
        [
            "POST /v1/media/uploads",
            "PATCH 0",
            "PATCH 3000",
            "HEAD",
            "HEAD",
            "PATCH 4500",
            "PATCH 6000",
            "PATCH 9000",
            "COMPLETE"
        ]
    );
    // The hash went up front, so the server could check it.
    let created = m.created.clone().unwrap();
    assert_eq!(created["sha256"], sha256_hex(&bytes));
    assert_eq!(created["size"], 10_000);
    assert_eq!(created["filename"], "f.bin");
    let progress = progress.lock().unwrap();
    assert_eq!(progress.first(), Some(&(0, 10_000)));
    assert_eq!(progress.last(), Some(&(10_000, 10_000)));
}

#[tokio::test]
async fn streams_are_hashed_as_they_are_read_and_checked() {
    let (http, mock) = start(Mock::default()).await;
    let bytes = data(7_000);
    let info = http
        .upload_media_reader("tok", &bytes[..], 7_000, &small_chunks())
        .await
        .unwrap();
    assert_eq!(info.sha256, sha256_hex(&bytes));
    assert!(mock.lock().unwrap().created.as_ref().unwrap()["sha256"].is_null());

    // A server that says it stored something else is caught.
    mock.lock().unwrap().lie_sha = Some("00".repeat(32));
    let e = http
        .upload_media_reader("tok", &bytes[..], 7_000, &small_chunks())
        .await
        .unwrap_err();
    assert!(matches!(e, MediaError::HashMismatch { .. }), "{e:?}");

    // A stream shorter than announced is refused.
    let e = http
        .upload_media_reader("tok", &bytes[..5_000], 7_000, &small_chunks())
        .await
        .unwrap_err();
    assert!(matches!(e, MediaError::Invalid(_)), "{e:?}");
}

#[tokio::test]
async fn refusals_are_final_and_abandon_the_upload() {
    let (http, mock) = start(Mock {
        refuse: true,
        ..Mock::default()
    })
    .await;
    let e = http
        .upload_media_bytes("tok", data(10).into(), &small_chunks())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unsupported_type"));
    assert_eq!(e.status(), Some(415));
    let e = http
        .upload_media_bytes("tok", data(7_000).into(), &small_chunks())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(415));
    let log = mock.lock().unwrap().log.clone();
    assert_eq!(
        log,
        [
            "POST /v1/media",
            "POST /v1/media/uploads",
            "PATCH 0",
            "PATCH 3000",
            "DELETE"
        ]
    );
}

#[tokio::test]
async fn downloads_whole_to_a_file_and_in_ranges() {
    let (http, mock) = start(Mock::default()).await;
    let bytes = data(5_000);
    mock.lock()
        .unwrap()
        .stored
        .insert("m9".into(), bytes.clone());
    let msg = Some(("d.1.2", 7));
    assert_eq!(http.download_media("tok", "m9", msg).await.unwrap(), bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    let got = http
        .download_media_to("tok", "m9", msg, &path)
        .await
        .unwrap();
    assert_eq!(got.size, 5_000);
    assert_eq!(got.sha256, sha256_hex(&bytes));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let r = http
        .download_media_range("tok", "m9", msg, 100, Some(199))
        .await
        .unwrap();
    assert_eq!((r.start, r.end, r.total), (100, 199, 5_000));
    assert_eq!(r.bytes, bytes[100..200]);
    let r = http
        .download_media_range("tok", "m9", msg, 4_990, None)
        .await
        .unwrap();
    assert_eq!(r.bytes, bytes[4_990..]);
    let e = http.download_media("tok", "nope", msg).await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let usage = http.media_usage("tok").await.unwrap();
    assert_eq!((usage.used, usage.quota), (10, 100));

    // A file whose hash is not the ETag is not kept.
    mock.lock().unwrap().lie_sha = Some("00".repeat(32));
    let bad = dir.path().join("bad.bin");
    let e = http
        .download_media_to("tok", "m9", msg, &bad)
        .await
        .unwrap_err();
    assert!(matches!(e, MediaError::HashMismatch { .. }), "{e:?}");
    assert!(!bad.exists());
    assert!(!dir.path().join("bad.bin.part").exists());
}

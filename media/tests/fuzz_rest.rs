//! Fuzzing of the media REST API (`/v1/media`): single-shot uploads (arbitrary bodies,
//! `Content-Type`, `Content-Length` and query strings), resumable uploads (arbitrary
//! create bodies, then `PATCH`es with arbitrary `Upload-Offset` / `Content-Range`
//! headers and bodies, `HEAD`, `GET`, `complete`, `DELETE`, on real and made-up ids) and
//! downloads (arbitrary ids, `Range`, `If-None-Match` and access queries, by the
//! uploader, the recipient and a stranger). Whatever a client sends, the answer comes
//! within a deadline, is never a 5xx nor a panic, and every 4xx carries a JSON
//! `error.code`; a 206 is the range it announces.
//!
//! The router runs against real services on one in-process bus (sessions for tokens,
//! messages, groups and people for download access), so no answer is a 503 for want of
//! a service. Property-based (proptest); `PROPTEST_CASES` sets the cases per property
//! (256 in CI), docs/fuzzing.md records longer runs.

use std::{sync::Arc, sync::OnceLock, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use natter_bus::{Bus, InProcessBus};
use natter_proto::{ConversationId, Subject, UserId, bus, v1};
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long one request may take before the property calls it a hang.
const DEADLINE: Duration = Duration::from_secs(20);

/// A 2x2 PNG (RGB; the same as tests/service.rs).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0xfd, 0xd4, 0x9a,
    0x73, 0x00, 0x00, 0x00, 0x11, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0xf0, 0x1f, 0x8c, 0x80, 0x18, 0x00, 0x1d, 0xf0, 0x03, 0xfd, 0xd3, 0xd0, 0x7d, 0x26, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A user of the world: token and id.
struct User {
    token: String,
    id: UserId,
}

struct World {
    rt: tokio::runtime::Runtime,
    app: Router,
    /// Uploaded `media` and sent it to `bob` in `conversation`, at seq 1.
    alice: User,
    bob: User,
    /// Knows nothing of it.
    carol: User,
    media: String,
    sha256: String,
    size: u64,
    conversation: String,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

/// One set of services (and three users) for every case of every property.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let stop = CancellationToken::new();
        let w = rt.block_on(build(dir.path(), stop.clone()));
        let (app, alice, bob, carol, media, sha256, size, conversation) = w;
        World {
            rt,
            app,
            alice,
            bob,
            carol,
            media,
            sha256,
            size,
            conversation,
            _stop: stop.drop_guard(),
            _dir: dir,
        }
    })
}

#[allow(clippy::type_complexity)]
async fn build(
    dir: &std::path::Path,
    stop: CancellationToken,
) -> (Router, User, User, User, String, String, u64, String) {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let sessions = natter_sessions::Sessions::open(natter_sessions::Config {
        data_dir: dir.join("sessions"),
        jwt_secret: Some(vec![7u8; 32]),
        argon2_memory_kib: 256,
        ..Default::default()
    })
    .expect("sessions");
    natter_sessions::start(sessions.clone(), bus.clone(), stop.clone())
        .await
        .expect("sessions service");
    let groups = natter_groups::RedbGroupStore::open(&dir.join("groups.redb")).expect("groups");
    natter_groups::start(
        natter_groups::Config::default(),
        groups,
        bus.clone(),
        stop.clone(),
    )
    .await
    .expect("groups service");
    let people = natter_people::RedbPeopleStore::open(&dir.join("people.redb")).expect("people");
    natter_people::start(
        Arc::new(people),
        bus.clone(),
        natter_people::Config::default(),
        stop.clone(),
    )
    .await
    .expect("people service");
    let messages = natter_messages::RedbStore::open(&dir.join("messages.redb")).expect("messages");
    natter_messages::start(
        natter_messages::Config::default(),
        messages,
        bus.clone(),
        natter_messages::Placement::All,
        stop.clone(),
    )
    .await
    .expect("messages service");
    let store = natter_media::RedbMediaStore::open(&dir.join("media.redb")).expect("media store");
    let objects = natter_media::Objects::local(&dir.join("objects")).expect("objects");
    let auth =
        natter_sessions::DeviceAuth::new(sessions.verifier(), bus.clone(), Duration::from_secs(5));
    let media = natter_media::Media::new(
        natter_media::Config::default(),
        Arc::new(store),
        objects,
        bus.clone(),
        auth,
    );
    natter_media::describe::start(media.clone(), bus.clone(), stop.clone())
        .await
        .expect("media describe");
    let verifier = sessions.verifier();
    let accounts = natter_sessions::router(sessions, bus.clone());
    let app = natter_media::router(media);

    let alice = user(&accounts, "alice").await;
    let bob = user(&accounts, "bob").await;
    let carol = user(&accounts, "carol").await;
    let (status, info) = request(
        &app,
        Request::post("/v1/media?filename=dot.png")
            .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
            .body(Body::from(PNG))
            .expect("a request"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let media_id = info["id"].as_str().expect("an id").to_owned();
    let conversation = ConversationId::direct(alice.id, bob.id).expect("two users");
    // Alice sends it to Bob (seq 1), as an edge would ask the conversation's owner.
    let send = bus::PartitionRequest {
        caller: Some(bus::Caller {
            user_id: alice.id.get(),
            device_id: verifier
                .verify(&alice.token)
                .expect("a valid token")
                .device
                .get(),
        }),
        body: Some(bus::partition_request::Body::Send(v1::Send {
            client_msg_id: "fuzz-media".into(),
            to_user: bob.id.get(),
            kind: v1::MessageKind::Media as i32,
            media: Some(Box::new(v1::MediaRef {
                id: media_id.clone(),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    let reply = bus
        .request(
            &Subject::partition(conversation.partition()),
            Bytes::from(send.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .expect("the owner answers");
    let reply = bus::PartitionReply::decode(reply).expect("a reply");
    match reply.body {
        Some(bus::partition_reply::Body::Ack(a)) => assert_eq!(a.seq, 1),
        other => panic!("the media message is acked, got {other:?}"),
    }
    (
        app,
        alice,
        bob,
        carol,
        media_id,
        info["sha256"].as_str().expect("a hash").to_owned(),
        info["size"].as_u64().expect("a size"),
        conversation.as_str().to_owned(),
    )
}

async fn user(accounts: &Router, name: &str) -> User {
    let body = json!({"username": format!("fuzz_{name}"), "password": "password123"});
    let (status, v) = request(accounts, json_post("/v1/accounts", &body)).await;
    assert!(status.is_success(), "{status} {v}");
    let body = json!({
        "username": format!("fuzz_{name}"), "password": "password123", "device_name": "f"
    });
    let (status, grant) = request(accounts, json_post("/v1/sessions", &body)).await;
    assert!(status.is_success(), "{status} {grant}");
    User {
        token: grant["access_token"].as_str().expect("a token").to_owned(),
        id: UserId(
            grant["user_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("a user id"),
        ),
    }
}

fn json_post(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request")
}

async fn request(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = exchange(app, req).await;
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, value)
}

/// One request through the router: status, headers and the whole body.
async fn exchange(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let what = format!("{} {}", req.method(), req.uri());
    let response = tokio::time::timeout(DEADLINE, app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
        .unwrap_or_else(|e| match e {});
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{what}: body not finished within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: body failed: {e}"))
        .to_bytes();
    (status, headers, body)
}

/// Sends `req` and checks the answer: in time, below 500, and a 4xx (but a router's
/// 404/405, and answers to HEAD, which have no body) with a JSON `error.code`.
fn check(req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let w = world();
    let what = format!("{} {}", req.method(), req.uri());
    let head = req.method() == Method::HEAD;
    let (status, headers, body) = w.rt.block_on(exchange(&w.app, req));
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    assert!(status.as_u16() < 500, "{what}: {status} {text}");
    if status.is_client_error() && !head && !matches!(status.as_u16(), 404 | 405) {
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: {status} with a non-JSON body ({e}): {text}"));
        assert!(
            v["error"]["code"].is_string(),
            "{what}: {status} without an error code: {v}"
        );
    }
    (status, headers, body)
}

/// Percent-encodes what a query or path part cannot hold as is.
fn encode(part: &str) -> String {
    part.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Who sends a request.
#[derive(Debug, Clone, Copy)]
enum Who {
    Alice,
    Bob,
    Carol,
    /// No token at all.
    Nobody,
    /// `?access_token=` instead of the header (Alice's).
    Query,
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        4 => Just(Who::Alice),
        2 => Just(Who::Bob),
        2 => Just(Who::Carol),
        1 => Just(Who::Nobody),
        1 => Just(Who::Query),
    ]
}

/// `builder` with `who`'s credentials; `uri` gets the query token for [`Who::Query`].
fn authorized(method: Method, uri: &str, who: Who) -> axum::http::request::Builder {
    let w = world();
    let token = match who {
        Who::Alice => Some(&w.alice.token),
        Who::Bob => Some(&w.bob.token),
        Who::Carol => Some(&w.carol.token),
        Who::Nobody | Who::Query => None,
    };
    let uri = match who {
        Who::Query => {
            let sep = if uri.contains('?') { '&' } else { '?' };
            format!("{uri}{sep}access_token={}", w.alice.token)
        }
        _ => uri.to_owned(),
    };
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    b
}

/// An upload body: nothing, a known type's start (or a whole PNG) with arbitrary bytes
/// after it, or arbitrary bytes.
fn upload_body() -> impl Strategy<Value = Vec<u8>> {
    let head = prop_oneof![
        Just(Vec::new()),
        Just(PNG.to_vec()),
        Just(PNG[..40].to_vec()),
        Just(b"%PDF-1.4\n".to_vec()),
        Just(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00".to_vec()),
        Just(b"GIF89a".to_vec()),
        Just(b"ID3\x04\x00\x00".to_vec()),
        Just(b"OggS\x00\x02".to_vec()),
        Just(b"\x00\x00\x00\x18ftypmp42".to_vec()),
        Just(b"\x1a\x45\xdf\xa3".to_vec()),
        Just(b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec()),
        Just(b"\x7fELF\x02\x01\x01".to_vec()),
        Just(b"<!DOCTYPE html><script>".to_vec()),
    ];
    (head, prop::collection::vec(any::<u8>(), 0..2048)).prop_map(|(mut h, tail)| {
        h.extend(tail);
        h
    })
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("application/octet-stream".to_owned()),
        Just("image/png".to_owned()),
        Just("application/json".to_owned()),
        Just("multipart/form-data; boundary=x".to_owned()),
        "[ -~]{0,60}",
    ])
}

/// A query string from the endpoints' own parameter names and arbitrary values.
fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("filename"),
        Just("sha256"),
        Just("kind"),
        Just("voice"),
        Just("conversation"),
        Just("seq"),
        Just("profile"),
        Just("status"),
        Just("access_token"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just(String::new()),
        Just("true".to_owned()),
        Just("audio".to_owned()),
        Just("0".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("d.1.2".to_owned()),
        Just("g.1".to_owned()),
        "[0-9a-f]{64}",
        any::<u64>().prop_map(|n| n.to_string()),
        ".{0,40}",
    ];
    prop::collection::vec((key, value), 0..5).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// A header value: a well-formed one of the header's own grammar, or arbitrary text.
fn number_header() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        (0u64..5000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just(" 7 ".to_owned()),
        "[ -~]{0,30}",
    ])
}

fn range_header() -> impl Strategy<Value = Option<String>> {
    let n = prop_oneof![
        Just(String::new()),
        (0u64..200).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just(" ".to_owned()),
        Just("-".to_owned()),
        Just("18446744073709551616".to_owned()),
    ];
    prop::option::weighted(
        0.8,
        prop_oneof![
            // Mostly well-formed single ranges around the 73-byte file's end.
            4 => (0u64..90, prop::option::of(0u64..90)).prop_map(|(a, b)| {
                format!("bytes={a}-{}", b.map_or(String::new(), |b| b.to_string()))
            }),
            1 => (0u64..100).prop_map(|n| format!("bytes=-{n}")),
            2 => (n.clone(), n.clone()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            1 => (n.clone(), n.clone(), n.clone(), n)
                .prop_map(|(a, b, c, d)| format!("bytes={a}-{b},{c}-{d}")),
            1 => "(bytes|items|BYTES)=[ -~]{0,30}",
            1 => "[ -~]{0,40}",
        ],
    )
}

fn put_header(
    b: axum::http::request::Builder,
    name: &str,
    value: &Option<String>,
) -> axum::http::request::Builder {
    match value {
        Some(v) => b.header(name, v.as_str()),
        None => b,
    }
}

/// One step of a resumable upload.
#[derive(Debug, Clone)]
enum Step {
    Patch {
        /// `None`: the upload's offset as last answered.
        offset: Option<Option<String>>,
        content_range: Option<String>,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    Head,
    Get,
    Complete,
    Delete,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (
            prop::option::of(number_header()),
            prop::option::of("bytes [ -~]{0,30}"),
            content_type(),
            upload_body(),
        )
            .prop_map(|(offset, content_range, content_type, body)| Step::Patch {
                offset,
                content_range,
                content_type,
                body,
            }),
        1 => Just(Step::Head),
        1 => Just(Step::Get),
        2 => Just(Step::Complete),
        1 => Just(Step::Delete),
    ]
}

fn create_body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..6000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[0-9a-f]{64}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
    ];
    let keys = prop::sample::select(vec!["size", "sha256", "filename", "kind", "voice", "x"]);
    let object = prop::collection::vec((keys, leaf.clone()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    prop_oneof![
        4 => (0u64..6000, prop::option::of("[0-9a-f]{64}"), prop::option::of(".{0,20}"))
            .prop_map(|(size, sha, name)| {
                let mut v = json!({ "size": size });
                if let Some(sha) = sha { v["sha256"] = Value::String(sha); }
                if let Some(name) = name { v["filename"] = Value::String(name); }
                v.to_string().into_bytes()
            }),
        3 => object.prop_map(|v| v.to_string().into_bytes()),
        1 => leaf.prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A path part: the real id, a well-formed but unknown one, or arbitrary text.
fn id_part(real: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(real.to_owned()),
        1 => "[A-Za-z0-9_-]{22}",
        1 => "[ -~]{0,40}".prop_map(|s| encode(&s)),
    ]
}

proptest! {
    #[test]
    fn single_shot_uploads_get_clear_answers(
        who in who(),
        body in upload_body(),
        content_type in content_type(),
        length in prop_oneof![Just(None), Just(Some(None)), number_header().prop_map(Some)],
        query in query(),
    ) {
        let uri = if query.is_empty() { "/v1/media".to_owned() } else { format!("/v1/media?{query}") };
        let mut b = authorized(Method::POST, &uri, who);
        b = put_header(b, "content-type", &content_type);
        b = match length {
            None => b,
            Some(None) => b.header(header::CONTENT_LENGTH, body.len()),
            Some(v) => put_header(b, "content-length", &v),
        };
        let Ok(req) = b.body(Body::from(body.clone())) else { return Ok(()) };
        let (status, _, answer) = check(req);
        if status == StatusCode::CREATED {
            let v: Value = serde_json::from_slice(&answer).expect("a created media is JSON");
            prop_assert_eq!(v["size"].as_u64(), Some(body.len() as u64));
        }
    }

    #[test]
    fn resumable_uploads_get_clear_answers(
        who in who(),
        create in create_body(),
        steps in prop::collection::vec(step(), 0..6),
        stray in id_part("not-an-upload"),
    ) {
        let w = world();
        let Ok(req) = authorized(Method::POST, "/v1/media/uploads", who)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(create))
        else {
            return Ok(());
        };
        let (status, _, answer) = check(req);
        let created: Option<(String, u64)> = (status == StatusCode::CREATED).then(|| {
            let v: Value = serde_json::from_slice(&answer).expect("JSON");
            (v["upload_id"].as_str().expect("an upload id").to_owned(), 0)
        });
        // Without an upload of its own, the steps go to an id that names none.
        let (id, mut offset) = created.clone().unwrap_or((stray, 0));
        let uri = format!("/v1/media/uploads/{id}");
        for step in steps {
            let req = match step {
                Step::Patch { offset: given, content_range, content_type, body } => {
                    let offset_header = given.unwrap_or_else(|| Some(offset.to_string()));
                    let mut b = authorized(Method::PATCH, &uri, who);
                    b = put_header(b, "upload-offset", &offset_header);
                    b = put_header(b, "content-range", &content_range);
                    b = put_header(b, "content-type", &content_type);
                    b.body(Body::from(body))
                }
                Step::Head => authorized(Method::HEAD, &uri, who).body(Body::empty()),
                Step::Get => authorized(Method::GET, &uri, who).body(Body::empty()),
                Step::Complete => {
                    authorized(Method::POST, &format!("{uri}/complete"), who).body(Body::empty())
                }
                Step::Delete => authorized(Method::DELETE, &uri, who).body(Body::empty()),
            };
            let Ok(req) = req else { continue };
            let (_, headers, _) = check(req);
            if let Some(o) = headers
                .get("upload-offset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
            {
                offset = o;
            }
        }
        // Leave no upload open: the caller may hold only 8 at once.
        if created.is_some() {
            let req = authorized(Method::DELETE, &uri, who).body(Body::empty()).expect("request");
            let (status, _, _) = w.rt.block_on(exchange(&w.app, req));
            prop_assert!(matches!(status.as_u16(), 204 | 404), "cleanup: {}", status);
        }
    }

    #[test]
    fn downloads_get_clear_answers_and_ranges_hold(
        who in who(),
        id in id_part(&world().media),
        variant in prop_oneof![4 => Just(""), 1 => Just("/thumbnail"), 1 => Just("/info")],
        via in prop_oneof![
            2 => Just(String::new()),
            3 => Just(format!("conversation={}&seq=1", world().conversation)),
            2 => query(),
        ],
        range in range_header(),
        if_none_match in prop::option::of(prop_oneof![
            Just(format!("\"{}\"", world().sha256)),
            Just("*".to_owned()),
            "[ -~]{0,40}",
        ]),
        head in prop::bool::weighted(0.1),
    ) {
        let uri = if via.is_empty() {
            format!("/v1/media/{id}{variant}")
        } else {
            format!("/v1/media/{id}{variant}?{via}")
        };
        let method = if head { Method::HEAD } else { Method::GET };
        let mut b = authorized(method, &uri, who);
        b = put_header(b, "range", &range);
        b = put_header(b, "if-none-match", &if_none_match);
        let Ok(req) = b.body(Body::empty()) else { return Ok(()) };
        let (status, headers, body) = check(req);
        let size = world().size;
        if variant.is_empty() && !head {
            match status.as_u16() {
                200 => prop_assert_eq!(body.len() as u64, size),
                206 => {
                    let announced = headers
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .expect("a 206 says which range")
                        .to_owned();
                    let (span, total) = announced
                        .strip_prefix("bytes ")
                        .and_then(|r| r.split_once('/'))
                        .expect("bytes a-b/size");
                    let (a, b) = span.split_once('-').expect("a-b");
                    let (a, b): (u64, u64) = (a.parse().expect("a"), b.parse().expect("b"));
                    prop_assert_eq!(total.parse::<u64>().ok(), Some(size));
                    prop_assert!(a <= b && b < size, "{}", announced);
                    prop_assert_eq!(body.len() as u64, b - a + 1, "{}", announced);
                    prop_assert_eq!(&body[..], &PNG[a as usize..=b as usize]);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn authorization_headers_get_clear_answers(value in "[ -~]{0,200}") {
        let req = Request::get("/v1/media/usage")
            .header(header::AUTHORIZATION, value.clone())
            .body(Body::empty());
        let Ok(req) = req else { return Ok(()) };
        let (status, _, _) = check(req);
        prop_assert!(status.as_u16() == 401 || status.as_u16() == 200, "{:?}: {}", value, status);
    }
}

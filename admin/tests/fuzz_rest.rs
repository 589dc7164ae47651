//! Fuzzing of the admin API (`/admin/v1`): arbitrary path parts and query strings on
//! every route, JSON bodies built from the endpoints' field names and raw bodies with
//! arbitrary content types on the routes that take one, and arbitrary `Authorization`
//! headers. Whatever an operator's tool sends, the answer comes within a deadline, is
//! never a 5xx nor a panic, and every 4xx carries a JSON `error.code`.
//!
//! The router runs against real services on one in-process bus (sessions, groups,
//! people, presence, messages, media), with real users, a group and a conversation to
//! name, so no answer is a 503 for want of a service. Property-based (proptest);
//! `PROPTEST_CASES` sets the cases per property (256 in CI), docs/fuzzing.md records
//! longer runs.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use natter_bus::{Bus, InProcessBus};
use natter_proto::{ConversationId, GroupId, Subject, bus, v1};
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long one request may take before the property calls it a hang.
const DEADLINE: Duration = Duration::from_secs(20);
const ADMIN_TOKEN: &str = "fuzz-admin-token-0123456789abcdef0123456789";

struct World {
    rt: tokio::runtime::Runtime,
    app: Router,
    /// Real ids to name: four users and a device of each, the first two's conversation
    /// (two messages) and a group of theirs. The last two are the ones properties may
    /// delete, so the first two stay to be looked at.
    users: Vec<String>,
    devices: Vec<String>,
    conversation: String,
    group: String,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

/// One set of services for every case of every property.
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
        let (app, users, devices, conversation, group) =
            rt.block_on(build(dir.path(), stop.clone()));
        World {
            rt,
            app,
            users,
            devices,
            conversation,
            group,
            _stop: stop.drop_guard(),
            _dir: dir,
        }
    })
}

async fn build(
    dir: &std::path::Path,
    stop: CancellationToken,
) -> (Router, Vec<String>, Vec<String>, String, String) {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let stats = natter_admin::StatsCollector::start(bus.clone(), stop.clone())
        .await
        .expect("stats");
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
    let audiences = natter_people::Audiences::start(bus.clone(), Duration::from_secs(5))
        .await
        .expect("audiences");
    natter_presence::start(
        Arc::new(natter_presence::MemoryPresence::new()),
        audiences,
        bus.clone(),
        natter_presence::Config::default(),
        stop.clone(),
    )
    .await
    .expect("presence service");
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
    let media_store =
        natter_media::RedbMediaStore::open(&dir.join("media.redb")).expect("media store");
    let media = natter_media::Media::new(
        natter_media::Config::default(),
        Arc::new(media_store),
        natter_media::Objects::local(&dir.join("objects")).expect("objects"),
        bus.clone(),
        natter_sessions::DeviceAuth::new(sessions.verifier(), bus.clone(), Duration::from_secs(5)),
    );
    natter_media::describe::start(media, bus.clone(), stop.clone())
        .await
        .expect("media service");
    let verifier = sessions.verifier();
    let accounts = natter_sessions::router(sessions, bus.clone());
    let directory: Arc<dyn natter_sessions::directory::SessionDirectory> =
        Arc::new(natter_sessions::directory::MemoryDirectory::new());
    let tokens =
        natter_admin::AdminTokens::parse(&format!("ops:{ADMIN_TOKEN}\n")).expect("a token");
    let admin = natter_admin::Admin::new(
        natter_admin::Config::default(),
        bus.clone(),
        directory,
        tokens,
        stats,
    );
    let app = natter_admin::router(admin);

    let mut users = Vec::new();
    let mut devices = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let token = login(&accounts, name).await;
        let claims = verifier.verify(&token).expect("a valid token");
        users.push(claims.user);
        devices.push(claims.device);
    }
    let (alice, bob) = (users[0], users[1]);
    let caller = Some(bus::Caller {
        user_id: alice.get(),
        device_id: devices[0].get(),
    });
    let conversation = ConversationId::direct(alice, bob).expect("two users");
    for i in 0..2 {
        let send = bus::partition_request::Body::Send(v1::Send {
            client_msg_id: format!("fuzz-{i}"),
            to_user: bob.get(),
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        });
        let reply = ask(&bus, &conversation, caller, send).await;
        assert!(
            matches!(reply, Some(bus::partition_reply::Body::Ack(_))),
            "{reply:?}"
        );
    }
    let group = GroupId::for_create(alice, "fuzz");
    let create = bus::partition_request::Body::Group(bus::GroupChange {
        group_id: group.get(),
        request: Some(v1::GroupRequest {
            op: Some(v1::group_request::Op::Create(v1::GroupCreate {
                create_id: "fuzz".into(),
                name: "Fuzz".into(),
                members: vec![bob.get()],
                ..Default::default()
            })),
        }),
        admin: false,
    });
    let reply = ask(&bus, &ConversationId::group(group), caller, create).await;
    assert!(
        matches!(reply, Some(bus::partition_reply::Body::Group(_))),
        "{reply:?}"
    );
    (
        app,
        users.iter().map(|u| u.to_string()).collect(),
        devices.iter().map(|d| d.to_string()).collect(),
        conversation.as_str().to_owned(),
        group.get().to_string(),
    )
}

/// A request to a conversation's owner, as an edge would send it.
async fn ask(
    bus: &Arc<dyn Bus>,
    conversation: &ConversationId,
    caller: Option<bus::Caller>,
    body: bus::partition_request::Body,
) -> Option<bus::partition_reply::Body> {
    let request = bus::PartitionRequest {
        caller,
        body: Some(body),
    };
    let reply = bus
        .request(
            &Subject::partition(conversation.partition()),
            Bytes::from(request.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .expect("the owner answers");
    bus::PartitionReply::decode(reply).expect("a reply").body
}

/// Registers `name` and logs a device in; its access token.
async fn login(accounts: &Router, name: &str) -> String {
    let username = format!("fuzz_{name}");
    let body = json!({"username": username, "password": "password123"});
    let (status, _, v) =
        exchange(accounts, json_request(Method::POST, "/v1/accounts", &body)).await;
    assert!(status.is_success(), "{status} {v:?}");
    let body = json!({"username": username, "password": "password123", "device_name": "f"});
    let (status, _, grant) =
        exchange(accounts, json_request(Method::POST, "/v1/sessions", &body)).await;
    assert!(status.is_success(), "{status}");
    let grant: Value = serde_json::from_slice(&grant).expect("JSON");
    grant["access_token"].as_str().expect("a token").to_owned()
}

fn json_request(method: Method, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request")
}

/// One request through a router: status, and the whole body.
async fn exchange(app: &Router, req: Request<Body>) -> (StatusCode, String, Bytes) {
    let what = format!("{} {}", req.method(), req.uri());
    let response = tokio::time::timeout(DEADLINE, app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
        .unwrap_or_else(|e| match e {});
    let status = response.status();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{what}: body not finished within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: body failed: {e}"))
        .to_bytes();
    (status, what, body)
}

/// Sends `req` (with the admin token unless it has an `Authorization` header) and checks
/// the answer: in time, below 500, and a 4xx (but a router's 404/405) with a JSON
/// `error.code`.
fn check(mut req: Request<Body>) -> StatusCode {
    let w = world();
    if !req.headers().contains_key(header::AUTHORIZATION) {
        let value = format!("Bearer {ADMIN_TOKEN}")
            .parse()
            .expect("a header value");
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let (status, what, body) = w.rt.block_on(exchange(&w.app, req));
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    assert!(status.as_u16() < 500, "{what}: {status} {text}");
    if status.is_client_error() && !matches!(status.as_u16(), 404 | 405) {
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: {status} with a non-JSON body ({e}): {text}"));
        assert!(
            v["error"]["code"].is_string(),
            "{what}: {status} without an error code: {v}"
        );
    }
    // A 404 of a route that exists (an id naming nothing) is the API's own, with a code.
    if status == StatusCode::NOT_FOUND
        && let Ok(v) = serde_json::from_slice::<Value>(&body)
    {
        assert!(v["error"]["code"].is_string(), "{what}: 404 {v}");
    }
    status
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

/// Which real id a part may name.
#[derive(Debug, Clone, Copy)]
enum Real {
    User(usize),
    Device(usize),
    Group,
    Conversation,
}

fn real(r: Real) -> String {
    let w = world();
    match r {
        Real::User(i) => w.users[i].clone(),
        Real::Device(i) => w.devices[i].clone(),
        Real::Group => w.group.clone(),
        Real::Conversation => w.conversation.clone(),
    }
}

/// A user to delete: one of the two spare real users, or any part.
fn victim() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => prop_oneof![Just(Real::User(2)), Just(Real::User(3))].prop_map(real),
        3 => part(),
    ]
}

/// A path or query part: a real id, a number, or arbitrary text (encoded).
fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop_oneof![
            Just(Real::User(0)),
            Just(Real::User(1)),
            Just(Real::Device(0)),
            Just(Real::Device(1)),
            Just(Real::Group),
            Just(Real::Conversation),
        ]
        .prop_map(real),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just("0".to_owned()),
        1 => Just("18446744073709551616".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("d.1.2".to_owned()),
        3 => "[ -~]{0,40}".prop_map(|s| encode(&s)),
    ]
}

/// A query string from the endpoints' own parameter names and arbitrary values.
fn query() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "prefix", "after", "limit", "user_id", "edge", "member", "x", "limit",
    ]);
    let value = prop_oneof![
        part(),
        (0u32..1000).prop_map(|n| n.to_string()),
        Just(String::new()),
    ];
    prop::collection::vec((key, value), 0..4).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Where a body goes: method and path (with real or arbitrary ids).
fn body_route() -> impl Strategy<Value = (Method, String)> {
    prop_oneof![
        part().prop_map(|u| (Method::POST, format!("/admin/v1/users/{u}/ban"))),
        part().prop_map(|u| (Method::POST, format!("/admin/v1/users/{u}/unban"))),
        (part(), part()).prop_map(|(u, d)| (Method::DELETE, format!("/admin/v1/sessions/{u}/{d}"))),
        Just((Method::POST, "/admin/v1/announcements".to_owned())),
    ]
}

/// A JSON body: the shape an endpoint takes with arbitrary text, or any JSON tree built
/// from the endpoints' field names.
fn json_body() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        Just(String::new()),
        ".{0,80}",
        ".{190,210}",
        ".{4090,4100}",
        "[a-z ]{0,40}"
    ];
    prop_oneof![
        1 => (prop::sample::select(vec!["reason", "text"]), text)
            .prop_map(|(k, v)| json!({ k: v })),
        2 => json_tree(),
    ]
}

fn json_tree() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec!["reason", "text", "x", "user_id"]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,80}".prop_map(Value::String),
        ".{190,210}".prop_map(Value::String),
        "[a-z ]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #[test]
    fn paths_and_queries_get_clear_answers(
        which in 0usize..11,
        a in part(),
        v in victim(),
        b in part(),
        query in query(),
    ) {
        let (method, path) = match which {
            0 => (Method::GET, "/admin/v1/users".to_owned()),
            1 => (Method::GET, format!("/admin/v1/users/{a}")),
            2 => (Method::GET, "/admin/v1/sessions".to_owned()),
            3 => (Method::GET, "/admin/v1/groups".to_owned()),
            4 => (Method::GET, format!("/admin/v1/groups/{a}")),
            5 => (Method::GET, "/admin/v1/audit".to_owned()),
            6 => (Method::GET, "/admin/v1/stats".to_owned()),
            7 => (Method::GET, "/admin/v1/edges".to_owned()),
            // Destructive, on ids that may be real: the answers must stay clear as the
            // world changes under them.
            8 => (Method::DELETE, format!("/admin/v1/conversations/{a}/messages/{b}")),
            9 => (Method::DELETE, format!("/admin/v1/groups/{a}")),
            _ => (Method::DELETE, format!("/admin/v1/users/{v}")),
        };
        let uri = if query.is_empty() { path } else { format!("{path}?{query}") };
        let Ok(req) = Request::builder().method(method).uri(uri).body(Body::empty()) else {
            return Ok(());
        };
        check(req);
    }

    #[test]
    fn moderation_of_real_messages_gets_clear_answers(seq in prop_oneof![0u64..4, any::<u64>()]) {
        let uri = format!("/admin/v1/conversations/{}/messages/{seq}", world().conversation);
        let status = check(Request::delete(uri).body(Body::empty()).expect("a request"));
        match seq {
            1 | 2 => prop_assert_eq!(status, StatusCode::OK),
            0 => prop_assert_eq!(status, StatusCode::BAD_REQUEST),
            _ => prop_assert_eq!(status, StatusCode::NOT_FOUND),
        }
    }

    #[test]
    fn json_bodies_get_clear_answers((method, uri) in body_route(), body in json_body()) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()));
        let Ok(req) = req else { return Ok(()) };
        check(req);
    }

    #[test]
    fn raw_bodies_and_content_types_get_clear_answers(
        (method, uri) in body_route(),
        body in prop::collection::vec(any::<u8>(), 0..512),
        content_type in prop::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("application/json; charset=utf-8".to_owned()),
            Just("text/plain".to_owned()),
            "[ -~]{0,40}",
        ]),
    ) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let Ok(req) = req.body(Body::from(body)) else { return Ok(()) };
        check(req);
    }

    #[test]
    fn authorization_headers_get_clear_answers(value in "[ -~]{0,200}") {
        let req = Request::get("/admin/v1/stats")
            .header(header::AUTHORIZATION, value.clone())
            .body(Body::empty());
        let Ok(req) = req else { return Ok(()) };
        let status = check(req);
        prop_assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::OK, "{:?}: {}", value, status);
    }
}

//! Fuzzing of the sessions REST bodies, paths and headers (accounts, logins, refresh,
//! push tokens, mutes, user lookups, announcements): whatever a client sends, the answer
//! is a JSON error or success with a 2xx-4xx status, never a 5xx or a panic.
//! Property-based (proptest); `PROPTEST_CASES` sets the cases per property (256 in CI),
//! docs/fuzzing.md records longer runs.

mod common;

use std::sync::OnceLock;

use axum::{
    body::Body,
    http::{Method, Request, header},
};
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

struct World {
    rt: tokio::runtime::Runtime,
    h: Harness,
    token: String,
}

/// One service (and one logged-in user) for every case of every property.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = harness(None);
        let token = rt.block_on(async {
            let (status, _) = call(
                &h.app,
                Method::POST,
                "/v1/accounts",
                None,
                Some(json!({"username": "fuzzer", "password": "password123"})),
            )
            .await;
            assert!(status.is_success());
            let (_, grant) = call(
                &h.app,
                Method::POST,
                "/v1/sessions",
                None,
                Some(json!({"username": "fuzzer", "password": "password123", "device_name": "f"})),
            )
            .await;
            grant["access_token"].as_str().unwrap().to_owned()
        });
        World { rt, h, token }
    })
}

/// Sends raw `body` and checks the answer: below 500, and JSON when not empty.
fn check(method: Method, uri: &str, bearer: bool, content_type: Option<&str>, body: Vec<u8>) {
    let w = world();
    let mut req = Request::builder().method(method.clone()).uri(uri);
    if bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {}", w.token));
    }
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let Ok(req) = req.body(Body::from(body)) else {
        return; // not a request a client could send (e.g. an invalid URI)
    };
    let (status, value) = w.rt.block_on(send(&w.h.app, req));
    assert!(status.as_u16() < 500, "{method} {uri}: {status} {value}");
    if status.is_client_error() && status.as_u16() != 404 && status.as_u16() != 405 {
        assert!(
            value["error"]["code"].is_string(),
            "{method} {uri}: {status} without an error code: {value}"
        );
    }
}

/// Where JSON bodies go: (method, path, needs the bearer token).
const ENDPOINTS: &[(&str, &str, bool)] = &[
    ("POST", "/v1/accounts", false),
    ("POST", "/v1/sessions", false),
    ("POST", "/v1/sessions/refresh", false),
    ("PUT", "/v1/devices/current/push", true),
    ("PUT", "/v1/conversations/d.1.2/mute", true),
];

fn json_body() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "username",
        "password",
        "device_name",
        "refresh_token",
        "token",
        "platform",
        "until_ms",
        "muted",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(|n| Value::String(n.to_string())),
        ".{0,80}".prop_map(Value::String),
        "[a-z0-9_]{0,40}".prop_map(Value::String),
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

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

proptest! {
    #[test]
    fn json_bodies_get_clear_answers(
        endpoint in 0..ENDPOINTS.len(),
        body in json_body(),
    ) {
        let (m, path, bearer) = ENDPOINTS[endpoint];
        check(method(m), path, bearer, Some("application/json"), body.to_string().into_bytes());
    }

    #[test]
    fn raw_bodies_and_content_types_get_clear_answers(
        endpoint in 0..ENDPOINTS.len(),
        body in prop::collection::vec(any::<u8>(), 0..512),
        content_type in prop::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("text/plain".to_owned()),
            "[ -~]{0,40}",
        ]),
    ) {
        let (m, path, bearer) = ENDPOINTS[endpoint];
        check(method(m), path, bearer, content_type.as_deref(), body);
    }

    #[test]
    fn path_and_query_parts_get_clear_answers(
        part in "[ -~]{0,40}",
        which in 0usize..5,
    ) {
        let part: String = part
            .bytes()
            .map(|b| match b {
                b'/' | b'?' | b'#' | b'%' | b' ' => format!("%{b:02X}"),
                _ => (b as char).to_string(),
            })
            .collect();
        let (m, uri, bearer) = match which {
            0 => ("GET", format!("/v1/users/{part}"), true),
            1 => ("GET", format!("/v1/users/by-id/{part}"), true),
            2 => ("PUT", format!("/v1/conversations/{part}/mute"), true),
            3 => ("GET", format!("/v1/announcements?after={part}&limit={part}"), true),
            _ => ("GET", format!("/v1/mutes?{part}"), true),
        };
        let body = if m == "PUT" { b"{\"until_ms\":0}".to_vec() } else { Vec::new() };
        check(method(m), &uri, bearer, Some("application/json"), body);
    }

    #[test]
    fn authorization_headers_get_clear_answers(value in "[ -~]{0,200}") {
        let w = world();
        let req = Request::builder()
            .method(Method::GET)
            .uri("/v1/mutes")
            .header(header::AUTHORIZATION, value.clone())
            .body(Body::empty());
        let Ok(req) = req else { return Ok(()) };
        let (status, body) = w.rt.block_on(send(&w.h.app, req));
        prop_assert!(status.as_u16() == 401 || status.as_u16() == 200, "{value:?}: {status} {body}");
        if status.as_u16() == 401 {
            prop_assert!(body["error"]["code"].is_string());
        }
    }
}

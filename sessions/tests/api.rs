//! End-to-end tests of natter-sessions: the real axum router (driven with
//! `tower::ServiceExt::oneshot`), a real redb file in a temp dir and an in-process bus.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use bytes::Bytes;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_bus::{Bus, BusEvent, InProcessBus};
use natter_proto::{
    DeviceId, Subject, UserId,
    bus::{DeviceCheck, DeviceStatus, UserInfo, UserLookup, UserPush, user_push},
};
use natter_sessions::{AuthError, Config, Sessions, SessionsError, router, start};
use prost::Message;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod common;

use common::{call, config, error_code, harness, refresh, send};

const SECRET: &[u8] = b"test secret, thirty-two bytes or more";
const WAIT: Duration = Duration::from_secs(5);

async fn register(app: &Router, username: &str, password: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/accounts",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await
}

async fn login(app: &Router, username: &str, password: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/sessions",
        None,
        Some(json!({"username": username, "password": password, "device_name": "phone"})),
    )
    .await
}

/// Registers and logs in; returns the login response.
async fn signed_in(app: &Router, username: &str) -> Value {
    let (status, body) = register(app, username, "password123").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = login(app, username, "password123").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn id(v: &Value, field: &str) -> u64 {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"));
    let n: u64 = s.parse().unwrap();
    assert!(n > 0 && n < 1 << 53, "{field} = {n} out of range");
    n
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap()
}

fn now_s() -> u64 {
    natter_proto::now_ms() / 1000
}

#[tokio::test]
async fn register_validates_and_refuses_duplicates() {
    let h = harness(None);
    let (status, body) = register(&h.app, "alice", "password123").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "alice");
    id(&body, "user_id");

    let (status, body) = register(&h.app, "alice", "otherpassword").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "conflict");

    for bad in [
        "Alice",
        "al",
        "al ice",
        "al/ice",
        "ålice",
        "",
        &"a".repeat(33),
    ] {
        let (status, body) = register(&h.app, bad, "password123").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "username {bad:?}");
        assert_eq!(error_code(&body), "invalid_argument");
    }
    for ok in ["a_b", "x.y-z_0", &"a".repeat(32)] {
        let (status, body) = register(&h.app, ok, "password123").await;
        assert_eq!(status, StatusCode::CREATED, "username {ok:?}: {body}");
    }
    for bad in ["short", "1234567", &"p".repeat(257)] {
        let (status, body) = register(&h.app, "bob", bad).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "password of {} bytes",
            bad.len()
        );
        assert_eq!(error_code(&body), "invalid_argument");
    }
    let (status, _) = register(&h.app, "bob", &"p".repeat(256)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = register(&h.app, "carol", "12345678").await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_json_errors() {
    let h = harness(None);
    let raw = |body: Vec<u8>, content_type: Option<&str>| {
        let mut req = Request::builder().method(Method::POST).uri("/v1/accounts");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        req.body(Body::from(body)).unwrap()
    };
    let (status, body) = send(&h.app, raw(b"{not json".to_vec(), Some("application/json"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_argument");

    let (status, body) = send(
        &h.app,
        raw(
            br#"{"username":"alice"}"#.to_vec(),
            Some("application/json"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "missing field");
    assert_eq!(error_code(&body), "invalid_argument");

    let (status, body) = send(
        &h.app,
        raw(
            br#"{"username":"alice","password":"password123"}"#.to_vec(),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no content type");
    assert_eq!(error_code(&body), "invalid_argument");

    let big = json!({"username": "alice", "password": "x".repeat(20 * 1024)}).to_string();
    let (status, body) = send(&h.app, raw(big.into_bytes(), Some("application/json"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "payload_too_large");

    // Nothing was created by any of these.
    let (status, _) = register(&h.app, "alice", "password123").await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_have_one_winner() {
    let h = harness(None);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move { register(&app, "dave", "password123").await.0 })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn login_issues_tokens_and_refuses_bad_credentials_alike() {
    let h = harness(None);
    let (_, reg) = register(&h.app, "alice", "password123").await;
    let user = id(&reg, "user_id");

    let (status, a) = login(&h.app, "alice", "password123").await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(id(&a, "user_id"), user);
    assert_eq!(a["username"], "alice");
    assert_eq!(a["access_expires_in_s"], 900);
    let device = id(&a, "device_id");
    let refresh_token = str_of(&a, "refresh_token");
    assert!(
        refresh_token.starts_with(&format!("{device}.")),
        "{refresh_token}"
    );
    let claims = h
        .sessions
        .verifier()
        .verify(str_of(&a, "access_token"))
        .unwrap();
    assert_eq!(claims.user, UserId(user));
    assert_eq!(claims.device, DeviceId(device));
    let left_ms = claims.expires_at_ms.saturating_sub(natter_proto::now_ms());
    assert!((800_000..=901_000).contains(&left_ms), "{left_ms}");
    let jwt_header = jsonwebtoken::decode_header(str_of(&a, "access_token")).unwrap();
    assert_eq!(jwt_header.alg, Algorithm::HS256);
    assert!(jwt_header.kid.is_some());

    let (_, b) = login(&h.app, "alice", "password123").await;
    assert_ne!(id(&b, "device_id"), device, "each login is a new device");
    assert!(h.sessions.is_device_active(UserId(user), DeviceId(device)));

    let (s1, wrong) = login(&h.app, "alice", "password124").await;
    let (s2, unknown) = login(&h.app, "nobody", "password123").await;
    let (s3, implausible) = login(&h.app, "NOBODY", "x").await;
    for (s, body) in [(s1, &wrong), (s2, &unknown), (s3, &implausible)] {
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(body), "unauthorized");
    }
    assert_eq!(
        wrong, unknown,
        "wrong password and unknown user look the same"
    );

    for name in ["", &"d".repeat(65), "bad\u{7}name"] {
        let (status, body) = call(
            &h.app,
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"username": "alice", "password": "password123", "device_name": name})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "device_name {name:?}");
        assert_eq!(error_code(&body), "invalid_argument");
    }
}

#[tokio::test]
async fn refresh_rotates_the_refresh_token() {
    let h = harness(None);
    let first = signed_in(&h.app, "alice").await;
    let old = str_of(&first, "refresh_token");

    let (status, second) = refresh(&h.app, old).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["device_id"], first["device_id"]);
    assert_eq!(second["user_id"], first["user_id"]);
    assert_eq!(second["username"], "alice");
    let new = str_of(&second, "refresh_token");
    assert_ne!(new, old);
    assert!(
        h.sessions
            .verifier()
            .verify(str_of(&second, "access_token"))
            .is_ok()
    );

    let (status, third) = refresh(&h.app, new).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(str_of(&third, "refresh_token"), new);

    // Another device's id with this secret, garbage, and a made-up device: refused, and
    // nothing is revoked by them (tests/auth.rs: presenting `old` again would be).
    let current = str_of(&third, "refresh_token");
    let secret = current.split_once('.').unwrap().1;
    let other = signed_in(&h.app, "bob").await;
    for bad in [
        format!("{}.{secret}", id(&other, "device_id")),
        "garbage".to_owned(),
        String::new(),
        format!("12345.{secret}"),
    ] {
        let (status, body) = refresh(&h.app, &bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(error_code(&body), "unauthorized", "{bad}");
    }
    let (status, body) = refresh(&h.app, current).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = refresh(&h.app, str_of(&other, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn refresh_tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(Config {
        refresh_ttl: Duration::from_millis(1),
        ..config(dir.path(), None)
    })
    .unwrap();
    let app = router(sessions, Arc::new(InProcessBus::new()));
    let grant = signed_in(&app, "alice").await;
    // Login takes far longer than 1 ms (argon2 and an fsync), but do not rely on it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let start_ms = natter_proto::now_ms();
    while natter_proto::now_ms() <= start_ms + 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let (status, _) = refresh(&app, str_of(&grant, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_revokes_everything_of_the_device_only() {
    let h = harness(None);
    let shutdown = CancellationToken::new();
    let task = start(
        h.sessions.clone(),
        Arc::new(h.bus.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let a = signed_in(&h.app, "alice").await;
    let (_, b) = login(&h.app, "alice", "password123").await;
    let user = id(&a, "user_id");
    let device = id(&a, "device_id");
    let access = str_of(&a, "access_token");
    let mut pushes = h
        .bus
        .subscribe(&Subject::user(UserId(user)), 8)
        .await
        .unwrap();

    let (status, body) = call(
        &h.app,
        Method::DELETE,
        "/v1/sessions/current",
        Some(access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let push = match tokio::time::timeout(WAIT, pushes.next()).await {
        Ok(Some(BusEvent::Message(m))) => UserPush::decode(m.payload).unwrap(),
        other => panic!("no push: {other:?}"),
    };
    assert_eq!(push.body, Some(user_push::Body::DeviceRevoked(device)));
    assert_eq!(push.skip_device, 0);

    let (status, _) = refresh(&h.app, str_of(&a, "refresh_token")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "refresh of a revoked device"
    );
    let (status, body) = call(&h.app, Method::GET, "/v1/users/alice", Some(access), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "bearer of a revoked device"
    );
    assert_eq!(body["error"]["message"], "device logged out");
    let (status, _) = call(
        &h.app,
        Method::DELETE,
        "/v1/sessions/current",
        Some(access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logout twice");
    // The signature is still fine: only revocation refuses it.
    assert!(h.sessions.verifier().verify(access).is_ok());
    assert_eq!(h.sessions.authenticate(access), Err(AuthError::Revoked));

    let check = |device: u64| {
        let bus = h.bus.clone();
        async move {
            let req = DeviceCheck {
                user_id: user,
                device_id: device,
            };
            let reply = bus
                .request(
                    &Subject::sessions_device(),
                    Bytes::from(req.encode_to_vec()),
                    WAIT,
                )
                .await
                .unwrap();
            DeviceStatus::decode(reply).unwrap()
        }
    };
    assert!(!check(device).await.active);
    let other = check(id(&b, "device_id")).await;
    assert!(other.active, "the user's other device stays logged in");
    assert_eq!(other.username, "alice");
    let (status, _) = call(
        &h.app,
        Method::GET,
        "/v1/users/alice",
        Some(str_of(&b, "access_token")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn user_lookup_needs_a_valid_bearer() {
    let h = harness(Some(SECRET));
    let a = signed_in(&h.app, "alice").await;
    let access = str_of(&a, "access_token");
    let (status, body) = call(&h.app, Method::GET, "/v1/users/alice", Some(access), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"user_id": a["user_id"], "username": "alice"}));
    let (status, body) = call(&h.app, Method::GET, "/v1/users/bob", Some(access), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, _) = call(&h.app, Method::GET, "/v1/users/%FF", Some(access), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // And the other way: the username of an id.
    let by_id = format!("/v1/users/by-id/{}", str_of(&a, "user_id"));
    let (status, body) = call(&h.app, Method::GET, &by_id, Some(access), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"user_id": a["user_id"], "username": "alice"}));
    for bad in [
        "/v1/users/by-id/0",
        "/v1/users/by-id/x",
        "/v1/users/by-id/12345",
    ] {
        let (status, body) = call(&h.app, Method::GET, bad, Some(access), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        assert_eq!(error_code(&body), "not_found");
    }
    let (status, _) = call(&h.app, Method::GET, &by_id, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a bearer is needed");

    let token = |claims: Value, secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let (user, device) = (id(&a, "user_id"), id(&a, "device_id"));
    let claims = |exp: u64| json!({"sub": user.to_string(), "did": device.to_string(), "iat": now_s(), "exp": exp, "iss": "natter"});
    // A token we craft with the configured secret is accepted: the cases below differ
    // from it in one way each.
    let good = token(claims(now_s() + 60), SECRET);
    assert!(h.sessions.authenticate(&good).is_ok());

    let expired = token(claims(now_s() - 3600), SECRET);
    let wrong_key = token(
        claims(now_s() + 60),
        b"some other secret of 32 bytes or more",
    );
    let mut forged = access.to_owned();
    // Change the first signature character (the last ones carry padding bits).
    let sig_start = forged.rfind('.').unwrap() + 1;
    let replacement = if &forged[sig_start..=sig_start] == "A" {
        "B"
    } else {
        "A"
    };
    forged.replace_range(sig_start..=sig_start, replacement);
    let verifier = h.sessions.verifier();
    assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));
    assert_eq!(verifier.verify(&wrong_key), Err(AuthError::BadSignature));
    assert_eq!(verifier.verify(&forged), Err(AuthError::BadSignature));
    assert_eq!(verifier.verify("garbage"), Err(AuthError::Malformed));
    for bad in [&expired, &wrong_key, &forged, "garbage"] {
        let (status, body) = call(&h.app, Method::GET, "/v1/users/alice", Some(bad), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(error_code(&body), "unauthorized");
    }
    let (status, _) = call(&h.app, Method::GET, "/v1/users/alice", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no header");
    let basic = Request::builder()
        .uri("/v1/users/alice")
        .header(header::AUTHORIZATION, format!("Basic {access}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.app, basic).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_key_and_the_data_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (grant, user) = {
        let sessions = Sessions::open(config(dir.path(), None)).unwrap();
        let app = router(sessions, Arc::new(InProcessBus::new()));
        let grant = signed_in(&app, "alice").await;
        let user = id(&grant, "user_id");
        (grant, user)
    };
    let key = dir.path().join("jwt.key");
    assert!(std::fs::metadata(&key).unwrap().len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let sessions = Sessions::open(config(dir.path(), None)).unwrap();
    let access = str_of(&grant, "access_token");
    let claims = sessions.authenticate(access).unwrap();
    assert_eq!(claims.user, UserId(user));
    let app = router(sessions.clone(), Arc::new(InProcessBus::new()));
    let (status, _) = call(&app, Method::GET, "/v1/users/alice", Some(access), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = refresh(&app, str_of(&grant, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = register(&app, "alice", "password123").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = login(&app, "alice", "password123").await;
    assert_eq!(status, StatusCode::OK);
    drop((app, sessions));

    // A different configured secret does not accept the old tokens: their `kid` names
    // a key it does not have.
    let other = Sessions::open(config(dir.path(), Some(SECRET))).unwrap();
    assert_eq!(other.verifier().verify(access), Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn short_secrets_and_zero_ttls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Sessions::open(config(dir.path(), Some(b"short"))),
        Err(SessionsError::Key(_))
    ));
    assert!(matches!(
        Sessions::open(Config {
            access_ttl: Duration::ZERO,
            ..config(dir.path(), None)
        }),
        Err(SessionsError::Config(_))
    ));
}

#[tokio::test]
async fn bus_user_lookup_by_id_and_username() {
    let h = harness(None);
    let shutdown = CancellationToken::new();
    let task = start(
        h.sessions.clone(),
        Arc::new(h.bus.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (_, reg) = register(&h.app, "alice", "password123").await;
    let user = id(&reg, "user_id");
    let lookup = |l: UserLookup| {
        let bus = h.bus.clone();
        async move {
            let reply = bus
                .request(
                    &Subject::sessions_user(),
                    Bytes::from(l.encode_to_vec()),
                    WAIT,
                )
                .await
                .unwrap();
            UserInfo::decode(reply).unwrap()
        }
    };
    let alice = UserInfo {
        exists: true,
        user_id: user,
        username: "alice".into(),
    };
    assert_eq!(
        lookup(UserLookup {
            user_id: user,
            username: String::new()
        })
        .await,
        alice
    );
    assert_eq!(
        lookup(UserLookup {
            user_id: 0,
            username: "alice".into()
        })
        .await,
        alice
    );
    for missing in [
        UserLookup {
            user_id: user + 1,
            username: String::new(),
        },
        UserLookup {
            user_id: 0,
            username: "bob".into(),
        },
        UserLookup::default(),
    ] {
        assert!(!lookup(missing).await.exists);
    }
    // Garbage gets an answer (not a timeout): nobody.
    let reply = h
        .bus
        .request(
            &Subject::sessions_user(),
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            WAIT,
        )
        .await
        .unwrap();
    assert!(!UserInfo::decode(reply).unwrap().exists);
    // An unknown device is not active.
    let reply = h
        .bus
        .request(
            &Subject::sessions_device(),
            Bytes::from(
                DeviceCheck {
                    user_id: user,
                    device_id: 77,
                }
                .encode_to_vec(),
            ),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        DeviceStatus::decode(reply).unwrap(),
        DeviceStatus::default()
    );

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    // Stopped: the subscriptions are gone with the task.
    let after = h
        .bus
        .request(&Subject::sessions_user(), Bytes::new(), WAIT)
        .await;
    assert!(after.is_err(), "{after:?}");
    drop(h.dir);
}

/// Wrong passwords lock an account's logins for longer and longer; while locked even the
/// right password is refused without being checked (429 with Retry-After); once the lock
/// runs out the right password works and the count starts over.
#[tokio::test]
async fn repeated_wrong_passwords_lock_the_account_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(Config {
        login_limits: natter_sessions::LoginLimits {
            free_failures: 2,
            base: Duration::from_millis(400),
            max: Duration::from_secs(60),
        },
        ..config(dir.path(), None)
    })
    .unwrap();
    let app = router(sessions, Arc::new(InProcessBus::new()));
    let (status, _) = register(&app, "locked", "password123").await;
    assert_eq!(status, StatusCode::CREATED);
    register(&app, "other", "password123").await;

    for _ in 0..2 {
        let (status, body) = login(&app, "locked", "wrong-password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // The third wrong one starts a lock; the right password is refused while it runs.
    let (status, _) = login(&app, "locked", "wrong-password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/sessions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"username": "locked", "password": "password123", "device_name": "d"})
                .to_string(),
        ))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    // Other accounts are not affected.
    let (status, _) = login(&app, "other", "password123").await;
    assert_eq!(status, StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(450)).await;
    // One more wrong one: the next lock is twice as long.
    let (status, _) = login(&app, "locked", "wrong-password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, body) = login(&app, "locked", "password123").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "too_many_attempts");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = login(&app, "locked", "password123").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The count started over: two free failures again.
    for _ in 0..2 {
        let (status, _) = login(&app, "locked", "wrong-password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

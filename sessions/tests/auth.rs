//! natter-sessions from the attacker's side, in process (the real router, a real redb
//! file, an in-process bus): stolen and replayed refresh tokens, logout everywhere, key
//! rotation with overlapping key ids, forged access tokens, and failed logins per client
//! address (the [`ClientAddr`] the HTTP server would add, injected here).

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_bus::{Bus, BusEvent, InProcessBus, Subscription};
use natter_proto::{
    DeviceId, Subject, UserId,
    bus::{UserPush, user_push},
};
use natter_sessions::{AddrLimits, AuthError, Config, Sessions, client_addr::ClientAddr, router};
use prost::Message;
use serde_json::{Value, json};

mod common;

use common::{call, config, error_code, harness, refresh};

const PASSWORD: &str = "password123";
const KEY_A: &[u8] = b"key A: thirty-two bytes or longer, ok";
const KEY_B: &[u8] = b"key B: thirty-two bytes or longer, ok";
const WAIT: Duration = Duration::from_secs(5);

async fn register(app: &Router, username: &str) {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/accounts",
        None,
        Some(json!({"username": username, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn login(app: &Router, username: &str) -> Value {
    let (status, body) = login_from(app, username, PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A login, from `from` when given (as the HTTP server would mark it).
async fn login_from(
    app: &Router,
    username: &str,
    password: &str,
    from: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, body) = login_with_headers(app, username, password, from).await;
    (status, body)
}

/// [`login_from`] that also returns `Retry-After`.
async fn login_with_headers(
    app: &Router,
    username: &str,
    password: &str,
    from: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/sessions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"username": username, "password": password, "device_name": "d"}).to_string(),
        ))
        .unwrap();
    if let Some(ip) = from {
        req.extensions_mut()
            .insert(ClientAddr(ip.parse::<IpAddr>().unwrap()));
    }
    let resp = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// The refreshed session; panics unless 200.
async fn refreshed(app: &Router, token: &str) -> Value {
    let (status, body) = refresh(app, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

fn num(v: &Value, field: &str) -> u64 {
    s(v, field).parse().unwrap()
}

/// GET /v1/users/{username} with `access`: the status and the error message.
async fn lookup(app: &Router, access: &str, username: &str) -> (StatusCode, String) {
    let (status, body) = call(
        app,
        Method::GET,
        &format!("/v1/users/{username}"),
        Some(access),
        None,
    )
    .await;
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    (status, message)
}

async fn user_pushes(bus: &InProcessBus, user: u64) -> Subscription {
    bus.subscribe(&Subject::user(UserId(user)), 16)
        .await
        .unwrap()
}

/// The device ids of the next `n` `DeviceRevoked` pushes (other pushes are skipped).
async fn revoked(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let push = match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(BusEvent::Message(m))) => UserPush::decode(m.payload).unwrap(),
            other => panic!("no DeviceRevoked push ({} of {n}): {other:?}", out.len()),
        };
        if let Some(user_push::Body::DeviceRevoked(device)) = push.body {
            out.push(device);
        }
    }
    out.sort();
    out
}

/// The thief copied the victim's refresh token, and the victim refreshed before the
/// thief used it: the replay is refused as reuse and logs the device out, so the victim's
/// newer tokens die with it and its sockets are told to close. The victim's other device
/// is another family and keeps working.
#[tokio::test]
async fn a_stolen_refresh_token_replayed_after_the_victim_refreshed_kills_the_family() {
    let h = harness(None);
    register(&h.app, "victim").await;
    let phone = login(&h.app, "victim").await;
    let laptop = login(&h.app, "victim").await;
    let (user, device) = (num(&phone, "user_id"), num(&phone, "device_id"));
    let mut pushes = user_pushes(&h.bus, user).await;
    let stolen = s(&phone, "refresh_token").to_owned();

    let victim = refreshed(&h.app, &stolen).await;
    let (status, _) = lookup(&h.app, s(&victim, "access_token"), "victim").await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = refresh(&h.app, &stolen).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "refresh_token_reused");
    assert_eq!(revoked(&mut pushes, 1).await, vec![device]);
    assert!(!h.sessions.is_device_active(UserId(user), DeviceId(device)));

    // Everything of that device is dead: the victim's newer refresh token, its access
    // token, and the stolen one (now merely unknown).
    let (status, body) = refresh(&h.app, s(&victim, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "unauthorized");
    let (status, message) = lookup(&h.app, s(&victim, "access_token"), "victim").await;
    assert_eq!(
        (status, message.as_str()),
        (StatusCode::UNAUTHORIZED, "device logged out")
    );
    let (status, body) = refresh(&h.app, &stolen).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error_code(&body),
        "unauthorized",
        "revoked, no second alarm"
    );

    // The other device is untouched.
    refreshed(&h.app, s(&laptop, "refresh_token")).await;
    let (status, _) = lookup(&h.app, s(&laptop, "access_token"), "victim").await;
    assert_eq!(status, StatusCode::OK);
}

/// The thief used the stolen token first: the thief's session is the live one until the
/// victim's client refreshes with the token it still holds, which is reuse. The device
/// is logged out, thief included.
#[tokio::test]
async fn a_thief_who_refreshes_first_is_cut_off_when_the_victim_refreshes() {
    let h = harness(None);
    register(&h.app, "victim").await;
    let phone = login(&h.app, "victim").await;
    let (user, device) = (num(&phone, "user_id"), num(&phone, "device_id"));
    let mut pushes = user_pushes(&h.bus, user).await;

    let thief = refreshed(&h.app, s(&phone, "refresh_token")).await;
    let (status, _) = lookup(&h.app, s(&thief, "access_token"), "victim").await;
    assert_eq!(status, StatusCode::OK, "the theft worked so far");

    let (status, body) = refresh(&h.app, s(&phone, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "refresh_token_reused");
    assert_eq!(revoked(&mut pushes, 1).await, vec![device]);

    let (status, _) = refresh(&h.app, s(&thief, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = lookup(&h.app, s(&thief, "access_token"), "victim").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Guessing refresh tokens for a known device id (ids are in every token) never revokes
/// the device: only a token the device really had counts as reuse.
#[tokio::test]
async fn guessed_refresh_tokens_are_refused_and_revoke_nothing() {
    let h = harness(None);
    register(&h.app, "victim").await;
    let phone = login(&h.app, "victim").await;
    let (user, device) = (num(&phone, "user_id"), num(&phone, "device_id"));
    let current = s(&phone, "refresh_token");
    let (_, secret) = current.split_once('.').unwrap();
    let mut guesses = vec![
        format!("{device}.{}", B64.encode([0u8; 32])),
        format!("{device}.{}", "A".repeat(43)),
        // The right secret under a neighbouring device id.
        format!("{}.{secret}", device + 1),
    ];
    // A secret one character off.
    let mut near = secret.to_owned().into_bytes();
    near[0] = if near[0] == b'A' { b'B' } else { b'A' };
    guesses.push(format!("{device}.{}", String::from_utf8(near).unwrap()));
    for guess in &guesses {
        let (status, body) = refresh(&h.app, guess).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{guess}");
        assert_eq!(error_code(&body), "unauthorized", "{guess}");
    }
    assert!(h.sessions.is_device_active(UserId(user), DeviceId(device)));
    refreshed(&h.app, current).await;
}

/// Two refreshes racing with the same token: exactly one wins, the other counts as reuse
/// (the server cannot tell a race from a replay), so the device ends up logged out. This
/// is the documented trade-off (docs/operations.md, "Authentication").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_refreshes_of_one_token_have_one_winner_and_log_the_device_out() {
    let h = harness(None);
    register(&h.app, "racer").await;
    let phone = login(&h.app, "racer").await;
    let (user, device) = (num(&phone, "user_id"), num(&phone, "device_id"));
    let token = s(&phone, "refresh_token").to_owned();
    let (a, b) = tokio::join!(refresh(&h.app, &token), refresh(&h.app, &token));
    let mut outcomes = vec![
        (a.0, error_code(&a.1).to_owned()),
        (b.0, error_code(&b.1).to_owned()),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            (StatusCode::OK, "<none>".to_owned()),
            (StatusCode::UNAUTHORIZED, "refresh_token_reused".to_owned()),
        ]
    );
    assert!(!h.sessions.is_device_active(UserId(user), DeviceId(device)));
    let winner = if a.0 == StatusCode::OK { &a.1 } else { &b.1 };
    let (status, _) = refresh(&h.app, s(winner, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// `DELETE /v1/sessions/all` logs out every device of the caller's user, answers how
/// many, and tells each device's sockets to close; another user's device stays.
#[tokio::test]
async fn logout_everywhere_revokes_every_device_of_the_user_and_no_other() {
    let h = harness(None);
    register(&h.app, "alice").await;
    register(&h.app, "bob").await;
    let devices = [
        login(&h.app, "alice").await,
        login(&h.app, "alice").await,
        login(&h.app, "alice").await,
    ];
    let bob = login(&h.app, "bob").await;
    let user = num(&devices[0], "user_id");
    let mut pushes = user_pushes(&h.bus, user).await;

    let (status, body) = call(
        &h.app,
        Method::DELETE,
        "/v1/sessions/all",
        Some(s(&devices[1], "access_token")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"devices_logged_out": 3}));
    let mut want: Vec<u64> = devices.iter().map(|d| num(d, "device_id")).collect();
    want.sort();
    assert_eq!(revoked(&mut pushes, 3).await, want);

    for d in &devices {
        let (status, _) = refresh(&h.app, s(d, "refresh_token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, message) = lookup(&h.app, s(d, "access_token"), "alice").await;
        assert_eq!(
            (status, message.as_str()),
            (StatusCode::UNAUTHORIZED, "device logged out")
        );
    }
    let (status, _) = call(
        &h.app,
        Method::DELETE,
        "/v1/sessions/all",
        Some(s(&devices[0], "access_token")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its token died too");
    let (status, _) = call(&h.app, Method::DELETE, "/v1/sessions/all", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a bearer is needed");

    refreshed(&h.app, s(&bob, "refresh_token")).await;
    let (status, _) = lookup(&h.app, s(&bob, "access_token"), "alice").await;
    assert_eq!(status, StatusCode::OK);
    // Alice can log in again afterwards.
    login(&h.app, "alice").await;
}

fn with_keys(dir: &std::path::Path, current: &[u8], previous: &[&[u8]]) -> Config {
    Config {
        jwt_previous_secrets: previous.iter().map(|k| k.to_vec()).collect(),
        ..config(dir, Some(current))
    }
}

/// Key rotation: after switching the signing key to B with A listed as previous, tokens
/// A signed still work (by their `kid`) and new ones are signed with B; once A is
/// removed, A's tokens are refused while B's keep working.
#[tokio::test]
async fn a_previous_key_is_accepted_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(InProcessBus::new());
    let old = {
        let sessions = Sessions::open(with_keys(dir.path(), KEY_A, &[])).unwrap();
        let app = router(sessions, bus.clone());
        register(&app, "alice").await;
        login(&app, "alice").await
    };
    let old_access = s(&old, "access_token");
    let old_kid = jsonwebtoken::decode_header(old_access)
        .unwrap()
        .kid
        .unwrap();

    let rotating = Sessions::open(with_keys(dir.path(), KEY_B, &[KEY_A])).unwrap();
    let app = router(rotating.clone(), bus.clone());
    let (status, _) = lookup(&app, old_access, "alice").await;
    assert_eq!(status, StatusCode::OK, "signed with the previous key");
    let new = login(&app, "alice").await;
    let new_access = s(&new, "access_token");
    let new_kid = jsonwebtoken::decode_header(new_access)
        .unwrap()
        .kid
        .unwrap();
    assert_ne!(new_kid, old_kid, "new tokens are signed with the new key");
    assert_eq!(
        rotating.verifier().key_ids(),
        vec![new_kid.clone(), old_kid]
    );
    // Refreshing an old session hands out a token of the new key.
    let moved = refreshed(&app, s(&old, "refresh_token")).await;
    let moved_kid = jsonwebtoken::decode_header(s(&moved, "access_token"))
        .unwrap()
        .kid;
    assert_eq!(moved_kid.as_deref(), Some(new_kid.as_str()));
    drop((app, rotating));

    let rotated = Sessions::open(with_keys(dir.path(), KEY_B, &[])).unwrap();
    let app = router(rotated.clone(), bus);
    let (status, message) = lookup(&app, old_access, "alice").await;
    assert_eq!(
        (status, message.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "access token signed with an unknown key"
        )
    );
    let (status, _) = lookup(&app, new_access, "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rotated.authenticate(old_access), Err(AuthError::UnknownKey));

    // A short previous secret is a configuration error, like a short current one.
    let err = Sessions::open(with_keys(dir.path(), KEY_B, &[b"short"])).unwrap_err();
    assert!(err.to_string().contains("previous secret #1"), "{err}");
}

/// Forged access tokens: a `kid` nobody configured, `alg: none` (with and without a
/// real `kid`), a flipped signature, a token signed with a key that is not ours under
/// our `kid`, and HS512 with our key. Each is refused; the genuine token next to them is
/// accepted, so the refusals are not an accident of the setup.
#[tokio::test]
async fn forged_access_tokens_are_refused() {
    let h = harness(Some(KEY_A));
    register(&h.app, "alice").await;
    let grant = login(&h.app, "alice").await;
    let genuine = s(&grant, "access_token");
    let kid = jsonwebtoken::decode_header(genuine).unwrap().kid.unwrap();
    let now = natter_proto::now_ms() / 1000;
    let claims = json!({
        "sub": s(&grant, "user_id"), "did": s(&grant, "device_id"),
        "iat": now, "exp": now + 600, "iss": "natter",
    });
    let sign = |alg: Algorithm, kid: Option<&str>, key: &[u8]| {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key)).unwrap()
    };
    let unsigned = |header: Value| {
        format!(
            "{}.{}.",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        )
    };
    let mut flipped = genuine.to_owned();
    let sig = flipped.rfind('.').unwrap() + 1;
    let first = if &flipped[sig..=sig] == "A" { "B" } else { "A" };
    flipped.replace_range(sig..=sig, first);

    let (status, _) = lookup(&h.app, genuine, "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        lookup(&h.app, &sign(Algorithm::HS256, Some(&kid), KEY_A), "alice")
            .await
            .0,
        StatusCode::OK,
        "our own signature over the same claims is fine"
    );
    let forgeries = [
        (
            "unknown kid",
            sign(Algorithm::HS256, Some("deadbeefdeadbeef"), KEY_A),
            "access token signed with an unknown key",
        ),
        (
            "alg none",
            unsigned(json!({"alg": "none", "typ": "JWT"})),
            "malformed access token",
        ),
        (
            "alg none with our kid",
            unsigned(json!({"alg": "none", "kid": kid})),
            "malformed access token",
        ),
        (
            "flipped signature",
            flipped.clone(),
            "invalid access token signature",
        ),
        (
            "someone else's key under our kid",
            sign(Algorithm::HS256, Some(&kid), KEY_B),
            "invalid access token signature",
        ),
        (
            "HS512",
            sign(Algorithm::HS512, Some(&kid), KEY_A),
            "invalid access token signature",
        ),
    ];
    for (what, token, message) in forgeries {
        let (status, got) = lookup(&h.app, &token, "alice").await;
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::UNAUTHORIZED, message),
            "{what}"
        );
    }
}

fn limited(failures: u32) -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(Config {
        addr_limits: AddrLimits {
            failures,
            window: Duration::from_secs(600),
        },
        ..config(dir.path(), None)
    })
    .unwrap();
    let app = router(sessions, Arc::new(InProcessBus::new()));
    (dir, app)
}

/// One address guessing across many accounts (each under the per-account limit) runs
/// into the per-address limit; after that even a correct password from that address is
/// refused (429, `Retry-After`), while another address logs into the same account.
#[tokio::test]
async fn failed_logins_from_one_address_lock_that_address_only() {
    let (_dir, app) = limited(4);
    for name in ["ann", "bob", "cat", "dan", "eve"] {
        register(&app, name).await;
    }
    let attacker = Some("203.0.113.9");
    for name in ["ann", "bob", "cat", "dan"] {
        let (status, body) = login_from(&app, name, "wrong-password", attacker).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
    }
    let (status, retry_after, body) = login_with_headers(&app, "eve", PASSWORD, attacker).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "too_many_attempts");
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    // Unknown names are refused the same way (nothing to learn about which exist).
    let (status, _) = login_from(&app, "nobody", "wrong-password", attacker).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Another address, even into an account the attacker tried: fine.
    let (status, body) = login_from(&app, "ann", PASSWORD, Some("198.51.100.7")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same /64 of IPv6 counts as one address; another /64 does not.
    for host in ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"] {
        login_from(&app, "bob", "wrong-password", Some(host)).await;
    }
    let (status, _) = login_from(&app, "bob", PASSWORD, Some("2001:db8::77")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = login_from(&app, "bob", PASSWORD, Some("2001:db8:0:1::1")).await;
    assert_eq!(status, StatusCode::OK);
}

/// Successful logins cost an address nothing: a shared address (an office behind NAT)
/// with many good logins and a few bad ones stays under the limit.
#[tokio::test]
async fn successful_logins_do_not_count_against_the_address() {
    let (_dir, app) = limited(3);
    register(&app, "ann").await;
    let office = Some("192.0.2.1");
    for _ in 0..5 {
        let (status, body) = login_from(&app, "ann", PASSWORD, office).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for _ in 0..2 {
        let (status, _) = login_from(&app, "ann", "wrong-password", office).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = login_from(&app, "ann", PASSWORD, office).await;
    assert_eq!(status, StatusCode::OK, "two failures of three: {body}");
    let (status, _) = login_from(&app, "ann", "wrong-password", office).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = login_from(&app, "ann", PASSWORD, office).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the third failure");
}

/// A burst of parallel guesses from one address is held to the limit too: each login
/// counts from its start, so they cannot all pass the check before the first fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_from_one_address_are_held_to_the_limit() {
    let (_dir, app) = limited(3);
    register(&app, "ann").await;
    let guesses = (0..12).map(|_| login_from(&app, "ann", "wrong-password", Some("203.0.113.1")));
    let outcomes = futures::future::join_all(guesses).await;
    let checked = outcomes
        .iter()
        .filter(|(status, _)| *status == StatusCode::UNAUTHORIZED)
        .count();
    let refused = outcomes
        .iter()
        .filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((checked, refused), (3, 9), "{outcomes:?}");
}

/// Without a client address (a router used in process, not behind the HTTP server) the
/// per-address limit does not apply; the per-account one still does.
#[tokio::test]
async fn requests_without_an_address_are_limited_per_account_only() {
    let (_dir, app) = limited(1);
    for name in ["ann", "bob", "cat"] {
        register(&app, name).await;
        let (status, _) = login_from(&app, name, "wrong-password", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = login_from(&app, "cat", PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // And the limit of 1 is real for an address.
    login_from(&app, "ann", "wrong-password", Some("203.0.113.2")).await;
    let (status, _) = login_from(&app, "ann", PASSWORD, Some("203.0.113.2")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

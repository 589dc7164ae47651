//! Push tokens and mutes end to end: the real router (driven with
//! `tower::ServiceExt::oneshot`), a real redb file in a temp dir, and the bus endpoint
//! the notifier asks (`Subject::sessions_push_targets()`) through an in-process bus.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    http::{Method, StatusCode},
};
use bytes::Bytes;
use natter_bus::{Bus, InProcessBus};
use natter_proto::{
    ErrorCode, Subject,
    bus::{PushDevice, PushTargets, PushTargetsRequest},
};
use natter_sessions::start;
use prost::Message;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod common;

use common::{call, error_code, harness};

const WAIT: Duration = Duration::from_secs(5);
const PUSH: &str = "/v1/devices/current/push";

/// A logged-in device: (user id, device id, access token).
struct Device {
    user: u64,
    device: u64,
    access: String,
}

async fn login(app: &Router, username: &str) -> Device {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/sessions",
        None,
        Some(json!({"username": username, "password": "password123", "device_name": "phone"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let num = |f: &str| body[f].as_str().unwrap().parse::<u64>().unwrap();
    Device {
        user: num("user_id"),
        device: num("device_id"),
        access: body["access_token"].as_str().unwrap().to_owned(),
    }
}

async fn signed_in(app: &Router, username: &str) -> Device {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/accounts",
        None,
        Some(json!({"username": username, "password": "password123"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    login(app, username).await
}

async fn set_push(app: &Router, d: &Device, token: &str, platform: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::PUT,
        PUSH,
        Some(&d.access),
        Some(json!({"token": token, "platform": platform})),
    )
    .await
}

async fn mute(app: &Router, d: &Device, conversation: &str, until: Value) -> (StatusCode, Value) {
    call(
        app,
        Method::PUT,
        &format!("/v1/conversations/{conversation}/mute"),
        Some(&d.access),
        Some(json!({ "until_ms": until })),
    )
    .await
}

async fn mutes(app: &Router, d: &Device) -> Value {
    let (status, body) = call(app, Method::GET, "/v1/mutes", Some(&d.access), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn targets(bus: &InProcessBus, user: u64, conversation: &str) -> PushTargets {
    let req = PushTargetsRequest {
        user_id: user,
        conversation_id: conversation.to_owned(),
    };
    let reply = bus
        .request(
            &Subject::sessions_push_targets(),
            Bytes::from(req.encode_to_vec()),
            WAIT,
        )
        .await
        .unwrap();
    PushTargets::decode(reply).unwrap()
}

fn device(d: &Device, token: &str, platform: &str) -> PushDevice {
    PushDevice {
        device_id: d.device,
        token: token.to_owned(),
        platform: platform.to_owned(),
    }
}

fn sorted(mut t: PushTargets) -> PushTargets {
    t.devices.sort_by_key(|d| d.device_id);
    t
}

#[tokio::test]
async fn every_push_and_mute_endpoint_needs_a_bearer() {
    let h = harness(None);
    let a = signed_in(&h.app, "alice").await;
    let cases = [
        (
            Method::PUT,
            PUSH,
            Some(json!({"token": "t", "platform": "fcm"})),
        ),
        (Method::DELETE, PUSH, None),
        (
            Method::PUT,
            "/v1/conversations/g.1/mute",
            Some(json!({"until_ms": 0})),
        ),
        (Method::GET, "/v1/mutes", None),
    ];
    for (method, uri, body) in cases {
        let (status, resp) = call(&h.app, method.clone(), uri, None, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {resp}");
        assert_eq!(error_code(&resp), "unauthorized");
        let (status, _) = call(&h.app, method.clone(), uri, Some("garbage"), body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} bad bearer"
        );
        // The same request with the bearer goes through.
        let (status, resp) = call(&h.app, method.clone(), uri, Some(&a.access), body).await;
        assert!(status.is_success(), "{method} {uri}: {status} {resp}");
    }
    // Nothing the anonymous calls sent was stored.
    assert_eq!(mutes(&h.app, &a).await, json!({"mutes": []}));
}

#[tokio::test]
async fn push_tokens_are_validated() {
    let h = harness(None);
    let a = signed_in(&h.app, "alice").await;
    let long = "t".repeat(4097);
    for (token, platform) in [
        ("", "fcm"),
        (long.as_str(), "fcm"),
        ("a\nb", "fcm"),
        ("a\u{0}b", "fcm"),
        ("a\u{7f}", "fcm"),
        ("tök", "fcm"),
        ("ok", "gcm"),
        ("ok", "FCM"),
        ("ok", ""),
    ] {
        let (status, body) = set_push(&h.app, &a, token, platform).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{token:?} on {platform:?}: {body}"
        );
        assert_eq!(error_code(&body), "invalid_argument");
    }
    for body in [
        json!({"token": "t"}),
        json!({"platform": "fcm"}),
        json!({"token": 5, "platform": "fcm"}),
    ] {
        let (status, resp) = call(&h.app, Method::PUT, PUSH, Some(&a.access), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
        assert_eq!(error_code(&resp), "invalid_argument");
    }
    let shutdown = CancellationToken::new();
    start(
        h.sessions.clone(),
        Arc::new(h.bus.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(
        targets(&h.bus, a.user, "g.1").await.devices.is_empty(),
        "nothing refused was stored"
    );
    let max = "t".repeat(4096);
    for (token, platform) in [
        ("a", "apns"),
        (" ~!{}", "webpush"),
        (max.as_str(), "other"),
        ("fcm-token:x_y", "fcm"),
    ] {
        let (status, body) = set_push(&h.app, &a, token, platform).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{token:?}: {body}");
        // The last one registered is the device's token.
        assert_eq!(
            targets(&h.bus, a.user, "g.1").await.devices,
            vec![device(&a, token, platform)]
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn push_targets_follow_registrations_moves_and_logouts() {
    let h = harness(None);
    let shutdown = CancellationToken::new();
    let task = start(
        h.sessions.clone(),
        Arc::new(h.bus.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let a1 = signed_in(&h.app, "alice").await;
    let a2 = login(&h.app, "alice").await;
    let a3 = login(&h.app, "alice").await;
    let b = signed_in(&h.app, "bob").await;
    let conv = format!("d.{}.{}", a1.user.min(b.user), a1.user.max(b.user));

    assert_eq!(
        targets(&h.bus, a1.user, &conv).await,
        PushTargets::default()
    );
    assert_eq!(
        set_push(&h.app, &a1, "tok-1", "fcm").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        set_push(&h.app, &a2, "tok-2", "apns").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        set_push(&h.app, &b, "tok-b", "webpush").await.0,
        StatusCode::NO_CONTENT
    );
    let mut want = vec![device(&a1, "tok-1", "fcm"), device(&a2, "tok-2", "apns")];
    want.sort_by_key(|d| d.device_id);
    let got = sorted(targets(&h.bus, a1.user, &conv).await);
    assert_eq!(got.devices, want, "a3 registered no token");
    assert!(!got.muted);
    assert_eq!(got.error, None);

    // Bob's phone now holds alice's a2 token (the app was reinstalled under his
    // account): a2 loses it.
    assert_eq!(
        set_push(&h.app, &b, "tok-2", "apns").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        targets(&h.bus, a1.user, &conv).await.devices,
        vec![device(&a1, "tok-1", "fcm")]
    );
    assert_eq!(
        targets(&h.bus, b.user, &conv).await.devices,
        vec![device(&b, "tok-2", "apns")]
    );
    // Within one user too.
    assert_eq!(
        set_push(&h.app, &a3, "tok-1", "fcm").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        targets(&h.bus, a1.user, &conv).await.devices,
        vec![device(&a3, "tok-1", "fcm")]
    );

    // DELETE forgets it, twice is fine.
    for _ in 0..2 {
        let (status, body) = call(&h.app, Method::DELETE, PUSH, Some(&a3.access), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    assert!(targets(&h.bus, a1.user, &conv).await.devices.is_empty());

    // Logging out drops the device's token.
    assert_eq!(
        set_push(&h.app, &a1, "tok-1", "fcm").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        set_push(&h.app, &a2, "tok-2b", "fcm").await.0,
        StatusCode::NO_CONTENT
    );
    let (status, _) = call(
        &h.app,
        Method::DELETE,
        "/v1/sessions/current",
        Some(&a1.access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        targets(&h.bus, a1.user, &conv).await.devices,
        vec![device(&a2, "tok-2b", "fcm")]
    );
    // ... and frees it: registering it elsewhere takes it from nobody, and a logged-out
    // device cannot register again.
    assert_eq!(
        set_push(&h.app, &a1, "tok-x", "fcm").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        set_push(&h.app, &b, "tok-1", "fcm").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        targets(&h.bus, b.user, &conv).await.devices,
        vec![device(&b, "tok-1", "fcm")]
    );

    // Muted: the answer says so (the devices are still listed).
    assert_eq!(
        mute(&h.app, &a2, &conv, json!("18446744073709551615"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let got = targets(&h.bus, a2.user, &conv).await;
    assert!(got.muted);
    assert_eq!(got.devices, vec![device(&a2, "tok-2b", "fcm")]);
    assert!(
        !targets(&h.bus, a2.user, "g.77").await.muted,
        "another conversation"
    );
    assert!(
        !targets(&h.bus, b.user, &conv).await.muted,
        "the other member"
    );

    // Bad requests get an answer with an error, not a timeout.
    for (user, conversation) in [(0, conv.as_str()), (a2.user, "x"), (a2.user, "")] {
        let got = targets(&h.bus, user, conversation).await;
        assert_eq!(
            got.error.map(|e| e.code),
            Some(ErrorCode::InvalidArgument as i32),
            "{user} {conversation:?}"
        );
        assert!(got.devices.is_empty());
    }
    let reply = h
        .bus
        .request(
            &Subject::sessions_push_targets(),
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            WAIT,
        )
        .await
        .unwrap();
    assert!(PushTargets::decode(reply).unwrap().error.is_some());
    // An unknown user has nowhere to push.
    assert_eq!(targets(&h.bus, 12345, &conv).await, PushTargets::default());

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn mutes_validate_expire_and_list_as_strings() {
    let h = harness(None);
    let a = signed_in(&h.app, "alice").await;
    let b = signed_in(&h.app, "bob").await;
    for bad in [
        "x",
        "g.0",
        "g.01",
        "d.5.5",
        "d.9.2",
        "g.1.2",
        "%FF",
        "g.9007199254740992",
    ] {
        let (status, body) = mute(&h.app, &a, bad, json!(u64::MAX)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_argument");
    }
    for bad in [
        json!(-1),
        json!("-1"),
        json!(1.5),
        json!("abc"),
        json!(""),
        json!("18446744073709551616"),
        json!(null),
        json!(" 5"),
    ] {
        let (status, body) = mute(&h.app, &a, "g.1", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_argument");
    }
    assert_eq!(
        mutes(&h.app, &a).await,
        json!({"mutes": []}),
        "nothing refused was stored"
    );

    let now = natter_proto::now_ms();
    let later = now + 3_600_000;
    let dm = format!("d.{}.{}", a.user.min(b.user), a.user.max(b.user));
    for (conversation, until) in [
        ("g.1", json!(u64::MAX)),
        ("g.2", json!("18446744073709551615")),
        ("g.3", json!(later)),
        ("g.4", json!(later.to_string())),
        ("g.5", json!(now - 1)),
        (dm.as_str(), json!(later)),
    ] {
        let (status, body) = mute(&h.app, &a, conversation, until).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{conversation}: {body}");
    }
    let max = u64::MAX.to_string();
    let later_s = later.to_string();
    let mut want = vec![
        (dm.as_str(), later_s.as_str()),
        ("g.1", max.as_str()),
        ("g.2", max.as_str()),
        ("g.3", later_s.as_str()),
        ("g.4", later_s.as_str()),
    ];
    want.sort();
    let want: Vec<Value> = want
        .into_iter()
        .map(|(c, u)| json!({"conversation_id": c, "until_ms": u}))
        .collect();
    assert_eq!(
        mutes(&h.app, &a).await,
        json!({ "mutes": want }),
        "g.5 ended in the past"
    );
    assert_eq!(
        mutes(&h.app, &b).await,
        json!({"mutes": []}),
        "mutes are per user"
    );

    // 0 unmutes; unmuting what is not muted is fine.
    for c in ["g.1", "g.3", "g.99"] {
        assert_eq!(
            mute(&h.app, &a, c, json!(0)).await.0,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        mute(&h.app, &a, "g.4", json!("0")).await.0,
        StatusCode::NO_CONTENT
    );
    let listed: Vec<String> = mutes(&h.app, &a).await["mutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conversation_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, vec![dm.clone(), "g.2".to_owned()]);

    // A mute for a moment just ahead stops being in force once it passes.
    let soon = natter_proto::now_ms() + 500;
    assert_eq!(
        mute(&h.app, &a, "g.6", json!(soon)).await.0,
        StatusCode::NO_CONTENT
    );
    let shutdown = CancellationToken::new();
    start(
        h.sessions.clone(),
        Arc::new(h.bus.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let first = targets(&h.bus, a.user, "g.6").await.muted;
    // Answered before `soon` (so asked before it too): it was in force.
    if natter_proto::now_ms() < soon {
        assert!(first, "a mute until a time ahead is in force");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while natter_proto::now_ms() <= soon {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!targets(&h.bus, a.user, "g.6").await.muted);
    assert_eq!(
        mutes(&h.app, &a).await["mutes"].as_array().unwrap().len(),
        2
    );
    shutdown.cancel();
}

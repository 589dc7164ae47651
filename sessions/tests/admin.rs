//! The admin side of natter-sessions: `natter.admin.sessions` answered over an
//! in-process bus (search, inspect, disable/enable, delete, announce, and their errors),
//! what a ban does to device checks, bearer checks, logins and refreshes, and
//! `GET /v1/announcements`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    http::{Method, StatusCode},
};
use bytes::Bytes;
use futures::StreamExt;
use natter_bus::{Bus, BusEvent, InProcessBus, Subscription};
use natter_proto::{
    AdminService, ErrorCode, Subject, UserId,
    bus::{
        AdminSessionsReply, AdminSessionsRequest, AdminSetDisabled, AdminUserSearch, DeviceCheck,
        DeviceStatus, Kick, PushTargets, PushTargetsRequest, UserPush, admin_sessions_request::Op,
        user_push,
    },
    v1::{ServerFrame, server_frame},
};
use natter_sessions::{AuthError, start};
use prost::Message;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod common;

use common::{Harness, call, error_code, harness, refresh};

const WAIT: Duration = Duration::from_secs(5);
const PASSWORD: &str = "password123";

/// A harness whose bus endpoints run until it is dropped.
struct Admin {
    h: Harness,
    _stop: tokio_util::sync::DropGuard,
}

async fn admin() -> Admin {
    let h = harness(None);
    let stop = CancellationToken::new();
    start(h.sessions.clone(), Arc::new(h.bus.clone()), stop.clone())
        .await
        .unwrap();
    Admin {
        h,
        _stop: stop.drop_guard(),
    }
}

async fn ask(bus: &InProcessBus, op: Op) -> AdminSessionsReply {
    ask_raw(bus, AdminSessionsRequest { op: Some(op) }.encode_to_vec()).await
}

async fn ask_raw(bus: &InProcessBus, payload: Vec<u8>) -> AdminSessionsReply {
    let reply = bus
        .request(
            &Subject::admin(AdminService::Sessions),
            Bytes::from(payload),
            WAIT,
        )
        .await
        .unwrap();
    AdminSessionsReply::decode(reply).unwrap()
}

fn code(reply: &AdminSessionsReply) -> Option<ErrorCode> {
    reply
        .error
        .as_ref()
        .map(|e| ErrorCode::try_from(e.code).unwrap())
}

async fn register(app: &Router, username: &str) -> u64 {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/accounts",
        None,
        Some(json!({"username": username, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["user_id"].as_str().unwrap().parse().unwrap()
}

async fn login(app: &Router, username: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/sessions",
        None,
        Some(json!({"username": username, "password": PASSWORD, "device_name": "phone"})),
    )
    .await
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

async fn device_status(bus: &InProcessBus, user: u64, device: u64) -> DeviceStatus {
    let check = DeviceCheck {
        user_id: user,
        device_id: device,
    };
    let reply = bus
        .request(
            &Subject::sessions_device(),
            Bytes::from(check.encode_to_vec()),
            WAIT,
        )
        .await
        .unwrap();
    DeviceStatus::decode(reply).unwrap()
}

async fn next_push(sub: &mut Subscription) -> UserPush {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(BusEvent::Message(m))) => UserPush::decode(m.payload).unwrap(),
        other => panic!("no push: {other:?}"),
    }
}

fn set_disabled(user: u64, disabled: bool, reason: &str) -> Op {
    Op::SetDisabled(AdminSetDisabled {
        user_id: user,
        disabled,
        reason: reason.into(),
    })
}

#[tokio::test]
async fn a_ban_refuses_every_check_until_lifted_and_keeps_the_devices() {
    let a = admin().await;
    let (app, bus) = (&a.h.app, &a.h.bus);
    let alice = register(app, "alice").await;
    let bob = register(app, "bob").await;
    let (_, grant) = login(app, "alice").await;
    let device: u64 = field(&grant, "device_id").parse().unwrap();
    let access = field(&grant, "access_token").to_owned();
    let refresh_token = field(&grant, "refresh_token").to_owned();
    let (_, bob_grant) = login(app, "bob").await;
    let mut pushes = bus
        .subscribe(&Subject::user(UserId(alice)), 8)
        .await
        .unwrap();
    let mut bob_pushes = bus.subscribe(&Subject::user(UserId(bob)), 8).await.unwrap();

    let reply = ask(bus, set_disabled(alice, true, "spam")).await;
    assert_eq!(code(&reply), None, "{reply:?}");
    let account = reply.account.unwrap();
    assert_eq!(
        (account.user_id, account.username.as_str()),
        (alice, "alice")
    );
    assert!(account.disabled);
    assert_eq!(account.disabled_reason, "spam");
    assert!(account.disabled_at_ms > 0);
    assert_eq!(account.active_devices, 1);
    let push = next_push(&mut pushes).await;
    assert_eq!(
        push.body,
        Some(user_push::Body::Kick(Kick {
            device_id: 0,
            disabled: true,
            reason: "spam".into()
        }))
    );

    // Every check fails while disabled.
    assert_eq!(
        device_status(bus, alice, device).await,
        DeviceStatus {
            active: false,
            username: String::new(),
            disabled: true
        }
    );
    assert!(
        !a.h.sessions
            .is_device_active(UserId(alice), natter_proto::DeviceId(device))
    );
    assert_eq!(a.h.sessions.authenticate(&access), Err(AuthError::Disabled));
    let (status, body) = call(app, Method::GET, "/v1/users/bob", Some(&access), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "account_disabled");
    let (status, body) = login(app, "alice").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "account_disabled");
    // A wrong password still says only that: a ban is not told to strangers.
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/sessions",
        None,
        Some(json!({"username": "alice", "password": "wrongpassword", "device_name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = refresh(app, &refresh_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "account_disabled");
    // No pushes for a banned user.
    let targets = bus
        .request(
            &Subject::sessions_push_targets(),
            Bytes::from(
                PushTargetsRequest {
                    user_id: alice,
                    conversation_id: format!("d.{}.{}", alice.min(bob), alice.max(bob)),
                }
                .encode_to_vec(),
            ),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        PushTargets::decode(targets).unwrap(),
        PushTargets::default()
    );
    // Bob is untouched.
    assert!(
        device_status(bus, bob, field(&bob_grant, "device_id").parse().unwrap())
            .await
            .active
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), bob_pushes.next())
            .await
            .is_err(),
        "bob got no kick"
    );

    // Disabling again is fine (and kicks again); the first time is kept.
    let again = ask(bus, set_disabled(alice, true, "still spam")).await;
    let again = again.account.unwrap();
    assert_eq!(again.disabled_at_ms, account.disabled_at_ms);
    assert_eq!(again.disabled_reason, "still spam");
    assert!(matches!(
        next_push(&mut pushes).await.body,
        Some(user_push::Body::Kick(Kick { disabled: true, .. }))
    ));

    // Enabled: the same tokens work again, and no kick is sent.
    let reply = ask(bus, set_disabled(alice, false, "")).await;
    let account = reply.account.unwrap();
    assert!(!account.disabled);
    assert_eq!(
        (account.disabled_reason.as_str(), account.disabled_at_ms),
        ("", 0)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), pushes.next())
            .await
            .is_err(),
        "enabling kicks nobody"
    );
    let status = device_status(bus, alice, device).await;
    assert!(status.active && !status.disabled);
    assert_eq!(status.username, "alice");
    assert!(a.h.sessions.authenticate(&access).is_ok());
    let (status, body) = refresh(app, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login(app, "alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_ban_survives_a_restart() {
    let Harness {
        dir,
        sessions,
        bus,
        app,
    } = harness(None);
    let stop = CancellationToken::new();
    let task = start(sessions.clone(), Arc::new(bus.clone()), stop.clone())
        .await
        .unwrap();
    let alice = register(&app, "alice").await;
    let (_, grant) = login(&app, "alice").await;
    let access = field(&grant, "access_token").to_owned();
    assert_eq!(code(&ask(&bus, set_disabled(alice, true, "")).await), None);
    stop.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    drop((sessions, app));

    // The key file is in the directory: the same tokens verify after the reopen.
    let reopened = natter_sessions::Sessions::open(common::config(dir.path(), None)).unwrap();
    assert_eq!(reopened.authenticate(&access), Err(AuthError::Disabled));
}

#[tokio::test]
async fn search_and_inspect() {
    let a = admin().await;
    let (app, bus) = (&a.h.app, &a.h.bus);
    for name in ["carol", "alice", "alfred", "bob"] {
        register(app, name).await;
    }
    let (_, first) = login(app, "alice").await;
    let (_, second) = login(app, "alice").await;
    // Log the first device out, and give the second a push token.
    let (status, _) = call(
        app,
        Method::PUT,
        "/v1/devices/current/push",
        Some(field(&second, "access_token")),
        Some(json!({"token": "t", "platform": "fcm"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        app,
        Method::DELETE,
        "/v1/sessions/current",
        Some(field(&first, "access_token")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let search = |prefix: &str, after: &str, limit: u32| {
        Op::Search(AdminUserSearch {
            prefix: prefix.into(),
            after: after.into(),
            limit,
        })
    };
    let names = |r: &AdminSessionsReply| -> Vec<String> {
        r.accounts.iter().map(|a| a.username.clone()).collect()
    };
    let page = ask(bus, search("", "", 2)).await;
    assert_eq!(
        (names(&page), page.more),
        (vec!["alfred".into(), "alice".into()], true)
    );
    assert_eq!(page.accounts[1].active_devices, 1);
    assert!(
        page.accounts[1].devices.is_empty(),
        "devices only on inspect"
    );
    let page = ask(bus, search("", "alice", 2)).await;
    assert_eq!(
        (names(&page), page.more),
        (vec!["bob".into(), "carol".into()], false)
    );
    let page = ask(bus, search("al", "", 0)).await;
    assert_eq!(
        (names(&page), page.more),
        (vec!["alfred".into(), "alice".into()], false)
    );
    // A limit above 500 is lowered, not refused.
    assert_eq!(ask(bus, search("", "", u32::MAX)).await.accounts.len(), 4);
    let bad = ask(bus, search(&"a".repeat(65), "", 1)).await;
    assert_eq!(code(&bad), Some(ErrorCode::InvalidArgument));

    let alice = page.accounts[1].user_id;
    let reply = ask(bus, Op::Inspect(alice)).await;
    let account = reply.account.unwrap();
    assert_eq!(account.username, "alice");
    assert_eq!(account.active_devices, 1);
    let devices: Vec<_> = account
        .devices
        .iter()
        .map(|d| (d.device_id.to_string(), d.active, d.push_platform.as_str()))
        .collect();
    assert_eq!(
        devices,
        vec![
            (field(&second, "device_id").to_owned(), true, "fcm"),
            (field(&first, "device_id").to_owned(), false, ""),
        ],
        "newest first"
    );
    assert_eq!(
        code(&ask(bus, Op::Inspect(alice + 1)).await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(&ask(bus, Op::Inspect(0)).await),
        Some(ErrorCode::InvalidArgument)
    );
}

#[tokio::test]
async fn bad_requests_get_errors_not_silence() {
    let a = admin().await;
    let bus = &a.h.bus;
    let alice = register(&a.h.app, "alice").await;
    let undecodable = ask_raw(bus, vec![0xff, 0xff, 0xff]).await;
    assert_eq!(code(&undecodable), Some(ErrorCode::InvalidArgument));
    let empty = ask_raw(bus, Vec::new()).await;
    assert_eq!(
        code(&empty),
        Some(ErrorCode::InvalidArgument),
        "no operation"
    );
    for (op, want) in [
        (set_disabled(0, true, ""), ErrorCode::InvalidArgument),
        (set_disabled(alice + 1, true, ""), ErrorCode::NotFound),
        (
            set_disabled(alice, true, &"r".repeat(201)),
            ErrorCode::InvalidArgument,
        ),
        (
            set_disabled(alice, true, "a\nb"),
            ErrorCode::InvalidArgument,
        ),
        (Op::Delete(0), ErrorCode::InvalidArgument),
        (Op::Delete(alice + 1), ErrorCode::NotFound),
        (Op::Announce("   ".into()), ErrorCode::InvalidArgument),
        (Op::Announce("a\tb".into()), ErrorCode::InvalidArgument),
        (Op::Announce("x".repeat(4097)), ErrorCode::InvalidArgument),
    ] {
        let reply = ask(bus, op.clone()).await;
        assert_eq!(code(&reply), Some(want), "{op:?}");
        assert!(reply.account.is_none() && reply.announcement.is_none());
    }
    // None of that changed alice.
    assert!(!ask(bus, Op::Inspect(alice)).await.account.unwrap().disabled);
    // The longest reason is fine.
    let ok = ask(bus, set_disabled(alice, true, &"é".repeat(100))).await;
    assert_eq!(code(&ok), None);
}

#[tokio::test]
async fn deleting_an_account_kicks_it_and_frees_the_name() {
    let a = admin().await;
    let (app, bus) = (&a.h.app, &a.h.bus);
    let alice = register(app, "alice").await;
    let (_, grant) = login(app, "alice").await;
    let device: u64 = field(&grant, "device_id").parse().unwrap();
    let mut pushes = bus
        .subscribe(&Subject::user(UserId(alice)), 8)
        .await
        .unwrap();

    let reply = ask(bus, Op::Delete(alice)).await;
    let account = reply.account.unwrap();
    assert_eq!(
        (account.user_id, account.username.as_str()),
        (alice, "alice")
    );
    assert_eq!(account.active_devices, 1);
    assert_eq!(
        next_push(&mut pushes).await.body,
        Some(user_push::Body::Kick(Kick {
            device_id: 0,
            disabled: true,
            reason: "account deleted".into()
        }))
    );
    assert_eq!(
        code(&ask(bus, Op::Delete(alice)).await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(&ask(bus, Op::Inspect(alice)).await),
        Some(ErrorCode::NotFound)
    );

    let status = device_status(bus, alice, device).await;
    assert!(!status.active && !status.disabled);
    assert_eq!(
        a.h.sessions.authenticate(field(&grant, "access_token")),
        Err(AuthError::Revoked)
    );
    let (status, _) = refresh(app, field(&grant, "refresh_token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = login(app, "alice").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(
        app,
        Method::GET,
        &format!("/v1/users/by-id/{alice}"),
        Some(field(&login_as(app, "bob").await, "access_token")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The name is free again, under a new id.
    let again = register(app, "alice").await;
    assert_ne!(again, alice);
    let (status, body) = login(app, "alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn login_as(app: &Router, username: &str) -> Value {
    register(app, username).await;
    let (status, body) = login(app, username).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn announcements_are_published_stored_and_listed() {
    let a = admin().await;
    let (app, bus) = (&a.h.app, &a.h.bus);
    let grant = login_as(app, "alice").await;
    let access = field(&grant, "access_token");
    let mut broadcast = bus.subscribe(&Subject::broadcast(), 8).await.unwrap();

    let mut ids = Vec::new();
    for text in ["  maintenance tonight\n", "second", "third"] {
        let reply = ask(bus, Op::Announce(text.into())).await;
        assert_eq!(code(&reply), None);
        let announcement = reply.announcement.unwrap();
        assert_eq!(announcement.text, text.trim());
        let frame = match tokio::time::timeout(WAIT, broadcast.next()).await {
            Ok(Some(BusEvent::Message(m))) => ServerFrame::decode(m.payload).unwrap(),
            other => panic!("nothing broadcast: {other:?}"),
        };
        assert_eq!(frame.id, 0);
        assert_eq!(
            frame.body,
            Some(server_frame::Body::Announcement(announcement.clone()))
        );
        ids.push(announcement.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let list = |query: String, bearer: Option<&str>| {
        let bearer = bearer.map(str::to_owned);
        async move {
            call(
                app,
                Method::GET,
                &format!("/v1/announcements{query}"),
                bearer.as_deref(),
                None,
            )
            .await
        }
    };
    let texts = |body: &Value| -> Vec<String> {
        body["announcements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = list("".into(), Some(access)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(texts(&body), ["maintenance tonight", "second", "third"]);
    let first = &body["announcements"][0];
    assert_eq!(first["id"], ids[0].to_string());
    assert!(
        first["created_at_ms"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let (_, body) = list("?limit=2".into(), Some(access)).await;
    assert_eq!(texts(&body), ["maintenance tonight", "second"]);
    let after = format!("?after={}&limit=200", ids[1]);
    let (_, body) = list(after, Some(access)).await;
    assert_eq!(texts(&body), ["third"]);
    let (_, body) = list("?after=18446744073709551615".into(), Some(access)).await;
    assert_eq!(texts(&body), Vec::<String>::new());
    let (status, body) = list("?after=abc".into(), Some(access)).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (status, body) = list("?limit=-1".into(), Some(access)).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let (status, body) = list("".into(), None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
}

#[tokio::test]
async fn announcement_pages_are_capped() {
    let a = admin().await;
    let grant = login_as(&a.h.app, "alice").await;
    for i in 0..205 {
        let reply = ask(&a.h.bus, Op::Announce(format!("n{i}"))).await;
        assert_eq!(code(&reply), None);
    }
    let count = |query: &'static str| {
        let app = a.h.app.clone();
        let access = field(&grant, "access_token").to_owned();
        async move {
            let (status, body) = call(
                &app,
                Method::GET,
                &format!("/v1/announcements{query}"),
                Some(&access),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["announcements"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("").await, 50);
    assert_eq!(count("?limit=0").await, 50);
    assert_eq!(count("?limit=1000").await, 200);
    assert_eq!(count("?after=200").await, 5);
}

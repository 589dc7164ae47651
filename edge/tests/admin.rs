//! The edge's side of the admin API, over real sockets: an edge and the sessions service
//! on one in-process bus, WebSocket clients (JSON subprotocol) on loopback. A `Kick` of
//! one device closes only it (4004); disabling the account sends an error frame and
//! closes every device (4005), and the upgrade is then refused with 403
//! `account_disabled` until the account is enabled; an announcement reaches every open
//! connection once.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use natter_bus::{Bus, BusEvent, InProcessBus};
use natter_edge::{Config as EdgeConfig, Edge};
use natter_proto::{
    AdminService, ErrorCode, Subject, UserId,
    bus::{
        AdminSessionsReply, AdminSessionsRequest, AdminSetDisabled, DeviceCheck, DeviceStatus,
        Kick, UserPush, admin_sessions_request::Op, user_push,
    },
    close_code,
    v1::{ServerFrame, server_frame::Body as Out},
};
use natter_sessions::{Config, Sessions, directory::MemoryDirectory};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Message},
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Server {
    addr: SocketAddr,
    bus: InProcessBus,
    _dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

async fn server() -> Server {
    server_with(true).await
}

/// `sessions_on_bus`: whether the sessions service answers on the bus (device checks,
/// admin requests); without it a test answers the device checks itself.
async fn server_with(sessions_on_bus: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::open(Config {
        data_dir: dir.path().to_owned(),
        argon2_memory_kib: 256,
        ..Config::default()
    })
    .unwrap();
    let bus = InProcessBus::new();
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    let stop = CancellationToken::new();
    if sessions_on_bus {
        natter_sessions::start(sessions.clone(), shared.clone(), stop.clone())
            .await
            .unwrap();
    }
    let edge = Edge::new(
        EdgeConfig {
            // No presence service here: its reports fail quickly and quietly.
            request_timeout: Duration::from_millis(500),
            ..EdgeConfig::default()
        },
        shared.clone(),
        sessions.verifier(),
        Arc::new(MemoryDirectory::new()),
        stop.clone(),
    );
    let app = edge
        .router()
        .merge(natter_sessions::router(sessions, shared));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(serving.cancelled_owned())
            .await
            .ok();
    });
    Server {
        addr,
        bus,
        _dir: dir,
        _stop: stop.drop_guard(),
    }
}

/// One HTTP/1.1 request with a JSON body; the status and the JSON answer.
async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: natter\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let (_, json) = text.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// Registers `username` (once) and logs a new device in: (user id, device id, token).
async fn device(addr: SocketAddr, username: &str) -> (u64, u64, String) {
    let credentials = json!({"username": username, "password": "password123"});
    let (status, _) = post(addr, "/v1/accounts", credentials.clone()).await;
    assert!(status == 201 || status == 409, "register: {status}");
    let mut login = credentials;
    login["device_name"] = json!("phone");
    let (status, grant) = post(addr, "/v1/sessions", login).await;
    assert_eq!(status, 200, "{grant}");
    let id = |f: &str| grant[f].as_str().unwrap().parse::<u64>().unwrap();
    (
        id("user_id"),
        id("device_id"),
        grant["access_token"].as_str().unwrap().to_owned(),
    )
}

async fn connect(addr: SocketAddr, token: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("ws://{addr}/v1/ws?access_token={token}");
    let (mut ws, _) = connect_async(url).await?;
    match next(&mut ws).await {
        Some(ServerFrame {
            body: Some(Out::Welcome(_)),
            ..
        }) => Ok(ws),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The next server frame; `None` once the server closed.
async fn next(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("nothing came")
        {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error: {e}"),
        }
    }
}

/// Reads up to the close frame: the frames before it, then its code and reason.
async fn closed(ws: &mut Ws) -> (Vec<ServerFrame>, u16, String) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close came")
        {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frames, frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error: {e}"),
        }
    }
}

/// The connection still answers a ping, and nothing came before the pong.
async fn alive(ws: &mut Ws) {
    let ping = json!({"id": "77", "ping": {"clientTimeMs": "1"}}).to_string();
    ws.send(Message::Text(ping.into())).await.unwrap();
    match next(ws).await {
        Some(ServerFrame {
            id: 77,
            body: Some(Out::Pong(_)),
        }) => {}
        other => panic!("expected the pong, got {other:?}"),
    }
}

async fn admin(bus: &InProcessBus, op: Op) -> AdminSessionsReply {
    let request = AdminSessionsRequest { op: Some(op) };
    let reply = bus
        .request(
            &Subject::admin(AdminService::Sessions),
            Bytes::from(request.encode_to_vec()),
            WAIT,
        )
        .await
        .unwrap();
    let reply = AdminSessionsReply::decode(reply).unwrap();
    assert_eq!(reply.error, None);
    reply
}

fn set_disabled(user: u64, disabled: bool) -> Op {
    Op::SetDisabled(AdminSetDisabled {
        user_id: user,
        disabled,
        reason: "too much spam".into(),
    })
}

#[tokio::test]
async fn kicks_close_one_device_or_all_and_a_ban_refuses_the_upgrade() {
    let s = server().await;
    let (alice, a1, a1_token) = device(s.addr, "alice").await;
    let (_, _, a2_token) = device(s.addr, "alice").await;
    let (_, _, b1_token) = device(s.addr, "bob").await;
    let mut a1_ws = connect(s.addr, &a1_token).await.unwrap();
    let mut a2_ws = connect(s.addr, &a2_token).await.unwrap();
    let mut b1_ws = connect(s.addr, &b1_token).await.unwrap();

    // A kick of one device (not a ban): only it closes, and it may come back at once.
    let kick = UserPush {
        body: Some(user_push::Body::Kick(Kick {
            device_id: a1,
            disabled: false,
            reason: "please reconnect".into(),
        })),
        ..UserPush::default()
    };
    s.bus
        .publish(
            &Subject::user(UserId(alice)),
            Bytes::from(kick.encode_to_vec()),
        )
        .await
        .unwrap();
    let (frames, code, reason) = closed(&mut a1_ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (close_code::KICKED, "please reconnect")
    );
    assert!(frames.is_empty(), "{frames:?}");
    alive(&mut a2_ws).await;
    let mut a1_ws = connect(s.addr, &a1_token).await.unwrap();

    // A ban closes every device of the user, each told why first.
    admin(&s.bus, set_disabled(alice, true)).await;
    for ws in [&mut a1_ws, &mut a2_ws] {
        let (frames, code, reason) = closed(ws).await;
        assert_eq!(
            (code, reason.as_str()),
            (close_code::ACCOUNT_DISABLED, "too much spam")
        );
        let errors: Vec<_> = frames
            .into_iter()
            .filter_map(|f| match f.body {
                Some(Out::Error(e)) => Some((f.id, e.code, e.message)),
                _ => None,
            })
            .collect();
        assert_eq!(
            errors,
            vec![(
                0,
                ErrorCode::AccountDisabled as i32,
                "too much spam".to_owned()
            )]
        );
    }
    alive(&mut b1_ws).await;

    // While disabled, the upgrade is refused with 403, not 401.
    match connect(s.addr, &a2_token).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "account_disabled");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| "a connection")),
    }
    match connect(s.addr, "not-a-token").await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| "a connection")),
    }

    // Enabled again: the same device connects with its old token.
    admin(&s.bus, set_disabled(alice, false)).await;
    let mut a2_ws = connect(s.addr, &a2_token).await.unwrap();
    alive(&mut a2_ws).await;

    // Deleting the account closes it like a ban.
    admin(&s.bus, Op::Delete(alice)).await;
    let (_, code, reason) = closed(&mut a2_ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (close_code::ACCOUNT_DISABLED, "account deleted")
    );
    alive(&mut b1_ws).await;
}

#[tokio::test]
async fn announcements_reach_every_connection_once() {
    let s = server().await;
    let mut sockets = Vec::new();
    for name in ["alice", "alice", "bob"] {
        let (_, _, token) = device(s.addr, name).await;
        sockets.push(connect(s.addr, &token).await.unwrap());
    }
    let reply = admin(
        &s.bus,
        Op::Announce("maintenance at 02:00\nback soon".into()),
    )
    .await;
    let announcement = reply.announcement.unwrap();
    for ws in &mut sockets {
        let frame = next(ws).await.unwrap();
        assert_eq!(frame.id, 0);
        assert_eq!(frame.body, Some(Out::Announcement(announcement.clone())));
        // Once: the next frame is the answer to a ping, not a second copy.
        alive(ws).await;
    }
    // A connection opened afterwards does not get it pushed (it lists it over REST).
    let (_, _, token) = device(s.addr, "carol").await;
    let mut late = connect(s.addr, &token).await.unwrap();
    alive(&mut late).await;
}

/// A close published while the edge waits for the device check (a logout, ban or kick
/// committed just after the check was answered) still reaches the connection: the edge
/// subscribes to the user's pushes before it asks. Here the check is answered by the
/// test, which publishes a kick first: an edge that subscribed only after the answer
/// would miss it and keep the connection open.
#[tokio::test]
async fn a_close_published_during_the_device_check_is_not_missed() {
    let s = server_with(false).await;
    let (_, _, token) = device(s.addr, "alice").await;
    let mut checks = s
        .bus
        .queue_subscribe(&Subject::sessions_device(), "sessions", 8)
        .await
        .unwrap();
    let bus = s.bus.clone();
    tokio::spawn(async move {
        while let Some(BusEvent::Message(m)) = checks.next().await {
            let check = DeviceCheck::decode(m.payload.clone()).unwrap();
            let kick = UserPush {
                body: Some(user_push::Body::Kick(Kick {
                    device_id: check.device_id,
                    disabled: false,
                    reason: "raced".into(),
                })),
                ..UserPush::default()
            };
            bus.publish(
                &Subject::user(UserId(check.user_id)),
                Bytes::from(kick.encode_to_vec()),
            )
            .await
            .unwrap();
            let status = DeviceStatus {
                active: true,
                username: "alice".into(),
                disabled: false,
            };
            natter_bus::reply(&bus, &m, Bytes::from(status.encode_to_vec()))
                .await
                .unwrap();
        }
    });
    let mut ws = connect(s.addr, &token).await.unwrap();
    let (_, code, reason) = closed(&mut ws).await;
    assert_eq!((code, reason.as_str()), (close_code::KICKED, "raced"));
}

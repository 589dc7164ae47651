//! The client against a scripted WebSocket server in the test itself, for behaviour that
//! spans the background tasks: presence renewal (chunking, renewal at half the TTL, at
//! once after a reconnect, events only for changes) and withheld messages (acked, never
//! handed out).

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use natter_proto::v1::{
    self, ClientFrame, PresenceState, ServerFrame, client_frame::Body as CBody,
    server_frame::Body as SBody,
};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message as WsMessage,
        handshake::server::{Request, Response},
        http::HeaderValue,
    },
};

use crate::{Client, ClientOptions, Event, UserId};

type Ws = WebSocketStream<TcpStream>;

const STEP: Duration = Duration::from_secs(10);
const CONV: &str = "d.11.12";

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    (listener, url)
}

async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("a connection in time")
        .unwrap();
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let callback = |_: &Request, mut resp: Response| {
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("natter.v1.proto"),
        );
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .unwrap();
    push(
        &mut ws,
        0,
        SBody::Welcome(v1::Welcome {
            user_id: 11,
            device_id: 21,
            username: "me".into(),
            idle_timeout_s: 60,
            max_frame_bytes: 65536,
            ..Default::default()
        }),
    )
    .await;
    ws
}

async fn push(ws: &mut Ws, id: u64, body: SBody) {
    let frame = ServerFrame {
        id,
        body: Some(body),
    };
    ws.send(WsMessage::Binary(frame.encode_to_vec().into()))
        .await
        .unwrap();
}

/// The next client frame that is not a keepalive Ping; Syncs are answered on the way.
async fn next_frame(ws: &mut Ws) -> ClientFrame {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a client frame in time")
            .expect("the connection is open")
            .unwrap();
        if let WsMessage::Binary(b) = msg {
            let f = ClientFrame::decode(b).unwrap();
            match f.body {
                Some(CBody::Ping(_)) => {}
                Some(CBody::Sync(_)) => {
                    push(ws, f.id, SBody::SyncDone(v1::SyncDone::default())).await;
                }
                _ => return f,
            }
        }
    }
}

fn presence(user_id: u64, state: PresenceState) -> v1::UserPresence {
    v1::UserPresence {
        user_id,
        state: state as i32,
        last_seen_ms: 0,
    }
}

/// Answers PresenceSubscribe frames until every id of `all` came; each frame's first
/// user is reported in `state`. Returns the frames' sizes.
async fn serve_subscriptions(
    ws: &mut Ws,
    all: &[u64],
    state: PresenceState,
    ttl_s: u32,
) -> Vec<usize> {
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    while seen.len() < all.len() {
        let f = next_frame(ws).await;
        let Some(CBody::PresenceSubscribe(s)) = f.body else {
            panic!("expected a PresenceSubscribe, got {f:?}");
        };
        assert!(!s.unsubscribe);
        assert!(
            s.user_ids.len() <= 1000,
            "{} ids in one frame",
            s.user_ids.len()
        );
        sizes.push(s.user_ids.len());
        let first = s.user_ids[0];
        seen.extend(s.user_ids);
        push(
            ws,
            f.id,
            SBody::PresenceSnapshot(Box::new(v1::PresenceSnapshot {
                users: vec![presence(first, state)],
                subscription_ttl_s: ttl_s,
            })),
        )
        .await;
    }
    seen.sort_unstable();
    assert_eq!(seen, all);
    sizes
}

/// The next presence event (other events are skipped).
async fn next_presence(c: &Client) -> v1::UserPresence {
    loop {
        match tokio::time::timeout(STEP, c.recv())
            .await
            .expect("an event in time")
        {
            Some(Event::Presence(p)) => return p,
            Some(_) => {}
            None => panic!("client shut down"),
        }
    }
}

#[tokio::test]
async fn presence_is_subscribed_in_chunks_and_renewed_by_itself() {
    let (listener, url) = listen().await;
    let all: Vec<u64> = (1..=2500).collect();
    let users: Vec<UserId> = all.iter().copied().map(UserId).collect();
    let opts = ClientOptions {
        auto_reconnect: true,
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let (client, mut ws) = tokio::join!(Client::connect(&url, "tok", opts), accept(&listener));
    let client = Arc::new(client.unwrap());

    // Subscribing: three frames (1000, 1000, 500), snapshots merged, TTL 2 s.
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe_presence(&users).await });
    let sizes = serve_subscriptions(&mut ws, &all, PresenceState::Online, 2).await;
    assert_eq!(sizes, [1000, 1000, 500]);
    let snapshot = sub.await.unwrap().unwrap();
    assert_eq!(snapshot.subscription_ttl_s, 2);
    assert_eq!(snapshot.users.len(), 3);
    assert_eq!(client.presence_subscriptions().len(), 2500);

    // Renewed at half the TTL, by itself. User 1 went offline meanwhile: one event, for
    // the change only (1001 and 2001 are still online). The next TTL is a minute.
    let started = tokio::time::Instant::now();
    let f = next_frame(&mut ws).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "renewed too early: {elapsed:?}"
    );
    let Some(CBody::PresenceSubscribe(s)) = f.body else {
        panic!("expected a renewal, got {f:?}");
    };
    assert_eq!(s.user_ids, (1..=1000).collect::<Vec<_>>());
    push(
        &mut ws,
        f.id,
        SBody::PresenceSnapshot(Box::new(v1::PresenceSnapshot {
            users: vec![presence(1, PresenceState::Offline)],
            subscription_ttl_s: 60,
        })),
    )
    .await;
    serve_subscriptions(
        &mut ws,
        &(1001..=2500).collect::<Vec<_>>(),
        PresenceState::Online,
        60,
    )
    .await;
    assert_eq!(
        next_presence(&client).await,
        presence(1, PresenceState::Offline)
    );

    // A push is an event as it is.
    push(
        &mut ws,
        0,
        SBody::Presence(presence(7, PresenceState::Online)),
    )
    .await;
    assert_eq!(
        next_presence(&client).await,
        presence(7, PresenceState::Online)
    );

    // The connection drops: the new one gets every subscription again at once (not in
    // 30 s), and what changed meanwhile (2001 went offline) is an event.
    drop(ws);
    let mut ws = accept(&listener).await;
    let started = tokio::time::Instant::now();
    serve_subscriptions(&mut ws, &all, PresenceState::Offline, 60).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut changed = Vec::new();
    for _ in 0..2 {
        changed.push(next_presence(&client).await);
    }
    changed.sort_by_key(|p| p.user_id);
    // User 1 was offline already; 7 was pushed but reported by no frame here.
    assert_eq!(
        changed,
        [
            presence(1001, PresenceState::Offline),
            presence(2001, PresenceState::Offline)
        ]
    );

    // Unsubscribing two: one frame, and they are renewed no more.
    let c = client.clone();
    let unsub = tokio::spawn(async move { c.unsubscribe_presence(&[UserId(1), UserId(2)]).await });
    let f = next_frame(&mut ws).await;
    let Some(CBody::PresenceSubscribe(s)) = f.body else {
        panic!("expected an unsubscribe, got {f:?}");
    };
    assert!(s.unsubscribe);
    assert_eq!(s.user_ids, [1, 2]);
    push(&mut ws, f.id, SBody::PresenceSnapshot(Box::default())).await;
    unsub.await.unwrap().unwrap();
    assert_eq!(client.presence_subscriptions().len(), 2498);
}

#[tokio::test]
async fn withheld_messages_are_acked_but_never_handed_out() {
    let (listener, url) = listen().await;
    let (client, mut ws) = tokio::join!(
        Client::connect(&url, "tok", ClientOptions::default()),
        accept(&listener)
    );
    let client = client.unwrap();
    let msg = |seq: u64, withheld: bool| v1::Message {
        conversation_id: CONV.into(),
        seq,
        message_id: 100 + seq,
        sender_user: 12,
        sender_device: if withheld { 0 } else { 99 },
        kind: if withheld {
            0
        } else {
            v1::MessageKind::Text as i32
        },
        body: if withheld {
            Default::default()
        } else {
            format!("m{seq}").into_bytes().into()
        },
        withheld,
        ..Default::default()
    };
    for (seq, withheld) in [(1, false), (2, true), (3, false), (4, true)] {
        push(&mut ws, 0, SBody::Message(msg(seq, withheld))).await;
    }
    let mut got = Vec::new();
    while let Some(ev) = client.recv_timeout(Duration::from_millis(500)).await {
        if let Event::Message(m) = ev {
            got.push(m.seq);
        }
    }
    assert_eq!(got, [1, 3], "withheld messages are not handed out");
    assert_eq!(client.cursor(&CONV.parse().unwrap()), Some(crate::Seq(4)));
    // Receipts go as far as the application got, the withheld 4 included.
    loop {
        let f = next_frame(&mut ws).await;
        if let Some(CBody::Received(r)) = f.body {
            assert_eq!(r.conversation_id, CONV);
            if r.up_to_seq == 4 {
                break;
            }
        }
    }
}

#[tokio::test]
async fn deletions_and_announcements_become_events() {
    let (listener, url) = listen().await;
    let (client, mut ws) = tokio::join!(
        Client::connect(&url, "tok", ClientOptions::default()),
        accept(&listener)
    );
    let client = client.unwrap();
    let text = v1::Message {
        conversation_id: CONV.into(),
        seq: 1,
        message_id: 101,
        sender_user: 12,
        sender_device: 99,
        kind: v1::MessageKind::Text as i32,
        body: "oops".as_bytes().to_vec().into(),
        ..Default::default()
    };
    push(&mut ws, 0, SBody::Message(text)).await;
    push(
        &mut ws,
        0,
        SBody::MessageDeleted(v1::MessageDeleted {
            conversation_id: CONV.into(),
            seq: 1,
            deleted_at_ms: 1_700_000_000_000,
        }),
    )
    .await;
    push(
        &mut ws,
        0,
        SBody::Announcement(v1::Announcement {
            id: 7,
            text: "Maintenance at 22:00 UTC".into(),
            created_at_ms: 1_700_000_000_001,
        }),
    )
    .await;
    let mut got = Vec::new();
    while let Some(ev) = client.recv_timeout(Duration::from_millis(500)).await {
        got.push(ev);
    }
    assert!(
        matches!(&got[..], [Event::Message(m), _, _] if m.seq == 1),
        "{got:?}"
    );
    assert_eq!(
        got[1..],
        [
            Event::MessageDeleted {
                conversation_id: CONV.into(),
                seq: 1,
            },
            Event::Announcement {
                id: 7,
                text: "Maintenance at 22:00 UTC".into(),
                created_at_ms: 1_700_000_000_001,
            },
        ]
    );
}

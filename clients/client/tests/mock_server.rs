//! The client's retry, ordering and receipt logic against a scripted in-test WebSocket
//! server: each test plays the server's side frame by frame, so what the client sends
//! (ids, client_msg_ids, cursors, receipts) is asserted exactly.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use natter_client::{
    Client, ClientError, ClientOptions, ErrorCode, Event, UserId, WireFormat,
    tungstenite::{
        Message as WsMessage,
        handshake::server::{Request, Response},
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
    v1::{
        self, ClientFrame, ServerFrame, client_frame::Body as CBody, server_frame::Body as SBody,
    },
};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const ME_USER: u64 = 11;
const ME_DEVICE: u64 = 21;
const PEER_USER: u64 = 12;
const CONV: &str = "d.11.12";
const STEP: Duration = Duration::from_secs(10);

struct Mock {
    listener: TcpListener,
    url: String,
}

impl Mock {
    async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
        Mock { listener, url }
    }

    /// Accepts the next connection, checks its token and subprotocol, sends the Welcome.
    async fn accept(&self) -> Ws {
        let (tcp, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("a connection in time")
            .unwrap();
        #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
        let callback = |req: &Request, mut resp: Response| {
            assert_eq!(
                req.headers().get("authorization").unwrap(),
                "Bearer tok",
                "the token travels in the Authorization header"
            );
            assert_eq!(
                req.headers().get("sec-websocket-protocol").unwrap(),
                "natter.v1.proto"
            );
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
                user_id: ME_USER,
                device_id: ME_DEVICE,
                username: "me".into(),
                idle_timeout_s: 60,
                max_frame_bytes: 65536,
                ..Default::default()
            }),
        )
        .await;
        ws
    }
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

/// The next client frame that is not a keepalive Ping.
async fn next_frame(ws: &mut Ws) -> ClientFrame {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a client frame in time")
            .expect("the connection is open")
            .unwrap();
        if let WsMessage::Binary(b) = msg {
            let f = ClientFrame::decode(b).unwrap();
            if !matches!(f.body, Some(CBody::Ping(_))) {
                return f;
            }
        }
    }
}

fn peer_msg(seq: u64) -> v1::Message {
    v1::Message {
        conversation_id: CONV.into(),
        seq,
        message_id: 1000 + seq,
        sender_user: PEER_USER,
        sender_device: 99,
        client_msg_id: format!("peer-{seq}"),
        kind: v1::MessageKind::Text as i32,
        body: format!("m{seq}").into_bytes().into(),
        ..Default::default()
    }
}

fn ack_for(s: &v1::Send, seq: u64) -> SBody {
    SBody::Ack(v1::Ack {
        client_msg_id: s.client_msg_id.clone(),
        conversation_id: CONV.into(),
        seq,
        message_id: 5000 + seq,
        created_at_ms: 1,
    })
}

fn opts() -> ClientOptions {
    ClientOptions {
        format: WireFormat::Proto,
        request_timeout: Duration::from_secs(2),
        send_deadline: Duration::from_secs(20),
        gap_fill_delay: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn next_message(c: &Client) -> v1::Message {
    loop {
        match tokio::time::timeout(STEP, c.recv())
            .await
            .expect("an event in time")
        {
            Some(Event::Message(m)) => return m,
            Some(_) => {}
            None => panic!("client shut down"),
        }
    }
}

#[tokio::test]
async fn a_send_interrupted_by_a_dropped_connection_is_retried_with_the_same_id() {
    let mock = Mock::start().await;
    let server = async {
        let mut ws = mock.accept().await;
        let f = next_frame(&mut ws).await;
        let Some(CBody::Send(first)) = f.body else {
            panic!("expected Send, got {f:?}")
        };
        // Crash: the connection ends with no Ack and no close frame.
        drop(ws);
        let mut ws = mock.accept().await;
        loop {
            let f = next_frame(&mut ws).await;
            match f.body {
                Some(CBody::Sync(_)) => {
                    push(&mut ws, f.id, SBody::SyncDone(v1::SyncDone::default())).await
                }
                Some(CBody::Send(again)) => {
                    assert_eq!(again, first, "the retry is the same Send");
                    assert_ne!(f.id, 0);
                    push(&mut ws, f.id, ack_for(&again, 1)).await;
                    return (first, ws);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let client = async {
        let c = Client::connect(&mock.url, "tok", opts()).await.unwrap();
        let ack = c.send_text(UserId(PEER_USER), "hello").await.unwrap();
        (c, ack)
    };
    let ((first, _ws), (c, ack)) = tokio::join!(server, client);
    assert_eq!(ack.client_msg_id, first.client_msg_id);
    assert_eq!(first.to_user, PEER_USER);
    assert_eq!(&first.body[..], b"hello");
    assert_eq!(ack.seq, 1);
    assert_eq!(c.cursor(&CONV.parse().unwrap()).map(|s| s.get()), Some(1));
}

#[tokio::test]
async fn unavailable_is_retried_and_a_final_error_is_returned() {
    let mock = Mock::start().await;
    let server = async {
        let mut ws = mock.accept().await;
        let mut ids = Vec::new();
        for (i, answer) in [ErrorCode::Unavailable, ErrorCode::Internal]
            .into_iter()
            .enumerate()
        {
            let f = next_frame(&mut ws).await;
            let Some(CBody::Send(s)) = f.body else {
                panic!("expected Send")
            };
            ids.push((f.id, s.client_msg_id));
            assert!(i < 2);
            push(
                &mut ws,
                f.id,
                SBody::Error(natter_client::proto::error(answer, "try again")),
            )
            .await;
        }
        let f = next_frame(&mut ws).await;
        let Some(CBody::Send(s)) = f.body else {
            panic!("expected Send")
        };
        ids.push((f.id, s.client_msg_id.clone()));
        push(&mut ws, f.id, ack_for(&s, 7)).await;
        // A second message is refused for good.
        let f = next_frame(&mut ws).await;
        push(
            &mut ws,
            f.id,
            SBody::Error(natter_client::proto::error(
                ErrorCode::NotFound,
                "no such user",
            )),
        )
        .await;
        (ids, ws)
    };
    let client = async {
        let c = Client::connect(&mock.url, "tok", opts()).await.unwrap();
        let ack = c
            .send(
                UserId(PEER_USER),
                v1::MessageKind::Binary,
                &b"\x00\x01"[..],
                Some("my-id".into()),
            )
            .await
            .unwrap();
        let err = c.send_text(UserId(4242), "x").await.unwrap_err();
        (c, ack, err)
    };
    let ((ids, _ws), (_c, ack, err)) = tokio::join!(server, client);
    assert_eq!(ack.seq, 7);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|(_, cid)| cid == "my-id"));
    let mut frame_ids: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
    frame_ids.dedup();
    assert_eq!(frame_ids.len(), 3, "each attempt is a new frame id");
    assert_eq!(err.server_code(), Some(ErrorCode::NotFound), "{err}");
}

#[tokio::test]
async fn a_gap_is_filled_by_sync_and_messages_come_out_once_in_order() {
    let mock = Mock::start().await;
    let (c, _ws) = {
        let (c, ws) = tokio::join!(
            async { Client::connect(&mock.url, "tok", opts()).await.unwrap() },
            mock.accept()
        );
        let mut ws = ws;
        for s in [1, 3, 1, 4] {
            push(&mut ws, 0, SBody::Message(peer_msg(s))).await;
        }
        let server = async move {
            // The gap-filling Sync and the auto-ack (Received up to the last message
            // handed out, coalesced, only moving forward) may come in any order.
            let (mut synced, mut last) = (false, 0);
            while !synced || last < 5 {
                let f = next_frame(&mut ws).await;
                match f.body {
                    Some(CBody::Sync(sync)) => {
                        assert!(!synced, "one gap, one sync");
                        synced = true;
                        assert_eq!(
                            sync.cursors,
                            [v1::Cursor {
                                conversation_id: CONV.into(),
                                seq: 1
                            }],
                            "the client asks from its own cursor"
                        );
                        push(
                            &mut ws,
                            f.id,
                            SBody::SyncBatch(v1::SyncBatch {
                                messages: (2..=5).map(peer_msg).collect(),
                            }),
                        )
                        .await;
                        let heads = vec![v1::Cursor {
                            conversation_id: CONV.into(),
                            seq: 5,
                        }];
                        push(&mut ws, f.id, SBody::SyncDone(v1::SyncDone { heads })).await;
                    }
                    Some(CBody::Received(r)) => {
                        assert_eq!(r.conversation_id, CONV);
                        assert!(r.up_to_seq > last, "receipts only move forward");
                        assert!(
                            synced || r.up_to_seq == 1,
                            "nothing past the gap before the sync"
                        );
                        last = r.up_to_seq;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            ws
        };
        let client = async {
            let mut seqs = Vec::new();
            for _ in 0..5 {
                seqs.push(next_message(&c).await.seq);
            }
            seqs
        };
        let (ws, seqs) = tokio::join!(server, client);
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        (c, ws)
    };
    assert!(
        c.recv_timeout(Duration::from_millis(100)).await.is_none(),
        "no duplicates"
    );
}

#[tokio::test]
async fn a_revoked_device_sees_4001_and_sends_fail_for_good() {
    let mock = Mock::start().await;
    let (c, mut ws) = tokio::join!(
        async { Client::connect(&mock.url, "tok", opts()).await.unwrap() },
        mock.accept()
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "logged out".into(),
    }))
    .await
    .unwrap();
    match tokio::time::timeout(STEP, c.recv()).await.unwrap() {
        Some(Event::Closed { code, .. }) => assert_eq!(code, 4001),
        other => panic!("expected Closed, got {other:?}"),
    }
    let err = c.send_text(UserId(PEER_USER), "x").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed { code: 4001, .. }),
        "{err}"
    );
    assert!(!c.is_connected());
}

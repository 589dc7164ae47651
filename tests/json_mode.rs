//! The JSON subprotocol end to end: two devices speaking `natter.v1.json` (text frames,
//! proto3 JSON) send, receive, sync, read history and get receipts; a connection that
//! names no subprotocol gets JSON; the text frames really are JSON.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{
    ClientOptions, Connection, Event, WireFormat,
    tungstenite::Message as WsMessage,
    v1::{self, ClientFrame, client_frame::Body as CBody, server_frame::Body as SBody},
    ws_request,
};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn json_clients_talk_end_to_end() {
    bounded(90, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let json = ClientOptions {
            format: WireFormat::Json,
            ..opts()
        };
        let a = server.connect(&alice, json.clone()).await;
        let b = server.connect(&bob, json.clone()).await;
        assert_eq!(a.user_id(), alice.user_id);
        assert_eq!(b.device_id(), bob.device_id);

        let ack = a.send_text(bob.user_id, "héllo ✓").await.expect("send");
        let m = messages(&b, 1, WAIT).await.remove(0);
        assert_eq!(text(&m), "héllo ✓");
        assert_eq!(
            (m.seq, m.message_id, m.sender_user, m.sender_device),
            (
                ack.seq,
                ack.message_id,
                alice.user_id.get(),
                alice.device_id.get()
            )
        );
        assert_eq!(m.kind, v1::MessageKind::Text as i32);
        // Bob auto-acks what he read: Alice sees it delivered.
        next_matching(&a, WAIT, |ev| match ev {
            Event::Receipt(r)
                if r.kind == v1::ReceiptKind::Delivered as i32 && r.up_to_seq == ack.seq =>
            {
                Some(())
            }
            _ => None,
        })
        .await;

        // Binary bodies survive base64, ids above 2^32 survive strings.
        let body: Vec<u8> = (0..=255u8).collect();
        let ack2 = b
            .send(
                alice.user_id,
                v1::MessageKind::Binary,
                body.clone(),
                Some("bin-1".into()),
            )
            .await
            .expect("send binary");
        let m2 = messages(&a, 1, WAIT).await.remove(0);
        assert_eq!(&m2.body[..], &body[..]);
        assert_eq!(m2.client_msg_id, "bin-1");
        assert_eq!(m2.seq, ack2.seq);
        assert_eq!(m2.sender_user, bob.user_id.get());

        let c = conv(alice.user_id, bob.user_id);
        let page = a
            .history(&c, natter_client::Seq(0), 10)
            .await
            .expect("history");
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2]);

        // A new JSON device syncs both.
        let bob2 = server.login(&bob.username, "json-2").await;
        let b2 = server.connect(&bob2, json).await;
        let synced = sync_collect(&b2, Duration::from_secs(30)).await;
        assert_eq!(
            synced.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            [ack.message_id, ack2.message_id]
        );
        assert!(b2.ping().await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn json_is_the_default_and_frames_are_text() {
    bounded(60, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        // No subprotocol named: the server speaks JSON.
        let req = ws_request(&server.ws_url(), Some(&alice.access_token), None).unwrap();
        let (conn, welcome) = Connection::connect_request(req, WireFormat::Json)
            .await
            .expect("connects and the Welcome decodes as JSON");
        assert_eq!(welcome.user_id, alice.user_id.get());
        assert_eq!(welcome.username, alice.username);
        drop(conn);

        // With the JSON subprotocol, raw text in camelCase or field names works.
        let (mut conn, _) =
            Connection::connect(&server.ws_url(), &alice.access_token, WireFormat::Json)
                .await
                .expect("connects");
        conn.send_raw(WsMessage::Text(
            r#"{"id":"77","ping":{"client_time_ms":"5"}}"#.into(),
        ))
        .await
        .expect("write");
        let f = conn.recv_reply(WAIT).await.expect("a Pong");
        assert_eq!(f.id, 77);
        match f.body {
            Some(SBody::Pong(p)) => assert_eq!(p.client_time_ms, 5),
            other => panic!("expected a Pong, got {other:?}"),
        }
        conn.send(&ClientFrame {
            id: 78,
            body: Some(CBody::Ping(v1::Ping { client_time_ms: 6 })),
        })
        .await
        .expect("write");
        assert_eq!(conn.recv_reply(WAIT).await.expect("a Pong").id, 78);
    })
    .await;
}

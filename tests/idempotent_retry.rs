//! Retrying a Send with the same client_msg_id, at the frame level: on the same
//! connection, on a new connection of the same device, and after a crash. Every retry
//! gets the original Ack (same seq, same message_id); the recipient is pushed the same
//! stored message again with each retry (at-least-once; clients drop a seq they have) and
//! history holds one copy.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{
    Connection, WireFormat,
    v1::{self, ClientFrame, client_frame::Body as CBody, server_frame::Body as SBody},
};

const REPLY: Duration = Duration::from_secs(10);

fn send_frame(id: u64, client_msg_id: &str, to: u64, body: &str) -> ClientFrame {
    ClientFrame {
        id,
        body: Some(CBody::Send(v1::Send {
            client_msg_id: client_msg_id.into(),
            to_user: to,
            kind: v1::MessageKind::Text as i32,
            body: body.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

async fn ack_of(conn: &mut Connection, frame: ClientFrame) -> v1::Ack {
    let id = frame.id;
    conn.send(&frame).await.expect("send the frame");
    let reply = conn.recv_reply(REPLY).await.expect("a reply");
    assert_eq!(reply.id, id, "the reply carries the request's id");
    match reply.body {
        Some(SBody::Ack(a)) => a,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

/// Every message pushed to `conn` until one with `marker` as client_msg_id arrives.
async fn pushed_until(conn: &mut Connection, marker: &str) -> Vec<v1::Message> {
    let mut got = Vec::new();
    loop {
        let f = conn.recv_timeout(REPLY).await.expect("a pushed message");
        if let Some(SBody::Message(m)) = f.body {
            assert_eq!(f.id, 0, "pushes carry id 0");
            let done = m.client_msg_id == marker;
            got.push(m);
            if done {
                return got;
            }
        }
    }
}

#[tokio::test]
async fn a_retried_send_is_stored_once_and_acked_the_same() {
    bounded(120, async {
        let mut server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let to = bob.user_id.get();
        let (mut bob_live, _) =
            Connection::connect(&server.ws_url(), &bob.access_token, WireFormat::Proto)
                .await
                .expect("Bob connects");
        let (mut a1, _) =
            Connection::connect(&server.ws_url(), &alice.access_token, WireFormat::Proto)
                .await
                .expect("Alice connects");

        let first = ack_of(&mut a1, send_frame(1, "retry-me", to, "once")).await;
        assert_eq!(first.client_msg_id, "retry-me");
        assert!(first.seq >= 1 && first.message_id != 0);
        // Same connection, new frame id (the client lost the Ack, say).
        let again = ack_of(&mut a1, send_frame(2, "retry-me", to, "once")).await;
        assert_eq!(again, first, "a retry gets the original Ack");

        // A new connection of the same device (the old one is replaced).
        let (mut a2, _) =
            Connection::connect(&server.ws_url(), &alice.access_token, WireFormat::Proto)
                .await
                .expect("Alice reconnects");
        let third = ack_of(&mut a2, send_frame(1, "retry-me", to, "once")).await;
        assert_eq!(third, first, "the dedupe outlives the connection");
        let old = a1.recv_timeout(REPLY).await;
        assert_eq!(
            old.err().and_then(|e| e.close_code()),
            Some(natter_client::proto::close_code::REPLACED),
            "the older connection of the device is closed with 4002"
        );

        let marker = ack_of(&mut a2, send_frame(2, "marker-1", to, "after")).await;
        assert_eq!(marker.seq, first.seq + 1, "the retries took no seqs");
        let pushed = pushed_until(&mut bob_live, "marker-1").await;
        // A retry of a stored message pushes it again (its first push may have died with
        // a server), so Bob's connection carries it once per attempt: the same message,
        // same seq and id, which a client drops after the first. It is stored once.
        let copies: Vec<&v1::Message> = pushed
            .iter()
            .filter(|m| m.client_msg_id == "retry-me")
            .collect();
        assert_eq!(copies.len(), 3, "one push per attempt: {pushed:?}");
        assert!(
            copies
                .iter()
                .all(|m| (m.seq, m.message_id) == (first.seq, first.message_id)),
            "every push is the stored message: {pushed:?}"
        );

        // And after a crash, too.
        server.kill9().await;
        server.restart().await;
        let (mut a3, _) =
            Connection::connect(&server.ws_url(), &alice.access_token, WireFormat::Proto)
                .await
                .expect("Alice reconnects after the crash");
        let fourth = ack_of(&mut a3, send_frame(7, "retry-me", to, "once")).await;
        assert_eq!(fourth, first, "the dedupe survives a crash");

        // History holds one copy.
        a3.send(&ClientFrame {
            id: 8,
            body: Some(CBody::History(v1::History {
                conversation_id: first.conversation_id.clone(),
                before_seq: 0,
                limit: 50,
            })),
        })
        .await
        .expect("ask for history");
        let page = match a3.recv_reply(REPLY).await.expect("a history page").body {
            Some(SBody::HistoryPage(p)) => p,
            other => panic!("expected a HistoryPage, got {other:?}"),
        };
        let ids: Vec<&str> = page
            .messages
            .iter()
            .map(|m| m.client_msg_id.as_str())
            .collect();
        assert_eq!(ids, ["retry-me", "marker-1"]);
        assert_eq!(page.messages[0].seq, first.seq);
        assert_eq!(page.messages[0].message_id, first.message_id);
        assert!(!page.more);

        // A fresh device of Bob syncs one copy too.
        let fresh = server
            .connect(&server.login(&bob.username, "fresh").await, opts())
            .await;
        let synced = sync_collect(&fresh, Duration::from_secs(30)).await;
        let ids: Vec<&str> = synced.iter().map(|m| m.client_msg_id.as_str()).collect();
        assert_eq!(ids, ["retry-me", "marker-1"]);
    })
    .await;
}

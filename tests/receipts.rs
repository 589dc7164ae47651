//! Receipts: the sender sees the recipient's delivered cursor move when the recipient
//! acknowledges, then the read cursor when they read; the recipient's other device sees
//! the read receipt too. With auto-ack on, reading a message from the event stream is
//! enough for the sender to see it delivered.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{Client, ClientOptions, Event, Seq, v1};

const WAIT: Duration = Duration::from_secs(10);

async fn receipt(c: &Client, from_user: u64, kind: v1::ReceiptKind, up_to: u64) -> v1::Receipt {
    next_matching(c, WAIT, |ev| match ev {
        Event::Receipt(r) if r.user_id == from_user && r.kind == kind as i32 => {
            assert!(
                r.up_to_seq <= up_to,
                "a receipt beyond what was acknowledged: {r:?}"
            );
            (r.up_to_seq == up_to).then(|| r.clone())
        }
        _ => None,
    })
    .await
}

#[tokio::test]
async fn sender_sees_delivered_then_read_cursors_move() {
    bounded(90, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let bob2 = server.login(&bob.username, "device-2").await;
        let manual = ClientOptions {
            auto_ack: false,
            ..opts()
        };
        let a = server.device(&alice).await;
        let b = server.connect(&bob, manual.clone()).await;
        let b2 = server.connect(&bob2, manual).await;
        let c = conv(alice.user_id, bob.user_id);

        for i in 1..=3 {
            let ack = a
                .send_text(bob.user_id, &format!("r{i}"))
                .await
                .expect("send");
            assert_eq!(ack.seq, i);
        }
        let got = messages(&b, 3, WAIT).await;
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        // Without auto-ack nothing has been acknowledged yet.
        assert!(
            !matches!(a.try_recv(), Some(Event::Receipt(_))),
            "no receipt before the recipient acknowledges"
        );

        b.received(&c, Seq(3)).await.expect("received");
        let r = receipt(&a, bob.user_id.get(), v1::ReceiptKind::Delivered, 3).await;
        assert_eq!(r.conversation_id, c.as_str());
        assert_eq!(r.device_id, bob.device_id.get());

        b.read(&c, Seq(2)).await.expect("read");
        let r = receipt(&a, bob.user_id.get(), v1::ReceiptKind::Read, 2).await;
        assert_eq!(r.conversation_id, c.as_str());
        // Bob's other device learns that the user read up to 2.
        receipt(&b2, bob.user_id.get(), v1::ReceiptKind::Read, 2).await;

        b.read(&c, Seq(3)).await.expect("read");
        receipt(&a, bob.user_id.get(), v1::ReceiptKind::Read, 3).await;
        receipt(&b2, bob.user_id.get(), v1::ReceiptKind::Read, 3).await;
    })
    .await;
}

#[tokio::test]
async fn auto_ack_reports_delivery_of_what_the_app_read() {
    bounded(60, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let carol = server.user("carol").await;
        let a = server.device(&alice).await;
        let c = server.device(&carol).await;
        let mut last = 0;
        for i in 0..5 {
            last = a
                .send_text(carol.user_id, &format!("hi {i}"))
                .await
                .expect("send")
                .seq;
        }
        let got = messages(&c, 5, WAIT).await;
        assert_eq!(got.last().map(|m| m.seq), Some(last));
        receipt(&a, carol.user_id.get(), v1::ReceiptKind::Delivered, last).await;
    })
    .await;
}

#[tokio::test]
async fn typing_reaches_the_peer_online() {
    bounded(60, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let a = server.device(&alice).await;
        let b = server.device(&bob).await;
        let c = conv(alice.user_id, bob.user_id);
        for active in [true, false] {
            a.typing(bob.user_id, active).await.expect("typing");
            let t = next_matching(&b, WAIT, |ev| match ev {
                Event::Typing(t) => Some(t.clone()),
                _ => None,
            })
            .await;
            assert_eq!(
                (t.conversation_id.as_str(), t.user_id, t.active),
                (c.as_str(), alice.user_id.get(), active)
            );
        }
    })
    .await;
}

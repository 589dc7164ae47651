//! Both sides of a conversation sending at once: the server picks one gap-free order and
//! both users see exactly that order, in their event streams and in history. Each side's
//! sequential sends keep their order.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use futures::StreamExt as _;
use natter_client::{Client, ClientOptions, v1};

const EACH: usize = 100;

fn key(m: &v1::Message) -> (u64, u64, String, u64) {
    (m.seq, m.message_id, m.client_msg_id.clone(), m.sender_user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_sides_sending_see_one_identical_gap_free_order() {
    bounded(180, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let whole = ClientOptions {
            yield_own: true,
            ..opts()
        };
        let a = Arc::new(server.connect(&alice, whole.clone()).await);
        let b = Arc::new(server.connect(&bob, whole).await);

        // Alice one after another; Bob with up to 8 sends in flight.
        let alice_sends = {
            let a = a.clone();
            let to = bob.user_id;
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..EACH {
                    acks.push(
                        a.send_text(to, &format!("a{i}"))
                            .await
                            .expect("Alice sends"),
                    );
                }
                acks
            })
        };
        let bob_sends = {
            let b = b.clone();
            let to = alice.user_id;
            tokio::spawn(async move {
                futures::stream::iter(0..EACH)
                    .map(|i| {
                        let b = b.clone();
                        async move { b.send_text(to, &format!("b{i}")).await.expect("Bob sends") }
                    })
                    .buffer_unordered(8)
                    .collect::<Vec<_>>()
                    .await
            })
        };
        let read = |c: Arc<Client>| {
            tokio::spawn(async move { messages(&c, 2 * EACH, Duration::from_secs(120)).await })
        };
        let (seen_a, seen_b) = (read(a.clone()), read(b.clone()));
        let alice_acks = alice_sends.await.expect("Alice's task");
        let bob_acks = bob_sends.await.expect("Bob's task");
        let seen_a = seen_a.await.expect("Alice's reader");
        let seen_b = seen_b.await.expect("Bob's reader");

        assert_gap_free(&seen_a);
        assert_gap_free(&seen_b);
        let order_a: Vec<_> = seen_a.iter().map(key).collect();
        let order_b: Vec<_> = seen_b.iter().map(key).collect();
        assert_eq!(order_a, order_b, "both users see the same order");

        // Every Ack names the message at its seq.
        for ack in alice_acks.iter().chain(&bob_acks) {
            let m = &seen_a[ack.seq as usize - 1];
            assert_eq!(m.message_id, ack.message_id);
            assert_eq!(m.client_msg_id, ack.client_msg_id);
        }
        // Alice's sequential sends keep their order.
        for (i, w) in alice_acks.windows(2).enumerate() {
            assert!(w[0].seq < w[1].seq, "a{i} before a{}", i + 1);
            assert_eq!(text(&seen_a[w[0].seq as usize - 1]), format!("a{i}"));
        }
        let from_alice = seen_a
            .iter()
            .filter(|m| m.sender_user == alice.user_id.get())
            .count();
        assert_eq!(from_alice, EACH);

        // History, read by either side, is the same order.
        let c = conv(alice.user_id, bob.user_id);
        let hist_a = a.full_history(&c, 64).await.expect("Alice's history");
        let hist_b = b.full_history(&c, 37).await.expect("Bob's history");
        assert_eq!(hist_a.iter().map(key).collect::<Vec<_>>(), order_a);
        assert_eq!(hist_b.iter().map(key).collect::<Vec<_>>(), order_a);
    })
    .await;
}

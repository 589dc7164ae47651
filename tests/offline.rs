//! An offline user: 1,000 messages arrive while no device of theirs is connected. On
//! connect+sync a device gets every one once, in order; a second device of the same user
//! independently gets them all too (one device's receipts do not move another's cursor).

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use common::*;
use futures::StreamExt as _;
use natter_client::{Event, Seq, v1};

const COUNT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_user_gets_every_message_once_on_each_device() {
    bounded(240, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let bob1 = server.user("bob").await;
        let bob2 = server.login(&bob1.username, "device-2").await;
        assert_ne!(bob1.device_id, bob2.device_id, "each login is a new device");

        let a = Arc::new(server.device(&alice).await);
        let to = bob1.user_id;
        let acks: Vec<_> = futures::stream::iter(0..COUNT)
            .map(|i| {
                let a = a.clone();
                async move {
                    let id = format!("off-{i:04}");
                    a.send(
                        to,
                        v1::MessageKind::Text,
                        format!("offline {i}").into_bytes(),
                        Some(id),
                    )
                    .await
                    .expect("send")
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let sent: HashSet<String> = acks.iter().map(|a| a.client_msg_id.clone()).collect();
        assert_eq!(sent.len(), COUNT);
        let mut seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=COUNT as u64).collect::<Vec<_>>());

        let c = conv(alice.user_id, bob1.user_id);
        for bob in [&bob1, &bob2] {
            let device = server.device(bob).await;
            let got = sync_collect(&device, Duration::from_secs(120)).await;
            assert_gap_free(&got);
            assert_eq!(got.len(), COUNT, "device {} gets all", bob.device_id);
            let ids: HashSet<String> = got.iter().map(|m| m.client_msg_id.clone()).collect();
            assert_eq!(ids, sent);
            for m in &got {
                assert_eq!(m.conversation_id, c.as_str());
                let i: usize = m.client_msg_id["off-".len()..].parse().expect("our id");
                assert_eq!(text(m), format!("offline {i}"));
            }
            assert_eq!(device.cursor(&c), Some(Seq(COUNT as u64)));
            // A second sync has nothing new.
            let again = sync_collect(&device, Duration::from_secs(30)).await;
            assert!(again.is_empty(), "nothing is delivered twice");
            assert!(
                !matches!(device.try_recv(), Some(Event::Message(_))),
                "no stray messages"
            );
            if bob.device_id == bob1.device_id {
                // The first device auto-acked everything (Alice sees it delivered); the
                // second one must still get it all.
                next_matching(&a, Duration::from_secs(30), |ev| match ev {
                    Event::Receipt(r)
                        if r.kind == v1::ReceiptKind::Delivered as i32
                            && r.user_id == bob1.user_id.get()
                            && r.up_to_seq == COUNT as u64 =>
                    {
                        Some(())
                    }
                    _ => None,
                })
                .await;
            }
        }
    })
    .await;
}

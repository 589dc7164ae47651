//! Crash safety: messages sent while the server is killed with SIGKILL at random moments.
//! Every message whose Ack the sender got must reach the recipient after restart and sync,
//! exactly once, in seq order, with no gaps; retried sends must not be stored twice. And
//! SIGTERM drains: connections close with 1001 and acked messages are kept.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use natter_client::{ClientOptions, Event, Seq, v1};
use rand::Rng as _;
use tokio::sync::watch;

const TOTAL: usize = 300;
const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_messages_survive_kill_9_exactly_once_in_order() {
    bounded(300, async {
        let mut server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let crashy = ClientOptions {
            auto_reconnect: true,
            request_timeout: Duration::from_secs(2),
            send_deadline: Duration::from_secs(90),
            ..opts()
        };
        let a = Arc::new(server.connect(&alice, crashy.clone()).await);
        let b = Arc::new(server.connect(&bob, crashy).await);

        // Bob reads live the whole time, reconnecting by himself after each crash.
        let (seen_tx, mut seen_rx) = watch::channel(Vec::<v1::Message>::new());
        let reader = {
            let b = b.clone();
            tokio::spawn(async move {
                while let Some(ev) = b.recv().await {
                    if let Event::Message(m) = ev {
                        seen_tx.send_modify(|v| v.push(m));
                    }
                }
            })
        };

        // Alice sends one message after another with random pacing.
        let (progress_tx, mut progress) = watch::channel(0usize);
        let sender = {
            let a = a.clone();
            let to = bob.user_id;
            tokio::spawn(async move {
                let mut acks = Vec::with_capacity(TOTAL);
                for i in 0..TOTAL {
                    let id = format!("crash-{i:04}");
                    let body = format!("message {i}").into_bytes();
                    let ack = a
                        .send(to, v1::MessageKind::Text, body, Some(id.clone()))
                        .await;
                    acks.push((id, i, ack));
                    progress_tx.send_replace(i + 1);
                    let pause = rand::rng().random_range(0..4u64);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                acks
            })
        };

        // Crash the server at random points of the run, mid-send.
        let mut points: Vec<usize> = (0..KILLS)
            .map(|_| rand::rng().random_range(1..TOTAL - 10))
            .collect();
        points.sort_unstable();
        for p in &points {
            progress
                .wait_for(|n| *n >= *p)
                .await
                .expect("the sender runs until it is done");
            let jitter = rand::rng().random_range(0..3000u64);
            tokio::time::sleep(Duration::from_micros(jitter)).await;
            server.kill9().await;
            server.restart().await;
        }

        let acks = sender.await.expect("the sender task");
        let stats = a.stats();
        eprintln!("sender: {stats:?}; recipient: {:?}", b.stats());
        assert!(
            stats.reconnects >= 1 && stats.retries >= 1,
            "the sender lived through the crashes by reconnecting: {stats:?}"
        );
        let failed: Vec<String> = acks
            .iter()
            .filter_map(|(id, _, r)| r.as_ref().err().map(|e| format!("{id}: {e}")))
            .collect();
        assert!(
            failed.is_empty(),
            "sends must succeed by retrying: {failed:?}"
        );
        let acks: Vec<(String, usize, v1::Ack)> = acks
            .into_iter()
            .filter_map(|(id, i, r)| r.ok().map(|a| (id, i, a)))
            .collect();
        for w in acks.windows(2) {
            assert!(
                w[0].2.seq < w[1].2.seq,
                "sequential sends get increasing seqs: {:?} then {:?}",
                w[0].2,
                w[1].2
            );
        }
        for (id, _, ack) in &acks {
            assert_eq!(&ack.client_msg_id, id);
        }

        // What the server kept, as a brand-new device of Bob sees it.
        let fresh = server
            .connect(&server.login(&bob.username, "after-crash").await, opts())
            .await;
        let stored = sync_collect(&fresh, Duration::from_secs(60)).await;
        assert_gap_free(&stored);
        assert_eq!(
            stored.len(),
            TOTAL,
            "every send was acked once, so exactly {TOTAL} messages are stored"
        );
        for (id, i, ack) in &acks {
            let m = &stored[ack.seq as usize - 1];
            assert_eq!(
                &m.client_msg_id, id,
                "seq {} holds the acked message",
                ack.seq
            );
            assert_eq!(m.message_id, ack.message_id);
            assert_eq!(text(m), format!("message {i}"));
            assert_eq!(m.sender_user, alice.user_id.get());
        }

        // Bob's long-lived device saw the same, each message once, in order.
        b.sync().await.expect("Bob's final sync");
        let seen = tokio::time::timeout(
            Duration::from_secs(30),
            seen_rx.wait_for(|v| v.len() >= TOTAL),
        )
        .await
        .expect("Bob's live device gets every message")
        .expect("the reader runs")
        .clone();
        assert_gap_free(&seen);
        let key = |m: &v1::Message| (m.seq, m.message_id, m.client_msg_id.clone());
        assert_eq!(
            seen.iter().map(key).collect::<Vec<_>>(),
            stored.iter().map(key).collect::<Vec<_>>()
        );

        // History agrees.
        let history = a
            .full_history(&conv(alice.user_id, bob.user_id), 100)
            .await
            .expect("history");
        assert_eq!(
            history.iter().map(key).collect::<Vec<_>>(),
            stored.iter().map(key).collect::<Vec<_>>()
        );
        assert_eq!(
            b.cursor(&conv(alice.user_id, bob.user_id)),
            Some(Seq(TOTAL as u64))
        );
        reader.abort();
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_with_going_away_and_keeps_acked_messages() {
    bounded(90, async {
        let mut server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let a = server.device(&alice).await;
        let ack = a
            .send_text(bob.user_id, "before shutdown")
            .await
            .expect("send");
        let status = server.terminate(Duration::from_secs(30)).await;
        assert!(status.success(), "natter exits 0 after SIGTERM: {status}");
        let code = next_matching(&a, Duration::from_secs(10), |ev| match ev {
            Event::Closed { code, .. } => Some(*code),
            _ => None,
        })
        .await;
        assert_eq!(code, natter_client::proto::close_code::GOING_AWAY);

        server.restart().await;
        let b = server.device(&bob).await;
        let got = sync_collect(&b, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id, ack.message_id);
        assert_eq!(text(&got[0]), "before shutdown");
    })
    .await;
}

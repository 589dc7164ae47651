//! Degraded modes of a cluster of real processes (see docs/operations.md, "Failure
//! modes"): what keeps working while one dependency is down, what users are told (an
//! error they can retry, never a hang), and that nothing acked is lost on the way back.
//!
//! - The message store down: the messages role's circuit breaker opens (metric, log
//!   line), sends fail fast with UNAVAILABLE, clients retry the same `client_msg_id`, and
//!   once the store is back every retried send is stored exactly once.
//! - The presence role down: chat works; presence requests are answered UNAVAILABLE;
//!   once it is back, presence is right again.
//! - The people role down: one-to-one chats whose settings the messages owner has
//!   cached go on; a message to someone whose blocks only people knows is refused with
//!   UNAVAILABLE (retried by the client) rather than delivered past a block.
//!
//! Redis and NATS restarts are `tests/cluster.rs`'s
//! `the_cluster_recovers_from_nats_and_redis_restarts`; a messages instance or an edge
//! killed mid-traffic are there too.

mod common;

use std::{sync::Arc, time::Duration};

use common::{
    bounded,
    cluster::{Cluster, Role, Shape},
    code, conv, eventually, next_matching, opts,
    traffic::{Sender, assert_all_acked_stored, cluster_opts, receive_from},
};
use natter_client::{
    Client, ClientOptions, ErrorCode, Event, UserId, v1::MessageKind, v1::PresenceState,
};

/// The value of an unlabelled metric on a role's `/metrics` (0 when not there yet).
async fn metric(role: &Role, name: &str) -> f64 {
    let Some(response) = role.get("/metrics").await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// One send attempt of a device that does not retry for long.
fn impatient() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        send_deadline: Duration::from_millis(300),
        ..opts()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_store_opens_the_breaker_and_retried_sends_are_stored_once() {
    let mut cluster = Cluster::start(Shape {
        edges: 1,
        messages: 1,
        ..Shape::default()
    })
    .await;
    bounded(150, async {
        let alice = cluster.user("alice").await;
        let bob = cluster.user("bob").await;
        let ca = Arc::new(cluster.connect(&alice, 0, cluster_opts()).await);
        let cb = cluster.connect(&bob, 0, cluster_opts()).await;
        assert_eq!(
            metric(&cluster.messages[0], "natter_store_breaker_open").await,
            0.0
        );

        let sender = Sender::start(ca.clone(), bob.user_id, 60);
        sender.acked(10).await;
        // Messages without --scylla are kept by the store role: kill it mid-traffic.
        cluster.store.kill9().await;
        let messages = &cluster.messages[0];
        eventually(
            Duration::from_secs(20),
            "the breaker to open",
            || async move { metric(messages, "natter_store_breaker_open").await == 1.0 },
        )
        .await;
        let acked_when_open = sender.count().await;

        // A send now is answered with a retryable error, UNAVAILABLE while the breaker
        // is open (its probe, every cooldown, may meet the dead store: INTERNAL), and
        // never acked.
        let carol = cluster.user("carol").await;
        let cc = cluster.connect(&carol, 0, impatient()).await;
        let mut unavailable = 0;
        for i in 0..20 {
            let e = cc
                .send(
                    bob.user_id,
                    MessageKind::Text,
                    "not now",
                    Some(format!("c-{i}")),
                )
                .await
                .expect_err("nothing is acked while the store is down");
            match code(e) {
                ErrorCode::Unavailable => unavailable += 1,
                ErrorCode::Internal => {}
                other => panic!("a send while the store is down got {other:?}"),
            }
        }
        assert!(unavailable > 0, "the open breaker answers UNAVAILABLE");
        assert!(
            metric(messages, "natter_store_breaker_rejections_total").await > 0.0,
            "refused calls are counted"
        );
        assert_eq!(
            sender.count().await,
            acked_when_open,
            "nothing is acked while the store is down"
        );
        assert!(
            messages
                .log_tail(2000)
                .contains("circuit breaker open, calls fail fast"),
            "the opening is logged"
        );

        // The store returns: the breaker's next probe closes it, and the sender's
        // retries (same client_msg_ids) are stored once each.
        cluster.store.start().await;
        let acks = sender.finish().await;
        eventually(
            Duration::from_secs(20),
            "the breaker to close",
            || async move { metric(messages, "natter_store_breaker_open").await == 0.0 },
        )
        .await;
        assert!(
            messages.log_tail(2000).contains("circuit breaker closed"),
            "the closing is logged"
        );
        let got = receive_from(&cb, alice.user_id, 60, 60).await;
        let mut seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=60).collect::<Vec<u64>>());
        let history = cb
            .full_history(&conv(alice.user_id, bob.user_id), 100)
            .await
            .expect("history is readable");
        assert_eq!(history.len(), 60);
        assert_all_acked_stored(&history, &acks);
        assert_eq!(
            history
                .iter()
                .map(|m| m.client_msg_id.clone())
                .collect::<Vec<_>>(),
            (0..60).map(|i| format!("m-{i:04}")).collect::<Vec<_>>()
        );
        // Carol's refused sends stored nothing.
        let carols = cb
            .full_history(&conv(carol.user_id, bob.user_id), 100)
            .await
            .expect("history is readable");
        assert!(carols.is_empty(), "{carols:?}");
    })
    .await;
}

/// The presence state of `user` as `c` is answered now.
async fn presence_of(c: &Client, user: UserId) -> Result<PresenceState, ErrorCode> {
    match c.subscribe_presence(&[user]).await {
        Ok(s) => Ok(s
            .users
            .first()
            .and_then(|p| PresenceState::try_from(p.state).ok())
            .unwrap_or(PresenceState::Unspecified)),
        Err(e) => Err(code(e)),
    }
}

/// `from` sends to `to`: acked, and pushed to `to`'s device once.
async fn chat(from: &Client, to: &Client, body: &str) {
    let ack = from
        .send_text(to.user_id(), body)
        .await
        .unwrap_or_else(|e| panic!("{body:?} not acked: {e}"));
    let got = next_matching(to, Duration::from_secs(10), |ev| match ev {
        Event::Message(m) if m.seq == ack.seq && m.conversation_id == ack.conversation_id => {
            Some(m.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&got.body), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_goes_on_without_the_presence_role_and_presence_is_unavailable_not_stuck() {
    let mut cluster = Cluster::start(Shape {
        messages: 1,
        directory_ttl_ms: 1500,
        presence_debounce_ms: Some(300),
        presence: true,
        ..Shape::default()
    })
    .await;
    bounded(120, async {
        let alice = cluster.user("alice").await;
        let bob = cluster.user("bob").await;
        let ca = cluster.connect(&alice, 0, opts()).await;
        let cb = cluster.connect(&bob, 1, opts()).await;
        eventually(Duration::from_secs(10), "alice online for bob", || {
            let cb = &cb;
            async move { presence_of(cb, alice.user_id).await == Ok(PresenceState::Online) }
        })
        .await;

        cluster
            .presence
            .as_mut()
            .expect("the shape runs presence")
            .kill9()
            .await;
        // Chat across edges both ways, a receipt, and a device that connects now.
        chat(&ca, &cb, "presence is gone").await;
        chat(&cb, &ca, "we still talk").await;
        let c = conv(alice.user_id, bob.user_id);
        let last = ca.cursor(&c).expect("alice has a cursor");
        ca.read(&c, last).await.expect("a read receipt is stored");
        let bob2 = cluster.login(&bob.username, "device-2").await;
        let cb2 = cluster.connect(&bob2, 0, opts()).await;
        chat(&ca, &cb2, "a new device connects").await;
        // Presence requests are refused with a retryable error, within the client's
        // request timeout (the client retries UNAVAILABLE until then).
        assert_eq!(
            presence_of(&cb, alice.user_id).await,
            Err(ErrorCode::Unavailable)
        );

        // Back: the edges report their users again; presence is right once more.
        cluster
            .presence
            .as_mut()
            .expect("the shape runs presence")
            .start()
            .await;
        eventually(Duration::from_secs(20), "alice online again", || {
            let cb = &cb;
            async move { presence_of(cb, alice.user_id).await == Ok(PresenceState::Online) }
        })
        .await;
        ca.close();
        eventually(
            Duration::from_secs(20),
            "alice offline after closing",
            || {
                let cb = &cb;
                async move { presence_of(cb, alice.user_id).await == Ok(PresenceState::Offline) }
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_people_role_cached_chats_go_on_and_blocks_still_hold() {
    let mut cluster = Cluster::start(Shape {
        messages: 1,
        people: true,
        ..Shape::default()
    })
    .await;
    bounded(120, async {
        let alice = cluster.user("alice").await;
        let bob = cluster.user("bob").await;
        let dan = cluster.user("dan").await;
        let ca = Arc::new(cluster.connect(&alice, 0, opts()).await);
        let cb = cluster.connect(&bob, 1, opts()).await;
        let cd = cluster.connect(&dan, 1, opts()).await;
        chat(&ca, &cb, "before").await;
        chat(&cb, &ca, "before, back").await;
        // Dan blocks Alice while the people role is up.
        cd.block(alice.user_id).await.expect("dan blocks alice");

        cluster
            .people
            .as_mut()
            .expect("the shape runs people")
            .kill9()
            .await;
        // Alice and Bob's settings are cached by the messages owner: they chat on.
        chat(&ca, &cb, "people is gone").await;
        chat(&cb, &ca, "still here").await;
        // Dan's are not, and only people knows he blocked Alice: her message must not
        // reach him for want of an answer. It is refused (UNAVAILABLE, so the client
        // keeps retrying the same client_msg_id) rather than delivered.
        let retries_before = ca.stats().retries;
        let sending = tokio::spawn({
            let ca = ca.clone();
            async move { ca.send_text(dan.user_id, "you blocked me").await }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!sending.is_finished(), "not acked while people is down");
        assert!(
            ca.stats().retries > retries_before,
            "refused with a retryable error"
        );
        // What only people answers is refused with a retryable error, not left hanging.
        let e = ca.my_profile().await.expect_err("no people role");
        assert_eq!(code(e), ErrorCode::Unavailable);

        cluster
            .people
            .as_mut()
            .expect("the shape runs people")
            .start()
            .await;
        // The retried send is stored once people answers again, and still withheld
        // from Dan: the block held throughout.
        let ack = tokio::time::timeout(Duration::from_secs(40), sending)
            .await
            .expect("acked once people is back")
            .expect("the send task")
            .expect("acked");
        assert_eq!(ack.seq, 1, "one message, stored once");
        chat(&cb, &cd, "dan still gets others' messages").await;
        let from_alice = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match cd.recv().await {
                    Some(Event::Message(m)) if m.sender_user == alice.user_id.get() => {
                        break m;
                    }
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
        })
        .await;
        assert!(
            from_alice.is_err(),
            "dan got a message from the user he blocked: {from_alice:?}"
        );
    })
    .await;
}

//! Cluster mode end to end: real `nats-server` and `redis-server` processes, and natter's
//! roles as separate processes (sessions, store, two messages instances, two edges). The
//! guarantees of `natter serve` must hold across nodes and while nodes die: acked means
//! stored, nothing shown twice, one gap-free order per conversation.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use common::{
    bounded,
    cluster::{Cluster, Pair, Shape},
    conv, eventually, next_matching, opts,
    traffic::{
        Sender, assert_all_acked_stored, cluster_opts, history, receive_from, send_numbered,
    },
};
use natter_client::{Client, ClientOptions, Event, Seq, UserId, v1, v1::MessageKind};
use natter_sessions::directory::{RedisDirectory, SessionDirectory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_edges_chat_with_every_guarantee() {
    let cluster = Cluster::start(Shape::default()).await;
    bounded(120, async {
        // Partitions are spread over both messages instances.
        let owned = cluster.ownership().await;
        for (i, o) in owned.iter().enumerate() {
            let n = o.as_ref().map_or(0, |o| o.len());
            assert!(n >= 64, "messages-{i} owns only {n} partitions: {owned:?}");
        }

        let alice = cluster.user("alice").await;
        let bob = cluster.user("bob").await;
        let bob2 = cluster.login(&bob.username, "device-2").await;
        let ca = cluster.connect(&alice, 0, cluster_opts()).await;
        let cb = cluster.connect(&bob, 1, cluster_opts()).await;
        let cb2 = cluster.connect(&bob2, 0, cluster_opts()).await;

        // The session directory knows where every device is.
        let directory = RedisDirectory::connect(&cluster.redis.url(), "natter")
            .await
            .expect("directory");
        eventually(
            Duration::from_secs(10),
            "bob's devices in the directory",
            || {
                let directory = &directory;
                async move {
                    let devices = directory.devices(bob.user_id).await.unwrap_or_default();
                    let nodes: HashSet<String> = devices.into_iter().map(|d| d.node).collect();
                    nodes == HashSet::from(["edge-0".to_owned(), "edge-1".to_owned()])
                }
            },
        )
        .await;
        let nodes = directory.nodes().await.expect("nodes");
        assert_eq!(
            nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
            ["edge-0", "edge-1"]
        );

        // Both sides send at once, across edges.
        let (acks_a, acks_b) = tokio::join!(
            send_numbered(&ca, bob.user_id, "a", 40),
            send_numbered(&cb, alice.user_id, "b", 40),
        );
        // Both of bob's devices (on different edges) get alice's 40, once each, in order.
        for device in [&cb, &cb2] {
            let got = receive_from(device, alice.user_id, 40, 30).await;
            let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
            let acked: Vec<u64> = acks_a.iter().map(|a| a.seq).collect();
            assert_eq!(seqs, acked, "pushes arrive once, in seq order");
        }
        let got = receive_from(&ca, bob.user_id, 40, 30).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            acks_b.iter().map(|a| a.seq).collect::<Vec<_>>()
        );

        // One order for everyone: the history read through either edge is the same.
        let all: Vec<v1::Ack> = acks_a.iter().chain(&acks_b).cloned().collect();
        let ha = history(&ca, alice.user_id, bob.user_id).await;
        let hb = history(&cb2, alice.user_id, bob.user_id).await;
        assert_eq!(ha.len(), 80);
        assert_all_acked_stored(&ha, &all);
        assert_eq!(ha, hb, "both edges read the same history");

        // A retry (same device, same client_msg_id) through the other edge gets the
        // original ack, not a second message.
        let again = cluster.connect(&alice, 1, cluster_opts()).await;
        let retry = again
            .send(bob.user_id, MessageKind::Text, "a 0", Some("a-0000".into()))
            .await
            .expect("retry acked");
        assert_eq!(
            (retry.seq, retry.message_id),
            (acks_a[0].seq, acks_a[0].message_id)
        );

        // Receipts cross edges: bob reads everything, alice sees the blue ticks.
        let last = Seq(80);
        cb.read(&conv(alice.user_id, bob.user_id), last)
            .await
            .expect("read");
        let receipt = next_matching(&again, Duration::from_secs(10), |ev| match ev {
            Event::Receipt(r)
                if r.kind == v1::ReceiptKind::Read as i32 && r.user_id == bob.user_id.get() =>
            {
                Some(r.clone())
            }
            _ => None,
        })
        .await;
        assert_eq!(receipt.up_to_seq, 80);
        drop(ca);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_mid_traffic_loses_and_repeats_nothing() {
    let mut cluster = Cluster::start(Shape::default()).await;
    bounded(150, async {
        let Pair { alice, bob, ca, cb } = cluster.alice_and_bob(cluster_opts()).await;

        let sender = Sender::start(ca.clone(), bob.user_id, 150);
        sender.acked(40).await;
        cluster.edges[0].kill9().await;
        let acks = sender.finish().await;
        assert!(
            ca.stats().reconnects >= 1,
            "alice moved to the other edge: {:?}",
            ca.stats()
        );

        let got = receive_from(&cb, alice.user_id, 150, 60).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=150).collect::<Vec<u64>>(),
            "bob sees each message once, in order"
        );
        assert_eq!(
            got.iter()
                .map(|m| m.client_msg_id.clone())
                .collect::<Vec<_>>(),
            (0..150).map(|i| format!("m-{i:04}")).collect::<Vec<_>>()
        );
        let h = history(&cb, alice.user_id, bob.user_id).await;
        assert_eq!(h.len(), 150);
        assert_all_acked_stored(&h, &acks);

        // The dead edge's devices leave the directory by themselves (TTL).
        let directory = RedisDirectory::connect(&cluster.redis.url(), "natter")
            .await
            .expect("directory");
        eventually(
            Duration::from_secs(15),
            "edge-0 to leave the directory",
            || {
                let directory = &directory;
                async move {
                    directory
                        .nodes()
                        .await
                        .map(|n| n.iter().all(|n| n.node != "edge-0"))
                        .unwrap_or(false)
                }
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_of_a_busy_conversation_moves_its_partition() {
    let mut cluster = Cluster::start(Shape::default()).await;
    bounded(150, async {
        let Pair { alice, bob, ca, cb } = cluster.alice_and_bob(cluster_opts()).await;
        let partition = conv(alice.user_id, bob.user_id).partition().index();
        let owner = cluster
            .owner_of(partition)
            .await
            .expect("the partition has an owner");

        let sender = Sender::start(ca.clone(), bob.user_id, 120);
        sender.acked(30).await;
        cluster.messages[owner].kill9().await;
        // Sending resumes once the lease has run out.
        let acks = sender.finish().await;

        // The survivor now owns everything, each partition once.
        cluster.wait_all_partitions_owned().await;
        let survivor = 1 - owner;
        assert_eq!(cluster.owner_of(partition).await, Some(survivor));

        let got = receive_from(&cb, alice.user_id, 120, 60).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=120).collect::<Vec<u64>>()
        );
        let h = history(&cb, alice.user_id, bob.user_id).await;
        assert_all_acked_stored(&h, &acks);

        // The instance comes back: partitions are shared again (a clean hand-over) and
        // the conversation carries on gap-free.
        cluster.messages[owner].start().await;
        cluster.wait_balanced().await;
        let more = send_numbered(&ca, bob.user_id, "after", 20).await;
        assert_eq!(more.last().map(|a| a.seq), Some(140));

        // A clean stop (SIGTERM) hands the partitions over instead of letting the
        // leases run out; the other instance serves them all.
        cluster.messages[owner].terminate().await;
        cluster.wait_balanced().await;
        let last = send_numbered(&ca, bob.user_id, "last", 10).await;
        assert_eq!(last.last().map(|a| a.seq), Some(150));
        let h = history(&cb, alice.user_id, bob.user_id).await;
        assert_eq!(h.len(), 150);
        assert_all_acked_stored(&h, &more);
        assert_all_acked_stored(&h, &last);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_recovers_from_nats_and_redis_restarts() {
    let mut cluster = Cluster::start(Shape::default()).await;
    bounded(180, async {
        let Pair { alice, bob, ca, cb } = cluster.alice_and_bob(cluster_opts()).await;

        let sender = Sender::start(ca.clone(), bob.user_id, 150);
        sender.acked(30).await;
        cluster.nats.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.nats.restart();
        sender.acked(70).await;
        cluster.redis.kill();
        // Without Redis the edges and messages instances are not ready (and say why).
        for role in [&cluster.edges[0], &cluster.messages[0]] {
            let readyz = role.get("/readyz").await.expect("readyz answers");
            assert_eq!(readyz.status(), 503, "{}", role.name);
            assert_eq!(
                readyz.text().await.unwrap_or_default(),
                "redis unreachable\n"
            );
        }
        // Longer than the lease validity: owners must stop, then take their partitions
        // back once Redis returns.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        cluster.redis.restart();
        let acks = sender.finish().await;
        cluster.wait_all_partitions_owned().await;
        for role in [&cluster.edges[0], &cluster.messages[0]] {
            let ready = role.get("/readyz").await.map(|r| r.status().as_u16());
            assert_eq!(ready, Some(200), "{} ready again", role.name);
        }

        let got = receive_from(&cb, alice.user_id, 150, 90).await;
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=150).collect::<Vec<u64>>()
        );
        let h = history(&cb, alice.user_id, bob.user_id).await;
        assert_eq!(h.len(), 150);
        assert_all_acked_stored(&h, &acks);

        // The directory catches up with the devices still connected.
        let directory = RedisDirectory::connect(&cluster.redis.url(), "natter")
            .await
            .expect("directory");
        eventually(Duration::from_secs(20), "bob back in the directory", || {
            let directory = &directory;
            async move {
                directory
                    .devices(bob.user_id)
                    .await
                    .map(|d| d.len() == 1)
                    .unwrap_or(false)
            }
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tests_direct_scenario_audits_clean_while_a_messages_instance_dies() {
    let mut cluster = Cluster::start(Shape::default()).await;
    // A long drain: sends caught by the crash are retried every 2 s until the
    // partitions have moved (the drain ends once all is settled).
    let run = common::cluster::direct_load(&cluster, 40, 8, 40).output();
    // Mid-run, a messages instance dies (kill -9) with half the partitions: their
    // conversations stall until the leases run out, then carry on at the other one.
    let crash = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        cluster.messages[0].kill9().await;
    };
    let (out, ()) = bounded(150, async { tokio::join!(run, crash) }).await;
    common::cluster::audited_clean(out.expect("natter-loadtest runs"), "cluster direct");
}

/// The next message of `conv` on `c` (waits up to `secs`).
async fn next_in(c: &Client, conv: &str, secs: u64) -> v1::Message {
    next_matching(c, Duration::from_secs(secs), |ev| match ev {
        Event::Message(m) if m.conversation_id == conv => Some(m.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spread_over_two_edges_keeps_one_order_through_an_owner_kill() {
    let cluster = Cluster::start(Shape::default()).await;
    bounded(150, async {
        // Six members, alternating between the two edges; groups and messages run as
        // separate roles.
        let mut sessions = Vec::new();
        let mut clients = Vec::new();
        // Each device also yields its own messages (from their acks), so every member
        // sees the whole conversation.
        let own = ClientOptions {
            yield_own: true,
            ..cluster_opts()
        };
        for i in 0..6 {
            let s = cluster.user(&format!("m{i}")).await;
            clients.push(Arc::new(cluster.connect(&s, i % 2, own.clone()).await));
            sessions.push(s);
        }
        let others: Vec<UserId> = sessions[1..].iter().map(|s| s.user_id).collect();
        let info = clients[0]
            .create_group("spread", &others)
            .await
            .expect("create");
        let conv = info.conversation_id.clone();
        for c in &clients {
            assert_eq!(
                next_in(c, &conv, 10).await.seq,
                1,
                "everyone sees the creation"
            );
        }

        // Three members on both edges send at once.
        let conv_id: natter_client::ConversationId = conv.parse().expect("conversation id");
        let senders: Vec<_> = (0..3)
            .map(|k| {
                let c = clients[k].clone();
                let conv_id = conv_id.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        c.send_text(&conv_id, &format!("s{k} {i}"))
                            .await
                            .unwrap_or_else(|e| panic!("s{k} {i}: {e}"));
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.expect("sender task");
        }
        // Every member's device sees the same 60 messages, in the same order (its own
        // come from acks), gap-free after the creation.
        let mut orders = Vec::new();
        for c in &clients {
            let mut seqs = Vec::new();
            while seqs.len() < 60 {
                let m = next_in(c, &conv, 30).await;
                seqs.push((m.seq, m.message_id));
            }
            orders.push(seqs);
        }
        assert!(orders.windows(2).all(|w| w[0] == w[1]), "one order for all");
        let seqs: Vec<u64> = orders[0].iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (2..=61).collect::<Vec<_>>());

        // The owner removes member 5; then the messages instance that owns the group's
        // conversation is killed. The next owner loads the group from the groups role:
        // member 5 stays cut off.
        let removed = clients[0]
            .group(v1::group_request::Op::RemoveMember(v1::GroupRemoveMember {
                group_id: info.group_id,
                user_id: sessions[5].user_id.get(),
                ban: false,
            }))
            .await
            .expect("remove");
        assert_eq!(removed.seq, 62);
        assert_eq!(next_in(&clients[5], &conv, 10).await.seq, 62);
        let p = conv_id.partition().index();
        let owner = cluster.owner_of(p).await.expect("an owner");
        let mut cluster = cluster;
        cluster.messages[owner].kill9().await;
        let after = clients[1]
            .send_text(&conv_id, "after the kill")
            .await
            .expect("acked by the next owner");
        assert_eq!(after.seq, 63);
        for (i, c) in clients.iter().enumerate().take(5) {
            let m = next_in(c, &conv, 30).await;
            assert_eq!(m.seq, 62, "member {i} sees the removal");
            assert_eq!(next_in(c, &conv, 30).await.seq, 63, "member {i}");
        }
        let refused = clients[5]
            .send_text(&conv_id, "still here?")
            .await
            .expect_err("a removed member cannot send");
        assert_eq!(
            refused.server_code(),
            Some(natter_client::ErrorCode::Forbidden)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Some(ev) = clients[5].try_recv() {
            if let Event::Message(m) = ev {
                assert!(m.conversation_id != conv || m.seq <= 62, "{m:?}");
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Presence across edges, on the test's own Redis.

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The next presence push about `user` on `c` in state `want`, within `secs`; pushes
/// before it (the server pushes presence again after a change of settings, contacts or
/// blocks) must be in state `allowed`.
async fn presence_push(
    c: &Client,
    user: UserId,
    secs: u64,
    want: v1::PresenceState,
    allowed: v1::PresenceState,
) -> v1::UserPresence {
    next_matching(c, Duration::from_secs(secs), |ev| match ev {
        Event::Presence(p) if p.user_id == user.get() => {
            let state = presence_state(p);
            assert!(state == want || state == allowed, "unexpected push {p:?}");
            (state == want).then_some(*p)
        }
        _ => None,
    })
    .await
}

/// What `c` is answered about `user` now.
async fn presence_snapshot(c: &Client, user: UserId) -> v1::UserPresence {
    let s = c.subscribe_presence(&[user]).await.expect("subscribe");
    assert_eq!(s.users.len(), 1, "{s:?}");
    s.users[0]
}

fn presence_state(p: &v1::UserPresence) -> v1::PresenceState {
    v1::PresenceState::try_from(p.state).unwrap_or(v1::PresenceState::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_edges_and_an_edge_that_dies_without_a_word_goes_offline() {
    const TTL_MS: u64 = 1500;
    const DEBOUNCE_MS: u64 = 300;
    let mut cluster = Cluster::start(Shape {
        directory_ttl_ms: TTL_MS,
        presence_debounce_ms: Some(DEBOUNCE_MS),
        people: true,
        presence: true,
        ..Shape::default()
    })
    .await;
    bounded(120, async {
        use v1::PresenceState::{Offline, Online, Unspecified};
        // Uma on edge 0, Wes watching from edge 1, Bob (whom Uma blocks) from edge 1.
        // Nobody reconnects by themselves: Uma must not come back through edge 1.
        let uma = cluster.user("uma").await;
        let wes = cluster.user("wes").await;
        let bob = cluster.user("bob").await;
        let cw = cluster.connect(&wes, 1, opts()).await;
        let cb = cluster.connect(&bob, 1, opts()).await;
        let p = presence_snapshot(&cw, uma.user_id).await;
        assert_eq!((presence_state(&p), p.last_seen_ms), (Offline, 0));

        // Online through edge 0, seen from edge 1.
        let cu = cluster.connect(&uma, 0, opts()).await;
        let p = presence_push(&cw, uma.user_id, 10, Online, Offline).await;
        assert_eq!((presence_state(&p), p.last_seen_ms), (Online, 0));
        // The people role answers, and its block reaches the presence role.
        cu.block(bob.user_id).await.expect("block");
        let p = presence_snapshot(&cb, uma.user_id).await;
        assert_eq!((presence_state(&p), p.last_seen_ms), (Unspecified, 0));

        // A clean close: offline after the debounce, last seen at the close.
        let closing = epoch_ms();
        cu.close();
        let p = presence_push(&cw, uma.user_id, 10, Offline, Online).await;
        let arrived = epoch_ms();
        assert!(
            p.last_seen_ms + 50 >= closing && p.last_seen_ms <= closing + 1000,
            "last seen {} vs close at {closing}",
            p.last_seen_ms
        );
        assert!(
            arrived + 50 >= closing + DEBOUNCE_MS,
            "pushed within the debounce"
        );

        // Back on edge 0; then edge 0 dies without a goodbye.
        let cu = cluster.connect(&uma, 0, opts()).await;
        presence_push(&cw, uma.user_id, 10, Online, Offline).await;
        let p = presence_snapshot(&cw, uma.user_id).await;
        assert_eq!(presence_state(&p), Online, "{p:?}");
        let killed = epoch_ms();
        cluster.edges[0].kill9().await;
        let p = presence_push(&cw, uma.user_id, 15, Offline, Online).await;
        let arrived = epoch_ms();
        // Last seen is edge 0's last beat (it beats every TTL / 3), not the reap's time.
        assert!(
            p.last_seen_ms <= killed + 100 && p.last_seen_ms + TTL_MS / 3 + 500 >= killed,
            "last seen {} should be edge 0's last beat, before the kill at {killed}",
            p.last_seen_ms
        );
        // Nobody said goodbye: only the lapsed TTL tells.
        assert!(
            arrived >= p.last_seen_ms + TTL_MS - 100,
            "offline {} ms after the last beat, before the {TTL_MS} ms TTL lapsed",
            arrived - p.last_seen_ms
        );
        assert_eq!(presence_snapshot(&cw, uma.user_id).await, p);
        // Bob, blocked, was told nothing of any of it.
        while let Some(ev) = cb.try_recv() {
            if let Event::Presence(p) = &ev
                && p.user_id == uma.user_id.get()
            {
                assert_eq!(
                    (presence_state(p), p.last_seen_ms),
                    (Unspecified, 0),
                    "{p:?}"
                );
            }
        }
        drop(cu);
    })
    .await;
}

/// A 3x2 RGB PNG, 73 bytes (python3's zlib and struct; the same as tests/media.rs).
const PNG: [u8; 73] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0x00, 0xc1, 0x70, 0x16, 0x00, 0x3b, 0xd8, 0x05, 0xfb, 0x36, 0x11, 0x98, 0xea, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The media role over NATS: an upload to it is described to the messages owner (the
/// recipient's message carries the server's description), the recipient downloads it
/// from the media role, which asks the messages role's history as them; a stranger is
/// refused. With the media role gone, a media send is refused as UNAVAILABLE (and
/// retried by the client once it is back) while text keeps flowing.
#[tokio::test]
async fn media_role_serves_uploads_and_downloads_over_nats() {
    let mut cluster = Cluster::start(Shape {
        edges: 1,
        messages: 1,
        media: true,
        ..Shape::default()
    })
    .await;
    bounded(90, async {
        let ann = cluster.user("ann").await;
        let bo = cluster.user("bo").await;
        let cy = cluster.user("cy").await;
        // Ann gives up on a send after 4 s (the client retries UNAVAILABLE until then).
        let quick = ClientOptions {
            request_timeout: Duration::from_secs(2),
            send_deadline: Duration::from_secs(4),
            ..opts()
        };
        let ca = cluster.connect(&ann, 0, quick).await;
        let cb = cluster.connect(&bo, 0, opts()).await;
        let media_url = cluster.media.as_ref().expect("media role").base_url();
        let http = reqwest::Client::new();

        let uploaded: serde_json::Value = http
            .post(format!("{media_url}/v1/media?filename=dots.png"))
            .bearer_auth(&ann.access_token)
            .body(PNG.to_vec())
            .send()
            .await
            .expect("upload")
            .error_for_status()
            .expect("upload accepted")
            .json()
            .await
            .expect("upload answer");
        assert_eq!(uploaded["kind"], "image", "{uploaded}");
        assert_eq!(
            (uploaded["width"].as_u64(), uploaded["height"].as_u64()),
            (Some(3), Some(2))
        );
        let id = uploaded["id"].as_str().expect("media id").to_owned();

        let media_send = |id: &str, client_msg_id: &str| v1::Send {
            client_msg_id: client_msg_id.to_owned(),
            to_user: bo.user_id.get(),
            kind: MessageKind::Media as i32,
            media: Some(Box::new(v1::MediaRef {
                id: id.to_owned(),
                caption: "dots".into(),
                // The client's word on what it is counts for nothing.
                size: 1,
                mime: "text/plain".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let ack = ca
            .send_frame(media_send(&id, "m1"))
            .await
            .expect("media send acked");
        let got = next_matching(&cb, Duration::from_secs(10), |e| match e {
            Event::Message(m) if m.media.is_some() => Some(m.clone()),
            _ => None,
        })
        .await;
        let media = got.media.as_ref().expect("media");
        assert_eq!(media.id, id);
        assert_eq!(media.caption, "dots");
        assert_eq!(
            (media.size, media.mime.as_str()),
            (PNG.len() as u64, "image/png")
        );
        assert_eq!(media.sha256, uploaded["sha256"].as_str().expect("sha256"));
        assert!(!media.preview.is_empty(), "an inline preview");

        let download = |token: &str| {
            http.get(format!(
                "{media_url}/v1/media/{id}?conversation={}&seq={}",
                ack.conversation_id, ack.seq
            ))
            .bearer_auth(token.to_owned())
            .send()
        };
        let resp = download(&bo.access_token).await.expect("download");
        assert_eq!(resp.status(), 200);
        assert_eq!(&resp.bytes().await.expect("bytes")[..], &PNG[..]);
        let resp = download(&cy.access_token).await.expect("download");
        assert_eq!(resp.status(), 403, "a stranger is refused");

        // Without the media role: media sends are refused as UNAVAILABLE (the client
        // retries until its deadline), text is unaffected; back, media sends work again.
        let media_role = cluster.media.as_mut().expect("media role");
        media_role.kill9().await;
        let refused = ca.send_frame(media_send(&id, "m2")).await;
        assert!(refused.is_err(), "acked with no media service: {refused:?}");
        ca.send(bo.user_id, MessageKind::Text, "still here", None)
            .await
            .expect("text without the media role");
        media_role.start().await;
        let ack = ca
            .send_frame(media_send(&id, "m3"))
            .await
            .expect("media role back");
        assert!(ack.seq > 0);
    })
    .await;
}

/// A role's `/metrics`.
async fn metrics_text(role: &common::cluster::Role) -> String {
    role.get("/metrics")
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The next call event of `kind` on `c` (other events are skipped).
async fn call_event(c: &Client, kind: v1::CallEventType, secs: u64) -> v1::CallEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Some(Event::Call(e)) if e.r#type() == kind => return *e,
            Some(_) => {}
            None => panic!("no {kind:?} within {secs} s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ring_and_relay_across_edges_and_a_dropped_side_ends_the_call() {
    let cluster = Cluster::start(Shape {
        messages: 1,
        people: true,
        calls: Some(1_000),
        ..Shape::default()
    })
    .await;
    bounded(90, async {
        let ann = cluster.user("ann").await;
        let bo = cluster.user("bo").await;
        // Ann on edge 0, Bo's two devices on edge 1 and edge 0: every push crosses NATS.
        let a = cluster.connect(&ann, 0, opts()).await;
        let b1 = cluster.connect(&bo, 1, opts()).await;
        let bo2 = cluster.login(&bo.username, "second").await;
        let b2 = cluster.connect(&bo2, 0, opts()).await;

        let call = a
            .start_call(bo.user_id, v1::CallMedia::Voice, Some("v=0 offer".into()))
            .await
            .expect("start");
        assert_eq!(call.state(), v1::CallState::Ringing);
        for b in [&b1, &b2] {
            let ring = call_event(b, v1::CallEventType::Ringing, 10).await;
            assert_eq!(
                ring.call.as_ref().map(|c| c.call_id.as_str()),
                Some(call.call_id.as_str())
            );
            assert_eq!(
                ring.description.map(|d| d.sdp),
                Some("v=0 offer".to_owned())
            );
        }
        let candidate = |c: &str| v1::IceCandidate {
            candidate: c.to_owned(),
            sdp_mid: "0".into(),
            ..Default::default()
        };
        // Held until the answer, then handed to the device that answers.
        a.call_signal(&call.call_id, 0, None, Some(candidate("candidate:early")))
            .await
            .expect("early candidate");
        b1.answer_call(&call.call_id, Some("v=0 answer".into()))
            .await
            .expect("answer");
        let answered = call_event(&a, v1::CallEventType::Answered, 10).await;
        assert_eq!(answered.from_device, b1.device_id().get());
        assert_eq!(
            answered.description.map(|d| d.sdp),
            Some("v=0 answer".to_owned())
        );
        let elsewhere = call_event(&b2, v1::CallEventType::Ended, 10).await;
        assert_eq!(elsewhere.reason(), v1::CallEndReason::AnsweredElsewhere);
        let early = call_event(&b1, v1::CallEventType::Signal, 10).await;
        assert_eq!(
            early.candidate.map(|c| c.candidate),
            Some("candidate:early".to_owned())
        );
        b1.call_signal(&call.call_id, 0, None, Some(candidate("candidate:bo")))
            .await
            .expect("bo's candidate");
        let got = call_event(&a, v1::CallEventType::Signal, 10).await;
        assert_eq!(
            got.candidate.map(|c| c.candidate),
            Some("candidate:bo".to_owned())
        );

        // The calls role hands out TURN credentials for the cluster's relay.
        let ice: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "{}/v1/calls/ice-servers",
                cluster.calls.as_ref().expect("calls role").base_url()
            ))
            .bearer_auth(&ann.access_token)
            .send()
            .await
            .expect("ice servers")
            .error_for_status()
            .expect("ice servers answered")
            .json()
            .await
            .expect("json");
        let turn = format!("turn:{}?transport=udp", cluster.turn_addr.expect("relay"));
        let servers = ice["ice_servers"].as_array().expect("ice_servers");
        let entry = servers
            .iter()
            .find(|s| {
                s["urls"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u == &turn))
            })
            .unwrap_or_else(|| panic!("{turn} in {ice}"));
        let username = entry["username"].as_str().expect("username");
        assert!(
            username.ends_with(&format!(":{}", ann.user_id)),
            "{username}"
        );
        assert!(!entry["credential"].as_str().unwrap_or_default().is_empty());

        // Bo's answering device goes away: after the 1 s grace the call ends DROPPED.
        b1.close();
        let lost = call_event(&a, v1::CallEventType::PeerLost, 10).await;
        assert_eq!(
            lost.from_device,
            bo.device_id.get(),
            "b1 is Bo's first device"
        );
        let ended = call_event(&a, v1::CallEventType::Ended, 10).await;
        assert_eq!(ended.reason(), v1::CallEndReason::Dropped);
        // The entry is in the conversation, through the messages role over NATS.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let entry = loop {
            let found = history(&a, ann.user_id, bo.user_id)
                .await
                .into_iter()
                .find(|m| m.kind() == MessageKind::Call);
            match found {
                Some(m) => break m,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => panic!("no call entry in the history"),
            }
        };
        let log = entry.call.expect("call log");
        assert_eq!(log.call_id, call.call_id);
        assert_eq!(log.reason(), v1::CallEndReason::Dropped);
        assert!(!log.missed, "it was answered");

        // Every role serves /metrics: the one messages instance owns all 256 partitions,
        // and Ann's edge counted her call frames.
        let messages = metrics_text(&cluster.messages[0]).await;
        assert!(
            messages.lines().any(|l| l == "natter_partitions_owned 256"),
            "{messages}"
        );
        let edge = metrics_text(&cluster.edges[0]).await;
        let calls = edge
            .lines()
            .find_map(|l| l.strip_prefix("natter_frames_in_total{type=\"call\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(calls >= 2.0, "her start and her candidate: {edge}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_edge_dies_without_a_word_drops_after_the_grace() {
    let mut cluster = Cluster::start(Shape {
        messages: 1,
        calls: Some(1_000),
        ..Shape::default()
    })
    .await;
    bounded(90, async {
        let ann = cluster.user("ann").await;
        let bo = cluster.user("bo").await;
        let a = cluster.connect(&ann, 0, opts()).await;
        let b = cluster.connect(&bo, 1, opts()).await;
        let call = a
            .start_call(bo.user_id, v1::CallMedia::Video, Some("v=0 offer".into()))
            .await
            .expect("start");
        call_event(&b, v1::CallEventType::Ringing, 10).await;
        b.answer_call(&call.call_id, Some("v=0 answer".into()))
            .await
            .expect("answer");
        call_event(&a, v1::CallEventType::Answered, 10).await;
        // Bo's edge dies: no close frame, no disconnect event. The session directory
        // forgets its devices after its TTL (3 s), two sweeps miss Bo's device, and the
        // grace (1 s) passes.
        cluster.edges[1].kill9().await;
        let lost = call_event(&a, v1::CallEventType::PeerLost, 15).await;
        assert_eq!(lost.from_device, bo.device_id.get());
        let ended = call_event(&a, v1::CallEventType::Ended, 10).await;
        assert_eq!(ended.reason(), v1::CallEndReason::Dropped);
        // Ann is free again: she can place another call (to herself it would be refused,
        // so to Bo, whose device is offline: it rings nowhere but starts).
        let again = a
            .start_call(bo.user_id, v1::CallMedia::Voice, Some("v=0 again".into()))
            .await
            .expect("a new call after the drop");
        assert_eq!(again.state(), v1::CallState::Ringing);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_notifications_go_through_jetstream_and_survive_a_notifier_restart() {
    let (receiver, addr) = common::webhook::Receiver::start(1).await;
    let mut cluster = Cluster::start(Shape {
        messages: 1,
        push_webhook: Some(format!("http://{addr}/push")),
        ..Shape::default()
    })
    .await;
    bounded(90, async {
        let ann = cluster.user("ann").await;
        let bo = cluster.user("bo").await;
        let r = reqwest::Client::new()
            .put(format!(
                "{}/v1/devices/current/push",
                cluster.sessions.base_url()
            ))
            .bearer_auth(&bo.access_token)
            .json(&serde_json::json!({"token": "bo-token", "platform": "apns"}))
            .send()
            .await
            .expect("register a push token");
        assert_eq!(r.status(), 204);
        let a = cluster.connect(&ann, 0, opts()).await;
        let first = a.send_text(bo.user_id, "one").await.expect("send");
        // The webhook fails once, then takes it: two calls, one notification.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while receiver.calls().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                receiver.calls()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let calls = receiver.calls();
        assert_eq!(calls[0], calls[1]);
        assert_eq!(calls[0]["seq"], first.seq.to_string());
        assert_eq!(calls[0]["token"], "bo-token");

        // With the notifier down, a job waits in JetStream; the restarted notifier
        // delivers it.
        let notifier = cluster.notifier.as_mut().expect("notifier");
        notifier.kill9().await;
        let second = a.send_text(bo.user_id, "two").await.expect("send");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            receiver.calls().len(),
            2,
            "nobody consumes while the notifier is down"
        );
        notifier.start().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while receiver.calls().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                receiver.calls()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = receiver.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[2]["seq"], second.seq.to_string());
    })
    .await;
}

async fn admin_call(
    cluster: &Cluster,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let admin = cluster.admin.as_ref().expect("the admin role");
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", admin.base_url()))
        .bearer_auth(&cluster.admin_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status();
    let text = response.text().await.expect("admin body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

async fn closed_with(c: &Client, secs: u64) -> u16 {
    next_matching(c, Duration::from_secs(secs), |e| match e {
        Event::Closed { code, .. } => Some(*code),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_role_sees_and_acts_across_edges_and_services() {
    use reqwest::{Method, StatusCode};
    let mut cluster = Cluster::start(Shape {
        admin: true,
        people: true,
        presence: true,
        media: true,
        ..Shape::default()
    })
    .await;
    bounded(120, async {
        let no_reconnect = ClientOptions {
            auto_reconnect: false,
            ..opts()
        };
        // Ann on both edges, Bob on edge 1.
        let ann = cluster.user("ann").await;
        let ann2 = cluster.login(&ann.username, "tablet").await;
        let bob = cluster.user("bob").await;
        let a0 = cluster.connect(&ann, 0, no_reconnect.clone()).await;
        let a1 = cluster.connect(&ann2, 1, no_reconnect.clone()).await;
        let b = cluster.connect(&bob, 1, opts()).await;
        b.send_text(ann.user_id, "hi ann").await.expect("send");

        // Where everyone is, from the Redis session directory.
        let (status, edges) = admin_call(&cluster, Method::GET, "/admin/v1/edges", None).await;
        assert_eq!(status, StatusCode::OK, "{edges}");
        assert_eq!(edges["edges"].as_array().unwrap().len(), 2, "{edges}");
        assert!(edges["connections"].as_u64() >= Some(3), "{edges}");
        let (_, sessions) = admin_call(
            &cluster,
            Method::GET,
            &format!("/admin/v1/sessions?user_id={}", ann.user_id),
            None,
        )
        .await;
        let mut nodes: Vec<&str> = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["node"].as_str().unwrap())
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["edge-0", "edge-1"], "{sessions}");

        // Inspect asks sessions, groups, presence and media, each its own process.
        let (status, detail) = admin_call(
            &cluster,
            Method::GET,
            &format!("/admin/v1/users/{}", ann.user_id),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        assert_eq!(detail["unavailable"], serde_json::json!([]), "{detail}");
        assert_eq!(detail["devices"].as_array().unwrap().len(), 2, "{detail}");
        assert_eq!(detail["presence"]["online"], true, "{detail}");

        // Delete Bob's message for everyone: the owner (a messages process) tells both.
        let conv = conv(ann.user_id, bob.user_id);
        let (status, body) = admin_call(
            &cluster,
            Method::DELETE,
            &format!("/admin/v1/conversations/{conv}/messages/1"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let deleted = next_matching(&a0, Duration::from_secs(10), |e| match e {
            Event::MessageDeleted { seq, .. } => Some(*seq),
            _ => None,
        })
        .await;
        assert_eq!(deleted, 1);

        // A ban closes Ann's devices on both edges at once; neither edge lets her back.
        let (status, body) = admin_call(
            &cluster,
            Method::POST,
            &format!("/admin/v1/users/{}/ban", ann.user_id),
            Some(serde_json::json!({"reason": "test"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let close = natter_client::proto::close_code::ACCOUNT_DISABLED;
        assert_eq!(closed_with(&a0, 10).await, close);
        assert_eq!(closed_with(&a1, 10).await, close);
        for edge in &cluster.edges {
            let again =
                Client::connect(&edge.ws_url(), &ann.access_token, no_reconnect.clone()).await;
            assert!(again.is_err(), "{} let a banned user in", edge.name);
        }
        let (status, _) = admin_call(
            &cluster,
            Method::POST,
            &format!("/admin/v1/users/{}/unban", ann.user_id),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let back = cluster.connect(&ann, 1, no_reconnect.clone()).await;
        back.ping().await.expect("Ann is back after the unban");

        // Stats come from every process's reports.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let stats = loop {
            let (_, stats) = admin_call(&cluster, Method::GET, "/admin/v1/stats", None).await;
            let roles: HashSet<String> = stats["processes"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p["role"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let ok = ["edge", "messages", "sessions", "groups", "admin"]
                .iter()
                .all(|r| roles.contains(*r))
                && stats["totals"]["messages_sent"].as_u64() >= Some(1)
                && stats["rates"].is_object();
            if ok || tokio::time::Instant::now() > deadline {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            stats["totals"]["messages_sent"].as_u64() >= Some(1),
            "{stats}"
        );
        assert!(stats["rates"].is_object(), "{stats}");
        assert!(stats["processes"].as_array().unwrap().len() >= 8, "{stats}");

        // Delete Ann: every service's part goes, and the username is free again.
        let (status, body) = admin_call(
            &cluster,
            Method::DELETE,
            &format!("/admin/v1/users/{}", ann.user_id),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(closed_with(&back, 10).await, close);
        let (status, _) = admin_call(
            &cluster,
            Method::GET,
            &format!("/admin/v1/users/{}", ann.user_id),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        cluster
            .http
            .register(&ann.username, common::PASSWORD)
            .await
            .expect("the username is free again");

        // Readiness covers the store: with the store role gone, the messages instances
        // say so; back once it is.
        cluster.store.kill9().await;
        let readyz = cluster.messages[0].get("/readyz").await.expect("readyz");
        assert_eq!(readyz.status(), 503);
        assert_eq!(readyz.text().await.unwrap(), "store unreachable\n");
        cluster.store.start().await;
        eventually(Duration::from_secs(10), "messages ready again", || {
            let role = &cluster.messages[0];
            async move {
                role.get("/readyz")
                    .await
                    .is_some_and(|r| r.status().as_u16() == 200)
            }
        })
        .await;
    })
    .await;
}

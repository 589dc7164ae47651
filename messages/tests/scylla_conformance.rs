//! The store conformance suite on [`ScyllaStore`], plus what only a bucketed store can get
//! wrong (logs crossing a bucket boundary). Needs a ScyllaDB node: set
//! `NATTER_TEST_SCYLLA=host:port`. Each test works in a fresh keyspace
//! (`natter_test_<random>`) and drops it at the end, also when the test fails. Without the
//! variable every test says so on stderr and passes.

use std::sync::Arc;

use bytes::Bytes;
use natter_cql::test_support::in_fresh_keyspace;
use natter_messages::{
    MessageStore, NewMessage, ScyllaConfig, ScyllaStore, StoreError, conformance,
};
use natter_proto::{ConversationId, Seq, UserId, v1};
use rand::Rng as _;

/// What the skip message calls these tests.
const TESTS: &str = "ScyllaDB store tests";

async fn connect(config: &ScyllaConfig) -> Arc<dyn MessageStore> {
    let store: Arc<dyn MessageStore> = ScyllaStore::connect(config.clone())
        .await
        .expect("connect to ScyllaDB");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_store_passes_the_suite() {
    in_fresh_keyspace(TESTS, |config| async move {
        let store = connect(&config).await;
        conformance::run_all(|| store.clone()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_store_is_durable_across_reconnect() {
    in_fresh_keyspace(TESTS, |config| async move {
        // Create the schema once, so every reconnect below finds it.
        drop(connect(&config).await);
        conformance::durability_across_reopen(|| {
            // `open` is synchronous: connect on this runtime (multi-threaded, so blocking
            // one worker is fine).
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(connect(&config))
            })
        })
        .await;
    })
    .await;
}

fn conversation() -> ConversationId {
    let mut rng = rand::rng();
    let a = rng.random_range(1..(1u64 << 53));
    let b = a + rng.random_range(1..1000);
    ConversationId::direct(UserId(a), UserId(b)).expect("distinct users")
}

fn message(c: &ConversationId, seq: u64) -> NewMessage {
    NewMessage {
        message: v1::Message {
            conversation_id: c.as_str().to_owned(),
            seq,
            message_id: 1_000_000 + seq,
            sender_user: c.direct_members().expect("direct")[0].get(),
            sender_device: 42,
            client_msg_id: format!("m{seq}"),
            kind: v1::MessageKind::Binary as i32,
            body: Bytes::from(seq.to_le_bytes().to_vec()),
            reply_to_seq: 0,
            created_at_ms: 1_700_000_000_000 + seq,
            event: None,
            withheld: false,
            media: None,
            call: None,
            deleted: false,
        },
        members: c.direct_members().expect("direct").to_vec(),
    }
}

/// Appends `1..=last` in calls of `per_call` messages.
async fn fill(store: &Arc<dyn MessageStore>, c: &ConversationId, last: u64, per_call: u64) {
    let mut next = 1;
    while next <= last {
        let end = (next + per_call - 1).min(last);
        let batch = (next..=end).map(|s| message(c, s)).collect();
        store.append(batch).await.expect("append");
        next = end + 1;
    }
}

fn seqs(ms: &[v1::Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_cross_bucket_boundaries_gap_free() {
    in_fresh_keyspace(TESTS, |config| async move {
        let store = connect(&config).await;
        let c = conversation();
        // 1..=9_990 in calls of 500; then one call across the boundary (bucket 0 → 1).
        fill(&store, &c, 9_990, 500).await;
        let across = (9_991..=10_010).map(|s| message(&c, s)).collect();
        store
            .append(across)
            .await
            .expect("append across the boundary");
        assert_eq!(store.head(&c).await.expect("head"), Seq(10_010));

        let after = store.read_after(&c, Seq(9_995), 10).await.expect("read");
        assert_eq!(seqs(&after), (9_996..=10_005).collect::<Vec<_>>());
        let all_after = store.read_after(&c, Seq(9_000), 5_000).await.expect("read");
        assert_eq!(seqs(&all_after), (9_001..=10_010).collect::<Vec<_>>());
        let before = store.read_before(&c, Seq(10_003), 6).await.expect("read");
        assert_eq!(seqs(&before), (9_997..=10_002).collect::<Vec<_>>());
        let newest = store.read_before(&c, Seq::ZERO, 15).await.expect("read");
        assert_eq!(seqs(&newest), (9_996..=10_010).collect::<Vec<_>>());
        assert_eq!(after[4], message(&c, 10_000).message, "stored exactly");

        let member = c.direct_members().expect("direct")[1];
        assert_eq!(
            store.user_conversations(member).await.expect("list"),
            vec![(c.clone(), Seq(10_010))]
        );
        let key = natter_messages::DedupeKey {
            conversation: c.clone(),
            sender_device: natter_proto::DeviceId(42),
            client_msg_id: "m10000".into(),
        };
        let found = store.find_dedupe(vec![key]).await.expect("dedupe");
        assert_eq!(found[0].as_ref().map(|a| a.seq), Some(10_000));

        // A duplicate or a gap at the new bucket is still refused.
        let again = vec![message(&c, 10_010)];
        assert!(matches!(
            store.append(again).await,
            Err(StoreError::Conflict(_))
        ));
        let gap = vec![message(&c, 10_012)];
        assert!(matches!(
            store.append(gap).await,
            Err(StoreError::Conflict(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_is_not_opened_before_the_previous_one_is_full() {
    in_fresh_keyspace(TESTS, |config| async move {
        let store = connect(&config).await;
        let c = conversation();
        fill(&store, &c, 9_998, 500).await;
        // 10_000 would open bucket 1 while 9_999 is missing: refused, nothing stored.
        let early = vec![message(&c, 10_000)];
        assert!(matches!(
            store.append(early).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.head(&c).await.expect("head"), Seq(9_998));
        assert!(
            store
                .read_after(&c, Seq(9_998), 10)
                .await
                .expect("read")
                .is_empty()
        );
        // The log then continues normally into the next bucket.
        let next = vec![message(&c, 9_999), message(&c, 10_000)];
        store.append(next).await.expect("append 9_999 and 10_000");
        assert_eq!(store.head(&c).await.expect("head"), Seq(10_000));
        let tail = store.read_after(&c, Seq(9_997), 10).await.expect("read");
        assert_eq!(seqs(&tail), vec![9_998, 9_999, 10_000]);
    })
    .await;
}

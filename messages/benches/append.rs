//! The embedded store's append path: `RedbStore::append` of a batch of 1 and of 64
//! messages (100-byte bodies, one direct conversation per batch position), each batch
//! one durable (fsync'd) transaction, as the messages service commits them.
//!
//! `cargo bench -p natter-messages --bench append`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_messages::{MessageStore, NewMessage, RedbStore};
use natter_proto::{ConversationId, UserId, v1};

/// Conversations written round-robin, so batches touch several (as group commit does).
const CONVERSATIONS: u64 = 64;

struct Writer {
    store: Arc<RedbStore>,
    conversations: Vec<(ConversationId, Vec<UserId>)>,
    heads: Vec<u64>,
    next: usize,
    message_id: u64,
}

impl Writer {
    fn new(store: Arc<RedbStore>) -> Writer {
        let conversations: Vec<_> = (0..CONVERSATIONS)
            .map(|i| {
                let (a, b) = (UserId(1_000 + 2 * i), UserId(1_001 + 2 * i));
                let c = ConversationId::direct(a, b).expect("distinct users");
                (c, vec![a, b])
            })
            .collect();
        Writer {
            heads: vec![0; conversations.len()],
            store,
            conversations,
            next: 0,
            message_id: 0,
        }
    }

    /// The next `n` messages, each at its conversation's next seq.
    fn batch(&mut self, n: usize) -> Vec<NewMessage> {
        (0..n)
            .map(|_| {
                let i = self.next % self.conversations.len();
                self.next += 1;
                self.heads[i] += 1;
                self.message_id += 1;
                let (c, members) = &self.conversations[i];
                NewMessage {
                    message: v1::Message {
                        conversation_id: c.as_str().to_owned(),
                        seq: self.heads[i],
                        message_id: self.message_id,
                        sender_user: members[0].get(),
                        sender_device: 7,
                        client_msg_id: format!("m{}", self.message_id),
                        kind: v1::MessageKind::Binary as i32,
                        body: Bytes::from(vec![0x5a; 100]),
                        reply_to_seq: 0,
                        created_at_ms: 1_700_000_000_000,
                        event: None,
                        withheld: false,
                        media: None,
                        call: None,
                        deleted: false,
                    },
                    members: members.clone(),
                }
            })
            .collect()
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group("redb append");
    for batch in [1usize, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("messages.redb")).expect("open store");
        let mut w = Writer::new(store);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch of {batch}"), |b| {
            b.iter_custom(|iters| {
                // Batches are built outside the timed part.
                let batches: Vec<_> = (0..iters).map(|_| w.batch(batch)).collect();
                let store = w.store.clone();
                let start = Instant::now();
                rt.block_on(async {
                    for b in batches {
                        store.append(b).await.expect("append");
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = append
}
criterion_main!(benches);

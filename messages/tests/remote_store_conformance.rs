//! The store conformance suite through the store role: RemoteStore → InProcessBus →
//! `remote_store::serve` → RedbStore. Plus what is particular to the remote path: an
//! absent or silent store role answers Storage within the timeout, payloads stay under
//! NATS's 1 MiB, bad requests get Invalid, shutdown completes.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt as _;
use natter_bus::{Bus, BusError, InProcessBus, PendingReply, Subscription};
use natter_messages::{
    DedupeKey, MemberCursor, MessageStore, NewMessage, RedbStore, StoreError, conformance,
    remote_store::{self, MAX_PAYLOAD_BYTES, RemoteStore},
};
use natter_proto::{ConversationId, DeviceId, Seq, Subject, UserId, bus, v1};
use prost::Message as _;
use rand::Rng as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A running store role.
struct Role {
    stop: CancellationToken,
    done: JoinHandle<()>,
}

impl Role {
    async fn start(path: &Path, bus: Arc<dyn Bus>) -> Role {
        let store: Arc<dyn MessageStore> = RedbStore::open(path).expect("open redb");
        let stop = CancellationToken::new();
        let done = remote_store::serve(store, bus, stop.clone())
            .await
            .expect("serve");
        Role { stop, done }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("the store role stops promptly")
            .expect("the store role task ends cleanly");
    }
}

/// Runs `f` to completion from the synchronous closures the suite takes (multi-thread
/// runtime only).
fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_store_passes_the_suite_on_one_shared_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let role = Role::start(&dir.path().join("messages.redb"), bus.clone()).await;
    conformance::run_all(|| {
        let store: Arc<dyn MessageStore> = RemoteStore::new(bus.clone(), TIMEOUT);
        store
    })
    .await;
    role.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_store_passes_the_suite_on_fresh_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    let roles = Mutex::new(Vec::new());
    conformance::run_all(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        // Each role on its own bus: one queue group over two files would split the data.
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
        let role = block_on(Role::start(
            &dir.path().join(format!("m{i}.redb")),
            bus.clone(),
        ));
        roles.lock().expect("roles").push(role);
        let store: Arc<dyn MessageStore> = RemoteStore::new(bus, TIMEOUT);
        store
    })
    .await;
    let roles = std::mem::take(&mut *roles.lock().expect("roles"));
    for role in roles {
        role.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_store_is_durable_across_a_restart_of_the_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.redb");
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let current: Mutex<Option<Role>> = Mutex::new(None);
    conformance::durability_across_reopen(|| {
        let previous = current.lock().expect("role").take();
        let role = block_on(async {
            // Stopping the role drops its RedbStore, which closes the file.
            if let Some(previous) = previous {
                previous.stop().await;
            }
            Role::start(&path, bus.clone()).await
        });
        *current.lock().expect("role") = Some(role);
        let store: Arc<dyn MessageStore> = RemoteStore::new(bus.clone(), TIMEOUT);
        store
    })
    .await;
    let last = current.lock().expect("role").take();
    if let Some(role) = last {
        role.stop().await;
    }
}

fn expect_unreachable<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Storage(m)) => assert!(m.contains("store role unreachable"), "{m}"),
        other => panic!("expected Storage, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_role_calls_fail_with_storage_within_the_timeout() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let conv = ConversationId::direct(UserId(1), UserId(2)).expect("conv");

    // Nobody subscribed: "no responders", at once.
    let store = RemoteStore::new(bus.clone(), Duration::from_secs(30));
    let started = Instant::now();
    expect_unreachable(store.head(&conv).await);
    expect_unreachable(store.append(vec![new_message(&conv, 1, 0)]).await);
    assert!(started.elapsed() < Duration::from_secs(1));

    // Subscribed but silent (a hung role): the request timeout, not a hang.
    let _silent = bus
        .queue_subscribe(&Subject::store(), remote_store::QUEUE_GROUP, 16)
        .await
        .expect("subscribe");
    let timeout = Duration::from_millis(300);
    let store = RemoteStore::new(bus.clone(), timeout);
    let started = Instant::now();
    expect_unreachable(store.user_conversations(UserId(1)).await);
    let took = started.elapsed();
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_role_completes_and_later_calls_fail_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let role = Role::start(&dir.path().join("m.redb"), bus.clone()).await;
    let store = RemoteStore::new(bus.clone(), Duration::from_secs(30));
    let conv = ConversationId::direct(UserId(1), UserId(2)).expect("conv");
    store
        .append(vec![new_message(&conv, 1, 0)])
        .await
        .expect("append");
    role.stop().await;
    let started = Instant::now();
    expect_unreachable(store.head(&conv).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The file was closed: it opens again.
    RedbStore::open(&dir.path().join("m.redb")).expect("reopen after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let role = Role::start(&dir.path().join("m.redb"), bus.clone()).await;
    let ask = |payload: Vec<u8>| {
        let bus = bus.clone();
        async move {
            let reply = bus
                .request(&Subject::store(), Bytes::from(payload), TIMEOUT)
                .await
                .expect("a reply");
            bus::StoreReply::decode(reply).expect("decodable reply")
        }
    };
    let invalid = |r: bus::StoreReply| match r.result {
        Some(bus::store_reply::Result::Error(e)) => e.kind == bus::StoreErrorKind::Invalid as i32,
        _ => false,
    };
    assert!(invalid(ask(vec![0xff, 0xff, 0xff]).await), "garbage");
    assert!(
        invalid(ask(bus::StoreRequest { op: None }.encode_to_vec()).await),
        "no op"
    );
    let bad_conv = bus::StoreRequest {
        op: Some(bus::store_request::Op::Head(bus::store_request::Head {
            conversation_id: "nope".into(),
        })),
    };
    assert!(invalid(ask(bad_conv.encode_to_vec()).await), "bad id");
    // A final append whose staged parts never came: refused, nothing stored.
    let conv = ConversationId::direct(UserId(1), UserId(2)).expect("conv");
    let orphan = bus::StoreRequest {
        op: Some(bus::store_request::Op::Append(bus::store_request::Append {
            messages: Vec::new(),
            upload_id: 42,
            parts: 2,
        })),
    };
    match ask(orphan.encode_to_vec()).await.result {
        Some(bus::store_reply::Result::Error(e)) => {
            assert_eq!(e.kind, bus::StoreErrorKind::Storage as i32, "{e:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let store = RemoteStore::new(bus.clone(), TIMEOUT);
    assert_eq!(store.head(&conv).await, Ok(Seq::ZERO));
    role.stop().await;
}

/// A bus that remembers the largest payload it carried (requests and replies) and counts
/// requests.
#[derive(Default)]
struct MeasuredBus {
    inner: InProcessBus,
    largest: AtomicUsize,
    requests: AtomicUsize,
}

impl MeasuredBus {
    fn note(&self, payload: &Bytes) {
        self.largest.fetch_max(payload.len(), Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Bus for MeasuredBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.note(&payload);
        self.inner.publish(subject, payload).await
    }

    async fn subscribe(
        &self,
        pattern: &Subject,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        self.inner.subscribe(pattern, capacity).await
    }

    async fn queue_subscribe(
        &self,
        pattern: &Subject,
        group: &str,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        self.inner.queue_subscribe(pattern, group, capacity).await
    }

    async fn start_request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<PendingReply, BusError> {
        self.note(&payload);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.start_request(subject, payload, timeout).await
    }
}

fn random_id() -> u64 {
    rand::rng().random_range(1..(1u64 << 53))
}

/// A user id of 20 digits: the longest conversation ids, the heaviest list items.
fn wide_user() -> UserId {
    UserId(rand::rng().random_range(10_000_000_000_000_000_000..=u64::MAX))
}

fn new_message(conv: &ConversationId, seq: u64, body_bytes: usize) -> NewMessage {
    let members = conv.direct_members().expect("direct");
    NewMessage {
        message: v1::Message {
            conversation_id: conv.as_str().to_owned(),
            seq,
            message_id: random_id(),
            sender_user: members[0].get(),
            sender_device: 7,
            client_msg_id: format!("c{seq}"),
            kind: v1::MessageKind::Binary as i32,
            body: Bytes::from(vec![(seq % 251) as u8; body_bytes]),
            reply_to_seq: 0,
            created_at_ms: 1_700_000_000_000 + seq,
            event: None,
            withheld: false,
            media: None,
            call: None,
            deleted: false,
        },
        members: members.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payloads_stay_under_the_nats_limit_and_callers_can_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let measured = Arc::new(MeasuredBus::default());
    let bus: Arc<dyn Bus> = measured.clone();
    let role = Role::start(&dir.path().join("m.redb"), bus.clone()).await;
    // Generous: this test is about sizes, and a debug-build redb is slow at bulk writes.
    let store = RemoteStore::new(bus.clone(), Duration::from_secs(120));
    let conv = ConversationId::direct(UserId(random_id()), UserId(random_id())).expect("conv");

    // 40 messages of 60 KiB (2.4 MB) in one atomic batch: sent as staged parts.
    let written: Vec<NewMessage> = (1..=40).map(|s| new_message(&conv, s, 60 * 1024)).collect();
    let before = measured.requests.load(Ordering::Relaxed);
    store.append(written.clone()).await.expect("large append");
    let parts = measured.requests.load(Ordering::Relaxed) - before;
    assert!(parts >= 3, "the append took {parts} requests");
    assert_eq!(store.head(&conv).await, Ok(Seq(40)));
    let expected: Vec<v1::Message> = written.iter().map(|nm| nm.message.clone()).collect();

    // read_after returns a short page (the trait's "up to limit"); paging gets it all.
    let first = store
        .read_after(&conv, Seq::ZERO, 1000)
        .await
        .expect("read");
    assert!(!first.is_empty() && first.len() < 40, "{}", first.len());
    let mut got: Vec<v1::Message> = Vec::new();
    while got.len() < 40 {
        let after = got.last().map_or(Seq::ZERO, |m| Seq(m.seq));
        let page = store.read_after(&conv, after, 1000).await.expect("page");
        assert!(!page.is_empty(), "a page makes progress");
        got.extend(page);
    }
    assert_eq!(got, expected);
    assert!(
        store
            .read_after(&conv, Seq(40), 1000)
            .await
            .expect("end")
            .is_empty()
    );

    // read_before keeps the newest of what is asked, so pages stay contiguous.
    let mut older: Vec<v1::Message> = Vec::new();
    let mut before = Seq::ZERO;
    loop {
        let page = store.read_before(&conv, before, 1000).await.expect("page");
        let Some(oldest) = page.first() else { break };
        let newest = page.last().map_or(0, |m| m.seq);
        let bound = if before == Seq::ZERO {
            41
        } else {
            before.get()
        };
        assert_eq!(newest + 1, bound, "the page ends right below `before`");
        before = Seq(oldest.seq);
        older.splice(0..0, page);
        if before == Seq(1) {
            break;
        }
    }
    assert_eq!(older, expected);
    let small = store.read_before(&conv, Seq(10), 3).await.expect("small");
    assert_eq!(
        small.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );

    // Many dedupe keys (about 1.5 MB of them): several requests, one answer in order.
    let mut keys: Vec<DedupeKey> = Vec::new();
    for i in 0..10_000u64 {
        let seq = i % 50 + 1;
        keys.push(DedupeKey {
            conversation: conv.clone(),
            sender_device: DeviceId(7),
            // Known for seq <= 40, unknown above; padded to make the keys heavy.
            client_msg_id: if seq <= 40 {
                format!("c{seq}")
            } else {
                format!("{:0>120}", i)
            },
        });
    }
    let before = measured.requests.load(Ordering::Relaxed);
    let found = store.find_dedupe(keys.clone()).await.expect("dedupe");
    let lookups = measured.requests.load(Ordering::Relaxed) - before;
    assert!(lookups >= 2, "the lookup took {lookups} requests");
    assert_eq!(found.len(), keys.len());
    for (k, f) in keys.iter().zip(&found) {
        let known: Option<u64> = k
            .client_msg_id
            .strip_prefix('c')
            .and_then(|s| s.parse().ok());
        assert_eq!(f.as_ref().map(|a| a.seq), known, "{}", k.client_msg_id);
    }

    // A user in 24,000 conversations with 24,000 cursors: lists longer than one reply
    // (about 18,000 items of 20-digit ids fit one).
    let user = wide_user();
    let convs: Vec<ConversationId> = (0..24_000)
        .map(|_| ConversationId::direct(user, wide_user()).expect("conv"))
        .collect();
    for chunk in convs.chunks(4000) {
        let batch: Vec<NewMessage> = chunk.iter().map(|c| new_message(c, 1, 0)).collect();
        store
            .append(batch)
            .await
            .expect("append to many conversations");
    }
    let mut sorted = convs.clone();
    sorted.sort();
    let before_list = measured.requests.load(Ordering::Relaxed);
    let listed = store.user_conversations(user).await.expect("list");
    let pages = measured.requests.load(Ordering::Relaxed) - before_list;
    assert!(pages >= 2, "the list took {pages} requests");
    assert_eq!(
        listed,
        sorted
            .iter()
            .map(|c| (c.clone(), Seq(1)))
            .collect::<Vec<_>>()
    );
    let device = DeviceId(random_id());
    futures::stream::iter(convs.iter())
        .map(|c| store.advance_cursor(user, device, c, v1::ReceiptKind::Read, Seq(1)))
        .buffer_unordered(256)
        .for_each(|r| async move {
            assert!(r.expect("advance").moved);
        })
        .await;
    let before_list = measured.requests.load(Ordering::Relaxed);
    let cursors = store.device_cursors(user, device).await.expect("cursors");
    let pages = measured.requests.load(Ordering::Relaxed) - before_list;
    assert!(pages >= 2, "the cursors took {pages} requests");
    assert_eq!(
        cursors.iter().map(|c| &c.conversation).collect::<Vec<_>>(),
        sorted.iter().collect::<Vec<_>>()
    );
    assert!(
        cursors
            .iter()
            .all(|c| c.read == Seq(1) && c.delivered == Seq(1))
    );

    let largest = measured.largest.load(Ordering::Relaxed);
    assert!(largest <= MAX_PAYLOAD_BYTES, "largest payload {largest}");
    assert!(
        largest > 512 * 1024,
        "the test used large payloads: {largest}"
    );

    // One message too large to cross the wire is refused whole, nothing stored.
    let huge = ConversationId::direct(UserId(random_id()), UserId(random_id())).expect("conv");
    let r = store
        .append(vec![
            new_message(&huge, 1, 0),
            new_message(&huge, 2, MAX_PAYLOAD_BYTES),
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    assert_eq!(store.head(&huge).await, Ok(Seq::ZERO));

    role.stop().await;
}

/// More member cursors in one conversation than one reply carries: `member_cursors` asks
/// again after the last user it got, and the pages add up to the whole list, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_cursors_page_past_one_reply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let measured = Arc::new(MeasuredBus::default());
    let bus: Arc<dyn Bus> = measured.clone();
    let role = Role::start(&dir.path().join("m.redb"), bus.clone()).await;
    let store = RemoteStore::new(bus.clone(), Duration::from_secs(120));
    let conv = ConversationId::direct(wide_user(), wide_user()).expect("conv");

    // 20-digit users and seqs above 2^60 make an item 33 bytes on the wire, so about
    // 28,000 fit one reply: 30,000 take two.
    let mut users = std::collections::BTreeSet::new();
    while users.len() < 30_000 {
        users.insert(wide_user());
    }
    let base = 1u64 << 60;
    futures::stream::iter(users.iter().zip(base..))
        .map(|(&u, seq)| {
            let store = store.clone();
            let conv = conv.clone();
            async move {
                store
                    .advance_cursor(u, DeviceId(7), &conv, v1::ReceiptKind::Read, Seq(seq))
                    .await
            }
        })
        .buffer_unordered(256)
        .for_each(|r| async move {
            assert!(r.expect("advance").moved);
        })
        .await;

    let before = measured.requests.load(Ordering::Relaxed);
    let listed = store.member_cursors(&conv).await.expect("member cursors");
    let pages = measured.requests.load(Ordering::Relaxed) - before;
    assert_eq!(pages, 2, "the list took {pages} requests");
    let expected: Vec<MemberCursor> = users
        .iter()
        .zip(base..)
        .map(|(&user, seq)| MemberCursor {
            user,
            delivered: Seq(seq),
            read: Seq(seq),
        })
        .collect();
    assert_eq!(listed.len(), expected.len());
    assert!(listed == expected, "the pages add up to the list, in order");
    let largest = measured.largest.load(Ordering::Relaxed);
    assert!(largest <= MAX_PAYLOAD_BYTES, "largest payload {largest}");
    assert!(largest > 800 * 1024, "a page was nearly full: {largest}");

    // A conversation without cursors is one request and an empty list.
    let empty = ConversationId::direct(wide_user(), wide_user()).expect("conv");
    assert_eq!(store.member_cursors(&empty).await, Ok(Vec::new()));
    role.stop().await;
}

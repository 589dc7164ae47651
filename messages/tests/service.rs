//! The messages service over a real [`InProcessBus`] and a real [`RedbStore`] in a
//! temporary directory. A tiny fake of the sessions service answers `UserLookup`: users
//! below [`FIRST_UNKNOWN`] exist.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use natter_bus::{Bus, BusError, BusEvent, InProcessBus, Subscription};
use natter_messages::{
    Config, CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage,
    Placement, RedbStore, StoreError, start,
};
use natter_proto::{
    ConversationId, DeviceId, ErrorCode, MAX_BODY_BYTES, Partition, Seq, Subject, UserId,
    bus::{self, partition_reply, partition_request, user_push},
    v1::{self, server_frame},
};
use prost::Message as _;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const FIRST_UNKNOWN: u64 = 900_000;

const ALICE: UserId = UserId(101);
const BOB: UserId = UserId(202);
const CAROL: UserId = UserId(303);
const DAVE: UserId = UserId(404);
const NOBODY: UserId = UserId(999_999);
const A1: DeviceId = DeviceId(1101);
const A2: DeviceId = DeviceId(1102);
const B1: DeviceId = DeviceId(2201);
const C1: DeviceId = DeviceId(3301);

struct Harness {
    bus: Arc<dyn Bus>,
    store: Arc<dyn MessageStore>,
    shutdown: CancellationToken,
    service: Option<JoinHandle<()>>,
    sessions: JoinHandle<()>,
    lookups: Arc<AtomicUsize>,
    _dir: TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.sessions.abort();
    }
}

async fn harness() -> Harness {
    harness_with(|s| s, Config::default(), true).await
}

async fn harness_with(
    wrap: impl FnOnce(Arc<dyn MessageStore>) -> Arc<dyn MessageStore>,
    config: Config,
    with_sessions: bool,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb: Arc<dyn MessageStore> =
        RedbStore::open(&dir.path().join("messages.redb")).expect("open store");
    let store = wrap(redb);
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let lookups = Arc::new(AtomicUsize::new(0));
    let sessions = if with_sessions {
        fake_sessions(bus.clone(), lookups.clone()).await
    } else {
        tokio::spawn(async {})
    };
    let shutdown = CancellationToken::new();
    let service = start(
        config,
        store.clone(),
        bus.clone(),
        Placement::All,
        shutdown.clone(),
    )
    .await
    .expect("start")
    .task;
    Harness {
        bus,
        store,
        shutdown,
        service: Some(service),
        sessions,
        lookups,
        _dir: dir,
    }
}

async fn fake_sessions(bus: Arc<dyn Bus>, lookups: Arc<AtomicUsize>) -> JoinHandle<()> {
    let mut sub = bus
        .queue_subscribe(&Subject::sessions_user(), "sessions", 1024)
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        while let Some(ev) = sub.next().await {
            let BusEvent::Message(m) = ev else { continue };
            lookups.fetch_add(1, Ordering::Relaxed);
            let q = bus::UserLookup::decode(m.payload.clone()).unwrap_or_default();
            let exists = q.user_id != 0 && q.user_id < FIRST_UNKNOWN;
            let info = bus::UserInfo {
                exists,
                user_id: if exists { q.user_id } else { 0 },
                username: if exists {
                    format!("u{}", q.user_id)
                } else {
                    String::new()
                },
            };
            let _ = natter_bus::reply(bus.as_ref(), &m, Bytes::from(info.encode_to_vec())).await;
        }
    })
}

fn direct(a: UserId, b: UserId) -> ConversationId {
    ConversationId::direct(a, b).expect("distinct users")
}

fn caller(user: UserId, device: DeviceId) -> Option<bus::Caller> {
    Some(bus::Caller {
        user_id: user.get(),
        device_id: device.get(),
    })
}

fn send_to(to: UserId, cmid: &str, body: &str) -> v1::Send {
    v1::Send {
        client_msg_id: cmid.into(),
        to_user: to.get(),
        kind: v1::MessageKind::Text as i32,
        body: Bytes::from(body.to_owned()),
        ..Default::default()
    }
}

fn request(user: UserId, device: DeviceId, body: partition_request::Body) -> bus::PartitionRequest {
    bus::PartitionRequest {
        caller: caller(user, device),
        body: Some(body),
    }
}

impl Harness {
    async fn raw(&self, subject: &Subject, payload: Bytes) -> bus::PartitionReply {
        let raw = self
            .bus
            .request(subject, payload, WAIT)
            .await
            .expect("partition reply");
        bus::PartitionReply::decode(raw).expect("reply decodes")
    }

    async fn ask(&self, conv: &ConversationId, req: bus::PartitionRequest) -> bus::PartitionReply {
        self.raw(
            &Subject::partition(conv.partition()),
            Bytes::from(req.encode_to_vec()),
        )
        .await
    }

    async fn send(&self, from: (UserId, DeviceId), to: UserId, cmid: &str) -> bus::PartitionReply {
        let req = request(
            from.0,
            from.1,
            partition_request::Body::Send(send_to(to, cmid, cmid)),
        );
        self.ask(&direct(from.0, to), req).await
    }

    async fn receipt(
        &self,
        from: (UserId, DeviceId),
        conv: &ConversationId,
        read: bool,
        up_to_seq: u64,
    ) -> bus::PartitionReply {
        let body = if read {
            partition_request::Body::Read(v1::Read {
                conversation_id: conv.to_string(),
                up_to_seq,
            })
        } else {
            partition_request::Body::Received(v1::Received {
                conversation_id: conv.to_string(),
                up_to_seq,
            })
        };
        self.ask(conv, request(from.0, from.1, body)).await
    }

    async fn sync(&self, req: bus::SyncRequest) -> bus::SyncReply {
        let raw = self
            .bus
            .request(&Subject::sync(), Bytes::from(req.encode_to_vec()), WAIT)
            .await
            .expect("sync reply");
        bus::SyncReply::decode(raw).expect("decodes")
    }

    async fn history(&self, req: bus::HistoryRequest) -> bus::HistoryReply {
        let raw = self
            .bus
            .request(&Subject::history(), Bytes::from(req.encode_to_vec()), WAIT)
            .await
            .expect("history reply");
        bus::HistoryReply::decode(raw).expect("decodes")
    }

    async fn pushes(&self, user: UserId) -> Subscription {
        self.bus
            .subscribe(&Subject::user(user), 100_000)
            .await
            .expect("subscribe")
    }

    async fn log(&self, conv: &ConversationId) -> Vec<v1::Message> {
        self.store
            .read_after(conv, Seq::ZERO, 1_000_000)
            .await
            .expect("read")
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        let service = self.service.take().expect("running");
        tokio::time::timeout(WAIT, service)
            .await
            .expect("service stops in time")
            .expect("service task ok");
    }
}

fn ack(reply: bus::PartitionReply) -> v1::Ack {
    match reply.body {
        Some(partition_reply::Body::Ack(a)) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn code(reply: &bus::PartitionReply) -> ErrorCode {
    match &reply.body {
        Some(partition_reply::Body::Error(e)) => {
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn cursor(reply: bus::PartitionReply) -> u64 {
    match reply.body {
        Some(partition_reply::Body::Cursor(c)) => c.seq,
        other => panic!("expected a cursor, got {other:?}"),
    }
}

/// The next pushed frame for a user and its skip_device (waits with a deadline).
async fn next_push(sub: &mut Subscription) -> (server_frame::Body, u64) {
    let ev = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a push in time")
        .expect("subscription open");
    let BusEvent::Message(m) = ev else {
        panic!("push subscription lagged")
    };
    let push = bus::UserPush::decode(m.payload).expect("UserPush");
    let Some(user_push::Body::Frame(f)) = push.body else {
        panic!("not a frame push: {push:?}")
    };
    let frame = v1::ServerFrame::decode(f).expect("ServerFrame");
    assert_eq!(frame.id, 0, "pushes have id 0");
    (frame.body.expect("frame body"), push.skip_device)
}

async fn next_message(sub: &mut Subscription) -> (v1::Message, u64) {
    match next_push(sub).await {
        (server_frame::Body::Message(m), skip) => (m, skip),
        other => panic!("expected a message push, got {other:?}"),
    }
}

async fn next_receipt(sub: &mut Subscription) -> (v1::Receipt, u64) {
    match next_push(sub).await {
        (server_frame::Body::Receipt(r), skip) => (r, skip),
        other => panic!("expected a receipt push, got {other:?}"),
    }
}

fn seqs(ms: &[v1::Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_from_both_sides_get_one_gap_free_order() {
    let h = harness().await;
    let conv = direct(ALICE, BOB);
    const EACH: usize = 300;
    let side = |from: UserId, dev: DeviceId, to: UserId| {
        let bus = h.bus.clone();
        let subject = Subject::partition(conv.partition());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..EACH {
                let req = request(
                    from,
                    dev,
                    partition_request::Body::Send(send_to(to, &format!("{from}-{i}"), "hi")),
                );
                let p = bus
                    .start_request(&subject, Bytes::from(req.encode_to_vec()), WAIT)
                    .await
                    .expect("request");
                pending.push(p);
            }
            let mut acks = Vec::new();
            for p in pending {
                let raw = p.await.expect("reply");
                acks.push(ack(bus::PartitionReply::decode(raw).expect("decodes")));
            }
            acks
        })
    };
    let (a, b) = (side(ALICE, A1, BOB), side(BOB, B1, ALICE));
    let (a, b) = (a.await.expect("alice"), b.await.expect("bob"));
    for acks in [&a, &b] {
        let s: Vec<u64> = acks.iter().map(|x| x.seq).collect();
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "each sender's order kept"
        );
    }
    let mut all: Vec<u64> = a.iter().chain(&b).map(|x| x.seq).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2 * EACH as u64).collect::<Vec<_>>());

    let log = h.log(&conv).await;
    assert_eq!(seqs(&log), (1..=2 * EACH as u64).collect::<Vec<_>>());
    for x in a.iter().chain(&b) {
        let m = &log[x.seq as usize - 1];
        assert_eq!(m.message_id, x.message_id);
        assert_eq!(m.client_msg_id, x.client_msg_id);
        assert_eq!(m.created_at_ms, x.created_at_ms);
        assert!(m.message_id > 0 && m.message_id < 1 << 53);
    }
    assert_eq!(
        h.store.head(&conv).await.expect("head"),
        Seq(2 * EACH as u64)
    );
}

#[tokio::test]
async fn a_retried_client_msg_id_gets_the_original_ack_and_one_message() {
    let h = harness().await;
    let conv = direct(ALICE, BOB);
    let mut bob = h.pushes(BOB).await;

    let first = ack(h.send((ALICE, A1), BOB, "dup").await);
    let again = ack(h.send((ALICE, A1), BOB, "dup").await);
    assert_eq!(first, again);
    assert_eq!(first.seq, 1);

    // Retries queued together (most likely one batch) are deduplicated too.
    let req = request(
        ALICE,
        A1,
        partition_request::Body::Send(send_to(BOB, "dup2", "x")),
    );
    let subject = Subject::partition(conv.partition());
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(
            h.bus
                .start_request(&subject, Bytes::from(req.encode_to_vec()), WAIT)
                .await
                .expect("request"),
        );
    }
    let mut acks = Vec::new();
    for p in pending {
        acks.push(ack(
            bus::PartitionReply::decode(p.await.expect("reply")).expect("decodes")
        ));
    }
    assert!(acks.iter().all(|a| *a == acks[0]), "{acks:?}");
    assert_eq!(acks[0].seq, 2);

    // The same client id from another device is another message.
    let other_device = ack(h.send((ALICE, A2), BOB, "dup").await);
    assert_eq!(other_device.seq, 3);

    assert_eq!(seqs(&h.log(&conv).await), vec![1, 2, 3]);
    // Bob was pushed each message in order. A retry that reached the owner after the
    // first attempt was stored pushes it again (at-least-once: devices drop a seq they
    // have), always before anything newer.
    let mut pushed = Vec::new();
    while pushed.last() != Some(&3) {
        pushed.push(next_message(&mut bob).await.0.seq);
    }
    let mut distinct = pushed.clone();
    distinct.dedup();
    assert_eq!(distinct, vec![1, 2, 3], "pushed in order: {pushed:?}");
    assert!(
        pushed.len() <= 3 + 4,
        "at most one re-push per retry: {pushed:?}"
    );
    let last = ack(h.send((ALICE, A1), BOB, "after").await);
    assert_eq!(next_message(&mut bob).await.0.seq, last.seq);
}

#[tokio::test]
async fn pushes_reach_every_member_with_the_sender_device_skipped() {
    let h = harness().await;
    let mut alice = h.pushes(ALICE).await;
    let mut bob = h.pushes(BOB).await;
    let a = ack(h.send((ALICE, A1), BOB, "hello").await);

    let (to_bob, skip_bob) = next_message(&mut bob).await;
    let (to_alice, skip_alice) = next_message(&mut alice).await;
    assert_eq!(skip_bob, 0);
    assert_eq!(
        skip_alice,
        A1.get(),
        "the sending device got the ack instead"
    );
    assert_eq!(to_bob, to_alice);
    let stored = h.log(&direct(ALICE, BOB)).await;
    assert_eq!(stored, vec![to_bob.clone()]);
    assert_eq!(to_bob.seq, a.seq);
    assert_eq!(to_bob.sender_user, ALICE.get());
    assert_eq!(to_bob.sender_device, A1.get());
    assert_eq!(&to_bob.body[..], b"hello");
    assert_eq!(to_bob.kind, v1::MessageKind::Text as i32);

    // Bob answers by conversation id: Alice's devices all get it.
    let conv = direct(ALICE, BOB);
    let by_conv = v1::Send {
        client_msg_id: "r1".into(),
        conversation_id: conv.to_string(),
        kind: v1::MessageKind::Binary as i32,
        body: Bytes::from_static(&[0xff, 0x00]),
        reply_to_seq: 1,
        ..Default::default()
    };
    let reply = h
        .ask(
            &conv,
            request(BOB, B1, partition_request::Body::Send(by_conv)),
        )
        .await;
    assert_eq!(ack(reply).seq, 2);
    let (m, skip) = next_message(&mut alice).await;
    assert_eq!((m.seq, m.reply_to_seq, skip), (2, 1, 0));
    assert_eq!(next_message(&mut bob).await.1, B1.get());
    // Bob existed after the first lookup: the positive cache answered the second send.
    assert_eq!(h.lookups.load(Ordering::Relaxed), 2, "one lookup per user");
}

#[tokio::test]
async fn receipts_advance_cursors_and_are_pushed_when_they_move() {
    let h = harness().await;
    let conv = direct(ALICE, BOB);
    for i in 0..3 {
        ack(h.send((ALICE, A1), BOB, &format!("m{i}")).await);
    }
    let mut alice = h.pushes(ALICE).await;
    let mut bob = h.pushes(BOB).await;

    assert_eq!(cursor(h.receipt((BOB, B1), &conv, true, 2).await), 2);
    let (r, skip) = next_receipt(&mut alice).await;
    assert_eq!(skip, 0);
    assert_eq!(
        r,
        v1::Receipt {
            conversation_id: conv.to_string(),
            user_id: BOB.get(),
            device_id: B1.get(),
            kind: v1::ReceiptKind::Read as i32,
            up_to_seq: 2,
        }
    );
    let (own, skip) = next_receipt(&mut bob).await;
    assert_eq!((own, skip), (r, B1.get()));

    // Going back moves nothing and pushes nothing.
    assert_eq!(cursor(h.receipt((BOB, B1), &conv, true, 1).await), 2);
    // Past the head is clamped to it.
    assert_eq!(cursor(h.receipt((BOB, B1), &conv, false, 99).await), 3);
    let (r, _) = next_receipt(&mut alice).await;
    assert_eq!(
        (r.kind, r.up_to_seq),
        (v1::ReceiptKind::Delivered as i32, 3),
        "the non-move above pushed nothing"
    );
    assert_eq!(
        h.store.device_cursors(BOB, B1).await.expect("cursors"),
        vec![DeviceCursor {
            conversation: conv.clone(),
            delivered: Seq(3),
            read: Seq(2),
        }]
    );

    // Not a member: forbidden, nothing stored.
    let carol = h.receipt((CAROL, C1), &conv, true, 1).await;
    assert_eq!(code(&carol), ErrorCode::Forbidden);
    assert!(
        h.store
            .device_cursors(CAROL, C1)
            .await
            .expect("cursors")
            .is_empty()
    );
    let bad = h
        .ask(
            &conv,
            request(
                BOB,
                B1,
                partition_request::Body::Read(v1::Read {
                    conversation_id: "nope".into(),
                    up_to_seq: 1,
                }),
            ),
        )
        .await;
    assert_eq!(code(&bad), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn typing_is_relayed_to_the_other_member() {
    let h = harness().await;
    let mut bob = h.pushes(BOB).await;
    let conv = direct(ALICE, BOB);
    let typing = v1::Typing {
        to_user: BOB.get(),
        active: true,
        ..Default::default()
    };
    let reply = h
        .ask(
            &conv,
            request(ALICE, A1, partition_request::Body::Typing(typing)),
        )
        .await;
    assert_eq!(reply.body, None, "typing gets an empty reply when asked");
    match next_push(&mut bob).await {
        (server_frame::Body::Typing(t), 0) => assert_eq!(
            t,
            v1::TypingEvent {
                conversation_id: conv.to_string(),
                user_id: ALICE.get(),
                active: true,
                state: v1::ChatState::Typing as i32,
                expires_in_ms: 6_000,
            }
        ),
        other => panic!("expected typing, got {other:?}"),
    }
    let outsider = v1::Typing {
        conversation_id: conv.to_string(),
        active: true,
        ..Default::default()
    };
    let reply = h
        .ask(
            &conv,
            request(CAROL, C1, partition_request::Body::Typing(outsider)),
        )
        .await;
    assert_eq!(code(&reply), ErrorCode::Forbidden);
}

#[tokio::test]
async fn sync_pages_through_everything_with_more_and_next() {
    let h = harness().await;
    let counts = [(BOB, 7u64), (CAROL, 5), (DAVE, 3)];
    for (peer, n) in counts {
        for i in 0..n {
            ack(h
                .send((peer, DeviceId(peer.get() * 10)), ALICE, &format!("m{i}"))
                .await);
        }
    }
    let heads_expected: Vec<(String, u64)> = {
        let mut v: Vec<_> = counts
            .iter()
            .map(|(p, n)| (direct(ALICE, *p).to_string(), *n))
            .collect();
        v.sort();
        v
    };

    // Page by 4 from nothing.
    let mut cursors = Vec::new();
    let mut got: Vec<v1::Message> = Vec::new();
    let mut pages = 0;
    loop {
        let reply = h
            .sync(bus::SyncRequest {
                caller: caller(ALICE, A1),
                cursors: cursors.clone(),
                limit: 4,
            })
            .await;
        assert_eq!(reply.error, None);
        assert!(reply.messages.len() <= 4);
        let heads: Vec<(String, u64)> = reply
            .heads
            .iter()
            .map(|c| (c.conversation_id.clone(), c.seq))
            .collect();
        assert_eq!(heads, heads_expected);
        got.extend(reply.messages);
        cursors = reply.next;
        pages += 1;
        assert!(pages < 10, "sync must finish");
        if !reply.more {
            break;
        }
    }
    assert_eq!(pages, 4, "15 messages by 4");
    assert_eq!(got.len(), 15);
    for (peer, n) in counts {
        let conv = direct(ALICE, peer).to_string();
        let s: Vec<u64> = got
            .iter()
            .filter(|m| m.conversation_id == conv)
            .map(|m| m.seq)
            .collect();
        assert_eq!(s, (1..=n).collect::<Vec<_>>(), "{conv}");
    }
    let done: Vec<u64> = cursors.iter().map(|c| c.seq).collect();
    assert_eq!(done, heads_expected.iter().map(|h| h.1).collect::<Vec<_>>());

    // Without client cursors the device's stored delivered cursors are the start.
    let ab = direct(ALICE, BOB);
    assert_eq!(cursor(h.receipt((ALICE, A1), &ab, false, 7).await), 7);
    let reply = h
        .sync(bus::SyncRequest {
            caller: caller(ALICE, A1),
            ..Default::default()
        })
        .await;
    assert!(!reply.more);
    assert_eq!(
        reply.messages.len(),
        8,
        "bob's 7 were delivered to this device"
    );
    assert!(
        reply
            .messages
            .iter()
            .all(|m| m.conversation_id != ab.to_string())
    );
    // Another device of Alice has no stored cursor: everything.
    let reply = h
        .sync(bus::SyncRequest {
            caller: caller(ALICE, A2),
            ..Default::default()
        })
        .await;
    assert_eq!(reply.messages.len(), 15);

    // A client cursor beats the stored one; cursors of foreign conversations are ignored.
    let foreign = direct(BOB, CAROL).to_string();
    let reply = h
        .sync(bus::SyncRequest {
            caller: caller(ALICE, A1),
            cursors: vec![
                v1::Cursor {
                    conversation_id: ab.to_string(),
                    seq: 5,
                },
                v1::Cursor {
                    conversation_id: foreign.clone(),
                    seq: 0,
                },
                v1::Cursor {
                    conversation_id: "garbage".into(),
                    seq: 0,
                },
            ],
            limit: 0,
        })
        .await;
    assert_eq!(reply.error, None);
    let from_bob: Vec<u64> = reply
        .messages
        .iter()
        .filter(|m| m.conversation_id == ab.to_string())
        .map(|m| m.seq)
        .collect();
    assert_eq!(from_bob, vec![6, 7]);
    assert_eq!(reply.messages.len(), 10);
    assert!(reply.next.iter().all(|c| c.conversation_id != foreign));

    // A user with nothing gets an empty, complete page.
    let empty = h
        .sync(bus::SyncRequest {
            caller: caller(UserId(555), DeviceId(5551)),
            ..Default::default()
        })
        .await;
    assert_eq!(empty, bus::SyncReply::default());
    // Undecodable and callerless requests are errors, not crashes.
    let raw = h
        .bus
        .request(
            &Subject::sync(),
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            WAIT,
        )
        .await
        .expect("reply");
    let reply = bus::SyncReply::decode(raw).expect("decodes");
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(ErrorCode::BadFrame as i32)
    );
    let reply = h.sync(bus::SyncRequest::default()).await;
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(ErrorCode::InvalidArgument as i32)
    );
}

#[tokio::test]
async fn history_pages_backwards_oldest_first() {
    let h = harness().await;
    let conv = direct(ALICE, BOB);
    for i in 0..120 {
        ack(h.send((ALICE, A1), BOB, &format!("m{i}")).await);
    }
    let page = |before: u64, limit: u32| bus::HistoryRequest {
        caller: caller(BOB, B1),
        history: Some(v1::History {
            conversation_id: conv.to_string(),
            before_seq: before,
            limit,
        }),
    };
    let p = h.history(page(0, 0)).await.page.expect("page");
    assert_eq!(
        seqs(&p.messages),
        (71..=120).collect::<Vec<_>>(),
        "default 50"
    );
    assert!(p.more);
    assert_eq!(p.conversation_id, conv.to_string());
    let p = h.history(page(71, 50)).await.page.expect("page");
    assert_eq!(seqs(&p.messages), (21..=70).collect::<Vec<_>>());
    assert!(p.more);
    let p = h.history(page(21, 50)).await.page.expect("page");
    assert_eq!(seqs(&p.messages), (1..=20).collect::<Vec<_>>());
    assert!(!p.more);
    let p = h.history(page(1, 50)).await.page.expect("page");
    assert!(p.messages.is_empty() && !p.more);

    let outsider = h
        .history(bus::HistoryRequest {
            caller: caller(CAROL, C1),
            ..page(0, 10)
        })
        .await;
    assert_eq!(outsider.page, None);
    assert_eq!(
        outsider.error.map(|e| e.code),
        Some(ErrorCode::Forbidden as i32)
    );
    let raw = h
        .bus
        .request(&Subject::history(), Bytes::from_static(b"\x0a\xff"), WAIT)
        .await
        .expect("reply");
    let garbage = bus::HistoryReply::decode(raw).expect("decodes");
    assert_eq!(
        garbage.error.map(|e| e.code),
        Some(ErrorCode::BadFrame as i32)
    );
    let missing = h
        .history(bus::HistoryRequest {
            caller: caller(BOB, B1),
            history: None,
        })
        .await;
    assert_eq!(
        missing.error.map(|e| e.code),
        Some(ErrorCode::InvalidArgument as i32)
    );
}

#[tokio::test]
async fn bad_requests_get_stable_codes_and_store_nothing() {
    let h = harness().await;
    let ab = direct(ALICE, BOB);
    let bc = direct(BOB, CAROL);
    let send = |s: v1::Send| request(ALICE, A1, partition_request::Body::Send(s));

    // Someone else's conversation.
    let r = h
        .ask(
            &bc,
            send(v1::Send {
                client_msg_id: "x".into(),
                conversation_id: bc.to_string(),
                body: Bytes::from_static(b"hi"),
                ..Default::default()
            }),
        )
        .await;
    assert_eq!(code(&r), ErrorCode::Forbidden);
    // Unknown user.
    let r = h.send((ALICE, A1), NOBODY, "x").await;
    assert_eq!(code(&r), ErrorCode::NotFound);
    // Oversize body (the limit itself is fine).
    let mut big = send_to(BOB, "big", "");
    big.body = Bytes::from(vec![b'a'; MAX_BODY_BYTES + 1]);
    assert_eq!(
        code(&h.ask(&ab, send(big.clone())).await),
        ErrorCode::InvalidArgument
    );
    big.body = Bytes::from(vec![b'a'; MAX_BODY_BYTES]);
    assert_eq!(ack(h.ask(&ab, send(big)).await).seq, 1);
    // client_msg_id empty or too long.
    assert_eq!(
        code(&h.ask(&ab, send(send_to(BOB, "", "x"))).await),
        ErrorCode::InvalidArgument
    );
    let long = "x".repeat(65);
    assert_eq!(
        code(&h.ask(&ab, send(send_to(BOB, &long, "x"))).await),
        ErrorCode::InvalidArgument
    );
    // Both or neither destination.
    let mut both = send_to(BOB, "b", "x");
    both.conversation_id = ab.to_string();
    assert_eq!(
        code(&h.ask(&ab, send(both)).await),
        ErrorCode::InvalidArgument
    );
    let mut neither = send_to(BOB, "n", "x");
    neither.to_user = 0;
    assert_eq!(
        code(&h.ask(&ab, send(neither)).await),
        ErrorCode::InvalidArgument
    );
    // To yourself.
    assert_eq!(
        code(&h.ask(&ab, send(send_to(ALICE, "me", "x"))).await),
        ErrorCode::InvalidArgument
    );
    // Malformed conversation id.
    let malformed = v1::Send {
        client_msg_id: "m".into(),
        conversation_id: "d.202.101".into(),
        ..Default::default()
    };
    assert_eq!(
        code(&h.ask(&ab, send(malformed)).await),
        ErrorCode::InvalidArgument
    );
    // TEXT must be UTF-8; an unknown kind is refused.
    let mut not_text = send_to(BOB, "t", "");
    not_text.body = Bytes::from_static(&[0xff, 0xfe]);
    assert_eq!(
        code(&h.ask(&ab, send(not_text)).await),
        ErrorCode::InvalidArgument
    );
    let mut odd_kind = send_to(BOB, "k", "x");
    odd_kind.kind = 42;
    assert_eq!(
        code(&h.ask(&ab, send(odd_kind)).await),
        ErrorCode::InvalidArgument
    );
    // Replying to a message that does not exist.
    let mut reply_to = send_to(BOB, "rt", "x");
    reply_to.reply_to_seq = 7;
    assert_eq!(
        code(&h.ask(&ab, send(reply_to)).await),
        ErrorCode::InvalidArgument
    );
    // Sent to a partition that does not own the conversation.
    let wrong = Partition::new((ab.partition().index() + 1) % Partition::COUNT).expect("p");
    let payload = Bytes::from(send(send_to(BOB, "w", "x")).encode_to_vec());
    let r = h.raw(&Subject::partition(wrong), payload).await;
    assert_eq!(code(&r), ErrorCode::InvalidArgument);
    // Garbage bytes, no caller, no body.
    let subject = Subject::partition(ab.partition());
    let r = h
        .raw(&subject, Bytes::from_static(&[0xff, 0xff, 0xff, 0x01]))
        .await;
    assert_eq!(code(&r), ErrorCode::BadFrame);
    let callerless = bus::PartitionRequest {
        caller: None,
        body: Some(partition_request::Body::Send(send_to(BOB, "c", "x"))),
    };
    assert_eq!(
        code(&h.ask(&ab, callerless).await),
        ErrorCode::InvalidArgument
    );
    let zero_device = request(
        ALICE,
        DeviceId(0),
        partition_request::Body::Send(send_to(BOB, "z", "x")),
    );
    assert_eq!(
        code(&h.ask(&ab, zero_device).await),
        ErrorCode::InvalidArgument
    );
    let bodyless = bus::PartitionRequest {
        caller: caller(ALICE, A1),
        body: None,
    };
    assert_eq!(code(&h.ask(&ab, bodyless).await), ErrorCode::UnknownFrame);
    // A subject under natter.msg that is no partition: nobody serves it (each owner
    // subscribes exactly its partitions' subjects), so the bus says so at once.
    let r = h
        .bus
        .request(&Subject::from_wire("natter.msg.x"), Bytes::new(), WAIT)
        .await;
    assert!(
        matches!(r, Err(natter_bus::BusError::NoResponders(_))),
        "{r:?}"
    );

    // Only the one valid message was stored.
    assert_eq!(seqs(&h.log(&ab).await), vec![1]);
    assert_eq!(h.store.head(&bc).await.expect("head"), Seq::ZERO);
    assert_eq!(
        h.store.head(&direct(ALICE, NOBODY)).await.expect("head"),
        Seq::ZERO
    );
    // And the service still works.
    assert_eq!(ack(h.send((ALICE, A1), BOB, "ok").await).seq, 2);
}

#[tokio::test]
async fn sends_are_unavailable_while_sessions_does_not_answer() {
    let config = Config {
        request_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let h = harness_with(|s| s, config, false).await;
    let r = h.send((ALICE, A1), BOB, "x").await;
    assert_eq!(code(&r), ErrorCode::Unavailable);
    assert_eq!(
        h.store.head(&direct(ALICE, BOB)).await.expect("head"),
        Seq::ZERO
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_sends_complete() {
    let h = harness().await;
    let peers: Vec<UserId> = (1..=10).map(|i| UserId(5000 + i)).collect();
    let mut pending = Vec::new();
    for i in 0..10_000usize {
        let to = peers[i % peers.len()];
        let req = request(
            ALICE,
            A1,
            partition_request::Body::Send(send_to(to, &format!("m{i}"), "load")),
        );
        let subject = Subject::partition(direct(ALICE, to).partition());
        pending.push(
            h.bus
                .start_request(
                    &subject,
                    Bytes::from(req.encode_to_vec()),
                    Duration::from_secs(60),
                )
                .await
                .expect("request"),
        );
    }
    let mut acked = 0;
    for p in pending {
        let reply = bus::PartitionReply::decode(p.await.expect("reply")).expect("decodes");
        ack(reply);
        acked += 1;
    }
    assert_eq!(acked, 10_000);
    for to in &peers {
        let conv = direct(ALICE, *to);
        assert_eq!(seqs(&h.log(&conv).await), (1..=1000).collect::<Vec<_>>());
    }
    // History pages are capped at 200.
    let page = h
        .history(bus::HistoryRequest {
            caller: caller(ALICE, A1),
            history: Some(v1::History {
                conversation_id: direct(ALICE, peers[0]).to_string(),
                before_seq: 0,
                limit: 10_000,
            }),
        })
        .await
        .page
        .expect("page");
    assert_eq!(seqs(&page.messages), (801..=1000).collect::<Vec<_>>());
    // Sync pages are capped at 1000.
    let sync = h
        .sync(bus::SyncRequest {
            caller: caller(ALICE, A1),
            cursors: Vec::new(),
            limit: 5000,
        })
        .await;
    assert_eq!(sync.messages.len(), 1000);
    assert!(sync.more);
}

/// A store whose appends fail on demand: before storing, or after storing (ambiguous).
struct Flaky {
    inner: Arc<dyn MessageStore>,
    mode: Arc<AtomicU8>,
}

const OK: u8 = 0;
const FAIL_BEFORE: u8 = 1;
const FAIL_AFTER: u8 = 2;
/// Every call fails: the store is unreachable.
const DOWN: u8 = 3;

impl Flaky {
    fn reachable(&self) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Err(StoreError::Storage("store role unreachable".into())),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl MessageStore for Flaky {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            FAIL_BEFORE | DOWN => Err(StoreError::Storage("disk on fire".into())),
            FAIL_AFTER => {
                self.inner.append(batch).await?;
                Err(StoreError::Storage("lost the answer".into()))
            }
            _ => self.inner.append(batch).await,
        }
    }
    async fn head(&self, c: &ConversationId) -> Result<Seq, StoreError> {
        self.reachable()?;
        self.inner.head(c).await
    }
    async fn find_dedupe(&self, keys: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
        self.reachable()?;
        self.inner.find_dedupe(keys).await
    }
    async fn read_after(
        &self,
        c: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        self.reachable()?;
        self.inner.read_after(c, after, limit).await
    }
    async fn read_before(
        &self,
        c: &ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        self.reachable()?;
        self.inner.read_before(c, before, limit).await
    }
    async fn user_conversations(
        &self,
        u: UserId,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        self.reachable()?;
        self.inner.user_conversations(u).await
    }
    async fn advance_cursor(
        &self,
        u: UserId,
        d: DeviceId,
        c: &ConversationId,
        kind: v1::ReceiptKind,
        seq: Seq,
    ) -> Result<CursorAdvance, StoreError> {
        self.reachable()?;
        self.inner.advance_cursor(u, d, c, kind, seq).await
    }
    async fn device_cursors(
        &self,
        u: UserId,
        d: DeviceId,
    ) -> Result<Vec<DeviceCursor>, StoreError> {
        self.reachable()?;
        self.inner.device_cursors(u, d).await
    }
    async fn member_cursors(&self, c: &ConversationId) -> Result<Vec<MemberCursor>, StoreError> {
        self.reachable()?;
        self.inner.member_cursors(c).await
    }
    async fn redact(
        &self,
        c: &ConversationId,
        seq: Seq,
    ) -> Result<Option<v1::Message>, StoreError> {
        self.reachable()?;
        self.inner.redact(c, seq).await
    }
}

#[tokio::test]
async fn failed_appends_leave_no_gap_and_no_duplicate() {
    let mode = Arc::new(AtomicU8::new(OK));
    let m = mode.clone();
    let h = harness_with(
        move |inner| Arc::new(Flaky { inner, mode: m }),
        Config::default(),
        true,
    )
    .await;
    let conv = direct(ALICE, BOB);
    let mut bob = h.pushes(BOB).await;

    assert_eq!(ack(h.send((ALICE, A1), BOB, "m1").await).seq, 1);
    mode.store(FAIL_BEFORE, Ordering::SeqCst);
    let r = h.send((ALICE, A1), BOB, "m2").await;
    assert_eq!(code(&r), ErrorCode::Internal);
    if let Some(partition_reply::Body::Error(e)) = &r.body {
        assert!(!e.message.contains("fire"), "internals are not leaked");
    }
    mode.store(OK, Ordering::SeqCst);
    assert_eq!(ack(h.send((ALICE, A1), BOB, "m3").await).seq, 2, "no gap");

    mode.store(FAIL_AFTER, Ordering::SeqCst);
    assert_eq!(
        code(&h.send((ALICE, A1), BOB, "m4").await),
        ErrorCode::Internal
    );
    mode.store(OK, Ordering::SeqCst);
    let retry = ack(h.send((ALICE, A1), BOB, "m4").await);
    assert_eq!(retry.seq, 3, "the retry finds the stored message");
    assert_eq!(
        ack(h.send((ALICE, A1), BOB, "m5").await).seq,
        4,
        "no duplicate seq"
    );

    let log = h.log(&conv).await;
    let ids: Vec<&str> = log.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(ids, vec!["m1", "m3", "m4", "m5"]);
    assert_eq!(seqs(&log), vec![1, 2, 3, 4]);
    // Failed sends were not pushed; the ambiguous one (stored, never acked) was pushed
    // when its retry found it, before its ack.
    let pushed: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(next_message(&mut bob).await.0.seq);
        }
        v
    };
    assert_eq!(pushed, vec![1, 2, 3, 4]);
}

/// A store that keeps failing opens the circuit breaker: sends are then answered
/// UNAVAILABLE without reaching the store, and once it works again (after the cooldown's
/// probe) the retried sends are stored exactly once, the ambiguous one included.
#[tokio::test]
async fn an_open_breaker_answers_unavailable_and_retries_are_stored_once() {
    let mode = Arc::new(AtomicU8::new(OK));
    let m = mode.clone();
    let h = harness_with(
        move |inner| {
            natter_messages::Breaker::new(
                Arc::new(Flaky { inner, mode: m }),
                natter_messages::BreakerConfig {
                    failures: 2,
                    cooldown: Duration::from_millis(200),
                    ..Default::default()
                },
            )
        },
        Config::default(),
        true,
    )
    .await;
    let conv = direct(ALICE, BOB);
    assert_eq!(ack(h.send((ALICE, A1), BOB, "m1").await).seq, 1);
    // Stored, but the answer is lost (one failure); then the store is unreachable (its
    // first read fails): two failures in a row open the breaker.
    mode.store(FAIL_AFTER, Ordering::SeqCst);
    assert_eq!(
        code(&h.send((ALICE, A1), BOB, "m2").await),
        ErrorCode::Internal
    );
    mode.store(DOWN, Ordering::SeqCst);
    assert_eq!(
        code(&h.send((ALICE, A1), BOB, "m3").await),
        ErrorCode::Internal
    );
    // Open: even a retry of the stored m2 (which needs only a dedupe read) and a sync
    // are answered UNAVAILABLE, and the store does not fail them: it is not asked.
    mode.store(OK, Ordering::SeqCst);
    for cmid in ["m2", "m3"] {
        assert_eq!(
            code(&h.send((ALICE, A1), BOB, cmid).await),
            ErrorCode::Unavailable,
            "{cmid} while the breaker is open"
        );
    }
    let sync = h
        .sync(bus::SyncRequest {
            caller: caller(BOB, B1),
            cursors: Vec::new(),
            limit: 10,
        })
        .await;
    let e = sync.error.expect("sync refused while open");
    assert_eq!(e.code, ErrorCode::Unavailable as i32, "{e:?}");

    // After the cooldown a probe goes through and closes it; the client's retries are
    // answered: m2 with its original seq, m3 with the next one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let m2 = loop {
        let r = h.send((ALICE, A1), BOB, "m2").await;
        match &r.body {
            Some(partition_reply::Body::Ack(_)) => break ack(r),
            _ => assert_eq!(code(&r), ErrorCode::Unavailable),
        }
        assert!(tokio::time::Instant::now() < deadline, "the breaker closes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        m2.seq, 2,
        "the ambiguous send was stored; its retry gets that seq"
    );
    assert_eq!(ack(h.send((ALICE, A1), BOB, "m3").await).seq, 3);
    let log = h.log(&conv).await;
    let ids: Vec<&str> = log.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(ids, vec!["m1", "m2", "m3"]);
    assert_eq!(seqs(&log), vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_or_drops_but_never_loses_an_acked_message() {
    let mut h = harness().await;
    let conv = direct(ALICE, BOB);
    let subject = Subject::partition(conv.partition());
    // One acked before the burst, so the test does not depend on the worker getting to
    // the burst before the shutdown (it sometimes did not: every reply was UNAVAILABLE).
    let first = request(
        ALICE,
        A1,
        partition_request::Body::Send(send_to(BOB, "first", "x")),
    );
    let raw = h
        .bus
        .request(
            &subject,
            Bytes::from(first.encode_to_vec()),
            Duration::from_secs(5),
        )
        .await
        .expect("the first send is answered");
    let first_ack = match bus::PartitionReply::decode(raw).expect("decodes").body {
        Some(partition_reply::Body::Ack(a)) => a,
        other => panic!("the first send is acked, got {other:?}"),
    };
    assert_eq!(first_ack.seq, 1);
    let mut pending = Vec::new();
    for i in 0..2000 {
        let req = request(
            ALICE,
            A1,
            partition_request::Body::Send(send_to(BOB, &format!("s{i}"), "x")),
        );
        // After shutdown the subscription may be gone: NoResponders right away.
        match h
            .bus
            .start_request(
                &subject,
                Bytes::from(req.encode_to_vec()),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(p) => pending.push(p),
            Err(e) => assert!(i > 1000 && matches!(e, BusError::NoResponders(_)), "{e}"),
        }
        if i == 1000 {
            h.shutdown.cancel();
        }
    }
    h.stop().await;
    let log = h.log(&conv).await;
    assert_eq!(
        seqs(&log),
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    let mut acked = 1;
    // Concurrently: each reply's timeout starts when it is first polled.
    for result in futures::future::join_all(pending).await {
        match result {
            Ok(raw) => match bus::PartitionReply::decode(raw).expect("decodes").body {
                Some(partition_reply::Body::Ack(a)) => {
                    acked += 1;
                    let m = &log[a.seq as usize - 1];
                    assert_eq!(
                        (m.message_id, &m.client_msg_id),
                        (a.message_id, &a.client_msg_id)
                    );
                }
                Some(partition_reply::Body::Error(e)) => {
                    assert_eq!(e.code, ErrorCode::Unavailable as i32);
                }
                other => panic!("unexpected reply {other:?}"),
            },
            // Published just as the subscription closed: never answered, never acked.
            Err(BusError::Timeout(_)) => {}
            Err(e) => panic!("unexpected bus error {e}"),
        }
    }
    assert_eq!(log.len(), acked, "every stored message was acked");
    // Nothing listens any more.
    let after = h
        .bus
        .request(&subject, Bytes::new(), Duration::from_secs(1))
        .await;
    assert!(matches!(after, Err(BusError::NoResponders(_))), "{after:?}");
    let sync = h
        .bus
        .request(&Subject::sync(), Bytes::new(), Duration::from_secs(1))
        .await;
    assert!(matches!(sync, Err(BusError::NoResponders(_))), "{sync:?}");
}

/// Starts the real groups service (embedded store) on the harness's bus.
async fn groups_service(h: &Harness, dir: &TempDir) -> JoinHandle<()> {
    let store = natter_groups::RedbGroupStore::open(&dir.path().join("groups.redb"))
        .expect("open the group store");
    natter_groups::start(
        natter_groups::Config::default(),
        store,
        h.bus.clone(),
        h.shutdown.clone(),
    )
    .await
    .expect("start groups")
}

fn group_op(
    user: UserId,
    device: DeviceId,
    group: u64,
    op: v1::group_request::Op,
) -> bus::PartitionRequest {
    request(
        user,
        device,
        partition_request::Body::Group(bus::GroupChange {
            group_id: group,
            request: Some(v1::GroupRequest { op: Some(op) }),
            admin: false,
        }),
    )
}

/// A change as the admin role sends it: no caller, `admin` set.
fn admin_group_op(group: u64, op: v1::group_request::Op) -> bus::PartitionRequest {
    bus::PartitionRequest {
        caller: None,
        body: Some(partition_request::Body::Group(bus::GroupChange {
            group_id: group,
            request: Some(v1::GroupRequest { op: Some(op) }),
            admin: true,
        })),
    }
}

fn group_result(reply: bus::PartitionReply) -> v1::GroupResult {
    match reply.body {
        Some(partition_reply::Body::Group(g)) => g,
        other => panic!("expected a group result, got {other:?}"),
    }
}

fn group_send(conv: &ConversationId, cmid: &str) -> partition_request::Body {
    partition_request::Body::Send(v1::Send {
        client_msg_id: cmid.into(),
        conversation_id: conv.to_string(),
        kind: v1::MessageKind::Text as i32,
        body: Bytes::from(cmid.to_owned()),
        ..Default::default()
    })
}

/// A group change the groups service stored but whose system message the owner could not
/// write (the store failed, or failed after writing) is written exactly once, before any
/// later message of the group, and its membership applies from there.
#[tokio::test]
async fn a_group_change_missing_from_the_log_is_written_before_anything_else() {
    let mode = Arc::new(AtomicU8::new(OK));
    let m = mode.clone();
    let h = harness_with(
        move |inner| Arc::new(Flaky { inner, mode: m }),
        Config::default(),
        true,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _groups = groups_service(&h, &dir).await;
    let create = v1::GroupCreate {
        create_id: "trip".into(),
        name: "Trip".into(),
        members: vec![BOB.get(), CAROL.get()],
        ..Default::default()
    };
    let group = natter_proto::GroupId::for_create(ALICE, "trip");
    let conv = ConversationId::group(group);
    let created = group_result(
        h.ask(
            &conv,
            group_op(
                ALICE,
                A1,
                group.get(),
                v1::group_request::Op::Create(create),
            ),
        )
        .await,
    );
    assert_eq!(created.seq, 1);
    let mut bob = h.pushes(BOB).await;

    // The store refuses the removal's system message: the groups service has the change.
    mode.store(FAIL_BEFORE, Ordering::SeqCst);
    let remove = |user: UserId| {
        v1::group_request::Op::RemoveMember(v1::GroupRemoveMember {
            group_id: group.get(),
            user_id: user.get(),
            ban: false,
        })
    };
    let r = h
        .ask(&conv, group_op(ALICE, A1, group.get(), remove(BOB)))
        .await;
    assert_eq!(code(&r), ErrorCode::Internal);
    mode.store(OK, Ordering::SeqCst);

    // The next request writes the removal first (seq 2); the send follows (seq 3) and no
    // longer reaches Bob, who can no longer send.
    let sent = ack(h
        .ask(&conv, request(ALICE, A1, group_send(&conv, "after")))
        .await);
    assert_eq!(sent.seq, 3);
    let (pushed, _) = next_message(&mut bob).await;
    assert_eq!(pushed.seq, 2, "bob hears of his removal, from the repair");
    let refused = h
        .ask(&conv, request(BOB, B1, group_send(&conv, "bob")))
        .await;
    assert_eq!(code(&refused), ErrorCode::Forbidden);

    // Ambiguous: the system message is stored but the store reports a failure. The next
    // owner load finds it in the log and does not write it twice.
    mode.store(FAIL_AFTER, Ordering::SeqCst);
    let r = h
        .ask(&conv, group_op(ALICE, A1, group.get(), remove(CAROL)))
        .await;
    assert_eq!(code(&r), ErrorCode::Internal);
    mode.store(OK, Ordering::SeqCst);
    let sent = ack(h
        .ask(&conv, request(ALICE, A1, group_send(&conv, "last")))
        .await);
    assert_eq!(sent.seq, 5);

    let log = h.log(&conv).await;
    assert_eq!(seqs(&log), vec![1, 2, 3, 4, 5]);
    let kinds: Vec<Option<i32>> = log
        .iter()
        .map(|m| m.event.as_ref().map(|e| e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(v1::GroupEventKind::Created as i32),
            Some(v1::GroupEventKind::MemberRemoved as i32),
            None,
            Some(v1::GroupEventKind::MemberRemoved as i32),
            None,
        ]
    );
    assert_eq!(
        log[1].event.as_ref().map(|e| e.users.clone()),
        Some(vec![BOB.get()])
    );
    assert_eq!(
        log[3].event.as_ref().map(|e| e.users.clone()),
        Some(vec![CAROL.get()])
    );
    // Nothing after the removal was pushed to Bob.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), bob.next())
            .await
            .is_err(),
        "bob got a push after his removal"
    );
}

/// An administrator (the admin role: no caller, `admin` set) deletes a group through its
/// conversation's owner: the DELETED system message, by nobody (actor 0), reaches the
/// members, who keep the history and can no longer send. Nothing but a delete is
/// accepted that way, `admin` with a caller is refused, and a repeated delete changes
/// nothing.
#[tokio::test]
async fn an_administrator_deletes_a_group_through_its_owner() {
    let h = harness().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _groups = groups_service(&h, &dir).await;
    let group = natter_proto::GroupId::for_create(ALICE, "club");
    let conv = ConversationId::group(group);
    let create = v1::GroupCreate {
        create_id: "club".into(),
        name: "Club".into(),
        members: vec![BOB.get()],
        ..Default::default()
    };
    let created = group_result(
        h.ask(
            &conv,
            group_op(
                ALICE,
                A1,
                group.get(),
                v1::group_request::Op::Create(create),
            ),
        )
        .await,
    );
    assert_eq!(created.seq, 1);
    ack(h
        .ask(&conv, request(BOB, B1, group_send(&conv, "before")))
        .await);
    let mut bob = h.pushes(BOB).await;
    let delete = || {
        v1::group_request::Op::Delete(v1::GroupDelete {
            group_id: group.get(),
        })
    };

    let rename = v1::group_request::Op::Update(v1::GroupUpdate {
        group_id: group.get(),
        name: Some("Taken".into()),
        ..Default::default()
    });
    let r = h.ask(&conv, admin_group_op(group.get(), rename)).await;
    assert_eq!(code(&r), ErrorCode::InvalidArgument, "only a delete");
    // A member cannot make their change an administrator's.
    let mut smuggled = group_op(BOB, B1, group.get(), delete());
    if let Some(partition_request::Body::Group(g)) = &mut smuggled.body {
        g.admin = true;
    }
    assert_eq!(
        code(&h.ask(&conv, smuggled).await),
        ErrorCode::InvalidArgument
    );
    // Without `admin`, no caller is no request.
    let mut anonymous = admin_group_op(group.get(), delete());
    if let Some(partition_request::Body::Group(g)) = &mut anonymous.body {
        g.admin = false;
    }
    assert_eq!(
        code(&h.ask(&conv, anonymous).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        seqs(&h.log(&conv).await),
        vec![1, 2],
        "nothing refused was logged"
    );

    let deleted = group_result(h.ask(&conv, admin_group_op(group.get(), delete())).await);
    assert_eq!(deleted.seq, 3);
    assert!(deleted.group.as_ref().is_some_and(|g| g.deleted));
    let (pushed, _) = next_message(&mut bob).await;
    assert_eq!(pushed.seq, 3);
    let event = pushed.event.expect("a group event");
    assert_eq!(
        (event.kind, event.actor),
        (v1::GroupEventKind::Deleted as i32, 0)
    );

    // Nobody can send any more; the members still read the whole history.
    for (user, device) in [(ALICE, A1), (BOB, B1)] {
        let refused = h
            .ask(&conv, request(user, device, group_send(&conv, "after")))
            .await;
        assert_eq!(code(&refused), ErrorCode::NotFound);
    }
    let page = h
        .history(bus::HistoryRequest {
            caller: caller(BOB, B1),
            history: Some(v1::History {
                conversation_id: conv.to_string(),
                before_seq: 0,
                limit: 50,
            }),
        })
        .await
        .page
        .expect("bob's history");
    assert_eq!(seqs(&page.messages), vec![1, 2, 3]);

    // Again (a retry): success, nothing new in the log.
    let again = group_result(h.ask(&conv, admin_group_op(group.get(), delete())).await);
    assert!(again.group.is_some_and(|g| g.deleted));
    assert_eq!(seqs(&h.log(&conv).await), vec![1, 2, 3]);

    // The admin API's view (`natter.admin.groups`): the group, deleted, with its members;
    // listed among Bob's groups and among all groups.
    let admin = |op: bus::admin_groups_request::Op| {
        let bus = h.bus.clone();
        async move {
            let req = bus::AdminGroupsRequest { op: Some(op) };
            let raw = bus
                .request(
                    &Subject::admin(natter_proto::AdminService::Groups),
                    Bytes::from(req.encode_to_vec()),
                    WAIT,
                )
                .await
                .expect("the groups service answers");
            bus::AdminGroupsReply::decode(raw).expect("decodes")
        }
    };
    let got = admin(bus::admin_groups_request::Op::Get(group.get())).await;
    assert_eq!(got.error, None);
    let info = &got.groups[0];
    assert!(info.deleted);
    let members: Vec<u64> = info.members.iter().map(|m| m.user_id).collect();
    assert_eq!(members, vec![ALICE.get(), BOB.get()]);
    for member in [BOB.get(), 0] {
        let listed = admin(bus::admin_groups_request::Op::List(bus::AdminGroupList {
            after: 0,
            limit: 10,
            member,
        }))
        .await;
        assert_eq!(listed.error, None);
        let ids: Vec<u64> = listed.groups.iter().map(|g| g.group_id).collect();
        assert_eq!((ids, listed.more), (vec![group.get()], false));
        assert_eq!(listed.groups[0].member_count, 2, "counted, not listed");
        // Only the listed member's own entry (their role), if any.
        let shown: Vec<u64> = listed.groups[0].members.iter().map(|m| m.user_id).collect();
        assert_eq!(
            shown,
            [member].into_iter().filter(|&m| m != 0).collect::<Vec<_>>()
        );
    }
    let none = admin(bus::admin_groups_request::Op::Get(group.get() + 1)).await;
    assert_eq!(none.error.map(|e| e.code), Some(ErrorCode::NotFound as i32));
}

/// A fake people service: `blocker` has blocked `blocked`; nobody else blocked anyone.
async fn fake_people(bus: Arc<dyn Bus>, blocker: UserId, blocked: UserId) -> JoinHandle<()> {
    let mut sub = bus
        .queue_subscribe(&Subject::people_audience(), "people", 1024)
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        while let Some(ev) = sub.next().await {
            let BusEvent::Message(m) = ev else { continue };
            let q = bus::AudienceRequest::decode(m.payload.clone()).unwrap_or_default();
            let audience = bus::Audience {
                user_id: q.user_id,
                blocked: if q.user_id == blocker.get() {
                    vec![blocked.get()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            let _ =
                natter_bus::reply(bus.as_ref(), &m, Bytes::from(audience.encode_to_vec())).await;
        }
    })
}

#[tokio::test]
async fn messages_to_someone_who_blocked_the_sender_are_acked_but_withheld() {
    let h = harness().await;
    let people = fake_people(h.bus.clone(), BOB, ALICE).await;
    let conv = direct(ALICE, BOB);
    let mut alice = h.pushes(ALICE).await;
    let mut bob = h.pushes(BOB).await;

    // Alice gets her ack (one tick), as for any message.
    let a = ack(h.send((ALICE, A1), BOB, "hello?").await);
    assert_eq!(a.seq, 1);
    // Alice's other devices see her message as sent; Bob gets only its placeholder.
    let (mine, skip) = next_message(&mut alice).await;
    assert_eq!(skip, A1.get());
    assert!(!mine.withheld, "the sender is never told");
    assert_eq!(mine.body, Bytes::from_static(b"hello?"));
    let (theirs, skip) = next_message(&mut bob).await;
    assert_eq!(skip, 0);
    assert!(theirs.withheld);
    assert_eq!((theirs.seq, theirs.sender_user), (1, 0));
    assert!(theirs.body.is_empty() && theirs.client_msg_id.is_empty());
    // The log keeps the message (so seqs stay gap-free) with the flag.
    assert!(h.log(&conv).await[0].withheld);

    // Bob's messages to Alice flow as usual (blocking is one-way).
    ack(h.send((BOB, B1), ALICE, "not you").await);
    let (m, _) = next_message(&mut alice).await;
    assert!(!m.withheld && m.seq == 2);
    let (m, _) = next_message(&mut bob).await;
    assert_eq!(m.seq, 2);

    // History: Bob sees the placeholder, Alice her message.
    let page = |user, device| bus::HistoryRequest {
        caller: caller(user, device),
        history: Some(v1::History {
            conversation_id: conv.to_string(),
            before_seq: 0,
            limit: 10,
        }),
    };
    let p = h.history(page(BOB, B1)).await.page.expect("page");
    assert_eq!(seqs(&p.messages), vec![1, 2]);
    assert!(p.messages[0].withheld && p.messages[0].body.is_empty());
    let p = h.history(page(ALICE, A2)).await.page.expect("page");
    assert!(!p.messages[0].withheld);
    assert_eq!(p.messages[0].body, Bytes::from_static(b"hello?"));
    // Sync, likewise.
    let s = h
        .sync(bus::SyncRequest {
            caller: caller(BOB, B1),
            ..Default::default()
        })
        .await;
    assert!(s.messages[0].withheld && s.messages[0].body.is_empty());

    // Bob's receipts are not pushed to Alice (she never gets two ticks), only to his own
    // devices; his typing still reaches her, hers never reaches him.
    cursor(h.receipt((BOB, B1), &conv, true, 2).await);
    let (r, _) = next_receipt(&mut bob).await;
    assert_eq!(r.up_to_seq, 2);
    let typing = |to: UserId| {
        partition_request::Body::Typing(v1::Typing {
            to_user: to.get(),
            active: true,
            ..Default::default()
        })
    };
    h.ask(&conv, request(ALICE, A1, typing(BOB))).await;
    h.ask(&conv, request(BOB, B1, typing(ALICE))).await;
    match next_push(&mut alice).await {
        (server_frame::Body::Typing(t), _) => assert_eq!(t.user_id, BOB.get()),
        other => panic!("expected Bob's typing (no receipt), got {other:?}"),
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), bob.next()).await;
    assert!(quiet.is_err(), "Bob got something from Alice: {quiet:?}");
    people.abort();
}

#[tokio::test]
async fn committed_sends_are_handed_to_the_notifier_when_asked() {
    let config = Config {
        notify: true,
        ..Config::default()
    };
    let h = harness_with(|s| s, config, true).await;
    let mut jobs = h
        .bus
        .consume_durable(&Subject::notify(), "notifier", 16)
        .await
        .expect("consume");
    let r = h.send((ALICE, A1), BOB, "n1").await;
    assert!(
        matches!(r.body, Some(bus::partition_reply::Body::Ack(_))),
        "{r:?}"
    );
    let job = tokio::time::timeout(Duration::from_secs(5), jobs.next())
        .await
        .expect("a notify job")
        .expect("the stream goes on");
    let job = bus::NotifyJob::decode(job.payload).expect("a NotifyJob");
    assert_eq!(job.messages.len(), 1);
    let m = &job.messages[0];
    assert_eq!(m.recipients, vec![BOB.get()], "the sender is no recipient");
    let message = m.message.as_ref().expect("the message");
    assert_eq!(message.client_msg_id, "n1");
    assert_eq!(message.sender_user, ALICE.get());
    assert!(message.seq >= 1);
}

#[tokio::test]
async fn no_notify_jobs_unless_asked() {
    let h = harness_with(|s| s, Config::default(), true).await;
    let mut jobs = h
        .bus
        .consume_durable(&Subject::notify(), "notifier", 16)
        .await
        .expect("consume");
    let r = h.send((ALICE, A1), BOB, "n1").await;
    assert!(
        matches!(r.body, Some(bus::partition_reply::Body::Ack(_))),
        "{r:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), jobs.next())
            .await
            .is_err()
    );
}

/// A message deletion as the admin role sends it: no caller.
fn admin_delete(conversation_id: &str, seq: u64) -> bus::PartitionRequest {
    bus::PartitionRequest {
        caller: None,
        body: Some(partition_request::Body::AdminDelete(
            bus::AdminDeleteMessage {
                conversation_id: conversation_id.to_owned(),
                seq,
            },
        )),
    }
}

fn deleted(reply: bus::PartitionReply) -> v1::MessageDeleted {
    match reply.body {
        Some(partition_reply::Body::Deleted(d)) => d,
        other => panic!("expected a deletion, got {other:?}"),
    }
}

async fn next_deleted(sub: &mut Subscription) -> v1::MessageDeleted {
    match next_push(sub).await {
        (server_frame::Body::MessageDeleted(d), 0) => d,
        other => panic!("expected a MessageDeleted push to every device, got {other:?}"),
    }
}

/// An administrator (the admin role: no caller) deletes a message for everyone: both
/// members are told, every read returns it deleted without its content, a retry of its
/// send gets the original Ack (and stores nothing), and bad requests get stable codes.
#[tokio::test]
async fn an_administrator_deletes_a_message_for_everyone() {
    let h = harness().await;
    let conv = direct(ALICE, BOB);
    let mut alice = h.pushes(ALICE).await;
    let mut bob = h.pushes(BOB).await;
    let original = ack(h.send((ALICE, A1), BOB, "rude").await);
    assert_eq!(ack(h.send((BOB, B1), ALICE, "fine").await).seq, 2);
    for sub in [&mut alice, &mut bob] {
        for seq in [1, 2] {
            assert_eq!(next_message(sub).await.0.seq, seq);
        }
    }

    let d = deleted(h.ask(&conv, admin_delete(conv.as_str(), 1)).await);
    assert_eq!((d.conversation_id.as_str(), d.seq), (conv.as_str(), 1));
    assert!(d.deleted_at_ms >= original.created_at_ms);
    assert_eq!(next_deleted(&mut alice).await, d);
    assert_eq!(next_deleted(&mut bob).await, d);

    // History and sync return it deleted: its place, sender and time, no content.
    let page = h
        .history(bus::HistoryRequest {
            caller: caller(BOB, B1),
            history: Some(v1::History {
                conversation_id: conv.to_string(),
                before_seq: 0,
                limit: 10,
            }),
        })
        .await
        .page
        .expect("page");
    assert_eq!(seqs(&page.messages), vec![1, 2]);
    let m = &page.messages[0];
    assert!(m.deleted, "{m:?}");
    assert!(m.body.is_empty() && m.client_msg_id.is_empty() && m.media.is_none());
    assert_eq!(
        (m.sender_user, m.message_id, m.created_at_ms),
        (ALICE.get(), original.message_id, original.created_at_ms)
    );
    assert!(!page.messages[1].deleted);
    assert_eq!(page.messages[1].body, Bytes::from_static(b"fine"));
    let s = h
        .sync(bus::SyncRequest {
            caller: caller(BOB, B1),
            ..Default::default()
        })
        .await;
    assert_eq!(seqs(&s.messages), vec![1, 2]);
    assert!(s.messages[0].deleted && s.messages[0].body.is_empty());

    // Alice's device retries the send (it never saw the ack): the original Ack, nothing
    // stored, and the stored message (deleted) is pushed again.
    assert_eq!(ack(h.send((ALICE, A1), BOB, "rude").await), original);
    assert_eq!(seqs(&h.log(&conv).await), vec![1, 2]);
    for sub in [&mut alice, &mut bob] {
        let (again, _) = next_message(sub).await;
        assert!(again.seq == 1 && again.deleted && again.body.is_empty());
    }

    // Deleting again is fine: the members are told again.
    assert_eq!(
        deleted(h.ask(&conv, admin_delete(conv.as_str(), 1)).await).seq,
        1
    );
    assert_eq!(next_deleted(&mut alice).await.seq, 1);
    assert_eq!(next_deleted(&mut bob).await.seq, 1);

    // No such message; malformed requests; not from the admin role.
    for seq in [3, 1000] {
        let r = h.ask(&conv, admin_delete(conv.as_str(), seq)).await;
        assert_eq!(code(&r), ErrorCode::NotFound, "seq {seq}");
    }
    let empty = direct(ALICE, CAROL);
    let r = h.ask(&empty, admin_delete(empty.as_str(), 1)).await;
    assert_eq!(code(&r), ErrorCode::NotFound);
    let r = h.ask(&conv, admin_delete(conv.as_str(), 0)).await;
    assert_eq!(code(&r), ErrorCode::InvalidArgument);
    for bad in ["", "x.1", "d.2.1"] {
        let r = h
            .raw(
                &Subject::partition(conv.partition()),
                Bytes::from(admin_delete(bad, 1).encode_to_vec()),
            )
            .await;
        assert_eq!(code(&r), ErrorCode::InvalidArgument, "{bad:?}");
    }
    let elsewhere = (1..)
        .map(|u| direct(ALICE, UserId(500 + u)))
        .find(|c| c.partition() != conv.partition())
        .expect("a conversation in another partition");
    let r = h
        .raw(
            &Subject::partition(conv.partition()),
            Bytes::from(admin_delete(elsewhere.as_str(), 1).encode_to_vec()),
        )
        .await;
    assert_eq!(code(&r), ErrorCode::InvalidArgument, "wrong partition");
    let mut from_a_device = admin_delete(conv.as_str(), 2);
    from_a_device.caller = caller(BOB, B1);
    assert_eq!(
        code(&h.ask(&conv, from_a_device).await),
        ErrorCode::Forbidden
    );

    // The other message is untouched, and nobody heard of anything else.
    let log = h.log(&conv).await;
    assert!(log[0].deleted && !log[1].deleted);
    assert_eq!(log[1].body, Bytes::from_static(b"fine"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), bob.next())
            .await
            .is_err(),
        "bob got another push"
    );
}

/// In a group every current member is told; a group change (a system message) cannot
/// be deleted.
#[tokio::test]
async fn an_administrator_deletes_a_group_message_for_every_member() {
    let h = harness().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _groups = groups_service(&h, &dir).await;
    let create = v1::GroupCreate {
        create_id: "mods".into(),
        name: "Mods".into(),
        members: vec![BOB.get(), CAROL.get()],
        ..Default::default()
    };
    let group = natter_proto::GroupId::for_create(ALICE, "mods");
    let conv = ConversationId::group(group);
    let created = group_result(
        h.ask(
            &conv,
            group_op(
                ALICE,
                A1,
                group.get(),
                v1::group_request::Op::Create(create),
            ),
        )
        .await,
    );
    assert_eq!(created.seq, 1);
    let mut subs = Vec::new();
    for user in [ALICE, BOB, CAROL] {
        subs.push(h.pushes(user).await);
    }
    let spam = ack(h
        .ask(&conv, request(BOB, B1, group_send(&conv, "spam")))
        .await);
    assert_eq!(spam.seq, 2);
    for sub in &mut subs {
        assert_eq!(next_message(sub).await.0.seq, 2);
    }

    let d = deleted(h.ask(&conv, admin_delete(conv.as_str(), 2)).await);
    for sub in &mut subs {
        assert_eq!(next_deleted(sub).await, d);
    }
    let r = h.ask(&conv, admin_delete(conv.as_str(), 1)).await;
    assert_eq!(code(&r), ErrorCode::InvalidArgument, "a group change stays");

    let page = h
        .history(bus::HistoryRequest {
            caller: caller(CAROL, C1),
            history: Some(v1::History {
                conversation_id: conv.to_string(),
                before_seq: 0,
                limit: 10,
            }),
        })
        .await
        .page
        .expect("page");
    assert_eq!(seqs(&page.messages), vec![1, 2]);
    assert!(page.messages[0].event.is_some() && !page.messages[0].deleted);
    assert!(page.messages[1].deleted && page.messages[1].body.is_empty());
}

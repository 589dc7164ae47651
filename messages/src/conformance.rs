//! The conformance suite of [`MessageStore`]: every implementation's tests run it. Each
//! check works on fresh random users and conversations, so the stores handed in may share
//! one backing database (e.g. one ScyllaDB keyspace) and may hold data already. The
//! functions panic (assert) on a violation.
//!
//! ```ignore
//! conformance::run_all(|| my_store()).await;
//! conformance::durability_across_reopen(|| open_my_store_at(same_place)).await;
//! ```

use std::sync::Arc;

use bytes::Bytes;
use natter_proto::{ConversationId, DeviceId, Seq, UserId, v1};
use rand::Rng as _;

use crate::{
    CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage, StoreError,
};

/// Runs every check that needs no reopen, each on a store from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn MessageStore>) {
    append_then_read_in_order(make()).await;
    append_refuses_gaps_and_duplicates_atomically(make()).await;
    concurrent_appends_to_one_conversation_admit_one(make()).await;
    dedupe_lookup(make()).await;
    user_conversations_track_heads(make()).await;
    cursors_only_move_forward(make()).await;
    read_before_pages_backwards(make()).await;
    concurrent_appends_all_land(make()).await;
    member_cursors_take_the_max_over_devices(make()).await;
    member_cursors_read_raises_delivered(make()).await;
    member_cursors_never_move_back(make()).await;
    member_cursors_are_per_conversation(make()).await;
    member_cursors_are_ordered_by_user(make()).await;
    group_system_messages_keep_their_event(make()).await;
    withheld_messages_keep_their_flag(make()).await;
    media_refs_round_trip(make()).await;
    redact_deletes_the_content_and_keeps_the_place(make()).await;
    redact_keeps_the_dedupe_key(make()).await;
}

/// A deleted message keeps its place and ids and loses its content (body, media, call,
/// client_msg_id, reply_to_seq) on every read path; its neighbours are untouched.
/// Deleting twice returns the same; an unknown seq is `None`, seq 0 is invalid.
pub async fn redact_deletes_the_content_and_keeps_the_place(store: Arc<dyn MessageStore>) {
    let conv = conversation();
    let dev = device();
    let text = message(&conv, 1, dev, "r-1");
    let mut photo = message(&conv, 2, dev, "r-2");
    photo.message.kind = v1::MessageKind::Media as i32;
    photo.message.body = Bytes::new();
    photo.message.media = Some(Box::new(v1::MediaRef {
        id: "AAECAwQFBgcICQoLDA0ODw".into(),
        kind: v1::MediaKind::Image as i32,
        mime: "image/png".into(),
        size: 1234,
        preview: Bytes::from_static(b"\x89PNG"),
        caption: "a caption".into(),
        ..Default::default()
    }));
    let mut call = message(&conv, 3, dev, "natter.call.c-1");
    call.message.kind = v1::MessageKind::Call as i32;
    call.message.body = Bytes::new();
    call.message.call = Some(Box::new(v1::CallLog {
        call_id: "c-1".into(),
        missed: true,
        started_at_ms: 1_700_000_000_000,
        ..Default::default()
    }));
    let mut withheld = message(&conv, 4, dev, "r-4");
    withheld.message.withheld = true;
    let last = message(&conv, 5, dev, "r-5");
    let all = vec![text, photo, call, withheld, last];
    store.append(all.clone()).await.expect("append");
    let mut expected: Vec<v1::Message> = all.iter().map(|nm| nm.message.clone()).collect();

    for seq in [2u64, 3, 4] {
        let deleted = store
            .redact(&conv, Seq(seq))
            .await
            .expect("redact")
            .expect("the message exists");
        let original = &all[seq as usize - 1].message;
        let want = v1::Message {
            conversation_id: conv.as_str().to_owned(),
            seq,
            message_id: original.message_id,
            sender_user: original.sender_user,
            sender_device: original.sender_device,
            kind: original.kind,
            created_at_ms: original.created_at_ms,
            withheld: original.withheld,
            deleted: true,
            ..Default::default()
        };
        assert_eq!(deleted, want, "seq {seq}");
        assert_eq!(crate::redacted(original), want, "seq {seq}");
        expected[seq as usize - 1] = want;
    }
    assert!(
        expected[3].withheld,
        "a deleted withheld message stays withheld"
    );

    let after = store.read_after(&conv, Seq::ZERO, 10).await.expect("read");
    assert_eq!(after, expected);
    let before = store.read_before(&conv, Seq::ZERO, 10).await.expect("read");
    assert_eq!(before, expected);
    assert_eq!(
        store.read_after(&conv, Seq(1), 1).await.expect("read one"),
        expected[1..2].to_vec()
    );

    // Twice: the same answer, nothing else changes.
    assert_eq!(
        store.redact(&conv, Seq(2)).await.expect("again"),
        Some(expected[1].clone())
    );
    assert_eq!(
        store.read_after(&conv, Seq::ZERO, 10).await.expect("read"),
        expected
    );

    // Unknown seqs and conversations.
    assert_eq!(store.redact(&conv, Seq(6)).await.expect("past head"), None);
    assert_eq!(
        store.redact(&conv, Seq(u64::MAX >> 1)).await.expect("far"),
        None
    );
    assert_eq!(
        store
            .redact(&conversation(), Seq(1))
            .await
            .expect("empty conversation"),
        None
    );
    assert!(matches!(
        store.redact(&conv, Seq::ZERO).await,
        Err(StoreError::Invalid(_))
    ));
    // Nothing appeared where nothing was: the log and its head are as they were.
    assert_eq!(store.head(&conv).await.expect("head"), Seq(5));
    assert_eq!(
        store.read_after(&conv, Seq::ZERO, 10).await.expect("read"),
        expected
    );
    store
        .append(vec![message(&conv, 6, dev, "r-6")])
        .await
        .expect("the log goes on");
    assert_eq!(store.head(&conv).await.expect("head"), Seq(6));
}

/// A deleted message's dedupe key stays: its send retried finds the original Ack, and
/// the key cannot be stored again.
pub async fn redact_keeps_the_dedupe_key(store: Arc<dyn MessageStore>) {
    let conv = conversation();
    let dev = device();
    let first = message(&conv, 1, dev, "keep-me");
    let second = message(&conv, 2, dev, "other");
    store
        .append(vec![first.clone(), second.clone()])
        .await
        .expect("append");
    let ack = v1::Ack {
        client_msg_id: first.message.client_msg_id.clone(),
        conversation_id: conv.as_str().to_owned(),
        seq: 1,
        message_id: first.message.message_id,
        created_at_ms: first.message.created_at_ms,
    };
    assert_eq!(
        store.find_dedupe(vec![key(&first)]).await.expect("before"),
        vec![Some(ack.clone())]
    );
    store
        .redact(&conv, Seq(1))
        .await
        .expect("redact")
        .expect("exists");
    assert_eq!(
        store
            .find_dedupe(vec![key(&first), key(&second)])
            .await
            .expect("after"),
        vec![
            Some(ack),
            Some(v1::Ack {
                client_msg_id: "other".into(),
                conversation_id: conv.as_str().to_owned(),
                seq: 2,
                message_id: second.message.message_id,
                created_at_ms: second.message.created_at_ms,
            })
        ]
    );
    let again = message(&conv, 3, dev, "keep-me");
    assert!(
        is_conflict(&store.append(vec![again]).await),
        "the deleted message's key is still taken"
    );
    assert_eq!(store.head(&conv).await.expect("head"), Seq(2));
}

/// A media message keeps its attachment exactly (every field, the preview's bytes), on
/// every read path, next to messages without one.
pub async fn media_refs_round_trip(store: Arc<dyn MessageStore>) {
    let conv = conversation();
    let dev = device();
    let mut photo = message(&conv, 1, dev, "m-1");
    photo.message.kind = v1::MessageKind::Media as i32;
    photo.message.body = Bytes::new();
    photo.message.media = Some(Box::new(v1::MediaRef {
        id: "AAECAwQFBgcICQoLDA0ODw".into(),
        kind: v1::MediaKind::Image as i32,
        mime: "image/jpeg".into(),
        size: 1_234_567,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        width: 4032,
        height: 3024,
        duration_ms: 0,
        // Every byte value: a preview is binary.
        preview: Bytes::from((0..=255u8).rev().collect::<Vec<u8>>()),
        caption: "Ünïcödé caption ✓\nsecond line".into(),
        filename: "IMG_0001.jpg".into(),
        voice: false,
        ..Default::default()
    }));
    let text = message(&conv, 2, dev, "m-2");
    let mut voice = message(&conv, 3, dev, "m-3");
    voice.message.kind = v1::MessageKind::Media as i32;
    voice.message.media = Some(Box::new(v1::MediaRef {
        id: "voice-note-id-22-chars".into(),
        kind: v1::MediaKind::Audio as i32,
        mime: "audio/ogg".into(),
        size: 4096,
        duration_ms: 3_500,
        voice: true,
        ..Default::default()
    }));
    let all = vec![photo, text, voice];
    store.append(all.clone()).await.expect("append");
    let expected: Vec<v1::Message> = all.into_iter().map(|m| m.message).collect();
    let after = store
        .read_after(&conv, Seq::ZERO, 10)
        .await
        .expect("read_after");
    assert_eq!(after, expected);
    let before = store
        .read_before(&conv, Seq(0), 10)
        .await
        .expect("read_before");
    assert_eq!(before, expected);
    assert_eq!(
        store.read_after(&conv, Seq(2), 10).await.expect("sync"),
        expected[2..].to_vec()
    );
}

/// A message withheld from its recipient (they blocked the sender) is stored as such:
/// every read path returns the flag, next to messages without it.
pub async fn withheld_messages_keep_their_flag(store: Arc<dyn MessageStore>) {
    let conv = conversation();
    let dev = device();
    let mut first = message(&conv, 1, dev, "w-1");
    first.message.withheld = true;
    let second = message(&conv, 2, dev, "w-2");
    store
        .append(vec![first.clone(), second.clone()])
        .await
        .expect("append");
    let after = store
        .read_after(&conv, Seq(0), 10)
        .await
        .expect("read_after");
    assert_eq!(after, vec![first.message.clone(), second.message.clone()]);
    let before = store
        .read_before(&conv, Seq(0), 10)
        .await
        .expect("read_before");
    assert_eq!(before, vec![first.message, second.message]);
}

fn random_id() -> u64 {
    rand::rng().random_range(1..(1u64 << 53))
}

fn user() -> UserId {
    UserId(random_id())
}

fn device() -> DeviceId {
    DeviceId(random_id())
}

fn direct(a: UserId, b: UserId) -> ConversationId {
    ConversationId::direct(a, b).expect("two random users are distinct")
}

fn conversation() -> ConversationId {
    direct(user(), user())
}

/// Message `seq` of `conv`, sent by its first member from `dev` with client id `cmid`.
fn message(conv: &ConversationId, seq: u64, dev: DeviceId, cmid: &str) -> NewMessage {
    let members = conv.direct_members().expect("direct conversation");
    NewMessage {
        message: v1::Message {
            call: None,
            conversation_id: conv.as_str().to_owned(),
            seq,
            message_id: random_id(),
            sender_user: members[0].get(),
            sender_device: dev.get(),
            client_msg_id: cmid.to_owned(),
            kind: v1::MessageKind::Binary as i32,
            // Every byte value, and a per-message marker.
            body: Bytes::from((0..=255u8).chain(seq.to_le_bytes()).collect::<Vec<u8>>()),
            reply_to_seq: seq.saturating_sub(1),
            created_at_ms: 1_700_000_000_000 + seq,
            event: None,
            withheld: false,
            media: None,
            deleted: false,
        },
        members: members.to_vec(),
    }
}

/// A group conversation's log keeps a system message's event, and group messages list
/// no members (sync finds group conversations through the groups service).
pub async fn group_system_messages_keep_their_event(store: Arc<dyn MessageStore>) {
    let group = natter_proto::GroupId(random_id());
    let conv = ConversationId::group(group);
    let actor = user();
    let event = v1::GroupEvent {
        kind: v1::GroupEventKind::MembersAdded as i32,
        actor: actor.get(),
        users: vec![user().get(), user().get()],
        name: "Trip ✈".into(),
        version: 2,
        settings: Some(v1::GroupSettings {
            send: v1::GroupPolicy::Admins as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let system = NewMessage {
        message: v1::Message {
            call: None,
            conversation_id: conv.as_str().to_owned(),
            seq: 1,
            message_id: random_id(),
            sender_user: actor.get(),
            sender_device: 1,
            client_msg_id: "natter.group.v2".into(),
            kind: v1::MessageKind::System as i32,
            body: Bytes::new(),
            reply_to_seq: 0,
            created_at_ms: 1_700_000_000_000,
            event: Some(Box::new(event)),
            withheld: false,
            media: None,
            deleted: false,
        },
        members: Vec::new(),
    };
    let mut chat = system.clone();
    chat.message.seq = 2;
    chat.message.client_msg_id = "c2".into();
    chat.message.sender_device = device().get();
    chat.message.kind = v1::MessageKind::Text as i32;
    chat.message.body = Bytes::from_static(b"hello group");
    chat.message.event = None;
    store
        .append(vec![system.clone(), chat.clone()])
        .await
        .expect("append to a group conversation");
    let stored = store.read_after(&conv, Seq::ZERO, 10).await.expect("read");
    assert_eq!(stored, vec![system.message, chat.message]);
    assert_eq!(store.head(&conv).await.expect("head"), Seq(2));
    let listed = store.user_conversations(actor).await.expect("list");
    assert!(
        listed.iter().all(|(c, _)| c != &conv),
        "group messages list no members"
    );
}

fn messages(conv: &ConversationId, seqs: std::ops::RangeInclusive<u64>) -> Vec<NewMessage> {
    let dev = device();
    seqs.map(|s| message(conv, s, dev, &format!("c{s}")))
        .collect()
}

fn seqs(ms: &[v1::Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

fn key(nm: &NewMessage) -> DedupeKey {
    DedupeKey {
        conversation: nm.message.conversation_id.parse().expect("valid id"),
        sender_device: DeviceId(nm.message.sender_device),
        client_msg_id: nm.message.client_msg_id.clone(),
    }
}

fn member(user: UserId, delivered: u64, read: u64) -> MemberCursor {
    MemberCursor {
        user,
        delivered: Seq(delivered),
        read: Seq(read),
    }
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// Appended messages come back exactly, in seq order, from any cursor.
pub async fn append_then_read_in_order(store: Arc<dyn MessageStore>) {
    let (c, other) = (conversation(), conversation());
    assert_eq!(store.head(&c).await.expect("head"), Seq::ZERO);
    assert!(
        store
            .read_after(&c, Seq::ZERO, 10)
            .await
            .expect("read")
            .is_empty()
    );

    let all = messages(&c, 1..=10);
    store.append(all[..3].to_vec()).await.expect("append 1..=3");
    // One batch may hold several conversations, interleaved.
    let mut mixed = all[3..].to_vec();
    mixed.insert(2, message(&other, 1, device(), "o1"));
    mixed.push(message(&other, 2, device(), "o2"));
    store.append(mixed).await.expect("append 4..=10 + other");
    store
        .append(Vec::new())
        .await
        .expect("empty append is a no-op");

    assert_eq!(store.head(&c).await.expect("head"), Seq(10));
    assert_eq!(store.head(&other).await.expect("head"), Seq(2));
    let expected: Vec<v1::Message> = all.iter().map(|nm| nm.message.clone()).collect();
    assert_eq!(
        store.read_after(&c, Seq::ZERO, 100).await.expect("read"),
        expected
    );
    let mid = store.read_after(&c, Seq(3), 4).await.expect("read");
    assert_eq!(seqs(&mid), vec![4, 5, 6, 7]);
    assert!(
        store
            .read_after(&c, Seq(10), 5)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read_after(&c, Seq::ZERO, 0)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read_after(&c, Seq(u64::MAX), 5)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        seqs(&store.read_after(&other, Seq::ZERO, 10).await.expect("read")),
        vec![1, 2]
    );
}

/// A batch with a gap, a repeated seq or a known dedupe key is refused whole.
pub async fn append_refuses_gaps_and_duplicates_atomically(store: Arc<dyn MessageStore>) {
    let c = conversation();
    let dev = device();
    let first = message(&c, 1, dev, "a");
    store.append(vec![first.clone()]).await.expect("append 1");

    let gap = vec![message(&c, 2, dev, "b"), message(&c, 4, dev, "d")];
    assert!(is_conflict(&store.append(gap).await), "gap refused");
    let starts_late = vec![message(&c, 3, dev, "c")];
    assert!(
        is_conflict(&store.append(starts_late).await),
        "seq past head+1 refused"
    );
    let again = vec![message(&c, 1, dev, "z")];
    assert!(
        is_conflict(&store.append(again).await),
        "existing seq refused"
    );
    let same_key = vec![message(&c, 2, dev, "a")];
    assert!(
        is_conflict(&store.append(same_key).await),
        "existing dedupe key refused"
    );
    let twice_in_batch = vec![message(&c, 2, dev, "x"), message(&c, 3, dev, "x")];
    assert!(
        is_conflict(&store.append(twice_in_batch).await),
        "dedupe key twice refused"
    );
    // A refused batch that also touched another conversation left nothing there either.
    let other = conversation();
    let mixed = vec![message(&other, 1, dev, "o"), message(&c, 9, dev, "n")];
    assert!(
        is_conflict(&store.append(mixed).await),
        "mixed batch refused"
    );

    assert_eq!(store.head(&c).await.expect("head"), Seq(1));
    assert_eq!(store.head(&other).await.expect("head"), Seq::ZERO);
    let stored = store.read_after(&c, Seq::ZERO, 10).await.expect("read");
    assert_eq!(stored, vec![first.message]);
    let members = other.direct_members().expect("direct");
    assert!(
        store
            .user_conversations(members[0])
            .await
            .expect("list")
            .is_empty()
    );
    let found = store
        .find_dedupe(vec![DedupeKey {
            conversation: c.clone(),
            sender_device: dev,
            client_msg_id: "b".into(),
        }])
        .await
        .expect("dedupe");
    assert_eq!(found, vec![None], "refused messages leave no dedupe key");
    // The log continues normally afterwards.
    store
        .append(vec![message(&c, 2, dev, "b")])
        .await
        .expect("append 2");
    assert_eq!(store.head(&c).await.expect("head"), Seq(2));
}

/// Two writers racing for the same seq: exactly one wins, the other gets Conflict.
pub async fn concurrent_appends_to_one_conversation_admit_one(store: Arc<dyn MessageStore>) {
    let c = conversation();
    for round in 1..=20u64 {
        let (a, b) = (
            message(&c, round, device(), "a"),
            message(&c, round, device(), "b"),
        );
        let (ra, rb) = tokio::join!(store.append(vec![a]), store.append(vec![b]));
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {ra:?} {rb:?}");
        assert!(is_conflict(&ra) || is_conflict(&rb), "{ra:?} {rb:?}");
    }
    let all = store.read_after(&c, Seq::ZERO, 100).await.expect("read");
    assert_eq!(seqs(&all), (1..=20).collect::<Vec<_>>());
}

/// Dedupe keys find the original Ack; lookups are batched and keep their order.
pub async fn dedupe_lookup(store: Arc<dyn MessageStore>) {
    let c = conversation();
    let (d1, d2) = (device(), device());
    let m1 = message(&c, 1, d1, "same");
    let m2 = message(&c, 2, d2, "same");
    store
        .append(vec![m1.clone(), m2.clone()])
        .await
        .expect("append");
    let ack = |nm: &NewMessage| v1::Ack {
        client_msg_id: nm.message.client_msg_id.clone(),
        conversation_id: nm.message.conversation_id.clone(),
        seq: nm.message.seq,
        message_id: nm.message.message_id,
        created_at_ms: nm.message.created_at_ms,
    };
    let unknown_id = DedupeKey {
        client_msg_id: "other".into(),
        ..key(&m1)
    };
    let elsewhere = DedupeKey {
        conversation: conversation(),
        ..key(&m1)
    };
    let found = store
        .find_dedupe(vec![key(&m2), unknown_id, key(&m1), elsewhere, key(&m2)])
        .await
        .expect("dedupe");
    assert_eq!(
        found,
        vec![Some(ack(&m2)), None, Some(ack(&m1)), None, Some(ack(&m2))]
    );
    assert!(
        store
            .find_dedupe(Vec::new())
            .await
            .expect("empty")
            .is_empty()
    );
}

/// Each member lists the conversation with its head; heads only move forward.
pub async fn user_conversations_track_heads(store: Arc<dyn MessageStore>) {
    let (alice, bob, carol, dave) = (user(), user(), user(), user());
    let ab = direct(alice, bob);
    let ac = direct(alice, carol);
    store.append(messages(&ab, 1..=3)).await.expect("append ab");
    store.append(messages(&ac, 1..=1)).await.expect("append ac");

    let mut expected = vec![(ab.clone(), Seq(3)), (ac.clone(), Seq(1))];
    expected.sort();
    assert_eq!(
        store.user_conversations(alice).await.expect("alice"),
        expected
    );
    assert_eq!(
        store.user_conversations(bob).await.expect("bob"),
        vec![(ab.clone(), Seq(3))]
    );
    assert!(
        store
            .user_conversations(dave)
            .await
            .expect("dave")
            .is_empty()
    );

    // A message listing only some members raises only theirs; max(old, new) for each.
    let mut only_first = message(&ab, 4, device(), "only");
    let first = ab.direct_members().expect("direct")[0];
    only_first.members = vec![first];
    store.append(vec![only_first]).await.expect("append 4");
    let heads =
        |list: Vec<(ConversationId, Seq)>| list.into_iter().find(|(c, _)| *c == ab).map(|(_, s)| s);
    let second = if first == alice { bob } else { alice };
    assert_eq!(
        heads(store.user_conversations(first).await.expect("first")),
        Some(Seq(4))
    );
    assert_eq!(
        heads(store.user_conversations(second).await.expect("second")),
        Some(Seq(3))
    );
    store.append(messages(&ab, 5..=5)).await.expect("append 5");
    assert_eq!(
        heads(store.user_conversations(second).await.expect("second")),
        Some(Seq(5))
    );
}

/// Cursors take the max; READ raises DELIVERED too; devices are independent.
pub async fn cursors_only_move_forward(store: Arc<dyn MessageStore>) {
    use v1::ReceiptKind::{Delivered, Read, Unspecified};
    let (u, d, d2) = (user(), device(), device());
    let (c1, c2) = (direct(u, user()), direct(u, user()));
    let adv = |seq, moved| CursorAdvance {
        seq: Seq(seq),
        moved,
    };
    assert_eq!(store.device_cursors(u, d).await.expect("none"), Vec::new());
    assert_eq!(
        store.advance_cursor(u, d, &c1, Delivered, Seq::ZERO).await,
        Ok(adv(0, false))
    );
    assert_eq!(
        store.advance_cursor(u, d, &c1, Delivered, Seq(5)).await,
        Ok(adv(5, true))
    );
    assert_eq!(
        store.advance_cursor(u, d, &c1, Delivered, Seq(3)).await,
        Ok(adv(5, false))
    );
    assert_eq!(
        store.advance_cursor(u, d, &c1, Delivered, Seq(5)).await,
        Ok(adv(5, false))
    );
    assert_eq!(
        store.advance_cursor(u, d, &c1, Read, Seq(2)).await,
        Ok(adv(2, true))
    );
    assert_eq!(
        store.advance_cursor(u, d, &c1, Read, Seq(1)).await,
        Ok(adv(2, false))
    );
    assert_eq!(
        store.advance_cursor(u, d, &c2, Read, Seq(7)).await,
        Ok(adv(7, true))
    );
    assert_eq!(
        store.advance_cursor(u, d2, &c1, Delivered, Seq(1)).await,
        Ok(adv(1, true))
    );
    assert!(matches!(
        store.advance_cursor(u, d, &c1, Unspecified, Seq(9)).await,
        Err(StoreError::Invalid(_))
    ));

    let mut expected = vec![
        DeviceCursor {
            conversation: c1.clone(),
            delivered: Seq(5),
            read: Seq(2),
        },
        DeviceCursor {
            conversation: c2.clone(),
            delivered: Seq(7),
            read: Seq(7),
        },
    ];
    expected.sort_by(|a, b| a.conversation.cmp(&b.conversation));
    assert_eq!(store.device_cursors(u, d).await.expect("cursors"), expected);
    assert_eq!(
        store.device_cursors(u, d2).await.expect("cursors"),
        vec![DeviceCursor {
            conversation: c1.clone(),
            delivered: Seq(1),
            read: Seq::ZERO,
        }]
    );
    assert!(
        store
            .device_cursors(user(), d)
            .await
            .expect("other user")
            .is_empty()
    );
}

/// `read_before` pages from the newest backwards, each page ascending.
pub async fn read_before_pages_backwards(store: Arc<dyn MessageStore>) {
    let c = conversation();
    store.append(messages(&c, 1..=25)).await.expect("append");
    let page = |before, limit| {
        let store = store.clone();
        let c = c.clone();
        async move {
            seqs(
                &store
                    .read_before(&c, Seq(before), limit)
                    .await
                    .expect("read"),
            )
        }
    };
    assert_eq!(page(0, 10).await, (16..=25).collect::<Vec<_>>());
    assert_eq!(page(16, 10).await, (6..=15).collect::<Vec<_>>());
    assert_eq!(page(6, 10).await, (1..=5).collect::<Vec<_>>());
    assert_eq!(page(1, 10).await, Vec::<u64>::new());
    assert_eq!(page(100, 3).await, vec![23, 24, 25]);
    assert_eq!(page(0, 0).await, Vec::<u64>::new());
    assert_eq!(page(0, 1000).await, (1..=25).collect::<Vec<_>>());
    let empty = conversation();
    assert!(
        store
            .read_before(&empty, Seq::ZERO, 5)
            .await
            .expect("read")
            .is_empty()
    );
}

/// Many writers at once (group commit): every append lands, each log gap-free.
pub async fn concurrent_appends_all_land(store: Arc<dyn MessageStore>) {
    let convs: Vec<ConversationId> = (0..32).map(|_| conversation()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for c in convs.clone() {
        let store = store.clone();
        tasks.spawn(async move {
            let dev = device();
            for s in 1..=20u64 {
                store
                    .append(vec![message(&c, s, dev, &format!("m{s}"))])
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("append task");
    }
    for c in &convs {
        assert_eq!(store.head(c).await.expect("head"), Seq(20));
        let all = store.read_after(c, Seq::ZERO, 100).await.expect("read");
        assert_eq!(seqs(&all), (1..=20).collect::<Vec<_>>());
    }
}

/// A user's cursor is the highest of their devices', whichever device got there, also
/// when many devices advance at once.
pub async fn member_cursors_take_the_max_over_devices(store: Arc<dyn MessageStore>) {
    use v1::ReceiptKind::{Delivered, Read};
    let u = user();
    let c = direct(u, user());
    let (phone, laptop) = (device(), device());
    let advance = |d, kind, seq| {
        let store = store.clone();
        let c = c.clone();
        async move {
            store
                .advance_cursor(u, d, &c, kind, Seq(seq))
                .await
                .expect("advance");
        }
    };
    advance(phone, Delivered, 5).await;
    advance(laptop, Delivered, 3).await;
    advance(laptop, Read, 2).await;
    assert_eq!(
        store.member_cursors(&c).await.expect("cursors"),
        vec![member(u, 5, 2)]
    );
    // The device that is behind on DELIVERED can still be the one ahead on READ.
    advance(laptop, Read, 4).await;
    assert_eq!(
        store.member_cursors(&c).await.expect("cursors"),
        vec![member(u, 5, 4)]
    );
    advance(laptop, Delivered, 9).await;
    assert_eq!(
        store.member_cursors(&c).await.expect("cursors"),
        vec![member(u, 9, 4)]
    );
    // Sixteen devices at once: the highest seq wins whatever the order of arrival.
    let many: Vec<DeviceId> = (0..16).map(|_| device()).collect();
    futures::future::join_all(
        many.iter()
            .zip(10u64..)
            .map(|(&d, seq)| advance(d, Read, seq)),
    )
    .await;
    assert_eq!(
        store.member_cursors(&c).await.expect("cursors"),
        vec![member(u, 25, 25)]
    );
    futures::future::join_all(
        many.iter()
            .zip(30u64..)
            .map(|(&d, seq)| advance(d, Delivered, seq)),
    )
    .await;
    assert_eq!(
        store.member_cursors(&c).await.expect("cursors"),
        vec![member(u, 45, 25)]
    );
    // The devices' own cursors are still their own.
    assert_eq!(
        store.device_cursors(u, phone).await.expect("phone"),
        vec![DeviceCursor {
            conversation: c.clone(),
            delivered: Seq(5),
            read: Seq::ZERO,
        }]
    );
}

/// A READ raises the user's DELIVERED too (what was read was received), as it does the
/// device's; a DELIVERED never raises READ.
pub async fn member_cursors_read_raises_delivered(store: Arc<dyn MessageStore>) {
    use v1::ReceiptKind::{Delivered, Read};
    let (u, v) = (user(), user());
    let c = direct(u, v);
    let (d, d2, dv) = (device(), device(), device());
    store
        .advance_cursor(u, d, &c, Read, Seq(7))
        .await
        .expect("read");
    store
        .advance_cursor(v, dv, &c, Delivered, Seq(6))
        .await
        .expect("delivered");
    let mut expected = vec![member(u, 7, 7), member(v, 6, 0)];
    expected.sort_by_key(|m| m.user);
    assert_eq!(store.member_cursors(&c).await.expect("cursors"), expected);
    // Another device's READ past every DELIVERED raises both.
    store
        .advance_cursor(u, d2, &c, Delivered, Seq(3))
        .await
        .expect("delivered");
    store
        .advance_cursor(u, d2, &c, Read, Seq(11))
        .await
        .expect("read");
    // A READ below DELIVERED leaves DELIVERED where it is.
    store
        .advance_cursor(v, dv, &c, Read, Seq(2))
        .await
        .expect("read");
    let mut expected = vec![member(u, 11, 11), member(v, 6, 2)];
    expected.sort_by_key(|m| m.user);
    assert_eq!(store.member_cursors(&c).await.expect("cursors"), expected);
}

/// Lower or repeated advances, from the same device or another, and refused calls leave
/// the user's cursor where it is.
pub async fn member_cursors_never_move_back(store: Arc<dyn MessageStore>) {
    use v1::ReceiptKind::{Delivered, Read, Unspecified};
    let u = user();
    let c = direct(u, user());
    let (d, late) = (device(), device());
    store
        .advance_cursor(u, d, &c, Delivered, Seq(8))
        .await
        .expect("delivered");
    store
        .advance_cursor(u, d, &c, Read, Seq(6))
        .await
        .expect("read");
    for (dev, kind, seq) in [
        (d, Delivered, 2),
        (d, Read, 1),
        (d, Read, 6),
        (d, Delivered, 0),
        (late, Delivered, 7),
        (late, Read, 5),
        (late, Read, 0),
    ] {
        store
            .advance_cursor(u, dev, &c, kind, Seq(seq))
            .await
            .expect("advance");
        assert_eq!(
            store.member_cursors(&c).await.expect("cursors"),
            vec![member(u, 8, 6)],
            "after {kind:?} {seq} from {dev:?}"
        );
    }
    assert!(matches!(
        store
            .advance_cursor(u, late, &c, Unspecified, Seq(50))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.member_cursors(&c).await.expect("cursors"),
        vec![member(u, 8, 6)]
    );
}

/// Each conversation has its own cursors: advancing in one leaves the others alone, and
/// a conversation nobody advanced in has none.
pub async fn member_cursors_are_per_conversation(store: Arc<dyn MessageStore>) {
    use v1::ReceiptKind::{Delivered, Read};
    let (u, v, w) = (user(), user(), user());
    let (uv, uw) = (direct(u, v), direct(u, w));
    let d = device();
    assert!(
        store
            .member_cursors(&conversation())
            .await
            .expect("unknown conversation")
            .is_empty()
    );
    store
        .advance_cursor(u, d, &uv, Read, Seq(4))
        .await
        .expect("read");
    assert!(
        store
            .member_cursors(&uw)
            .await
            .expect("untouched conversation")
            .is_empty()
    );
    store
        .advance_cursor(u, d, &uw, Delivered, Seq(9))
        .await
        .expect("delivered");
    store
        .advance_cursor(w, device(), &uw, Read, Seq(1))
        .await
        .expect("read");
    assert_eq!(
        store.member_cursors(&uv).await.expect("uv"),
        vec![member(u, 4, 4)]
    );
    let mut expected = vec![member(u, 9, 0), member(w, 1, 1)];
    expected.sort_by_key(|m| m.user);
    assert_eq!(store.member_cursors(&uw).await.expect("uw"), expected);
    // The same device's cursor in another conversation does not count here.
    assert_eq!(
        store.device_cursors(u, d).await.expect("device").len(),
        2,
        "one cursor per conversation"
    );
}

/// The list is ordered by user id as a number (9 before 10 before 100), whatever the
/// order the users advanced in.
pub async fn member_cursors_are_ordered_by_user(store: Arc<dyn MessageStore>) {
    let c = conversation();
    // Small ids of different lengths catch an order by text; random ones fill in.
    let mut users: Vec<UserId> = [100, 9, 10, 1, 99, 1_000_000]
        .into_iter()
        .map(UserId)
        .chain((0..20).map(|_| user()))
        .collect();
    for (u, seq) in users.iter().zip(1u64..) {
        store
            .advance_cursor(*u, device(), &c, v1::ReceiptKind::Delivered, Seq(seq))
            .await
            .expect("advance");
    }
    let mut expected: Vec<MemberCursor> = users
        .iter()
        .zip(1u64..)
        .map(|(u, seq)| member(*u, seq, 0))
        .collect();
    expected.sort_by_key(|m| m.user);
    users.sort();
    users.dedup();
    assert_eq!(expected.len(), users.len(), "the users are distinct");
    assert_eq!(store.member_cursors(&c).await.expect("cursors"), expected);
}

/// What was acknowledged survives closing and reopening. Every call of `open` must open
/// the same storage; the suite drops each store before opening the next.
pub async fn durability_across_reopen(open: impl Fn() -> Arc<dyn MessageStore>) {
    let (alice, bob) = (user(), user());
    let c = direct(alice, bob);
    let d = device();
    let written = messages(&c, 1..=5);
    {
        let store = open();
        store.append(written.clone()).await.expect("append");
        store
            .advance_cursor(bob, d, &c, v1::ReceiptKind::Delivered, Seq(4))
            .await
            .expect("cursor");
        store
            .advance_cursor(bob, device(), &c, v1::ReceiptKind::Read, Seq(2))
            .await
            .expect("cursor of another device");
        store
            .redact(&c, Seq(2))
            .await
            .expect("redact")
            .expect("message 2 exists");
    }
    let store = open();
    assert_eq!(store.head(&c).await.expect("head"), Seq(5));
    let mut expected: Vec<v1::Message> = written.iter().map(|nm| nm.message.clone()).collect();
    expected[1] = crate::redacted(&expected[1]);
    assert_eq!(
        store.read_after(&c, Seq::ZERO, 10).await.expect("read"),
        expected
    );
    let found = store
        .find_dedupe(vec![key(&written[2])])
        .await
        .expect("dedupe");
    assert_eq!(found[0].as_ref().map(|a| a.seq), Some(3));
    assert_eq!(
        store.user_conversations(alice).await.expect("list"),
        vec![(c.clone(), Seq(5))]
    );
    assert_eq!(
        store.device_cursors(bob, d).await.expect("cursors"),
        vec![DeviceCursor {
            conversation: c.clone(),
            delivered: Seq(4),
            read: Seq::ZERO,
        }]
    );
    assert_eq!(
        store.member_cursors(&c).await.expect("member cursors"),
        vec![member(bob, 4, 2)]
    );
    store
        .append(messages(&c, 6..=6))
        .await
        .expect("append after reopen");
    assert!(is_conflict(&store.append(messages(&c, 6..=6)).await));
}

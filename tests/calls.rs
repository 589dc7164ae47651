//! The call state machine end to end through the real binary (docs/protocol.md, "Calls"):
//! ringing on every online device, answer (and answered elsewhere), decline, busy, no
//! answer, cancel, hang up, dropped and back within the grace, the SDP/ICE relay between
//! exactly the devices in the call (candidates held until the answer, renegotiation),
//! who may do what (strangers, non-members, blocks, bad ids), group calls (a mesh, the
//! participant limit) and idempotent starts.
//!
//! No WebRTC here: SDP is any non-empty text (`tests/calls_webrtc.rs` does real media).
//! Each test starts its own server (with the ring timeout, drop grace or participant
//! limit it needs) so the tests run in parallel and nothing waits for a default timeout.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{
    Client, ConversationId, ErrorCode, Event, Seq, Session, UserId,
    v1::{self, CallEndReason as R, CallEventType as T},
};
use tokio::time::Instant;

/// How long an event may take to arrive.
const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for an event that must not come.
const QUIET: Duration = Duration::from_millis(400);
/// Each test's bound.
const TEST_S: u64 = 25;

const OFFER: &str = "v=0 fake offer";
const ANSWER: &str = "v=0 fake answer";

fn sdp(kind: v1::SdpType, text: &str) -> Option<v1::SessionDescription> {
    Some(v1::SessionDescription {
        r#type: kind as i32,
        sdp: text.to_owned(),
    })
}

fn candidate(text: &str) -> Option<v1::IceCandidate> {
    Some(v1::IceCandidate {
        candidate: text.to_owned(),
        sdp_mid: "0".to_owned(),
        sdp_mline_index: 0,
        username_fragment: "ufrag".to_owned(),
    })
}

fn info(ev: &v1::CallEvent) -> &v1::CallInfo {
    ev.call.as_ref().expect("a call event carries its call")
}

fn id_of(ev: &v1::CallEvent) -> &str {
    &info(ev).call_id
}

fn devices(call: &v1::CallInfo) -> Vec<(u64, u64)> {
    call.participants
        .iter()
        .map(|p| (p.user_id, p.device_id))
        .collect()
}

fn me(c: &Client) -> (u64, u64) {
    (c.user_id().get(), c.device_id().get())
}

/// The next event of call `id` on `c` (other events, and other calls', are skipped).
async fn next_of(c: &Client, id: &str) -> v1::CallEvent {
    next_matching(c, WAIT, |ev| match ev {
        Event::Call(e) if id_of(e) == id => Some(v1::CallEvent::clone(e)),
        _ => None,
    })
    .await
}

/// The next event of call `id` on `c`, which must be of type `kind`.
async fn expect(c: &Client, id: &str, kind: T) -> v1::CallEvent {
    let ev = next_of(c, id).await;
    assert_eq!(
        ev.r#type(),
        kind,
        "device {} expected {kind:?}, got {ev:?}",
        c.device_id()
    );
    ev
}

/// The next event of call `id` on `c` must be ENDED with `reason`.
async fn expect_ended(c: &Client, id: &str, reason: R) -> v1::CallEvent {
    let ev = expect(c, id, T::Ended).await;
    assert_eq!(ev.reason(), reason, "wrong end reason in {ev:?}");
    ev
}

/// No event of call `id` arrives at `c` within [`QUIET`] (other events are skipped).
async fn quiet(c: &Client, id: &str) {
    let deadline = Instant::now() + QUIET;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            None => return,
            Some(Event::Call(e)) if id_of(&e) == id => {
                panic!(
                    "device {} must get nothing of {id}, got {e:?}",
                    c.device_id()
                )
            }
            Some(_) => {}
        }
    }
}

/// No event of call `id` is queued at `c` now (what arrived so far is drained).
fn nothing_queued(c: &Client, id: &str) {
    while let Some(ev) = c.try_recv() {
        if let Event::Call(e) = ev {
            assert_ne!(
                id_of(&e),
                id,
                "device {} must get nothing of {id}, got {e:?}",
                c.device_id()
            );
        }
    }
}

/// The one history entry of call `id` in `conversation`, as `c` reads it (polled: it is
/// written after the call ends).
async fn call_log(c: &Client, conversation: &ConversationId, id: &str) -> v1::Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = c
            .history(conversation, Seq::ZERO, 100)
            .await
            .expect("history");
        let found: Vec<v1::Message> = page
            .messages
            .into_iter()
            .filter(|m| m.call.as_ref().is_some_and(|l| l.call_id == id))
            .collect();
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "one history entry per call: {found:?}");
            let m = found.into_iter().next().expect("one");
            assert_eq!(m.kind(), v1::MessageKind::Call, "{m:?}");
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no history entry for call {id} in {}",
            conversation.as_str()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log(m: &v1::Message) -> &v1::CallLog {
    m.call.as_ref().expect("a call entry carries its CallLog")
}

/// A one-to-one call from `a` to `to`, with the fake offer.
async fn ring(a: &Client, to: UserId, media: v1::CallMedia) -> v1::CallInfo {
    let call = a
        .start_call(to, media, Some(OFFER.into()))
        .await
        .expect("start_call");
    assert_eq!(call.state(), v1::CallState::Ringing, "{call:?}");
    call
}

/// A second device of `s`'s user, connected.
async fn second(server: &Server, s: &Session, name: &str) -> Client {
    let other = server.login(&s.username, name).await;
    server.device(&other).await
}

/// Ann with one device; Bob with two.
struct Pair {
    ann: Session,
    bob: Session,
    a: Client,
    b1: Client,
    b2: Client,
}

impl Pair {
    async fn new(server: &Server) -> Pair {
        let ann = server.user("ann").await;
        let bob = server.user("bob").await;
        let a = server.device(&ann).await;
        let b1 = server.device(&bob).await;
        let b2 = second(server, &bob, "device-2").await;
        Pair {
            ann,
            bob,
            a,
            b1,
            b2,
        }
    }

    fn conv(&self) -> ConversationId {
        conv(self.ann.user_id, self.bob.user_id)
    }

    /// Ann calls Bob; both of Bob's devices ring; b1 answers. Returns the call id.
    async fn answered(&self) -> String {
        let call = ring(&self.a, self.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        expect(&self.b1, &id, T::Ringing).await;
        expect(&self.b2, &id, T::Ringing).await;
        let mine = self
            .b1
            .answer_call(&id, Some(ANSWER.into()))
            .await
            .expect("answer");
        assert_eq!(mine.state(), v1::CallState::Active);
        expect(&self.a, &id, T::Answered).await;
        expect_ended(&self.b2, &id, R::AnsweredElsewhere).await;
        id
    }
}

// 1. Ringing on every online device; an offline device finds the missed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rings_every_online_device_and_an_offline_one_finds_the_missed_call() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_RING_TIMEOUT_S", "1")]).await;
        let p = Pair::new(&server).await;
        // A third device of Bob's, logged in but not connected.
        let b3_session = server.login(&p.bob.username, "device-3").await;

        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Video).await;
        let id = call.call_id.clone();
        assert_eq!(call.caller_user, p.ann.user_id.get());
        assert_eq!(call.caller_device, p.a.device_id().get());
        assert_eq!(call.media(), v1::CallMedia::Video);
        assert_eq!(call.conversation_id, p.conv().as_str());
        assert!(!call.group);
        assert_eq!(devices(&call), [me(&p.a)], "only the caller is in it yet");
        assert_eq!(call.answered_at_ms, 0);

        for b in [&p.b1, &p.b2] {
            let ev = expect(b, &id, T::Ringing).await;
            let d = ev.description.as_ref().expect("the ring carries the offer");
            assert_eq!(d.r#type(), v1::SdpType::Offer);
            assert_eq!(d.sdp, OFFER);
            assert_eq!(ev.from_user, p.ann.user_id.get());
            assert_eq!(ev.from_device, p.a.device_id().get());
            let c = info(&ev);
            assert_eq!(c.state(), v1::CallState::Ringing);
            assert_eq!(c.caller_user, p.ann.user_id.get());
            assert_eq!(c.caller_device, p.a.device_id().get());
            assert_eq!(c.media(), v1::CallMedia::Video);
            assert_eq!(c.conversation_id, p.conv().as_str());
        }

        // Nobody answers: it ends for everyone.
        expect_ended(&p.a, &id, R::NoAnswer).await;
        expect_ended(&p.b1, &id, R::NoAnswer).await;
        expect_ended(&p.b2, &id, R::NoAnswer).await;

        // The offline device connects: no ring, but the missed call is in its sync and
        // in the history.
        let b3 = server.device(&b3_session).await;
        let entry = call_log(&b3, &p.conv(), &id).await;
        let synced = sync_collect(&b3, WAIT).await;
        let in_sync: Vec<&v1::Message> = synced
            .iter()
            .filter(|m| m.call.as_ref().is_some_and(|l| l.call_id == id))
            .collect();
        assert_eq!(
            in_sync.len(),
            1,
            "the missed call is synced once: {synced:?}"
        );
        assert_eq!(in_sync[0].seq, entry.seq);
        assert_eq!(entry.sender_user, p.ann.user_id.get(), "from the caller");
        let l = log(&entry);
        assert!(l.missed, "{l:?}");
        assert_eq!(l.reason(), R::NoAnswer);
        assert_eq!(l.media(), v1::CallMedia::Video);
        assert_eq!(l.duration_ms, 0);
        assert!(!l.group);
        quiet(&b3, &id).await;
    })
    .await;
}

// 2. Answered on one device; the other stops ringing and cannot answer any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_on_one_device_ends_the_ring_elsewhere() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        // Ann's second device sees that she is in a call, and its end.
        let a2 = second(&server, &p.ann, "device-2").await;

        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        let busy_elsewhere = expect(&a2, &id, T::Signal).await;
        assert!(busy_elsewhere.description.is_none() && busy_elsewhere.candidate.is_none());
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;

        let mine =
            p.b1.answer_call(&id, Some(ANSWER.into()))
                .await
                .expect("answer");
        assert_eq!(mine.state(), v1::CallState::Active);
        assert!(mine.answered_at_ms > 0);
        assert_eq!(devices(&mine), [me(&p.a), me(&p.b1)]);

        let ev = expect(&p.a, &id, T::Answered).await;
        assert_eq!(ev.from_device, p.b1.device_id().get());
        assert_eq!(ev.from_user, p.bob.user_id.get());
        let d = ev.description.as_ref().expect("the answer SDP");
        assert_eq!(d.r#type(), v1::SdpType::Answer);
        assert_eq!(d.sdp, ANSWER);
        assert_eq!(info(&ev).state(), v1::CallState::Active);

        expect_ended(&p.b2, &id, R::AnsweredElsewhere).await;

        // The other device is too late, in every way.
        let late = p.b2.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);
        assert_eq!(refusal(p.b2.decline_call(&id).await), ErrorCode::CallEnded);
        assert_eq!(refusal(p.b2.hangup_call(&id).await), ErrorCode::CallEnded);
        // The answering device answering again gets the call back.
        let again = p.b1.answer_call(&id, Some(ANSWER.into())).await.unwrap();
        assert_eq!(again.state(), v1::CallState::Active);
        assert_eq!(devices(&again), [me(&p.a), me(&p.b1)]);
        quiet(&p.a, &id).await;

        p.a.hangup_call(&id).await.expect("hang up");
        expect_ended(&p.b1, &id, R::Hangup).await;
        expect_ended(&a2, &id, R::Hangup).await;
        quiet(&p.b2, &id).await;
    })
    .await;
}

// 3. Declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_ends_for_the_caller_and_the_other_devices() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Video).await;
        let id = call.call_id.clone();
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;

        let mine = p.b1.decline_call(&id).await.expect("decline");
        assert_eq!(mine.state(), v1::CallState::Ended);
        assert_eq!(mine.end_reason(), R::Declined);

        let ev = expect_ended(&p.a, &id, R::Declined).await;
        assert_eq!(info(&ev).state(), v1::CallState::Ended);
        expect_ended(&p.b2, &id, R::DeclinedElsewhere).await;

        // It is over: nobody can answer it or signal in it.
        let late = p.b2.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);
        let late = p.a.call_signal(&id, 0, None, candidate("c")).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);
        assert_eq!(refusal(p.a.hangup_call(&id).await), ErrorCode::CallEnded);

        let entry = call_log(&p.b2, &p.conv(), &id).await;
        let l = log(&entry);
        assert!(l.missed, "{l:?}");
        assert_eq!(l.reason(), R::Declined);
        assert_eq!(l.duration_ms, 0);
        quiet(&p.b1, &id).await;
    })
    .await;
}

// 4. Busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_someone_in_a_call_is_busy_at_once() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let carol = server.user("carol").await;
        let c = server.device(&carol).await;
        let a2 = second(&server, &p.ann, "device-2").await;

        // Carol and Bob are in a call.
        let first = ring(&c, p.bob.user_id, v1::CallMedia::Voice).await;
        expect(&p.b1, &first.call_id, T::Ringing).await;
        expect(&p.b2, &first.call_id, T::Ringing).await;
        p.b1.answer_call(&first.call_id, Some(ANSWER.into()))
            .await
            .unwrap();
        expect(&c, &first.call_id, T::Answered).await;
        expect_ended(&p.b2, &first.call_id, R::AnsweredElsewhere).await;

        // Ann calls Bob: busy, at once.
        let busy =
            p.a.start_call(p.bob.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
                .await
                .expect("start_call");
        assert_eq!(busy.state(), v1::CallState::Ended, "{busy:?}");
        assert_eq!(busy.end_reason(), R::Busy);
        quiet(&p.b1, &busy.call_id).await;
        nothing_queued(&p.b2, &busy.call_id);
        // Ann has the reply; neither of her devices gets a push for a call that never
        // started.
        nothing_queued(&p.a, &busy.call_id);
        nothing_queued(&a2, &busy.call_id);

        // Ann is free again (the busy call did not keep her): she can call Carol... who
        // is busy too, and starting a call while in one is a conflict.
        let to_carol =
            p.a.start_call(carol.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
                .await
                .unwrap();
        assert_eq!(to_carol.end_reason(), R::Busy);
        let second = c
            .start_call(p.ann.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
            .await;
        assert_eq!(refusal(second), ErrorCode::Conflict);

        let entry = call_log(&p.a, &p.conv(), &busy.call_id).await;
        let l = log(&entry);
        assert!(l.missed);
        assert_eq!(l.reason(), R::Busy);
        assert_eq!(entry.sender_user, p.ann.user_id.get());

        // Carol and Bob's call is untouched.
        p.b1.call_signal(&first.call_id, 0, None, candidate("still here"))
            .await
            .unwrap();
        let ev = expect(&c, &first.call_id, T::Signal).await;
        assert_eq!(ev.candidate.unwrap().candidate, "still here");
    })
    .await;
}

// 5. No answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_answers_it_ends_with_no_answer_everywhere() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_RING_TIMEOUT_S", "1")]).await;
        let p = Pair::new(&server).await;
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;
        let ev = expect_ended(&p.a, &id, R::NoAnswer).await;
        assert_eq!(info(&ev).state(), v1::CallState::Ended);
        assert_eq!(info(&ev).end_reason(), R::NoAnswer);
        expect_ended(&p.b1, &id, R::NoAnswer).await;
        expect_ended(&p.b2, &id, R::NoAnswer).await;

        let late = p.b1.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);
        let entry = call_log(&p.a, &p.conv(), &id).await;
        assert!(log(&entry).missed);
        assert_eq!(log(&entry).reason(), R::NoAnswer);

        // Both are free: a new call rings.
        let next = ring(&p.b2, p.ann.user_id, v1::CallMedia::Voice).await;
        expect(&p.a, &next.call_id, T::Ringing).await;
    })
    .await;
}

// 6. Cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_hanging_up_while_ringing_cancels() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        // Placed by the direct conversation's id rather than the user's.
        let call =
            p.a.start_call(&p.conv(), v1::CallMedia::Voice, Some(OFFER.into()))
                .await
                .expect("start_call");
        assert_eq!(call.state(), v1::CallState::Ringing);
        assert_eq!(call.conversation_id, p.conv().as_str());
        let id = call.call_id.clone();
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;

        let mine = p.a.hangup_call(&id).await.expect("hang up");
        assert_eq!(mine.state(), v1::CallState::Ended);
        assert_eq!(mine.end_reason(), R::Cancelled);
        expect_ended(&p.b1, &id, R::Cancelled).await;
        expect_ended(&p.b2, &id, R::Cancelled).await;

        let late = p.b1.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);
        let entry = call_log(&p.b1, &p.conv(), &id).await;
        assert!(log(&entry).missed);
        assert_eq!(log(&entry).reason(), R::Cancelled);
    })
    .await;
}

// 7. Hung up, from either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_hangs_up_an_answered_call() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;

        // The caller hangs up.
        let id = p.answered().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mine = p.a.hangup_call(&id).await.expect("hang up");
        assert_eq!(mine.state(), v1::CallState::Ended);
        assert_eq!(mine.end_reason(), R::Hangup);
        assert!(mine.duration_ms > 0, "{mine:?}");
        let ev = expect_ended(&p.b1, &id, R::Hangup).await;
        assert_eq!(info(&ev).state(), v1::CallState::Ended);
        let entry = call_log(&p.a, &p.conv(), &id).await;
        let l = log(&entry);
        assert!(!l.missed, "{l:?}");
        assert_eq!(l.reason(), R::Hangup);
        assert!(l.duration_ms > 0, "{l:?}");
        assert_eq!(l.participants, 2);
        assert_eq!(
            refusal(p.b1.hangup_call(&id).await),
            ErrorCode::CallEnded,
            "hanging up twice"
        );
        quiet(&p.b2, &id).await;

        // The callee hangs up.
        let id = p.answered().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mine = p.b1.hangup_call(&id).await.expect("hang up");
        assert_eq!(mine.state(), v1::CallState::Ended);
        assert_eq!(mine.end_reason(), R::Hangup);
        expect_ended(&p.a, &id, R::Hangup).await;
        let entry = call_log(&p.b2, &p.conv(), &id).await;
        let l = log(&entry);
        assert!(!l.missed);
        assert_eq!(l.reason(), R::Hangup);
        assert!(l.duration_ms > 0);
        assert_eq!(l.participants, 2);
        assert_eq!(entry.sender_user, p.ann.user_id.get(), "from the caller");
    })
    .await;
}

// The documented contract of ENDED: "everyone still in or ringing for the call (but the
// device whose request ended it, which has the reply)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_that_ends_a_call_gets_the_reply_not_a_push() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;

        let id = p.answered().await;
        p.a.hangup_call(&id).await.unwrap();
        expect_ended(&p.b1, &id, R::Hangup).await;
        quiet(&p.a, &id).await;

        let id = p.answered().await;
        p.b1.hangup_call(&id).await.unwrap();
        expect_ended(&p.a, &id, R::Hangup).await;
        quiet(&p.b1, &id).await;

        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        expect(&p.b1, &call.call_id, T::Ringing).await;
        p.a.hangup_call(&call.call_id).await.unwrap();
        expect_ended(&p.b1, &call.call_id, R::Cancelled).await;
        quiet(&p.a, &call.call_id).await;
    })
    .await;
}

// 8a. Dropped: a side's connection dies and stays away past the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_past_the_grace_drops_the_call() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_DROP_GRACE_MS", "500")]).await;
        let p = Pair::new(&server).await;
        let id = p.answered().await;
        let b1_device = p.b1.device_id().get();
        let Pair { a, b1, b2, bob, .. } = p;
        b1.close();
        let lost = expect(&a, &id, T::PeerLost).await;
        assert_eq!(lost.from_device, b1_device);
        let ev = expect_ended(&a, &id, R::Dropped).await;
        assert_eq!(info(&ev).state(), v1::CallState::Ended);
        let entry = call_log(&a, &conv(a.user_id(), b2.user_id()), &id).await;
        assert!(!log(&entry).missed);
        assert_eq!(log(&entry).reason(), R::Dropped);
        let late = a.call_signal(&id, 0, None, candidate("c")).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);
        // The dropped device, back, finds it over (and in the history).
        let b1 = server.device(&bob).await;
        let theirs = call_log(&b1, &conv(a.user_id(), bob.user_id), &id).await;
        assert_eq!(theirs.seq, entry.seq);
        assert_eq!(refusal(b1.hangup_call(&id).await), ErrorCode::CallEnded);
        let late = b1.call_signal(&id, 0, None, candidate("c")).await;
        assert_eq!(refusal(late), ErrorCode::CallEnded);

        // The caller's connection dies while it rings: the callee stops ringing.
        let dan = server.user("dan").await;
        let d = server.device(&dan).await;
        let call = ring(&d, b2.user_id(), v1::CallMedia::Voice).await;
        expect(&b2, &call.call_id, T::Ringing).await;
        d.close();
        expect_ended(&b2, &call.call_id, R::Dropped).await;
    })
    .await;
}

// 8b. Back within the grace: the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_back_within_the_grace_keeps_the_call() {
    bounded(TEST_S, async {
        let grace = Duration::from_millis(2000);
        let server = Server::start_with(&[("NATTER_CALL_DROP_GRACE_MS", "2000")]).await;
        let p = Pair::new(&server).await;
        let id = p.answered().await;
        let Pair { a, b1, bob, .. } = p;
        let b1_device = b1.device_id().get();
        b1.close();
        let lost = expect(&a, &id, T::PeerLost).await;
        let lost_at = Instant::now();
        assert_eq!(lost.from_device, b1_device);

        let b1 = server.device(&bob).await;
        assert_eq!(b1.device_id().get(), b1_device, "the same device");
        let back = expect(&a, &id, T::PeerBack).await;
        assert_eq!(back.from_device, b1_device);

        // Past the grace, the call is still up both ways.
        tokio::time::sleep_until(lost_at + grace + Duration::from_millis(500)).await;
        a.call_signal(&id, 0, None, candidate("after the grace"))
            .await
            .expect("the call is still up");
        let ev = expect(&b1, &id, T::Signal).await;
        assert_eq!(ev.candidate.unwrap().candidate, "after the grace");
        b1.call_signal(&id, 0, None, candidate("and back"))
            .await
            .unwrap();
        let ev = expect(&a, &id, T::Signal).await;
        assert_eq!(ev.candidate.unwrap().candidate, "and back");

        // A reconnect (new connection first, then the old one closes, in whatever order
        // the server hears of them) keeps the call past the grace too.
        b1.reconnect().await.expect("reconnect");
        let reconnected_at = Instant::now();
        tokio::time::sleep_until(reconnected_at + grace + Duration::from_millis(500)).await;
        a.call_signal(&id, 0, None, candidate("after the reconnect"))
            .await
            .expect("the call is still up");
        let ev = next_matching(&b1, WAIT, |ev| match ev {
            Event::Call(e) if e.r#type() == T::Signal => Some(v1::CallEvent::clone(e)),
            Event::Call(e) => panic!("unexpected {e:?}"),
            _ => None,
        })
        .await;
        assert_eq!(ev.candidate.unwrap().candidate, "after the reconnect");
        // Ann may have seen the old connection go and the new one come, but not an end.
        while let Some(ev) = a.try_recv() {
            if let Event::Call(e) = ev {
                assert!(
                    matches!(e.r#type(), T::PeerLost | T::PeerBack),
                    "unexpected {e:?}"
                );
            }
        }

        let mine = b1.hangup_call(&id).await.unwrap();
        assert_eq!(mine.end_reason(), R::Hangup);
        expect_ended(&a, &id, R::Hangup).await;
    })
    .await;
}

// 9. The relay: only between the two devices in the call; early candidates held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_go_only_to_the_answering_device_and_early_candidates_wait() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Video).await;
        let id = call.call_id.clone();
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;

        // Ann trickles candidates before anyone answers; b2 trickles one too (a ringing
        // device may), then b1 answers.
        for n in 1..=3 {
            p.a.call_signal(&id, 0, None, candidate(&format!("ann {n}")))
                .await
                .expect("an early candidate is held");
        }
        p.b1.call_signal(&id, 0, None, candidate("bob early"))
            .await
            .expect("the callee's early candidate is held");
        p.b2.call_signal(&id, 0, None, candidate("b2 early"))
            .await
            .expect("a ringing device's early candidate is held");
        quiet(&p.b1, &id).await;

        p.b1.answer_call(&id, Some(ANSWER.into())).await.unwrap();
        expect(&p.a, &id, T::Answered).await;
        let ev = expect(&p.a, &id, T::Signal).await;
        assert_eq!(ev.from_device, p.b1.device_id().get());
        assert_eq!(ev.candidate.unwrap().candidate, "bob early");
        for n in 1..=3 {
            let ev = expect(&p.b1, &id, T::Signal).await;
            assert_eq!(ev.from_device, p.a.device_id().get());
            assert_eq!(ev.from_user, p.ann.user_id.get());
            let c = ev.candidate.expect("a candidate");
            assert_eq!(c.candidate, format!("ann {n}"), "in order");
            assert_eq!(c.sdp_mid, "0");
            assert_eq!(c.username_fragment, "ufrag");
        }
        expect_ended(&p.b2, &id, R::AnsweredElsewhere).await;

        // After the answer: to b1 only, both ways, by 0 or by the device id.
        p.a.call_signal(&id, 0, None, candidate("ann 4"))
            .await
            .unwrap();
        p.a.call_signal(&id, p.b1.device_id().get(), None, candidate("ann 5"))
            .await
            .unwrap();
        for n in 4..=5 {
            let ev = expect(&p.b1, &id, T::Signal).await;
            assert_eq!(ev.candidate.unwrap().candidate, format!("ann {n}"));
        }
        // End of candidates (empty) is relayed too.
        p.a.call_signal(&id, 0, None, candidate("")).await.unwrap();
        let ev = expect(&p.b1, &id, T::Signal).await;
        assert_eq!(ev.candidate.unwrap().candidate, "");
        // b2 is not in the call: it cannot be named, and cannot send.
        let to_b2 =
            p.a.call_signal(&id, p.b2.device_id().get(), None, candidate("x"))
                .await;
        assert_eq!(refusal(to_b2), ErrorCode::InvalidArgument);
        let from_b2 = p.b2.call_signal(&id, 0, None, candidate("x")).await;
        assert_eq!(refusal(from_b2), ErrorCode::Forbidden);
        // Naming yourself is not another device in the call.
        let to_self =
            p.a.call_signal(&id, p.a.device_id().get(), None, candidate("x"))
                .await;
        assert_eq!(refusal(to_self), ErrorCode::InvalidArgument);
        // Neither a description nor a candidate.
        let empty = p.a.call_signal(&id, 0, None, None).await;
        assert_eq!(refusal(empty), ErrorCode::InvalidArgument);
        quiet(&p.b2, &id).await;
        quiet(&p.b1, &id).await;
        quiet(&p.a, &id).await;
    })
    .await;
}

// 10. Renegotiation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renegotiation_offers_and_answers_are_relayed() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        // Not before the answer.
        let early =
            p.a.call_signal(&id, 0, sdp(v1::SdpType::Offer, "v=0 too early"), None)
                .await;
        assert_eq!(refusal(early), ErrorCode::InvalidArgument);
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;
        p.b1.answer_call(&id, Some(ANSWER.into())).await.unwrap();
        expect(&p.a, &id, T::Answered).await;
        expect_ended(&p.b2, &id, R::AnsweredElsewhere).await;

        p.a.call_signal(&id, 0, sdp(v1::SdpType::Offer, "v=0 video on"), None)
            .await
            .unwrap();
        let ev = expect(&p.b1, &id, T::Signal).await;
        let d = ev.description.expect("the offer");
        assert_eq!(d.r#type(), v1::SdpType::Offer);
        assert_eq!(d.sdp, "v=0 video on");
        assert!(ev.candidate.is_none());
        assert_eq!(ev.from_device, p.a.device_id().get());

        p.b1.call_signal(&id, 0, sdp(v1::SdpType::Answer, "v=0 video ok"), None)
            .await
            .unwrap();
        let ev = expect(&p.a, &id, T::Signal).await;
        let d = ev.description.expect("the answer");
        assert_eq!(d.r#type(), v1::SdpType::Answer);
        assert_eq!(d.sdp, "v=0 video ok");
        assert_eq!(ev.from_device, p.b1.device_id().get());

        // A description must have a type and some SDP.
        let untyped =
            p.a.call_signal(&id, 0, sdp(v1::SdpType::Unspecified, "v=0"), None)
                .await;
        assert_eq!(refusal(untyped), ErrorCode::InvalidArgument);
        let empty =
            p.a.call_signal(&id, 0, sdp(v1::SdpType::Offer, ""), None)
                .await;
        assert_eq!(refusal(empty), ErrorCode::InvalidArgument);
        quiet(&p.b2, &id).await;
    })
    .await;
}

// 11. Only the call's members; bad targets and ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_bad_requests_are_refused() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let carol = server.user("carol").await;
        let c = server.device(&carol).await;

        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        expect(&p.b1, &id, T::Ringing).await;

        for round in ["ringing", "active"] {
            let s = c.call_signal(&id, 0, None, candidate("x")).await;
            assert_eq!(refusal(s), ErrorCode::Forbidden, "signal while {round}");
            let s = c
                .call_signal(&id, p.a.device_id().get(), None, candidate("x"))
                .await;
            assert_eq!(refusal(s), ErrorCode::Forbidden, "signal while {round}");
            let a = c.answer_call(&id, Some(ANSWER.into())).await;
            assert_eq!(refusal(a), ErrorCode::Forbidden, "answer while {round}");
            let h = c.hangup_call(&id).await;
            assert_eq!(refusal(h), ErrorCode::CallEnded, "hangup while {round}");
            let d = c.decline_call(&id).await;
            assert_eq!(refusal(d), ErrorCode::CallEnded, "decline while {round}");
            if round == "ringing" {
                p.b1.answer_call(&id, Some(ANSWER.into())).await.unwrap();
                expect(&p.a, &id, T::Answered).await;
            }
        }
        // None of it reached the call.
        quiet(&p.a, &id).await;
        quiet(&p.b1, &id).await;
        p.a.call_signal(&id, 0, None, candidate("fine"))
            .await
            .unwrap();
        assert_eq!(
            expect(&p.b1, &id, T::Signal)
                .await
                .candidate
                .unwrap()
                .candidate,
            "fine"
        );

        // A direct conversation Carol is not in.
        let other = c
            .call(v1::call_request::Op::Start(v1::CallStart {
                call_id: "carol-in-theirs".into(),
                conversation_id: p.conv().as_str().to_owned(),
                media: v1::CallMedia::Voice as i32,
                offer: sdp(v1::SdpType::Offer, OFFER),
                ..Default::default()
            }))
            .await;
        assert_eq!(refusal(other), ErrorCode::Forbidden);

        // A group Carol is not in.
        let group =
            p.a.create_group("no carol", &[p.bob.user_id])
                .await
                .unwrap();
        let g: ConversationId = group.conversation_id.parse().unwrap();
        let not_member = c.start_call(&g, v1::CallMedia::Voice, None).await;
        assert_eq!(refusal(not_member), ErrorCode::Forbidden);

        // Nobody, yourself.
        let nobody = c
            .start_call(
                UserId(999_999_999),
                v1::CallMedia::Voice,
                Some(OFFER.into()),
            )
            .await;
        assert_eq!(refusal(nobody), ErrorCode::NotFound);
        let myself = c
            .start_call(carol.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
            .await;
        assert_eq!(refusal(myself), ErrorCode::InvalidArgument);

        // Malformed call ids, on every op.
        for bad in [
            "short",
            "has space in it",
            "semi;colon!",
            &"x".repeat(65),
            "",
        ] {
            let start = c
                .call(v1::call_request::Op::Start(v1::CallStart {
                    call_id: bad.to_owned(),
                    to_user: p.ann.user_id.get(),
                    media: v1::CallMedia::Voice as i32,
                    offer: sdp(v1::SdpType::Offer, OFFER),
                    ..Default::default()
                }))
                .await;
            assert_eq!(refusal(start), ErrorCode::InvalidArgument, "start {bad:?}");
            let answer = c.answer_call(bad, Some(ANSWER.into())).await;
            assert_eq!(
                refusal(answer),
                ErrorCode::InvalidArgument,
                "answer {bad:?}"
            );
            let hangup = c.hangup_call(bad).await;
            assert_eq!(
                refusal(hangup),
                ErrorCode::InvalidArgument,
                "hangup {bad:?}"
            );
            let signal = c.call_signal(bad, 0, None, candidate("x")).await;
            assert_eq!(
                refusal(signal),
                ErrorCode::InvalidArgument,
                "signal {bad:?}"
            );
        }
        // A well-formed id of no call.
        let none = c.hangup_call("no-such-call-here").await;
        assert_eq!(refusal(none), ErrorCode::CallEnded);

        // A one-to-one call needs an offer; an answer needs an answer.
        let no_offer = c
            .start_call(p.ann.user_id, v1::CallMedia::Voice, None)
            .await;
        assert_eq!(refusal(no_offer), ErrorCode::InvalidArgument);
        let wrong_kind = c
            .call(v1::call_request::Op::Start(v1::CallStart {
                call_id: "answer-as-offer".into(),
                to_user: p.bob.user_id.get(),
                media: v1::CallMedia::Voice as i32,
                offer: sdp(v1::SdpType::Answer, OFFER),
                ..Default::default()
            }))
            .await;
        assert_eq!(refusal(wrong_kind), ErrorCode::InvalidArgument);
        // An SDP over 32 KiB; an unknown media.
        let huge = c
            .start_call(
                p.bob.user_id,
                v1::CallMedia::Voice,
                Some("v".repeat(32 * 1024 + 1)),
            )
            .await;
        assert_eq!(refusal(huge), ErrorCode::InvalidArgument);
        let odd_media = c
            .call(v1::call_request::Op::Start(v1::CallStart {
                call_id: "odd-media-call".into(),
                to_user: p.bob.user_id.get(),
                media: 99,
                offer: sdp(v1::SdpType::Offer, OFFER),
                ..Default::default()
            }))
            .await;
        assert_eq!(refusal(odd_media), ErrorCode::InvalidArgument);
        nothing_queued(&p.b2, "odd-media-call");
        // None of the refused starts made a call or rang anyone.
        quiet(&p.b2, "carol-in-theirs").await;
        nothing_queued(&p.b2, "answer-as-offer");
    })
    .await;
}

// 12. Blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_caller_rings_nobody_and_a_blocker_cannot_call() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_RING_TIMEOUT_S", "1")]).await;
        let p = Pair::new(&server).await;
        p.b1.block(p.ann.user_id).await.expect("block");

        // Ann is not told: the call rings (as far as she knows) and ends unanswered.
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        expect_ended(&p.a, &id, R::NoAnswer).await;
        nothing_queued(&p.b1, &id);
        nothing_queued(&p.b2, &id);
        quiet(&p.b1, &id).await;
        // Nor can a device of Bob's answer it while it "rang".
        let answer = p.b2.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(answer), ErrorCode::CallEnded);
        // Ann's history has the unanswered call; Bob's keeps only its place (withheld,
        // as a blocked sender's messages are).
        let entry = call_log(&p.a, &p.conv(), &id).await;
        assert!(log(&entry).missed);
        assert_eq!(log(&entry).reason(), R::NoAnswer);
        let page = p.b1.history(&p.conv(), Seq::ZERO, 100).await.unwrap();
        let theirs = page
            .messages
            .iter()
            .find(|m| m.seq == entry.seq)
            .expect("Bob's history holds the entry's place");
        assert!(theirs.withheld, "withheld from the blocker: {theirs:?}");
        assert!(theirs.call.is_none(), "{theirs:?}");

        // Bob blocked Ann: Bob cannot call Ann.
        let blocker =
            p.b1.start_call(p.ann.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
                .await;
        assert_eq!(refusal(blocker), ErrorCode::Forbidden);

        // Unblocked: it rings again.
        p.b1.unblock(p.ann.user_id).await.expect("unblock");
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        expect(&p.b1, &call.call_id, T::Ringing).await;
        expect(&p.b2, &call.call_id, T::Ringing).await;
    })
    .await;
}

// 13. Group calls: a mesh of the members who join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_call_mesh_join_signal_leave_and_end() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let carol = server.user("carol").await;
        let dan = server.user("dan").await;
        let c = server.device(&carol).await;
        let d = server.device(&dan).await;
        let group =
            p.a.create_group("call us", &[p.bob.user_id, carol.user_id, dan.user_id])
                .await
                .unwrap();
        let g: ConversationId = group.conversation_id.parse().unwrap();

        // A group call has no offer.
        let with_offer =
            p.a.start_call(&g, v1::CallMedia::Video, Some(OFFER.into()))
                .await;
        assert_eq!(refusal(with_offer), ErrorCode::InvalidArgument);

        let call =
            p.a.start_call(&g, v1::CallMedia::Video, None)
                .await
                .expect("group call");
        let id = call.call_id.clone();
        assert!(call.group);
        assert_eq!(call.state(), v1::CallState::Ringing);
        assert_eq!(call.conversation_id, g.as_str());
        for x in [&p.b1, &p.b2, &c, &d] {
            let ev = expect(x, &id, T::Ringing).await;
            assert!(ev.description.is_none(), "no offer in a group ring");
            assert!(info(&ev).group);
            assert_eq!(info(&ev).caller_user, p.ann.user_id.get());
        }

        // Bob joins.
        let mine = p.b1.answer_call(&id, None).await.expect("join");
        assert_eq!(mine.state(), v1::CallState::Active);
        assert_eq!(devices(&mine), [me(&p.a), me(&p.b1)]);
        let ev = expect(&p.a, &id, T::Answered).await;
        assert_eq!(ev.from_device, p.b1.device_id().get());
        assert!(ev.description.is_none());
        expect_ended(&p.b2, &id, R::AnsweredElsewhere).await;
        // Bob's other device cannot join too; joining takes no SDP.
        let twice = p.b2.answer_call(&id, None).await;
        assert_eq!(refusal(twice), ErrorCode::Conflict);
        let with_sdp = c.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(with_sdp), ErrorCode::InvalidArgument);

        // Dan declines: only he stops ringing.
        let declined = d.decline_call(&id).await.expect("decline");
        assert_eq!(declined.state(), v1::CallState::Active);
        quiet(&p.a, &id).await;

        // Carol joins: everyone already in hears it, and she gets the participants.
        let mine = c.answer_call(&id, None).await.expect("join");
        assert_eq!(devices(&mine), [me(&p.a), me(&p.b1), me(&c)]);
        for x in [&p.a, &p.b1] {
            let ev = expect(x, &id, T::Answered).await;
            assert_eq!(ev.from_device, c.device_id().get());
            assert_eq!(ev.from_user, carol.user_id.get());
            assert_eq!(devices(info(&ev)).len(), 3);
        }

        // Carol offers to Ann's device: Ann gets it, Bob does not.
        c.call_signal(
            &id,
            p.a.device_id().get(),
            sdp(v1::SdpType::Offer, "v=0 carol to ann"),
            None,
        )
        .await
        .unwrap();
        let ev = expect(&p.a, &id, T::Signal).await;
        assert_eq!(ev.from_device, c.device_id().get());
        assert_eq!(ev.description.unwrap().sdp, "v=0 carol to ann");
        p.a.call_signal(
            &id,
            c.device_id().get(),
            sdp(v1::SdpType::Answer, "v=0 ann to carol"),
            None,
        )
        .await
        .unwrap();
        let ev = expect(&c, &id, T::Signal).await;
        assert_eq!(ev.from_device, p.a.device_id().get());
        assert_eq!(ev.description.unwrap().sdp, "v=0 ann to carol");
        quiet(&p.b1, &id).await;
        // In a group call the target must be named, and be in the call.
        let unnamed = c.call_signal(&id, 0, None, candidate("x")).await;
        assert_eq!(refusal(unnamed), ErrorCode::InvalidArgument);
        let outside = c
            .call_signal(&id, p.b2.device_id().get(), None, candidate("x"))
            .await;
        assert_eq!(refusal(outside), ErrorCode::InvalidArgument);
        let from_dan = d
            .call_signal(&id, p.a.device_id().get(), None, candidate("x"))
            .await;
        assert_eq!(refusal(from_dan), ErrorCode::Forbidden);

        // Bob leaves: the others hear it, the call goes on.
        let left = p.b1.hangup_call(&id).await.expect("leave");
        assert_eq!(left.state(), v1::CallState::Ended, "ended for Bob");
        for x in [&p.a, &c] {
            let ev = expect(x, &id, T::Left).await;
            assert_eq!(ev.from_device, p.b1.device_id().get());
            assert_eq!(devices(info(&ev)), [me(&p.a), me(&c)]);
        }
        c.call_signal(&id, p.a.device_id().get(), None, candidate("still on"))
            .await
            .expect("the call goes on");
        let ev = expect(&p.a, &id, T::Signal).await;
        assert_eq!(ev.candidate.unwrap().candidate, "still on");
        let gone =
            p.a.call_signal(&id, p.b1.device_id().get(), None, candidate("x"))
                .await;
        assert_eq!(
            refusal(gone),
            ErrorCode::InvalidArgument,
            "Bob is not in it"
        );

        // Carol leaves: Ann is alone, the call ends.
        let mine = c.hangup_call(&id).await.expect("leave");
        assert_eq!(mine.state(), v1::CallState::Ended);
        assert_eq!(mine.end_reason(), R::Hangup);
        expect_ended(&p.a, &id, R::Hangup).await;
        let entry = call_log(&d, &g, &id).await;
        let l = log(&entry);
        assert!(l.group);
        assert!(!l.missed);
        assert_eq!(l.reason(), R::Hangup);
        assert_eq!(l.participants, 3);
        assert_eq!(l.media(), v1::CallMedia::Video);
        assert_eq!(entry.sender_user, p.ann.user_id.get());
    })
    .await;
}

/// Carol (registered, one device) and a group of Ann, Bob and Carol named `name`, in
/// which Ann has started a voice call: (Carol's device, the group, the call id).
async fn group_voice_call(
    server: &Server,
    p: &Pair,
    name: &str,
) -> (Client, ConversationId, String) {
    let carol = server.user("carol").await;
    let c = server.device(&carol).await;
    let group =
        p.a.create_group(name, &[p.bob.user_id, carol.user_id])
            .await
            .unwrap();
    let g: ConversationId = group.conversation_id.parse().unwrap();
    let call =
        p.a.start_call(&g, v1::CallMedia::Voice, None)
            .await
            .unwrap();
    (c, g, call.call_id)
}

// 13b. Members still ringing when the ring timeout passes stop ringing; the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_still_ringing_stop_at_the_ring_timeout() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_RING_TIMEOUT_S", "2")]).await;
        let p = Pair::new(&server).await;
        let (c, _, id) = group_voice_call(&server, &p, "slow carol").await;
        expect(&p.b1, &id, T::Ringing).await;
        p.b1.answer_call(&id, None).await.expect("join");
        expect(&p.a, &id, T::Answered).await;
        expect(&c, &id, T::Ringing).await;
        expect_ended(&c, &id, R::NoAnswer).await;
        let late = c.answer_call(&id, None).await;
        // Carol may still join a call of her group that goes on.
        let joined = late.expect("a member may still join");
        assert_eq!(devices(&joined).len(), 3);
        for x in [&p.a, &p.b1] {
            let ev = expect(x, &id, T::Answered).await;
            assert_eq!(ev.from_device, c.device_id().get());
        }
        p.b1.call_signal(&id, p.a.device_id().get(), None, candidate("on"))
            .await
            .expect("the call goes on");
        assert_eq!(
            expect(&p.a, &id, T::Signal)
                .await
                .candidate
                .unwrap()
                .candidate,
            "on"
        );
    })
    .await;
}

// 13c. The participant limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_call_join_past_the_limit_is_refused() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_MAX_PARTICIPANTS", "2")]).await;
        let p = Pair::new(&server).await;
        let (c, _, id) = group_voice_call(&server, &p, "two at most").await;
        expect(&p.b1, &id, T::Ringing).await;
        expect(&c, &id, T::Ringing).await;
        p.b1.answer_call(&id, None).await.expect("the second fits");
        expect(&p.a, &id, T::Answered).await;
        let third = c.answer_call(&id, None).await;
        assert_eq!(refusal(third), ErrorCode::LimitReached);
        quiet(&p.a, &id).await;

        // Once Bob leaves, the call (Ann alone) ends, and Carol stops ringing.
        p.b1.hangup_call(&id).await.unwrap();
        expect_ended(&p.a, &id, R::Hangup).await;
        expect_ended(&c, &id, R::Hangup).await;
    })
    .await;
}

// 14. Idempotent start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_start_is_the_same_call_and_a_taken_id_conflicts() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let a2 = second(&server, &p.ann, "device-2").await;
        let carol = server.user("carol").await;
        let c = server.device(&carol).await;
        let start = |to: UserId| {
            v1::call_request::Op::Start(v1::CallStart {
                call_id: "fixed-call-id-1".into(),
                to_user: to.get(),
                media: v1::CallMedia::Video as i32,
                offer: sdp(v1::SdpType::Offer, OFFER),
                ..Default::default()
            })
        };
        let first = p.a.call(start(p.bob.user_id)).await.expect("start");
        let again = p.a.call(start(p.bob.user_id)).await.expect("retried start");
        assert_eq!(first, again, "the same call");
        assert_eq!(again.call_id, "fixed-call-id-1");
        assert_eq!(again.state(), v1::CallState::Ringing);
        expect(&p.b1, "fixed-call-id-1", T::Ringing).await;
        quiet(&p.b1, "fixed-call-id-1").await;

        let theirs = c.call(start(p.bob.user_id)).await;
        assert_eq!(refusal(theirs), ErrorCode::Conflict);
        let other_device = a2.call(start(p.bob.user_id)).await;
        assert_eq!(refusal(other_device), ErrorCode::Conflict);

        // Still the same after it ended: the retry gets the outcome.
        p.a.hangup_call("fixed-call-id-1").await.unwrap();
        expect_ended(&p.b1, "fixed-call-id-1", R::Cancelled).await;
        let after = p.a.call(start(p.bob.user_id)).await.expect("retried start");
        assert_eq!(after.state(), v1::CallState::Ended);
        assert_eq!(after.end_reason(), R::Cancelled);
        assert_eq!(after.started_at_ms, first.started_at_ms);
        quiet(&p.b1, "fixed-call-id-1").await;
        let theirs = c.call(start(p.bob.user_id)).await;
        assert_eq!(refusal(theirs), ErrorCode::Conflict);
    })
    .await;
}

// A user is in one call at a time; an answer must be an SDP answer; the caller's other
// devices are not in the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_at_a_time_and_answers_are_checked() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let a2 = second(&server, &p.ann, "device-2").await;
        let dan = server.user("dan").await;
        let d = server.device(&dan).await;

        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;

        // Wrong or missing answers.
        let offer_as_answer =
            p.b1.call(v1::call_request::Op::Answer(v1::CallAnswer {
                call_id: id.clone(),
                answer: sdp(v1::SdpType::Offer, ANSWER),
            }))
            .await;
        assert_eq!(refusal(offer_as_answer), ErrorCode::InvalidArgument);
        let no_answer = p.b1.answer_call(&id, None).await;
        assert_eq!(refusal(no_answer), ErrorCode::InvalidArgument);
        // The caller's other device neither answers nor signals in it.
        let own = a2.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(own), ErrorCode::Forbidden);
        let own = a2.call_signal(&id, 0, None, candidate("x")).await;
        assert_eq!(refusal(own), ErrorCode::Forbidden);
        assert_eq!(refusal(a2.hangup_call(&id).await), ErrorCode::CallEnded);

        // Bob, while it rings, places a call of his own to Dan: he is now in a call, so
        // he cannot answer Ann's, which keeps ringing.
        let to_dan = ring(&p.b2, dan.user_id, v1::CallMedia::Voice).await;
        expect(&d, &to_dan.call_id, T::Ringing).await;
        let answer = p.b1.answer_call(&id, Some(ANSWER.into())).await;
        assert_eq!(refusal(answer), ErrorCode::Conflict);
        // Ann calling Dan meanwhile: Ann is in a call (placing one).
        let second_call =
            p.a.start_call(dan.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
                .await;
        assert_eq!(refusal(second_call), ErrorCode::Conflict);
        quiet(&p.a, &id).await;

        // Bob cancels his; now he can answer Ann's.
        p.b2.hangup_call(&to_dan.call_id).await.unwrap();
        expect_ended(&d, &to_dan.call_id, R::Cancelled).await;
        p.b1.answer_call(&id, Some(ANSWER.into()))
            .await
            .expect("free again, Bob answers");
        let ev = expect(&p.a, &id, T::Answered).await;
        assert_eq!(ev.from_device, p.b1.device_id().get());
        // Dan calling either of them now: busy.
        let busy = d
            .start_call(p.ann.user_id, v1::CallMedia::Voice, Some(OFFER.into()))
            .await
            .unwrap();
        assert_eq!(busy.end_reason(), R::Busy);
        quiet(&p.a, &busy.call_id).await;
    })
    .await;
}

// Before the answer, at most 64 candidates wait per device; all of them are handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_held_before_the_answer_are_capped() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let call = ring(&p.a, p.bob.user_id, v1::CallMedia::Voice).await;
        let id = call.call_id.clone();
        for n in 0..64 {
            p.a.call_signal(&id, 0, None, candidate(&format!("c{n}")))
                .await
                .unwrap_or_else(|e| panic!("candidate {n}: {e}"));
        }
        let over = p.a.call_signal(&id, 0, None, candidate("c64")).await;
        assert_eq!(refusal(over), ErrorCode::LimitReached);
        expect(&p.b2, &id, T::Ringing).await;
        p.b2.answer_call(&id, Some(ANSWER.into())).await.unwrap();
        for n in 0..64 {
            let ev = next_matching(&p.b2, WAIT, |ev| match ev {
                Event::Call(e) if id_of(e) == id && e.r#type() == T::Signal => {
                    Some(v1::CallEvent::clone(e))
                }
                _ => None,
            })
            .await;
            assert_eq!(ev.candidate.unwrap().candidate, format!("c{n}"));
        }
        quiet(&p.b2, &id).await;
        // After the answer there is no cap: they are relayed at once.
        p.a.call_signal(&id, 0, None, candidate("c64"))
            .await
            .unwrap();
        let ev = expect(&p.b2, &id, T::Signal).await;
        assert_eq!(ev.candidate.unwrap().candidate, "c64");
    })
    .await;
}

// A group call everyone declines ends (DECLINED), and is a missed call in the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_everyone_declines_ends() {
    bounded(TEST_S, async {
        let server = Server::start().await;
        let p = Pair::new(&server).await;
        let (c, g, id) = group_voice_call(&server, &p, "nobody home").await;
        expect(&p.b1, &id, T::Ringing).await;
        expect(&p.b2, &id, T::Ringing).await;
        expect(&c, &id, T::Ringing).await;

        // Bob declines: only Bob stops ringing.
        let mine = p.b1.decline_call(&id).await.unwrap();
        assert_eq!(mine.state(), v1::CallState::Ringing);
        expect_ended(&p.b2, &id, R::DeclinedElsewhere).await;
        quiet(&p.a, &id).await;
        nothing_queued(&c, &id);

        // Carol declines (by hanging up while it rings): nobody is left to ring.
        let mine = c.hangup_call(&id).await.unwrap();
        assert_eq!(mine.state(), v1::CallState::Ended);
        assert_eq!(mine.end_reason(), R::Declined);
        expect_ended(&p.a, &id, R::Declined).await;
        let entry = call_log(&p.b1, &g, &id).await;
        let l = log(&entry);
        assert!(l.group && l.missed);
        assert_eq!(l.reason(), R::Declined);
        assert_eq!(l.participants, 1);
    })
    .await;
}

// A group call participant whose connection stays away past the grace leaves it
// (LEFT, DROPPED); the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_group_participant_leaves_and_the_call_goes_on() {
    bounded(TEST_S, async {
        let server = Server::start_with(&[("NATTER_CALL_DROP_GRACE_MS", "500")]).await;
        let p = Pair::new(&server).await;
        let (c, g, id) = group_voice_call(&server, &p, "flaky carol").await;
        expect(&p.b1, &id, T::Ringing).await;
        expect(&c, &id, T::Ringing).await;
        p.b1.answer_call(&id, None).await.unwrap();
        expect(&p.a, &id, T::Answered).await;
        c.answer_call(&id, None).await.unwrap();
        expect(&p.a, &id, T::Answered).await;
        expect(&p.b1, &id, T::Answered).await;

        let carol_device = c.device_id().get();
        c.close();
        for x in [&p.a, &p.b1] {
            let lost = expect(x, &id, T::PeerLost).await;
            assert_eq!(lost.from_device, carol_device);
            let left = expect(x, &id, T::Left).await;
            assert_eq!(left.from_device, carol_device);
            assert_eq!(left.reason(), R::Dropped);
            assert_eq!(devices(info(&left)), [me(&p.a), me(&p.b1)]);
        }
        p.b1.call_signal(&id, p.a.device_id().get(), None, candidate("on"))
            .await
            .expect("the call goes on");
        assert_eq!(
            expect(&p.a, &id, T::Signal)
                .await
                .candidate
                .unwrap()
                .candidate,
            "on"
        );
        p.a.hangup_call(&id).await.unwrap();
        expect_ended(&p.b1, &id, R::Hangup).await;
        let entry = call_log(&p.b2, &g, &id).await;
        assert_eq!(log(&entry).participants, 3);
        assert_eq!(log(&entry).reason(), R::Hangup);
    })
    .await;
}

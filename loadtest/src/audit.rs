//! The delivery auditor: checks every message of a conversation against natter's
//! promises. It sees what the sender sent and what the server acked, and every frame
//! each receiving device got, and counts what breaks an invariant:
//!
//! - **lost**: acked (so durable) but not delivered to a receiver by the end of the drain;
//! - **duplicated**: a message a user would see twice: one `client_msg_id` stored under
//!   two seqs, or one seq pushed twice on one connection where the protocol allows once
//!   (two live pushes, or twice in one sync);
//! - **misordered**: live pushes (or one sync's batches) going backwards in seq (except a
//!   retried message's re-push, which may fill a gap late), or two different messages
//!   claiming one seq (acks and deliveries must agree on the order);
//! - **gaps**: a seq below the conversation's highest that no message of ours holds (the
//!   order must be gap-free);
//! - **corrupted**: a delivered body that is not the body sent.
//!
//! A conversation may hold messages the harness did not send (a group's system messages:
//! "created", "members added"): they are [`Conversation::foreign`], fill their seqs for
//! the order and the receivers' cursors, and count for nothing else.
//!
//! At-least-once delivery allows the server to repeat a message across a reconnect or a
//! sync that overlaps live pushes, and to push a message again when its sender retries it
//! (the retry may be the first sign that the first push was lost); those repeats are
//! counted as `redelivered`, which a client drops and a user never sees.

use serde::{Deserialize, Serialize};

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `Message` push on the live connection.
    Live,
    /// A `SyncBatch` answering this device's Sync.
    Sync,
}

/// Invariant violations and other outcomes of one or many conversations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Distinct messages sent (retries of one message count once).
    pub sent: u64,
    /// Distinct messages acked by the server.
    pub acked: u64,
    /// Distinct (receiver device, message) deliveries.
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub misordered: u64,
    pub gaps: u64,
    pub corrupted: u64,
    /// Repeats that at-least-once delivery allows (dropped by clients).
    pub redelivered: u64,
    /// Sent, never acked, never delivered by the end (in flight when the run stopped).
    pub unacked: u64,
    /// Deliveries owed: every acked message to every receiving device.
    #[serde(default)]
    pub owed: u64,
}

impl Tally {
    /// Adds another tally into this one.
    pub fn add(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.misordered += o.misordered;
        self.gaps += o.gaps;
        self.corrupted += o.corrupted;
        self.redelivered += o.redelivered;
        self.unacked += o.unacked;
        self.owed += o.owed;
    }

    /// True when no invariant was broken.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.misordered == 0
            && self.gaps == 0
            && self.corrupted == 0
    }
}

/// One message as its sender knows it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When it was first sent (retries keep the first time), in ns of the worker clock.
    sent_ns: u64,
    /// When its Ack arrived (0 = not yet).
    acked_ns: u64,
    /// Its seq, from the Ack or from a delivery (0 = unknown).
    seq: u64,
    message_id: u64,
    /// The sender sent it again (no ack in time, or a reconnect): the server pushes a
    /// retried message again, so a second live push of it is allowed.
    resent: bool,
}

/// Which message holds a seq, as far as anyone has told us.
#[derive(Debug, Clone, Copy)]
struct Slot {
    message_id: u64,
    index: u32,
}

/// The `index` of a slot held by a message the harness did not send (a system message).
const FOREIGN: u32 = u32::MAX;

/// How a receiver first saw a seq: 0 = not seen, else `(epoch << 1 | origin) + 1`.
type Mark = u32;

fn mark(epoch: u32, origin: Origin) -> Mark {
    ((epoch << 1) | u32::from(origin == Origin::Sync)) + 1
}

/// One receiving device of the conversation.
#[derive(Debug, Default)]
struct Receiver {
    /// By seq - 1.
    seen: Vec<Mark>,
    /// Everything up to here was delivered (what the device acks with `Received`).
    contiguous: u64,
    /// Bumped at every new connection and every Sync: repeats across epochs are allowed.
    epoch: u32,
    last_live: u64,
    last_sync: u64,
    delivered: u64,
}

/// A first delivery: when it arrived and how long after its first send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at_ns: u64,
    pub latency_ns: u64,
}

/// The audit of one conversation: one sending device, any number of receiving devices.
#[derive(Debug)]
pub struct Conversation {
    sent: Vec<Sent>,
    slots: Vec<Option<Slot>>,
    receivers: Vec<Receiver>,
    tally: Tally,
    arrivals: Vec<Arrival>,
    /// Messages with an ack (so `settled` need not scan them all).
    acked: usize,
}

/// The body the harness sends as message `index`: the index, then a fixed pattern, so a
/// receiver can tell a body from another message's or a damaged one.
pub fn body(index: u32, len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(len.max(4));
    b.extend_from_slice(&index.to_le_bytes());
    b.extend((4..len.max(4)).map(|i| (i as u8).wrapping_mul(31) ^ 0x5a));
    b
}

fn body_ok(index: u32, body: &[u8]) -> bool {
    body.len() >= 4
        && body[..4] == index.to_le_bytes()
        && body[4..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((i + 4) as u8).wrapping_mul(31) ^ 0x5a)
}

/// The `client_msg_id` of message `index` (short: it travels in every Send, Ack and push).
pub fn client_msg_id(index: u32) -> String {
    index.to_string()
}

fn index_of(client_msg_id: &str) -> Option<u32> {
    client_msg_id.parse().ok()
}

impl Conversation {
    pub fn new(receivers: usize) -> Self {
        Conversation {
            sent: Vec::new(),
            slots: Vec::new(),
            receivers: (0..receivers).map(|_| Receiver::default()).collect(),
            tally: Tally::default(),
            arrivals: Vec::new(),
            acked: 0,
        }
    }

    /// Records a new message sent at `now_ns`; returns its index.
    pub fn send(&mut self, now_ns: u64) -> u32 {
        self.sent.push(Sent {
            sent_ns: now_ns,
            acked_ns: 0,
            seq: 0,
            message_id: 0,
            resent: false,
        });
        (self.sent.len() - 1) as u32
    }

    /// Messages sent so far.
    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    /// Claims `seq` for message `index`; counts a conflict as misordered.
    fn claim(&mut self, seq: u64, index: u32, message_id: u64) {
        let i = (seq - 1) as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        match self.slots[i] {
            None => {
                self.slots[i] = Some(Slot { message_id, index });
            }
            Some(s) if s.index == index && s.message_id == message_id => {}
            // Foreign messages are known by seq alone (a pre-claimed one has no id).
            Some(s) if s.index == FOREIGN && index == FOREIGN => {}
            Some(_) => self.tally.misordered += 1,
        }
    }

    /// Seqs `1..=up_to` hold messages the harness did not send (a group's first system
    /// messages, whose seqs its creation reported).
    pub fn foreign_up_to(&mut self, up_to: u64) {
        for seq in 1..=up_to {
            self.claim(seq, FOREIGN, 0);
        }
    }

    /// Receiver `r` got a message the harness did not send (a system message) at `seq`:
    /// it holds that seq and moves the receiver's cursor, and is no delivery of ours.
    pub fn foreign(&mut self, r: usize, seq: u64, message_id: u64) {
        if seq == 0 {
            self.tally.misordered += 1;
            return;
        }
        self.claim(seq, FOREIGN, message_id);
        let Some(rx) = self.receivers.get_mut(r) else {
            return;
        };
        let i = (seq - 1) as usize;
        if rx.seen.len() <= i {
            rx.seen.resize(i + 1, 0);
        }
        if rx.seen[i] == 0 {
            rx.seen[i] = mark(rx.epoch, Origin::Live);
            while rx.seen.get(rx.contiguous as usize).is_some_and(|&m| m != 0) {
                rx.contiguous += 1;
            }
        }
    }

    /// Ties message `index` to `seq`; a second seq for one message is a duplicate.
    fn bind(&mut self, index: u32, seq: u64, message_id: u64) {
        let s = &mut self.sent[index as usize];
        if s.seq == 0 {
            s.seq = seq;
            s.message_id = message_id;
        } else if s.seq != seq {
            self.tally.duplicated += 1;
        }
    }

    /// The server acked message `index` as `seq`. Returns false if the ack names a
    /// message this conversation never sent (counted as misordered).
    pub fn ack(&mut self, index: u32, seq: u64, message_id: u64, now_ns: u64) -> bool {
        if index as usize >= self.sent.len() || seq == 0 {
            self.tally.misordered += 1;
            return false;
        }
        if self.sent[index as usize].acked_ns == 0 {
            self.sent[index as usize].acked_ns = now_ns;
            self.acked += 1;
        }
        self.bind(index, seq, message_id);
        self.claim(seq, index, message_id);
        true
    }

    /// The sender sent message `index` again.
    pub fn resent(&mut self, index: u32) {
        if let Some(s) = self.sent.get_mut(index as usize) {
            s.resent = true;
        }
    }

    /// Starts a new epoch for receiver `r`: after a reconnect, or before a Sync.
    pub fn new_epoch(&mut self, r: usize) {
        if let Some(rx) = self.receivers.get_mut(r) {
            rx.epoch += 1;
            rx.last_live = 0;
            rx.last_sync = 0;
        }
    }

    /// Receiver `r` got a message (the arguments are the pushed message's fields the
    /// audit checks).
    #[allow(clippy::too_many_arguments)]
    pub fn deliver(
        &mut self,
        r: usize,
        origin: Origin,
        seq: u64,
        message_id: u64,
        client_msg_id: &str,
        body: &[u8],
        now_ns: u64,
    ) {
        let index = match index_of(client_msg_id) {
            Some(i) if (i as usize) < self.sent.len() && seq > 0 => i,
            // A message we never sent (or seq 0) cannot be in this conversation's order.
            _ => {
                self.tally.misordered += 1;
                return;
            }
        };
        if !body_ok(index, body) {
            self.tally.corrupted += 1;
        }
        self.bind(index, seq, message_id);
        self.claim(seq, index, message_id);
        let sent = &self.sent[index as usize];
        let (sent_ns, resent) = (sent.sent_ns, sent.resent);
        let Some(rx) = self.receivers.get_mut(r) else {
            return;
        };
        let i = (seq - 1) as usize;
        if rx.seen.len() <= i {
            rx.seen.resize(i + 1, 0);
        }
        // A retried message is pushed again when its retry reaches the owner, which can be
        // after newer messages were pushed: a client drops it if it has the seq, or puts
        // it in its place (it orders by seq and holds what comes after a gap). Either
        // way no step backwards in what the user sees.
        let repush = resent;
        let last = match origin {
            Origin::Live => &mut rx.last_live,
            Origin::Sync => &mut rx.last_sync,
        };
        if seq < *last && !repush {
            self.tally.misordered += 1;
        }
        *last = (*last).max(seq);
        let now = mark(rx.epoch, origin);
        match rx.seen[i] {
            0 => {
                rx.seen[i] = now;
                rx.delivered += 1;
                while rx.seen.get(rx.contiguous as usize).is_some_and(|&m| m != 0) {
                    rx.contiguous += 1;
                }
                self.tally.delivered += 1;
                self.arrivals.push(Arrival {
                    at_ns: now_ns,
                    latency_ns: now_ns.saturating_sub(sent_ns),
                });
            }
            // The same epoch and origin twice: a duplicate, unless the sender retried
            // it (the server pushes a retried message again).
            first if first == now && !resent => self.tally.duplicated += 1,
            _ => self.tally.redelivered += 1,
        }
    }

    /// Receiver `r` has everything up to this seq.
    pub fn contiguous(&self, r: usize) -> u64 {
        self.receivers.get(r).map_or(0, |rx| rx.contiguous)
    }

    #[cfg(test)]
    /// Messages still owed: sent but unacked, or acked but not yet delivered to a receiver.
    pub fn outstanding(&self) -> usize {
        let unacked = self.sent.iter().filter(|s| s.acked_ns == 0).count();
        let undelivered: usize = self
            .receivers
            .iter()
            .map(|rx| {
                self.sent
                    .iter()
                    .filter(|s| {
                        s.seq != 0
                            && s.acked_ns != 0
                            && rx.seen.get((s.seq - 1) as usize).is_none_or(|&m| m == 0)
                    })
                    .count()
            })
            .sum();
        unacked + undelivered
    }

    /// Cheap version of `outstanding() == 0` for polling: every message acked and every
    /// receiver holding as many deliveries as there are messages.
    pub fn settled(&self) -> bool {
        let n = self.sent.len() as u64;
        self.receivers.iter().all(|rx| rx.delivered >= n) && self.acked == self.sent.len()
    }

    /// `settled` for one receiver: every message acked and all of them delivered to `r`.
    pub fn receiver_settled(&self, r: usize) -> bool {
        let n = self.sent.len() as u64;
        self.acked == self.sent.len() && self.receivers.get(r).is_none_or(|rx| rx.delivered >= n)
    }

    /// First deliveries, in the order they happened.
    pub fn arrivals(&self) -> &[Arrival] {
        &self.arrivals
    }

    /// Send and ack times of acked messages, for send→ack latency.
    pub fn acks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.sent
            .iter()
            .filter(|s| s.acked_ns != 0)
            .map(|s| (s.sent_ns, s.acked_ns))
    }

    /// First-send times of every message.
    pub fn sends(&self) -> impl Iterator<Item = u64> + '_ {
        self.sent.iter().map(|s| s.sent_ns)
    }

    /// The final tally, once the run and its drain are over.
    pub fn finish(&self) -> Tally {
        let mut t = self.tally;
        t.sent = self.sent.len() as u64;
        t.acked = self.sent.iter().filter(|s| s.acked_ns != 0).count() as u64;
        t.owed = t.acked * self.receivers.len() as u64;
        for s in &self.sent {
            if s.acked_ns != 0 {
                for rx in &self.receivers {
                    if rx.seen.get((s.seq - 1) as usize).is_none_or(|&m| m == 0) {
                        t.lost += 1;
                    }
                }
            } else if s.seq == 0 {
                t.unacked += 1;
            }
        }
        t.gaps = self.slots.iter().filter(|s| s.is_none()).count() as u64;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conversation with one receiver where messages 0..n were sent, acked as seqs
    /// 1..=n and delivered live in order.
    fn clean(n: u32) -> Conversation {
        let mut c = Conversation::new(1);
        for i in 0..n {
            let idx = c.send(u64::from(i) * 10);
            assert_eq!(idx, i);
            assert!(c.ack(i, u64::from(i) + 1, 1000 + u64::from(i), 1_000));
        }
        for i in 0..n {
            deliver(&mut c, Origin::Live, i, u64::from(i) + 1);
        }
        c
    }

    fn deliver(c: &mut Conversation, origin: Origin, index: u32, seq: u64) {
        let b = body(index, 100);
        c.deliver(
            0,
            origin,
            seq,
            1000 + u64::from(index),
            &client_msg_id(index),
            &b,
            5_000,
        );
    }

    #[test]
    fn a_clean_run_is_clean() {
        let c = clean(5);
        let t = c.finish();
        assert_eq!((t.sent, t.acked, t.delivered), (5, 5, 5));
        assert!(t.clean(), "{t:?}");
        assert_eq!(t.redelivered, 0);
        assert_eq!(c.contiguous(0), 5);
        assert!(c.settled());
        assert_eq!(c.outstanding(), 0);
        assert_eq!(c.arrivals().len(), 5);
        assert_eq!(c.arrivals()[1].latency_ns, 5_000 - 10);
    }

    #[test]
    fn an_acked_message_never_delivered_is_lost() {
        let mut c = Conversation::new(1);
        for i in 0..3 {
            c.send(0);
            c.ack(i, u64::from(i) + 1, 1000 + u64::from(i), 1);
        }
        deliver(&mut c, Origin::Live, 0, 1);
        deliver(&mut c, Origin::Live, 2, 3);
        assert!(!c.settled());
        assert_eq!(c.outstanding(), 1);
        let t = c.finish();
        assert_eq!(t.lost, 1);
        assert!(!t.clean());
        assert_eq!(c.contiguous(0), 1, "the cursor stops at the hole");
    }

    #[test]
    fn an_unacked_undelivered_message_is_not_lost_but_counted() {
        let mut c = Conversation::new(1);
        c.send(0);
        let t = c.finish();
        assert_eq!((t.lost, t.unacked), (0, 1));
        assert!(t.clean());
    }

    #[test]
    fn the_same_live_push_twice_is_a_duplicate() {
        let mut c = clean(3);
        deliver(&mut c, Origin::Live, 1, 2);
        let t = c.finish();
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.delivered, 3, "a duplicate is not a second delivery");
        assert!(!t.clean());
    }

    #[test]
    fn a_retried_message_pushed_again_is_a_redelivery() {
        let mut c = clean(3);
        c.resent(1);
        deliver(&mut c, Origin::Live, 1, 2);
        let t = c.finish();
        assert_eq!((t.redelivered, t.duplicated, t.misordered), (1, 0, 0));
        assert!(t.clean());
        // Only the retried one.
        deliver(&mut c, Origin::Live, 2, 3);
        assert_eq!(c.finish().duplicated, 1);
    }

    #[test]
    fn a_retried_message_filling_a_gap_late_is_in_order() {
        let mut c = Conversation::new(1);
        for i in 0..3u32 {
            c.send(0);
            assert!(c.ack(i, u64::from(i) + 1, 1000 + u64::from(i), 1_000));
        }
        deliver(&mut c, Origin::Live, 0, 1);
        deliver(&mut c, Origin::Live, 2, 3);
        // Seq 2's first push was lost; its retry pushes it after seq 3.
        c.resent(1);
        deliver(&mut c, Origin::Live, 1, 2);
        let t = c.finish();
        assert_eq!((t.delivered, t.misordered, t.lost), (3, 0, 0));
        // A message that was not retried going backwards still counts.
        let mut c = clean(2);
        c.send(0);
        assert!(c.ack(2, 3, 1002, 1_000));
        c.new_epoch(0);
        deliver(&mut c, Origin::Live, 2, 3);
        deliver(&mut c, Origin::Live, 1, 2);
        assert!(c.finish().misordered >= 1);
    }

    #[test]
    fn a_repeat_in_a_new_epoch_or_from_sync_is_a_redelivery() {
        let mut c = clean(3);
        deliver(&mut c, Origin::Sync, 2, 3);
        c.new_epoch(0);
        deliver(&mut c, Origin::Live, 0, 1);
        let t = c.finish();
        assert_eq!((t.redelivered, t.duplicated), (2, 0));
        assert!(t.clean());
    }

    #[test]
    fn one_message_under_two_seqs_is_a_duplicate() {
        let mut c = Conversation::new(1);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        // A retry stored again: the server acks (or pushes) it as seq 2.
        c.ack(0, 2, 1000, 2);
        assert!(c.finish().duplicated >= 1);
        let mut c = Conversation::new(1);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        deliver(&mut c, Origin::Live, 0, 1);
        deliver(&mut c, Origin::Live, 0, 2);
        let t = c.finish();
        assert!(t.duplicated >= 1, "{t:?}");
        assert_eq!(t.gaps, 0);
    }

    #[test]
    fn live_pushes_going_backwards_are_misordered() {
        let mut c = Conversation::new(1);
        for i in 0..3 {
            c.send(0);
            c.ack(i, u64::from(i) + 1, 1000 + u64::from(i), 1);
        }
        deliver(&mut c, Origin::Live, 0, 1);
        deliver(&mut c, Origin::Live, 2, 3);
        deliver(&mut c, Origin::Live, 1, 2);
        let t = c.finish();
        assert_eq!(t.misordered, 1);
        assert_eq!(t.lost, 0);
        // The same holes filled by a sync are fine.
        let mut c = Conversation::new(1);
        for i in 0..3 {
            c.send(0);
            c.ack(i, u64::from(i) + 1, 1000 + u64::from(i), 1);
        }
        deliver(&mut c, Origin::Live, 0, 1);
        deliver(&mut c, Origin::Live, 2, 3);
        c.new_epoch(0);
        deliver(&mut c, Origin::Sync, 1, 2);
        assert!(c.finish().clean());
    }

    #[test]
    fn two_messages_claiming_one_seq_are_misordered() {
        let mut c = Conversation::new(1);
        c.send(0);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        c.ack(1, 1, 1001, 1);
        assert_eq!(c.finish().misordered, 1);
        // A delivery that disagrees with the ack about which message a seq holds.
        let mut c = Conversation::new(1);
        c.send(0);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        c.ack(1, 2, 1001, 1);
        c.deliver(0, Origin::Live, 1, 1001, "1", &body(1, 100), 9);
        assert!(c.finish().misordered >= 1);
    }

    #[test]
    fn a_hole_in_the_order_is_a_gap() {
        let mut c = Conversation::new(1);
        c.send(0);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        c.ack(1, 3, 1001, 1);
        let t = c.finish();
        assert_eq!(t.gaps, 1);
        assert!(!t.clean());
    }

    #[test]
    fn a_damaged_or_foreign_body_is_corrupted() {
        let mut c = Conversation::new(1);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        let mut b = body(0, 100);
        b[50] ^= 1;
        c.deliver(0, Origin::Live, 1, 1000, "0", &b, 2);
        assert_eq!(c.finish().corrupted, 1);
        let mut c = Conversation::new(1);
        c.send(0);
        c.deliver(0, Origin::Live, 1, 1000, "0", &body(7, 100), 2);
        assert_eq!(c.finish().corrupted, 1);
    }

    #[test]
    fn a_message_we_never_sent_is_misordered() {
        let mut c = Conversation::new(1);
        c.send(0);
        c.deliver(0, Origin::Live, 1, 1000, "42", &body(42, 100), 2);
        c.deliver(0, Origin::Live, 1, 1000, "not a number", &body(0, 100), 2);
        assert!(!c.ack(9, 1, 1, 1));
        assert_eq!(c.finish().misordered, 3);
    }

    #[test]
    fn a_group_owes_every_message_to_every_member_and_skips_system_messages() {
        // Seq 1 is the group's "created" system message; ours are seqs 2 and 3.
        let mut c = Conversation::new(3);
        c.foreign_up_to(1);
        for r in 0..3 {
            c.foreign(r, 1, 77);
        }
        for i in 0..2u32 {
            c.send(0);
            assert!(c.ack(i, u64::from(i) + 2, 1000 + u64::from(i), 1));
        }
        for r in 0..3 {
            assert_eq!(c.contiguous(r), 1, "the system message moves the cursor");
            assert!(!c.receiver_settled(r));
        }
        for r in 0..3 {
            for i in 0..2u32 {
                c.deliver(
                    r,
                    Origin::Live,
                    u64::from(i) + 2,
                    1000 + u64::from(i),
                    &client_msg_id(i),
                    &body(i, 100),
                    9,
                );
            }
        }
        assert!(c.settled());
        let t = c.finish();
        assert_eq!((t.sent, t.acked, t.delivered, t.owed), (2, 2, 6, 6));
        assert!(t.clean() && t.gaps == 0, "{t:?}");
        assert_eq!(c.arrivals().len(), 6, "system messages are not arrivals");
        assert_eq!(c.contiguous(2), 3);
        // A member that missed one message: lost once, for that member only.
        let mut c = Conversation::new(2);
        c.foreign_up_to(1);
        c.send(0);
        c.ack(0, 2, 1000, 1);
        c.deliver(0, Origin::Live, 2, 1000, "0", &body(0, 100), 9);
        assert!(c.receiver_settled(0) && !c.receiver_settled(1));
        let t = c.finish();
        assert_eq!((t.delivered, t.lost, t.owed), (1, 1, 2));
        // The same member getting it twice live is a duplicate.
        let mut c = Conversation::new(2);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        c.deliver(1, Origin::Live, 1, 1000, "0", &body(0, 100), 9);
        c.deliver(1, Origin::Live, 1, 1000, "0", &body(0, 100), 9);
        assert_eq!(c.finish().duplicated, 1);
        // A system message claiming the seq of one of ours is misordered.
        let mut c = Conversation::new(1);
        c.send(0);
        c.ack(0, 1, 1000, 1);
        c.foreign(0, 1, 55);
        assert_eq!(c.finish().misordered, 1);
    }

    #[test]
    fn tallies_add_up() {
        let mut a = clean(2).finish();
        let mut b = clean(3).finish();
        b.lost = 1;
        a.add(&b);
        assert_eq!((a.sent, a.delivered, a.lost), (5, 5, 1));
        assert!(!a.clean());
    }

    #[test]
    fn bodies_round_trip_and_are_exactly_as_long_as_asked() {
        for len in [0, 4, 5, 100, 1000] {
            let b = body(7, len);
            assert_eq!(b.len(), len.max(4));
            assert!(body_ok(7, &b));
            assert!(!body_ok(8, &b));
        }
    }
}

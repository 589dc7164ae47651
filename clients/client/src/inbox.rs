//! Per-conversation ordering and dedupe, with no I/O: messages go in as they arrive (live
//! pushes, sync batches, our own acked sends) and come out exactly once each, in seq
//! order, with no gaps. A message past a gap waits in a bounded buffer until the gap is
//! filled (the client asks Sync for it).

use std::collections::{BTreeMap, HashMap};

use natter_proto::v1::{Cursor, Message};

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Pushed live, or our own send (from its Ack).
    Live,
    /// Part of a Sync answer. For a conversation whose cursor is unknown, the first such
    /// message sets the cursor: the server started from its stored cursor for us.
    Sync,
}

#[derive(Debug, Default)]
struct Conv {
    /// Highest seq handed out (or skipped as our own), all below it included.
    /// `None`: this device's position is unknown yet.
    cursor: Option<u64>,
    /// Messages past a gap, by seq.
    buffer: BTreeMap<u64, Message>,
}

/// Ordering state of one device over all its conversations.
#[derive(Debug)]
pub(crate) struct Inbox {
    device: u64,
    yield_own: bool,
    max_buffered: usize,
    convs: HashMap<String, Conv>,
}

impl Inbox {
    /// `device`: our device id (its messages count for ordering but are only handed out
    /// when `yield_own`); `max_buffered`: messages kept past a gap per conversation (more
    /// are dropped and fetched again by the next sync).
    pub(crate) fn new(device: u64, yield_own: bool, max_buffered: usize) -> Self {
        Self {
            device,
            yield_own,
            max_buffered: max_buffered.max(1),
            convs: HashMap::new(),
        }
    }

    pub(crate) fn set_device(&mut self, device: u64) {
        self.device = device;
    }

    /// Takes one message; appends to `out` whatever is now ready, in order.
    pub(crate) fn accept(&mut self, msg: Message, origin: Origin, out: &mut Vec<Message>) {
        if msg.seq == 0 || msg.conversation_id.is_empty() {
            return;
        }
        let (device, yield_own, max) = (self.device, self.yield_own, self.max_buffered);
        let conv = self.convs.entry(msg.conversation_id.clone()).or_default();
        if conv.cursor.is_none() && (origin == Origin::Sync || msg.seq == 1) {
            set_base(conv, msg.seq - 1);
        }
        match conv.cursor {
            Some(c) if msg.seq <= c => {}
            Some(c) if msg.seq == c + 1 => {
                conv.cursor = Some(msg.seq);
                emit(device, yield_own, msg, out);
                drain(conv, device, yield_own, out);
            }
            _ => {
                let seq = msg.seq;
                if conv.buffer.len() >= max {
                    match conv.buffer.last_key_value() {
                        Some((&last, _)) if seq < last => {
                            conv.buffer.pop_last();
                        }
                        // Keep the lowest seqs: they are the ones that can drain first.
                        _ => return,
                    }
                }
                conv.buffer.insert(seq, msg);
            }
        }
    }

    /// Applies a SyncDone's heads: a conversation whose position is still unknown after
    /// the sync is up to date with its head (the server had nothing newer for us).
    pub(crate) fn apply_heads(&mut self, heads: &[Cursor], out: &mut Vec<Message>) {
        let (device, yield_own) = (self.device, self.yield_own);
        for head in heads {
            if head.conversation_id.is_empty() {
                continue;
            }
            let conv = self.convs.entry(head.conversation_id.clone()).or_default();
            if conv.cursor.is_none() {
                set_base(conv, head.seq);
                drain(conv, device, yield_own, out);
            }
        }
    }

    /// Sets a conversation's position (e.g. restored from storage), dropping what is below it.
    pub(crate) fn set_cursor(&mut self, conversation: &str, seq: u64, out: &mut Vec<Message>) {
        let (device, yield_own) = (self.device, self.yield_own);
        let conv = self.convs.entry(conversation.to_owned()).or_default();
        set_base(conv, seq);
        drain(conv, device, yield_own, out);
    }

    /// The known positions, to send with Sync.
    pub(crate) fn cursors(&self) -> Vec<Cursor> {
        let mut v: Vec<Cursor> = self
            .convs
            .iter()
            .filter_map(|(id, c)| {
                c.cursor.map(|seq| Cursor {
                    conversation_id: id.clone(),
                    seq,
                })
            })
            .collect();
        v.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        v
    }

    /// A message deleted for everyone: if it waits past a gap, it will come out with
    /// `deleted` set and without its content (body, media, call, client_msg_id,
    /// reply_to_seq, event), as the server now returns it. Handed-out messages are the
    /// application's to update.
    pub(crate) fn mark_deleted(&mut self, conversation: &str, seq: u64) {
        let Some(m) = self
            .convs
            .get_mut(conversation)
            .and_then(|c| c.buffer.get_mut(&seq))
        else {
            return;
        };
        *m = Message {
            conversation_id: std::mem::take(&mut m.conversation_id),
            seq: m.seq,
            message_id: m.message_id,
            sender_user: m.sender_user,
            sender_device: m.sender_device,
            kind: m.kind,
            created_at_ms: m.created_at_ms,
            withheld: m.withheld,
            deleted: true,
            ..Default::default()
        };
    }

    pub(crate) fn cursor(&self, conversation: &str) -> Option<u64> {
        self.convs.get(conversation).and_then(|c| c.cursor)
    }

    /// True when some conversation holds messages past a gap.
    pub(crate) fn has_gaps(&self) -> bool {
        self.convs.values().any(|c| !c.buffer.is_empty())
    }

    #[cfg(test)]
    fn buffered(&self, conversation: &str) -> Vec<u64> {
        self.convs
            .get(conversation)
            .map(|c| c.buffer.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn set_base(conv: &mut Conv, base: u64) {
    conv.cursor = Some(base);
    while let Some(entry) = conv.buffer.first_entry() {
        if *entry.key() > base {
            break;
        }
        entry.remove();
    }
}

fn drain(conv: &mut Conv, device: u64, yield_own: bool, out: &mut Vec<Message>) {
    let Some(mut cursor) = conv.cursor else {
        return;
    };
    while let Some(entry) = conv.buffer.first_entry() {
        let seq = *entry.key();
        if seq <= cursor {
            entry.remove();
        } else if seq == cursor + 1 {
            cursor = seq;
            emit(device, yield_own, entry.remove(), out);
        } else {
            break;
        }
    }
    conv.cursor = Some(cursor);
}

fn emit(device: u64, yield_own: bool, msg: Message, out: &mut Vec<Message>) {
    if yield_own || msg.sender_device != device {
        out.push(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 7;
    const PEER: u64 = 9;

    fn msg(conv: &str, seq: u64, device: u64) -> Message {
        Message {
            conversation_id: conv.into(),
            seq,
            message_id: 1000 + seq,
            sender_device: device,
            ..Default::default()
        }
    }

    fn seqs(out: &[Message]) -> Vec<u64> {
        out.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_messages_pass_and_duplicates_do_not() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        for s in [1, 2, 2, 3, 1, 3] {
            inbox.accept(msg("d.1.2", s, PEER), Origin::Live, &mut out);
        }
        assert_eq!(seqs(&out), [1, 2, 3]);
        assert_eq!(inbox.cursor("d.1.2"), Some(3));
        assert!(!inbox.has_gaps());
    }

    #[test]
    fn a_gap_holds_later_messages_until_it_is_filled() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 1, PEER), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 4, PEER), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 3, PEER), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 4, PEER), Origin::Live, &mut out);
        assert_eq!(seqs(&out), [1]);
        assert!(inbox.has_gaps());
        assert_eq!(inbox.buffered("d.1.2"), [3, 4]);
        // The sync answer repeats what we buffered; each seq still comes out once.
        for s in 2..=5 {
            inbox.accept(msg("d.1.2", s, PEER), Origin::Sync, &mut out);
        }
        assert_eq!(seqs(&out), [1, 2, 3, 4, 5]);
        assert!(!inbox.has_gaps());
        assert_eq!(
            inbox.cursors(),
            [Cursor {
                conversation_id: "d.1.2".into(),
                seq: 5
            }]
        );
    }

    #[test]
    fn conversations_are_independent() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 2, PEER), Origin::Live, &mut out);
        inbox.accept(msg("d.1.3", 1, PEER), Origin::Live, &mut out);
        assert_eq!(seqs(&out), [1]);
        assert_eq!(out[0].conversation_id, "d.1.3");
        assert_eq!(inbox.cursor("d.1.2"), None);
        assert!(inbox.has_gaps());
    }

    #[test]
    fn own_messages_advance_the_cursor_without_being_yielded() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 1, ME), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 3, PEER), Origin::Live, &mut out);
        assert!(out.is_empty());
        inbox.accept(msg("d.1.2", 2, ME), Origin::Live, &mut out);
        assert_eq!(seqs(&out), [3]);
        assert_eq!(inbox.cursor("d.1.2"), Some(3));

        let mut inbox = Inbox::new(ME, true, 100);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 1, ME), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 2, PEER), Origin::Live, &mut out);
        assert_eq!(seqs(&out), [1, 2]);
    }

    #[test]
    fn an_unknown_position_is_learned_from_sync_or_heads() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        // A live push past an unknown position waits...
        inbox.accept(msg("d.1.2", 6, PEER), Origin::Live, &mut out);
        assert!(out.is_empty());
        // ...until the sync, which starts where the server's stored cursor is.
        inbox.accept(msg("d.1.2", 4, PEER), Origin::Sync, &mut out);
        inbox.accept(msg("d.1.2", 5, PEER), Origin::Sync, &mut out);
        assert_eq!(seqs(&out), [4, 5, 6]);

        // Nothing newer for us in the sync: the head is our position.
        let mut out = Vec::new();
        inbox.accept(msg("d.1.3", 9, PEER), Origin::Live, &mut out);
        inbox.apply_heads(
            &[
                Cursor {
                    conversation_id: "d.1.3".into(),
                    seq: 8,
                },
                Cursor {
                    conversation_id: "d.1.2".into(),
                    seq: 1,
                },
            ],
            &mut out,
        );
        assert_eq!(seqs(&out), [9]);
        // A known position is not moved back by heads.
        assert_eq!(inbox.cursor("d.1.2"), Some(6));
    }

    #[test]
    fn the_buffer_is_bounded_and_keeps_the_lowest_seqs() {
        let mut inbox = Inbox::new(ME, false, 3);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 1, PEER), Origin::Live, &mut out);
        for s in [10, 9, 8, 7, 11] {
            inbox.accept(msg("d.1.2", s, PEER), Origin::Live, &mut out);
        }
        assert_eq!(inbox.buffered("d.1.2"), [7, 8, 9]);
        for s in 2..=12 {
            inbox.accept(msg("d.1.2", s, PEER), Origin::Sync, &mut out);
        }
        assert_eq!(seqs(&out), (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn withheld_placeholders_keep_the_order() {
        // The server withholds seq 2 and 4 from us (we blocked their sender): they carry
        // no body and no sender device, and still fill their places, so nothing waits
        // for them and the cursor passes them. The client turns them into skips.
        let withheld = |seq| Message {
            withheld: true,
            ..msg("d.1.2", seq, 0)
        };
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 1, PEER), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 3, PEER), Origin::Live, &mut out);
        assert!(inbox.has_gaps());
        inbox.accept(withheld(2), Origin::Sync, &mut out);
        inbox.accept(withheld(4), Origin::Live, &mut out);
        assert!(!inbox.has_gaps());
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
        assert_eq!(
            out.iter().map(|m| m.withheld).collect::<Vec<_>>(),
            [false, true, false, true]
        );
        assert_eq!(inbox.cursor("d.1.2"), Some(4));
    }

    #[test]
    fn a_message_deleted_while_it_waits_comes_out_deleted() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        let with_body = |seq| Message {
            body: format!("m{seq}").into_bytes().into(),
            client_msg_id: format!("c{seq}"),
            reply_to_seq: 1,
            ..msg("d.1.2", seq, PEER)
        };
        inbox.accept(with_body(1), Origin::Live, &mut out);
        inbox.accept(with_body(3), Origin::Live, &mut out);
        inbox.accept(with_body(4), Origin::Live, &mut out);
        inbox.mark_deleted("d.1.2", 3);
        // Unknown seqs and conversations, and handed-out messages: nothing to do.
        inbox.mark_deleted("d.1.2", 1);
        inbox.mark_deleted("d.1.2", 9);
        inbox.mark_deleted("d.5.6", 3);
        inbox.accept(with_body(2), Origin::Sync, &mut out);
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
        assert!(!out[0].deleted && out[0].body == "m1".as_bytes());
        let deleted = &out[2];
        assert!(deleted.deleted);
        assert!(deleted.body.is_empty() && deleted.client_msg_id.is_empty());
        assert_eq!(deleted.reply_to_seq, 0);
        assert_eq!(
            (deleted.message_id, deleted.sender_device),
            (1003, PEER),
            "the place and the sender stay"
        );
        assert_eq!(out[3].body, "m4".as_bytes());
    }

    #[test]
    fn set_cursor_skips_what_is_below() {
        let mut inbox = Inbox::new(ME, false, 100);
        let mut out = Vec::new();
        inbox.accept(msg("d.1.2", 3, PEER), Origin::Live, &mut out);
        inbox.accept(msg("d.1.2", 5, PEER), Origin::Live, &mut out);
        inbox.set_cursor("d.1.2", 3, &mut out);
        assert!(out.is_empty());
        inbox.accept(msg("d.1.2", 4, PEER), Origin::Live, &mut out);
        assert_eq!(seqs(&out), [4, 5]);
    }
}

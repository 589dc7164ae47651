//! Tells the presence service which users this edge holds, without making a connection
//! wait for it. Connections send notes to one writer task per edge, which counts each
//! user's connections here and reports a user *online* when their first one opens and
//! *offline* when their last one has been closed for the debounce time, so a flapping
//! connection (a phone between cells) shows as one session to everyone watching, and
//! its "last seen" is when it really closed. Reports go out one at a time, in order, as
//! bus requests; the writer beats every `ttl / 3` so that the presence store can tell a
//! crashed edge's users offline once the TTL lapses. After a failed report, a beat that
//! found the node unknown, or a report refused because the node was not live, the next
//! beat rewrites this node's whole user list.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use natter_bus::{Bus, BusError};
use natter_proto::{Subject, UserId, bus};
use prost::Message as _;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

/// How the writer runs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub node: String,
    /// How long the presence store keeps this node's users without a beat.
    pub ttl: Duration,
    /// How long a user's last connection must stay closed before they are reported
    /// offline.
    pub debounce: Duration,
    /// How long one report may wait for the presence service.
    pub timeout: Duration,
}

enum Note {
    Connected(UserId),
    Closed(UserId, u64),
}

/// The connections' handle to the writer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PresenceNotes {
    tx: mpsc::UnboundedSender<Note>,
}

impl PresenceNotes {
    pub fn connected(&self, user: UserId) {
        // The writer outlives every connection; after shutdown a note has no reader.
        let _ = self.tx.send(Note::Connected(user));
    }

    pub fn closed(&self, user: UserId) {
        let _ = self.tx.send(Note::Closed(user, natter_proto::now_ms()));
    }
}

/// Starts the writer. It runs until `stop` is cancelled and every note sent before that
/// is counted, then tells the presence service this node is leaving.
pub(crate) fn start(
    bus: Arc<dyn Bus>,
    settings: Settings,
    stop: CancellationToken,
) -> (PresenceNotes, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = Writer {
        bus,
        settings,
        connections: HashMap::new(),
        pending: HashMap::new(),
        due: VecDeque::new(),
        in_sync: false,
    };
    (PresenceNotes { tx }, tokio::spawn(writer.run(rx, stop)))
}

struct Writer {
    bus: Arc<dyn Bus>,
    settings: Settings,
    /// Open connections per user on this node.
    connections: HashMap<UserId, u32>,
    /// Users whose last connection closed (at the time given) and who are not reported
    /// offline yet. They still count as here.
    pending: HashMap<UserId, u64>,
    /// When each pending offline report is due, oldest first (one debounce for all, so
    /// a queue is in deadline order). Entries whose user reconnected are skipped.
    due: VecDeque<(Instant, UserId, u64)>,
    /// False until the presence store is known to hold exactly this node's users.
    in_sync: bool,
}

/// Why a report did not go through.
enum Failed {
    /// The store does not know this node as live: sync.
    NotLive,
    /// The service did not answer or failed.
    Unavailable,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Note>, stop: CancellationToken) {
        let mut beat = tokio::time::interval(self.settings.ttl / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_due = self.due.front().map(|(at, _, _)| *at);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                note = rx.recv() => match note {
                    Some(note) => self.apply(note).await,
                    None => break,
                },
                () = sleep_until(next_due) => self.report_due().await,
                _ = beat.tick() => self.beat().await,
            }
        }
        // The edge has drained: every connection has closed. Everyone here goes offline
        // at once (no debounce on a clean leave: the node is gone).
        let leave = bus::PresenceBeat {
            node: self.settings.node.clone(),
            ttl_ms: ttl_ms(self.settings.ttl),
            leave: true,
            ..Default::default()
        };
        if self
            .call(&Subject::presence_beat(), leave.encode_to_vec())
            .await
            .is_err()
        {
            tracing::warn!(
                "could not leave presence; this node's users go offline when its TTL lapses"
            );
        }
    }

    async fn apply(&mut self, note: Note) {
        match note {
            Note::Connected(user) => {
                let n = self.connections.entry(user).or_insert(0);
                *n += 1;
                if *n > 1 {
                    return;
                }
                // Back within the debounce: nobody was told they left.
                if self.pending.remove(&user).is_some() {
                    return;
                }
                self.report(user, true, 0).await;
            }
            Note::Closed(user, at_ms) => {
                let Some(n) = self.connections.get_mut(&user) else {
                    return;
                };
                *n -= 1;
                if *n > 0 {
                    return;
                }
                self.connections.remove(&user);
                self.pending.insert(user, at_ms);
                self.due
                    .push_back((Instant::now() + self.settings.debounce, user, at_ms));
            }
        }
    }

    async fn report_due(&mut self) {
        let now = Instant::now();
        while let Some(&(at, user, at_ms)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            // Still gone, and this is their latest close (not an older one's entry).
            if self.pending.get(&user) == Some(&at_ms) {
                self.pending.remove(&user);
                self.report(user, false, at_ms).await;
            }
        }
    }

    async fn report(&mut self, user: UserId, online: bool, at_ms: u64) {
        if !self.in_sync {
            // The next beat rewrites everything.
            return;
        }
        let conn = bus::PresenceConn {
            node: self.settings.node.clone(),
            user_id: user.get(),
            online,
            at_ms,
        };
        match self
            .call(&Subject::presence_conn(), conn.encode_to_vec())
            .await
        {
            Ok(_) => {}
            Err(Failed::NotLive) => {
                self.in_sync = false;
                self.sync().await;
            }
            Err(Failed::Unavailable) => self.in_sync = false,
        }
    }

    async fn beat(&mut self) {
        if !self.in_sync {
            self.sync().await;
            return;
        }
        let beat = bus::PresenceBeat {
            node: self.settings.node.clone(),
            ttl_ms: ttl_ms(self.settings.ttl),
            ..Default::default()
        };
        match self
            .call(&Subject::presence_beat(), beat.encode_to_vec())
            .await
        {
            Ok(ack) if !ack.joined => {}
            Ok(_) | Err(Failed::NotLive) => self.sync().await,
            Err(Failed::Unavailable) => self.in_sync = false,
        }
    }

    /// Makes the store hold exactly this node's users (those connected, and those whose
    /// offline report is still waiting out the debounce).
    async fn sync(&mut self) {
        let mut users: Vec<u64> = self
            .connections
            .keys()
            .chain(self.pending.keys())
            .map(|u| u.get())
            .collect();
        users.sort_unstable();
        let count = users.len();
        let sync = bus::PresenceBeat {
            node: self.settings.node.clone(),
            ttl_ms: ttl_ms(self.settings.ttl),
            sync: true,
            users,
            leave: false,
        };
        match self
            .call(&Subject::presence_beat(), sync.encode_to_vec())
            .await
        {
            Ok(_) => {
                tracing::debug!(node = %self.settings.node, users = count, "presence in sync");
                self.in_sync = true;
            }
            Err(_) => self.in_sync = false,
        }
    }

    async fn call(&self, subject: &Subject, payload: Vec<u8>) -> Result<bus::PresenceAck, Failed> {
        let reply = self
            .bus
            .request(subject, Bytes::from(payload), self.settings.timeout)
            .await;
        let bytes = match reply {
            Ok(bytes) => bytes,
            Err(BusError::NoResponders(_)) => {
                // A cluster without a presence role: nothing to keep in step.
                tracing::debug!("no presence service is running");
                return Err(Failed::Unavailable);
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence report failed; will resync");
                return Err(Failed::Unavailable);
            }
        };
        match bus::PresenceAck::decode(bytes) {
            Ok(ack) if ack.not_live => Err(Failed::NotLive),
            Ok(ack) if ack.error.is_some() => {
                tracing::warn!(error = ?ack.error, "presence report refused; will resync");
                Err(Failed::Unavailable)
            }
            Ok(ack) => Ok(ack),
            Err(e) => {
                tracing::error!(error = %e, "undecodable PresenceAck");
                Err(Failed::Unavailable)
            }
        }
    }
}

fn ttl_ms(ttl: Duration) -> u32 {
    ttl.as_millis().min(u32::MAX as u128) as u32
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! The [`PresenceStore`] trait: who is online through which edge node, when each user
//! was last seen, and who subscribed to whose presence. Implementations:
//! [`crate::MemoryPresence`] (`natter serve`: one process) and [`crate::RedisPresence`]
//! (a cluster); both pass the [`crate::conformance`] suite.
//!
//! # Model
//!
//! * A **node** (an edge) is live from a [`beat`](PresenceStore::beat) until its TTL runs
//!   out or it [`leave`](PresenceStore::leave)s. Edges beat every `ttl / 3`.
//! * Presence is kept per (node, user), not per device: the edge reports a user
//!   [`online`](PresenceStore::online) when their first device on that node connects and
//!   [`offline`](PresenceStore::offline) when the last one has closed (after its own
//!   debounce). A user is **online** while at least one live node has them.
//! * Every change of a user between online and offline is returned as a [`Transition`]
//!   exactly once, by whichever call caused it, so the caller can push it. A user who
//!   goes offline is *last seen* at the `at_ms` the edge reported, or, when their node
//!   died (its TTL lapsed), at that node's last beat; [`reap`](PresenceStore::reap)
//!   finds lapsed nodes (every presence instance calls it every second; each lapsed node
//!   is reaped once).
//! * Subscriptions are leases: `subscriber` wants `target`'s changes until the lease
//!   runs out; subscribing again renews it.
//!
//! Times: the Redis store uses Redis `TIME` for liveness (client clocks do not matter);
//! `at_ms` values come from the edges.

use std::time::Duration;

use natter_proto::UserId;

/// Why a presence store call failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// `online` for a node that is not live: the edge must `beat` (and sync) first.
    #[error("presence: node `{0}` is not live")]
    NodeNotLive(String),
    /// A caller-supplied value was refused (empty or overlong node name, zero TTL...).
    #[error("presence: invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// The backing store is unreachable, slow or failed; retrying later may work.
    #[error("presence: store unavailable: {0}")]
    Unavailable(String),
    /// The store holds something this code did not write.
    #[error("presence: malformed data: {0}")]
    Malformed(String),
}

/// A user went online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub user: UserId,
    pub online: bool,
    /// Offline: when the user was last seen (ms since the Unix epoch). Online: 0.
    pub last_seen_ms: u64,
}

/// A user's presence now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub user: UserId,
    pub online: bool,
    /// When the user was last seen (went offline); while online, the previous time (so a
    /// reader allowed to see last seen but not online sees what they saw before); 0 if
    /// never seen.
    pub last_seen_ms: u64,
}

/// What a beat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    /// The node was not live (first beat, after `leave`, or its TTL lapsed and it was
    /// reaped): it holds no users now, and the edge should `sync` its users.
    pub joined: bool,
    /// Users who went offline because this beat found the node lapsed and reaped it
    /// first.
    pub transitions: Vec<Transition>,
}

#[async_trait::async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// The node is alive for `ttl` from now. If it had lapsed but was not yet reaped, it
    /// is reaped first (its users' transitions are in the answer) and then joins afresh.
    async fn beat(&self, node: &str, ttl: Duration) -> Result<Beat, PresenceError>;

    /// Makes the node live for `ttl` and its users exactly `users` (at `at_ms` for those
    /// who leave it). Returns every transition this caused.
    async fn sync(
        &self,
        node: &str,
        ttl: Duration,
        users: &[UserId],
        at_ms: u64,
    ) -> Result<Vec<Transition>, PresenceError>;

    /// `user` is connected through `node` (idempotent). `Some` if they were offline.
    async fn online(&self, node: &str, user: UserId) -> Result<Option<Transition>, PresenceError>;

    /// `user` is no longer connected through `node` (idempotent). `Some` if no other live
    /// node has them: they are offline, last seen at `at_ms`.
    async fn offline(
        &self,
        node: &str,
        user: UserId,
        at_ms: u64,
    ) -> Result<Option<Transition>, PresenceError>;

    /// The node goes away cleanly: its users go offline at `at_ms` (unless another node
    /// has them). Returns those transitions.
    async fn leave(&self, node: &str, at_ms: u64) -> Result<Vec<Transition>, PresenceError>;

    /// Removes nodes whose TTL lapsed (a bounded batch per call); their users go offline
    /// at the node's last beat unless another live node has them.
    async fn reap(&self) -> Result<Vec<Transition>, PresenceError>;

    /// Presence of each user, in the order asked.
    async fn get(&self, users: &[UserId]) -> Result<Vec<Presence>, PresenceError>;

    /// `subscriber` wants `targets`' changes for `ttl` (renews existing leases). Refuses
    /// with `Invalid` (changing nothing) if the subscriber would hold more than `limit`
    /// live subscriptions.
    async fn subscribe(
        &self,
        subscriber: UserId,
        targets: &[UserId],
        ttl: Duration,
        limit: u32,
    ) -> Result<(), PresenceError>;

    /// Ends these subscriptions (absent ones are ignored).
    async fn unsubscribe(
        &self,
        subscriber: UserId,
        targets: &[UserId],
    ) -> Result<(), PresenceError>;

    /// Everyone with a live subscription to `target`, ascending.
    async fn subscribers(&self, target: UserId) -> Result<Vec<UserId>, PresenceError>;
}

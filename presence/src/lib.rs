//! natter-presence: whether each user is online (any device connected) or when they
//! were last seen, kept in a [`PresenceStore`] (in memory for `natter serve`, Redis with
//! TTL heartbeats per edge in a cluster, so a crashed edge's users go offline by
//! themselves); subscriptions; and pushing each change to subscribers as far as the
//! user's privacy settings and blocks allow (read through natter-people's `Audiences`).
//!
//! [`start`] runs the service on the bus (queue group [`QUEUE_GROUP`]).

pub mod conformance;
mod memory;
mod redis_store;
mod service;
mod store;

pub use memory::{
    MAX_AT_MS, MAX_NODE_LEN, MAX_TTL, MemoryPresence, REAP_BATCH, SUBSCRIPTION_LIMIT,
};
pub use redis_store::RedisPresence;
pub use service::{Config, QUEUE_GROUP, start};
pub use store::{Beat, Presence, PresenceError, PresenceStore, Transition};

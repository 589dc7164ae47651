//! natter-groups: groups, membership, roles (owner / admin / member), settings, invite
//! links and limits. The groups service checks every change against the caller's role and
//! stores it in its [`GroupStore`]; the owner of the group's conversation (in
//! natter-messages) sends it each change, so that the change's system message takes its
//! place in the conversation's order, and asks it for the members it fans messages out to.

pub mod conformance;
mod metrics;
mod redb_store;
mod rules;
mod scylla_store;
mod service;
mod store;

pub use redb_store::RedbGroupStore;
pub use rules::Limits;
pub use scylla_store::{ScyllaGroupConfig, ScyllaGroupStore};
pub use service::{Config, QUEUE_GROUP, start};
pub use store::{GroupPage, GroupStore, MAX_LIST_GROUPS, StoreError};

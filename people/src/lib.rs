//! natter-people: the people-facing parts of an account — profiles, privacy settings,
//! contacts, blocks and status updates (stories) — checked and stored by the people
//! service in its [`PeopleStore`], and the [`Audiences`] client other services (presence,
//! messages, groups) use to honour privacy settings and blocks.

pub mod audience;
pub mod conformance;
mod media;
mod metrics;
mod redb_store;
mod rules;
mod scylla_store;
mod service;
mod store;

pub use audience::{AudienceInfo, Audiences, Item};
pub use redb_store::RedbPeopleStore;
pub use scylla_store::{ScyllaPeopleConfig, ScyllaPeopleStore};
pub use service::{Config, QUEUE_GROUP, start};
pub use store::{
    Added, Audience, ContactRecord, PeopleStore, Privacy, ProfileRecord, StatusRecord, StoreError,
    View,
};

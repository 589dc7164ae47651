//! natter-media: how attachments travel in natter.
//!
//! - `http.rs`: the REST endpoints under `/v1/media` (single-shot and resumable uploads,
//!   downloads with ranges, thumbnails, usage).
//! - `service.rs`: what they do: stream an upload into the object store while hashing,
//!   sniffing and counting it, check limits and quota, probe and thumbnail, commit the
//!   records; decide who may download; collect garbage.
//! - `describe.rs`: `natter.media.describe`, asked by a conversation's owner before it
//!   stores a media message (may the sender share it, what is it); `admin.rs`:
//!   `natter.admin.media` (a user's usage, deleting their uploads), started with it.
//! - `sniff.rs`, `probe.rs`, `thumb.rs`: what a content is (magic bytes), how long
//!   (container headers, no transcoding), what it looks like (thumbnails).
//! - `objects.rs`: the object store (local files or S3) and the key layout.
//! - `store.rs`: the metadata store trait; `redb_store.rs`, `scylla_store.rs`, both run
//!   by `conformance.rs`.

#[cfg(feature = "service")]
mod admin;
pub mod client;
#[cfg(feature = "service")]
pub mod conformance;
#[cfg(feature = "service")]
pub mod describe;
#[cfg(feature = "service")]
pub mod http;
#[cfg(feature = "service")]
pub mod objects;
#[cfg(feature = "service")]
mod people;
#[cfg(feature = "service")]
pub mod probe;
#[cfg(feature = "service")]
pub mod redb_store;
#[cfg(feature = "service")]
pub mod scylla_store;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod sniff;
#[cfg(feature = "service")]
pub mod store;
#[cfg(feature = "service")]
pub mod thumb;

#[cfg(feature = "service")]
pub use http::{openapi, router};
#[cfg(feature = "service")]
pub use objects::{Objects, S3Options};
#[cfg(feature = "service")]
pub use redb_store::RedbMediaStore;
#[cfg(feature = "service")]
pub use scylla_store::{ScyllaMediaConfig, ScyllaMediaStore};
#[cfg(feature = "service")]
pub use service::{Config, Limits, Media, MediaError, MediaInfo, Via};
#[cfg(feature = "service")]
pub use store::{
    BlobRecord, Commit, MediaRecord, MediaStore, OwnerDeleted, StoreError, UploadPart, UploadRecord,
};

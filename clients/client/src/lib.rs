//! An async Rust client for natter.
//!
//! - [`HttpClient`]: accounts, login/refresh/logout, user lookup, announcements (REST), and media
//!   ([`media`]): uploads (single-shot or resumable, SHA-256 checked), downloads, usage.
//! - [`Connection`]: one WebSocket, frame by frame (for tools and protocol tests).
//! - [`Client`]: one device, the way an app uses it: sends that retry with the same
//!   `client_msg_id` until acked (exactly once for the user), an event stream that yields
//!   each message once and every conversation in seq order (gaps are filled by Sync),
//!   receipts, typing and recording indicators, history, sync and reconnect, groups,
//!   people (profiles, privacy, contacts, blocks, status updates) and presence
//!   subscriptions it renews by itself. Messages the server withholds from this user
//!   (sent while the user blocked their sender) keep the order but are never handed out.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use natter_client::{Client, ClientOptions, Event, HttpClient};
//! let http = HttpClient::new("http://127.0.0.1:8080")?;
//! let session = http.login("alice", "correct horse", "laptop").await?;
//! let bob = http.lookup_user(&session.access_token, "bob").await?;
//! let client = Client::connect(&http.ws_url(), &session.access_token, ClientOptions::default()).await?;
//! client.sync().await?;
//! let ack = client.send_text(bob, "hi").await?;
//! println!("stored as seq {}", ack.seq);
//! while let Some(event) = client.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{}: {}", m.sender_user, String::from_utf8_lossy(&m.body));
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
pub mod connection;
mod error;
mod http;
mod inbox;
pub mod media;
mod presence;
#[cfg(test)]
mod scripted;

pub use client::{Client, ClientOptions, ClientStats, Event, Target, new_client_msg_id};
pub use connection::{ConnectOptions, Connection, ws_request};
pub use error::{ClientError, ConnectionError, HttpError, error_code};
pub use http::{Account, HttpClient, Session};
pub use media::{
    Downloaded, MediaError, MediaInfo, MediaRange, MediaUsage, UploadOptions, download_name,
};
pub use natter_proto::{
    self as proto, ConversationId, DeviceId, ErrorCode, MessageId, Seq, UserId, codec::WireFormat,
    v1,
};
/// The WebSocket library, for raw frames in tests and tools.
pub use tokio_tungstenite::tungstenite;

//! natter's one schema: the client wire protocol and bus events (generated prost types
//! with the proto3 JSON mapping), the id newtypes, typed bus subjects, error codes and
//! the frame codec. This crate does no I/O and imports nothing else of natter's.

pub mod codec;
pub mod ids;
pub mod subject;

/// The client protocol, `natter.v1` (see `schema/natter/v1/client.proto`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/natter.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/natter.v1.serde.rs"));
}

/// Events and requests between roles, `natter.bus.v1` (see `schema/natter/bus/v1/bus.proto`).
pub mod bus {
    /// The generated module; its path mirrors the package so cross-package references resolve.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/natter.bus.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/natter.bus.v1.serde.rs"));
    }
    pub use v1::*;
}

pub use ids::{
    ConversationId, ConversationKind, DeviceId, GroupId, IdError, MessageId, Partition, Seq, UserId,
};
pub use subject::{AdminService, Subject};
pub use v1::ErrorCode;

/// WebSocket subprotocol for protobuf binary frames.
pub const SUBPROTOCOL_PROTO: &str = "natter.v1.proto";
/// WebSocket subprotocol for proto3-JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "natter.v1.json";

/// Largest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
/// Largest message body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// WebSocket close codes natter uses (besides the standard 1000/1001/1007/1009/1011).
pub mod close_code {
    /// The server is shutting down or draining this node; reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not UTF-8 (tungstenite refuses it before natter sees it).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame above the hard size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The device's token was revoked (logout) while connected.
    pub const REVOKED: u16 = 4001;
    /// The same device connected again; this older connection is closed.
    pub const REPLACED: u16 = 4002;
    /// Nothing was received for the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4003;
    /// An administrator disconnected this device (or every device of its user); the
    /// client may reconnect at once.
    pub const KICKED: u16 = 4004;
    /// An administrator disabled (or deleted) the account; an error frame with
    /// `ERROR_CODE_ACCOUNT_DISABLED` came first. Do not reconnect: while the account is
    /// disabled the upgrade and logins are refused with 403 `account_disabled`.
    pub const ACCOUNT_DISABLED: u16 = 4005;
    /// The client did not read fast enough; reconnect and sync from your cursors.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Too many bad frames, or a frame of the wrong kind for the subprotocol.
    pub const PROTOCOL_VIOLATION: u16 = 4009;
}

/// Builds an error frame body.
pub fn error(code: ErrorCode, message: impl Into<String>) -> v1::Error {
    v1::Error {
        code: code as i32,
        message: message.into(),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (for close reasons and other
/// length-capped text fields).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! What the OpenAPI documents of the REST endpoints share (sessions' here, and media's,
//! calls' and the edge's, which all link this crate): the error body every endpoint
//! answers with, and the names of the security schemes. The schemes themselves are
//! declared once, where the crates' documents are merged (`src/openapi.rs` of the
//! `natter` binary).

use utoipa::ToSchema;

/// `Authorization: Bearer <access_token>` (a JWT from `POST /v1/sessions`): the name of
/// the security scheme in `#[utoipa::path(security((...)))]`.
pub const BEARER: &str = "bearer";

/// `?access_token=<access_token>`, for browser elements that cannot set headers
/// (`<img>`, `<video>`, the WebSocket constructor).
pub const ACCESS_TOKEN_QUERY: &str = "access_token";

/// Every REST error: `{"error": {"code", "message"}}`. The status says what kind of
/// failure it is; `code` says it for programs, `message` for people (it never carries
/// internal detail).
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an `ErrorBody`.
#[derive(Debug, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_argument`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unavailable`, `internal`, or a more specific code of the
    /// endpoint (media's `offset_mismatch`, `quota_exceeded`, ...).
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong, for people.
    #[schema(example = "no such user")]
    pub message: String,
}

/// Raw bytes (a file's content), for request and response bodies that are not JSON.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

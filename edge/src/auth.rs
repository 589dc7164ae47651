//! Who is connecting: `natter_sessions::DeviceAuth` (the bearer token from the header,
//! or `?access_token=` for browsers that cannot set headers on a WebSocket, verified
//! locally; the device's logged-in state asked of sessions), turned into HTTP answers:
//! 401 for a bad token or a logged-out device, 403 `account_disabled` for a device whose
//! account an administrator disabled (logging in again will not help).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use natter_sessions::DeviceAuthError;
pub(crate) use natter_sessions::Identity;

pub(crate) fn reject(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

/// The HTTP answer to a refused upgrade: 401 for a bad token or a logged-out device, 403
/// `account_disabled`, 503 when sessions did not answer.
pub(crate) fn refusal(e: DeviceAuthError) -> Response {
    match e {
        DeviceAuthError::AccountDisabled => reject(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account is disabled",
        ),
        DeviceAuthError::Unauthorized(m) => reject(StatusCode::UNAUTHORIZED, "unauthorized", &m),
        DeviceAuthError::Unavailable => reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again shortly",
        ),
        DeviceAuthError::Internal => reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        ),
    }
}

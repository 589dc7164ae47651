//! Who is connecting: the bearer token (header, or `?access_token=` for browsers that
//! cannot set headers on a WebSocket), verified locally, and the device's logged-in
//! state asked of the sessions service. Identity comes from here and nowhere else.

use axum::{
    Json,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use natter_proto::{DeviceId, Subject, UserId, bus};
use prost::Message as _;

use crate::Inner;

/// A verified device.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub user: UserId,
    pub device: DeviceId,
    pub username: String,
}

pub(crate) fn reject(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

fn unauthorized(message: &str) -> Response {
    reject(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

pub(crate) async fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, Response> {
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = header_token
        .or(query_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("missing access token"))?;
    let claims = inner
        .verifier
        .verify(token)
        .map_err(|e| unauthorized(&format!("invalid access token: {e}")))?;
    let check = bus::DeviceCheck {
        user_id: claims.user.get(),
        device_id: claims.device.get(),
    };
    let reply = inner
        .bus
        .request(
            &Subject::sessions_device(),
            Bytes::from(check.encode_to_vec()),
            inner.config.request_timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(edge.error = %e, "sessions service did not answer a device check");
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again shortly",
            )
        })?;
    let status = bus::DeviceStatus::decode(reply).map_err(|e| {
        tracing::error!(edge.error = %e, "undecodable device status from the sessions service");
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    if !status.active {
        return Err(unauthorized("this device is logged out"));
    }
    Ok(Identity {
        user: claims.user,
        device: claims.device,
        username: status.username,
    })
}

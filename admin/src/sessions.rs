//! `/admin/v1/sessions` and `/admin/v1/edges`: who is connected where, and kicks. Read
//! from the edges' session directory; a kick is a push to the user's devices.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
};
use bytes::Bytes;
use natter_proto::{
    Subject, UserId,
    bus::{Kick, UserPush, user_push},
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{Admin, ApiError, ErrorBody, parse_id};

pub(crate) fn routes() -> OpenApiRouter<Admin> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(kick_device))
        .routes(routes!(list_edges))
}

/// Connections listed at most per call (an edge holds more: the rest are counted).
const MAX_LISTED: usize = 10_000;

fn directory_error(e: natter_sessions::directory::DirectoryError) -> ApiError {
    if e.is_unavailable() {
        ApiError::Unavailable(e.to_string())
    } else if matches!(
        e,
        natter_sessions::directory::DirectoryError::Invalid { .. }
    ) {
        // A node name the directory refuses (e.g. `?edge=|`): the caller's mistake.
        ApiError::Invalid(e.to_string())
    } else {
        ApiError::Internal(e.to_string())
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionsQuery {
    /// The connections of this user (one of `user_id` and `edge` is required).
    user_id: Option<String>,
    /// The connections held by this edge node.
    edge: Option<String>,
}

/// One connected device.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Session {
    user_id: String,
    device_id: String,
    /// The edge node holding the WebSocket.
    node: String,
    /// Set when listing by user.
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionList {
    sessions: Vec<Session>,
    /// How many there are (more than listed when above 10,000).
    total: u64,
}

/// Live connections of one user, or of one edge node.
#[utoipa::path(
    get, path = "/admin/v1/sessions", tag = "sessions",
    params(SessionsQuery),
    responses(
        (status = 200, body = SessionList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn list_sessions(
    State(admin): State<Admin>,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let Query(q) = query?;
    let directory = &admin.inner.directory;
    match (q.user_id, q.edge) {
        (Some(user), None) => {
            let user = parse_id("user_id", &user)?;
            let devices = directory
                .devices(UserId(user))
                .await
                .map_err(directory_error)?;
            Ok(Json(SessionList {
                total: devices.len() as u64,
                sessions: devices
                    .into_iter()
                    .map(|d| Session {
                        user_id: user.to_string(),
                        device_id: d.device.to_string(),
                        node: d.node,
                        connected_at_ms: Some(d.connected_at_ms),
                    })
                    .collect(),
            }))
        }
        (None, Some(edge)) => {
            if edge.is_empty() || edge.len() > 128 {
                return Err(ApiError::Invalid("edge must be 1 to 128 bytes".into()));
            }
            let connections = directory
                .connections(&edge)
                .await
                .map_err(directory_error)?;
            Ok(Json(SessionList {
                total: connections.len() as u64,
                sessions: connections
                    .into_iter()
                    .take(MAX_LISTED)
                    .map(|(user, device)| Session {
                        user_id: user.to_string(),
                        device_id: device.to_string(),
                        node: edge.clone(),
                        connected_at_ms: None,
                    })
                    .collect(),
            }))
        }
        _ => Err(ApiError::Invalid(
            "give exactly one of user_id and edge".into(),
        )),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct KickRequest {
    /// Shown to the user in the close reason (at most 100 bytes).
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Kicked {
    /// The device was connected (per the session directory) when it was kicked.
    was_connected: bool,
}

/// Kick a device: its connections close now (WebSocket close code 4004, `KICKED`). The device
/// stays logged in and may reconnect; to keep a user out, ban them.
#[utoipa::path(
    delete, path = "/admin/v1/sessions/{user_id}/{device_id}", tag = "sessions",
    params(
        ("user_id" = String, Path, description = "The user's id"),
        ("device_id" = String, Path, description = "The device's id"),
    ),
    request_body(content = KickRequest, description = "Optional"),
    responses(
        (status = 200, body = Kicked),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn kick_device(
    State(admin): State<Admin>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<KickRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Kicked>, ApiError> {
    let Path((user, device)) = path?;
    let user = parse_id("user_id", &user)?;
    let device = parse_id("device_id", &device)?;
    let KickRequest { reason } = crate::users::optional_body(body)?;
    if reason.len() > 100 || reason.chars().any(char::is_control) {
        return Err(ApiError::Invalid(
            "reason must be at most 100 bytes without control characters".into(),
        ));
    }
    let was_connected = admin
        .inner
        .directory
        .devices(UserId(user))
        .await
        .map(|ds| ds.iter().any(|d| d.device.get() == device))
        .unwrap_or(false);
    let push = UserPush {
        body: Some(user_push::Body::Kick(Kick {
            device_id: device,
            disabled: false,
            reason: if reason.is_empty() {
                "disconnected by an administrator".into()
            } else {
                reason
            },
        })),
        ..Default::default()
    };
    admin
        .inner
        .bus
        .publish(
            &Subject::user(UserId(user)),
            Bytes::from(push.encode_to_vec()),
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("bus: {e}")))?;
    tracing::info!(target: "natter::audit", user, device, was_connected, "device kicked");
    Ok(Json(Kicked { was_connected }))
}

/// One live edge node.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Edge {
    node: String,
    connections: u64,
    last_heartbeat_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EdgeList {
    edges: Vec<Edge>,
    /// Summed over the edges.
    connections: u64,
}

/// Live edge nodes and their connection counts.
#[utoipa::path(
    get, path = "/admin/v1/edges", tag = "sessions",
    responses(
        (status = 200, body = EdgeList),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn list_edges(State(admin): State<Admin>) -> Result<Json<EdgeList>, ApiError> {
    let nodes = admin
        .inner
        .directory
        .nodes()
        .await
        .map_err(directory_error)?;
    Ok(Json(EdgeList {
        connections: nodes.iter().map(|n| n.connections).sum(),
        edges: nodes
            .into_iter()
            .map(|n| Edge {
                node: n.node,
                connections: n.connections,
                last_heartbeat_ms: n.last_heartbeat_ms,
            })
            .collect(),
    }))
}

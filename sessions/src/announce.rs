//! `GET /v1/announcements`: the operators' announcements a client missed. Connected
//! devices get each one live (an `announcement` frame, forwarded by every edge from
//! `Subject::broadcast()`); a client that was offline lists those after the last id it
//! saw. Announcements are posted through the admin API (`admin.rs`).

use axum::{
    Json,
    extract::{FromRef, Query, State, rejection::QueryRejection},
    http::HeaderMap,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{Sessions, api::ApiError, openapi::ErrorBody, store::Announcement};

/// Announcements per page when the client names no limit (or 0).
pub(crate) const DEFAULT_PAGE: usize = 50;
/// Most announcements per page (a larger limit is lowered to this).
pub(crate) const MAX_PAGE: usize = 200;

/// The route with its OpenAPI operation, for any state holding the `Sessions`, so
/// `api::routes` merges it (route and documentation) with one line.
pub(crate) fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Sessions: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only announcements with ids above this (0: from the first).
    #[serde(default)]
    after: u64,
    /// Announcements per page: 50 by default (or 0), at most 200.
    #[serde(default)]
    limit: u32,
}

#[derive(Serialize, ToSchema)]
struct ListResponse {
    /// Oldest first.
    announcements: Vec<AnnouncementEntry>,
}

/// Ids and times are decimal strings, like every 64-bit value of the REST API.
#[derive(Serialize, ToSchema)]
struct AnnouncementEntry {
    id: String,
    text: String,
    created_at_ms: String,
}

impl From<Announcement> for AnnouncementEntry {
    fn from(a: Announcement) -> Self {
        AnnouncementEntry {
            id: a.id.to_string(),
            text: a.text,
            created_at_ms: a.created_at_ms.to_string(),
        }
    }
}

/// `?after=<id>&limit=<n>` (limit 50 by default, at most 200): the announcements after
/// `after`, oldest first. Needs a bearer access token, like the other endpoints.
#[utoipa::path(
    get,
    path = "/v1/announcements",
    operation_id = "list_announcements",
    tag = "announcements",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The announcements after `after`", body = ListResponse),
        (status = 400, description = "`invalid_argument`: `after` or `limit` is not an unsigned integer", body = ErrorBody),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorBody),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
async fn list(
    State(sessions): State<Sessions>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    crate::api::authenticate(&sessions, &headers)?;
    let Ok(Query(ListQuery { after, limit })) = query else {
        return Err(ApiError::InvalidArgument(
            "after and limit must be unsigned integers".into(),
        ));
    };
    let limit = match usize::try_from(limit).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let page = sessions.announcements(after, limit).await?;
    Ok(Json(ListResponse {
        announcements: page.into_iter().map(AnnouncementEntry::from).collect(),
    }))
}

impl Sessions {
    /// Up to `limit` announcements with ids above `after`, oldest first.
    pub(crate) async fn announcements(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Announcement>, ApiError> {
        self.blocking("list announcements", move |inner| {
            inner.store.announcements_after(after, limit)
        })
        .await
    }
}

//! `/admin/v1/users`: search, inspect, ban and unban, delete.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
};
use natter_proto::{
    AdminService, ConversationId, GroupId, Subject,
    bus::{
        self, AdminAccount, AdminDone, AdminGroupList, AdminGroupsReply, AdminGroupsRequest,
        AdminMediaReply, AdminMediaRequest, AdminPeopleRequest, AdminPresenceReply,
        AdminPresenceRequest, AdminSessionsReply, AdminSessionsRequest, AdminSetDisabled,
        AdminUserSearch, admin_groups_request, admin_media_request, admin_sessions_request,
        partition_request,
    },
    v1,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{Admin, ApiError, ErrorBody, check, parse_id};

pub(crate) fn routes() -> OpenApiRouter<Admin> {
    OpenApiRouter::new()
        .routes(routes!(search_users))
        .routes(routes!(get_user, delete_user))
        .routes(routes!(ban_user))
        .routes(routes!(unban_user))
}

/// Longest ban reason, in bytes.
const MAX_REASON: usize = 200;
/// Largest page of users.
const MAX_PAGE: u32 = 500;

/// An account.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Account {
    pub user_id: String,
    pub username: String,
    pub created_at_ms: u64,
    /// Banned: every device is disconnected and logins are refused.
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at_ms: Option<u64>,
    /// Logged-in devices.
    pub active_devices: u32,
}

impl From<AdminAccount> for Account {
    fn from(a: AdminAccount) -> Self {
        let active = if a.devices.is_empty() {
            a.active_devices
        } else {
            a.devices.iter().filter(|d| d.active).count() as u32
        };
        Account {
            user_id: a.user_id.to_string(),
            username: a.username,
            created_at_ms: a.created_at_ms,
            disabled: a.disabled,
            disabled_reason: (a.disabled && !a.disabled_reason.is_empty())
                .then_some(a.disabled_reason),
            disabled_at_ms: (a.disabled && a.disabled_at_ms > 0).then_some(a.disabled_at_ms),
            active_devices: active,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// Usernames starting with this (default: every user).
    prefix: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// 1 to 500 (default 50).
    limit: Option<u32>,
}

/// One page of accounts, in username order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserPage {
    users: Vec<Account>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Search accounts by username prefix.
#[utoipa::path(
    get, path = "/admin/v1/users", tag = "users",
    params(SearchQuery),
    responses(
        (status = 200, body = UserPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn search_users(
    State(admin): State<Admin>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let Query(q) = query?;
    let limit = crate::page_limit(q.limit, 50, MAX_PAGE)?;
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > 64 {
        return Err(ApiError::Invalid("prefix is longer than 64 bytes".into()));
    }
    let reply: AdminSessionsReply = admin
        .ask(
            "sessions",
            &Subject::admin(AdminService::Sessions),
            &AdminSessionsRequest {
                op: Some(admin_sessions_request::Op::Search(AdminUserSearch {
                    prefix,
                    after: q.after.unwrap_or_default(),
                    limit,
                })),
            },
        )
        .await?;
    check(reply.error)?;
    let next = if reply.more {
        reply.accounts.last().map(|a| a.username.clone())
    } else {
        None
    };
    Ok(Json(UserPage {
        users: reply.accounts.into_iter().map(Account::from).collect(),
        next,
    }))
}

/// A device of an account.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Device {
    device_id: String,
    name: String,
    created_at_ms: u64,
    /// Logged in (not logged out).
    active: bool,
    /// The push service of its registered push token, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    push_platform: Option<String>,
    /// Where it is connected now, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<Connection>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Connection {
    /// The edge node holding the WebSocket.
    node: String,
    connected_at_ms: u64,
}

/// A group the user is a member of.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserGroup {
    group_id: String,
    name: String,
    /// `owner`, `admin` or `member`.
    role: String,
    member_count: u32,
    deleted: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceInfo {
    online: bool,
    /// 0 when never seen.
    last_seen_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Storage {
    /// Bytes of the user's uploads (what their quota counts).
    bytes: u64,
    files: u64,
}

/// Everything about one user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserDetail {
    account: Account,
    /// Every device ever logged in, newest first.
    devices: Vec<Device>,
    groups: Vec<UserGroup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<PresenceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<Storage>,
    /// Parts left out because their service did not answer (`groups`, `presence`,
    /// `storage`, `connections`).
    unavailable: Vec<String>,
}

pub(crate) fn role_name(role: i32) -> &'static str {
    match v1::GroupRole::try_from(role) {
        Ok(v1::GroupRole::Owner) => "owner",
        Ok(v1::GroupRole::Admin) => "admin",
        Ok(v1::GroupRole::Member) => "member",
        _ => "unknown",
    }
}

async fn account(admin: &Admin, op: admin_sessions_request::Op) -> Result<AdminAccount, ApiError> {
    let reply: AdminSessionsReply = admin
        .ask(
            "sessions",
            &Subject::admin(AdminService::Sessions),
            &AdminSessionsRequest { op: Some(op) },
        )
        .await?;
    check(reply.error)?;
    reply
        .account
        .ok_or_else(|| ApiError::Internal("the sessions service sent no account".into()))
}

/// Every group `user` is a current member of (all pages).
pub(crate) async fn groups_of(admin: &Admin, user: u64) -> Result<Vec<v1::GroupInfo>, ApiError> {
    let mut groups = Vec::new();
    let mut after = 0;
    // At most 100 pages of 500: a bound, far above any real membership count.
    for _ in 0..100 {
        let reply: AdminGroupsReply = admin
            .ask(
                "groups",
                &Subject::admin(AdminService::Groups),
                &AdminGroupsRequest {
                    op: Some(admin_groups_request::Op::List(AdminGroupList {
                        after,
                        limit: MAX_PAGE,
                        member: user,
                    })),
                },
            )
            .await?;
        check(reply.error)?;
        after = reply.groups.last().map_or(after, |g| g.group_id);
        groups.extend(reply.groups);
        if !reply.more {
            break;
        }
    }
    Ok(groups)
}

/// One user: account, devices and their connections, groups, presence, storage.
#[utoipa::path(
    get, path = "/admin/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, body = UserDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn get_user(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<UserDetail>, ApiError> {
    let Path(id) = path?;
    let user = parse_id("user_id", &id)?;
    let account = account(&admin, admin_sessions_request::Op::Inspect(user)).await?;
    let uid = natter_proto::UserId(user);
    let presence_subject = Subject::admin(AdminService::Presence);
    let media_subject = Subject::admin(AdminService::Media);
    let presence_request = AdminPresenceRequest { user_id: user };
    let media_request = AdminMediaRequest {
        op: Some(admin_media_request::Op::Usage(user)),
    };
    let (groups, presence, storage, connections) = tokio::join!(
        groups_of(&admin, user),
        admin.ask::<AdminPresenceReply>("presence", &presence_subject, &presence_request),
        admin.ask::<AdminMediaReply>("media", &media_subject, &media_request),
        admin.inner.directory.devices(uid),
    );
    let mut unavailable = Vec::new();
    let groups = match groups {
        Ok(groups) => groups
            .into_iter()
            .map(|g| UserGroup {
                group_id: g.group_id.to_string(),
                role: g
                    .members
                    .iter()
                    .find(|m| m.user_id == user)
                    .map_or("member", |m| role_name(m.role))
                    .to_owned(),
                member_count: g.member_count.max(g.members.len() as u32),
                name: g.name,
                deleted: g.deleted,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(?e, "user inspect: groups unavailable");
            unavailable.push("groups".to_owned());
            Vec::new()
        }
    };
    let presence = match presence.and_then(|r| check(r.error.clone()).map(|()| r)) {
        Ok(r) => Some(PresenceInfo {
            online: r.online,
            last_seen_ms: r.last_seen_ms,
        }),
        Err(e) => {
            tracing::warn!(?e, "user inspect: presence unavailable");
            unavailable.push("presence".to_owned());
            None
        }
    };
    let storage = match storage.and_then(|r| check(r.error.clone()).map(|()| r)) {
        Ok(r) => Some(Storage {
            bytes: r.bytes,
            files: r.files,
        }),
        Err(e) => {
            tracing::warn!(?e, "user inspect: storage unavailable");
            unavailable.push("storage".to_owned());
            None
        }
    };
    let connections = connections.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "user inspect: session directory unavailable");
        unavailable.push("connections".to_owned());
        Vec::new()
    });
    let devices = account
        .devices
        .iter()
        .map(|d| Device {
            device_id: d.device_id.to_string(),
            name: d.name.clone(),
            created_at_ms: d.created_at_ms,
            active: d.active,
            push_platform: (!d.push_platform.is_empty()).then(|| d.push_platform.clone()),
            connection: connections
                .iter()
                .find(|c| c.device.get() == d.device_id)
                .map(|c| Connection {
                    node: c.node.clone(),
                    connected_at_ms: c.connected_at_ms,
                }),
        })
        .collect();
    Ok(Json(UserDetail {
        account: account.into(),
        devices,
        groups,
        presence,
        storage,
        unavailable,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct BanRequest {
    /// Why (kept with the account and shown to operators; at most 200 bytes). The user
    /// sees "account disabled".
    #[serde(default)]
    reason: String,
}

/// A JSON body that may be left out (no body at all counts as the default).
pub(crate) fn optional_body<T: Default>(
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, ApiError> {
    match body {
        Ok(Json(b)) => Ok(b),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

async fn set_disabled(
    admin: &Admin,
    user: u64,
    disabled: bool,
    reason: String,
) -> Result<AdminAccount, ApiError> {
    account(
        admin,
        admin_sessions_request::Op::SetDisabled(AdminSetDisabled {
            user_id: user,
            disabled,
            reason,
        }),
    )
    .await
}

/// Ban: disconnects every device of the user at once and refuses their logins, token
/// refreshes and reconnects until unbanned. Their data stays. Idempotent.
#[utoipa::path(
    post, path = "/admin/v1/users/{user_id}/ban", tag = "users",
    params(("user_id" = String, Path, description = "The user's id")),
    request_body(content = BanRequest, description = "Optional"),
    responses(
        (status = 200, body = Account),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn ban_user(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<BanRequest>, JsonRejection>,
) -> Result<Json<Account>, ApiError> {
    let Path(id) = path?;
    let user = parse_id("user_id", &id)?;
    let BanRequest { reason } = optional_body(body)?;
    let reason = reason.trim().to_owned();
    if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(ApiError::Invalid(format!(
            "reason must be at most {MAX_REASON} bytes without control characters"
        )));
    }
    let account = set_disabled(&admin, user, true, reason).await?;
    tracing::info!(target: "natter::audit", user, "user banned");
    Ok(Json(account.into()))
}

/// Unban: the user may log in again, and their devices' sessions work again.
#[utoipa::path(
    post, path = "/admin/v1/users/{user_id}/unban", tag = "users",
    params(("user_id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, body = Account),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn unban_user(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Account>, ApiError> {
    let Path(id) = path?;
    let user = parse_id("user_id", &id)?;
    let account = set_disabled(&admin, user, false, String::new()).await?;
    tracing::info!(target: "natter::audit", user, "user unbanned");
    Ok(Json(account.into()))
}

/// What a deletion did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedUser {
    /// The account as it was.
    account: Account,
    /// Groups the user was taken out of.
    groups_left: u32,
}

/// Delete a user with their data: bans them first (every device disconnects), takes them
/// out of every group (a system message in each), deletes their profile, privacy
/// settings, contacts, blocks and statuses, drops their uploads (the media nothing else
/// references is then garbage-collected), and finally the account, its devices, push
/// tokens and mutes; the username is free again. Messages they sent stay in the other
/// members' history, from a user id that no longer resolves. If a step fails the answer
/// says so and repeating the call carries on where it stopped.
#[utoipa::path(
    delete, path = "/admin/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, body = DeletedUser),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn delete_user(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeletedUser>, ApiError> {
    let Path(id) = path?;
    let user = parse_id("user_id", &id)?;
    // 1. Nothing new from them while the rest goes.
    let before = account(&admin, admin_sessions_request::Op::Inspect(user)).await?;
    set_disabled(&admin, user, true, "account deleted".into()).await?;
    // Group changes are made as one of the user's devices (the system message names a
    // sender device); a user who never logged in has none, and any nonzero id does.
    let device = before.devices.first().map_or(1, |d| d.device_id);
    // 2. Out of every group, through each group's conversation owner like any leave.
    let mut groups_left = 0;
    for group in groups_of(&admin, user).await? {
        if group.deleted {
            continue;
        }
        let conversation = ConversationId::group(GroupId(group.group_id));
        let left = admin
            .to_owner(
                &conversation,
                Some(bus::Caller {
                    user_id: user,
                    device_id: device,
                }),
                partition_request::Body::Group(bus::GroupChange {
                    group_id: group.group_id,
                    request: Some(v1::GroupRequest {
                        op: Some(v1::group_request::Op::Leave(v1::GroupLeave {
                            group_id: group.group_id,
                        })),
                    }),
                    admin: false,
                }),
            )
            .await;
        match left {
            Ok(_) => groups_left += 1,
            // Already out (a race with the user's own leave, or a retried deletion).
            Err(ApiError::NotFound(_) | ApiError::Forbidden(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // 3. People and media data.
    let people: AdminDone = admin
        .ask(
            "people",
            &Subject::admin(AdminService::People),
            &AdminPeopleRequest { delete_user: user },
        )
        .await?;
    check(people.error)?;
    let media: AdminMediaReply = admin
        .ask(
            "media",
            &Subject::admin(AdminService::Media),
            &AdminMediaRequest {
                op: Some(admin_media_request::Op::DeleteUser(user)),
            },
        )
        .await?;
    check(media.error)?;
    // 4. The account last, so a failure above can be retried with the same id.
    let account = account(&admin, admin_sessions_request::Op::Delete(user)).await?;
    tracing::info!(target: "natter::audit", user, groups_left, "user deleted");
    Ok(Json(DeletedUser {
        account: account.into(),
        groups_left,
    }))
}

//! The REST endpoints: accounts, sessions (login, refresh, logout, logout everywhere),
//! user lookup, the calling device's push token and the calling user's muted
//! conversations. Ids are decimal strings in JSON; every error is
//! `{"error":{"code","message"}}` and never carries internal detail (that goes to the
//! log).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Extension, FromRef, FromRequest, Path, Request, State,
        rejection::{JsonRejection, PathRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use natter_bus::Bus;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use natter_proto::{ConversationId, UserId};

use crate::{
    AuthError, Claims, Sessions, accounts::Grant, client_addr::ClientAddr,
    openapi::ErrorBody as ErrorSchema,
};

/// Largest accepted request body.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// An endpoint's failure, as the client sees it.
#[derive(Debug)]
pub(crate) enum ApiError {
    InvalidArgument(String),
    PayloadTooLarge,
    /// A bearer token that is missing, invalid, expired or revoked.
    Auth(AuthError),
    BadCredentials,
    /// Unknown, expired or revoked refresh token: 401 `unauthorized`. Nothing changes.
    BadRefreshToken,
    /// A refresh token that an earlier refresh replaced: 401 `refresh_token_reused`.
    /// The device was revoked.
    RefreshTokenReused,
    /// An administrator disabled the account: 403 `account_disabled`.
    AccountDisabled,
    /// Too many wrong passwords for this account: 429 `too_many_attempts`, with
    /// `Retry-After` (whole seconds, rounded up).
    TooManyAttempts(std::time::Duration),
    /// Too many failed logins from the caller's address: 429 `too_many_attempts`, with
    /// `Retry-After`.
    TooManyAttemptsFromAddress(std::time::Duration),
    NotFound(&'static str),
    Conflict(String),
    /// Details were logged where it happened.
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// Whole seconds to wait, rounded up (at least 1).
fn retry_after_s(wait: std::time::Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            ApiError::InvalidArgument(m) => {
                (StatusCode::BAD_REQUEST, "invalid_argument", m.to_string())
            }
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::AccountDisabled | ApiError::Auth(AuthError::Disabled) => (
                StatusCode::FORBIDDEN,
                "account_disabled",
                AuthError::Disabled.to_string(),
            ),
            ApiError::Auth(e) => (StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
            ApiError::BadCredentials => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid username or password".to_owned(),
            ),
            ApiError::BadRefreshToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid or expired refresh token".to_owned(),
            ),
            ApiError::RefreshTokenReused => (
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was already used, so it may have been stolen: the device \
                 is logged out; log in again"
                    .to_owned(),
            ),
            ApiError::TooManyAttempts(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!(
                    "too many wrong passwords for this account; try again in {} s",
                    retry_after_s(*wait)
                ),
            ),
            ApiError::TooManyAttemptsFromAddress(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!(
                    "too many failed logins from this address; try again in {} s",
                    retry_after_s(*wait)
                ),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", (*m).to_owned()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".to_owned(),
            ),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: &message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::TooManyAttempts(wait) | ApiError::TooManyAttemptsFromAddress(wait) = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after_s(*wait).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED && matches!(self, ApiError::Auth(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `Json` whose rejections are the contract's errors: 413 past the body limit, 400 for
/// anything else (bad syntax, wrong fields, no JSON content type).
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge;
    }
    let message = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected Content-Type: application/json".to_owned()
        }
        JsonRejection::JsonSyntaxError(_) => "request body is not valid JSON".to_owned(),
        // serde's message names the field and the expected type of the client's input.
        JsonRejection::JsonDataError(e) => e.body_text(),
        _ => "could not read the request body".to_owned(),
    };
    ApiError::InvalidArgument(message)
}

#[derive(Clone)]
struct AppState {
    sessions: Sessions,
    bus: Arc<dyn Bus>,
}

/// The REST endpoints of the contract (not `/healthz`, not `/v1/ws`):
/// `POST /v1/accounts`, `POST /v1/sessions`, `POST /v1/sessions/refresh`,
/// `DELETE /v1/sessions/current`, `DELETE /v1/sessions/all`, `GET /v1/users/{username}`,
/// `GET /v1/users/by-id/{user_id}`, `PUT|DELETE /v1/devices/current/push`,
/// `PUT /v1/conversations/{conversation_id}/mute`, `GET /v1/mutes`,
/// `GET /v1/announcements`. Bodies are capped at
/// 16 KiB.
pub fn router(sessions: Sessions, bus: Arc<dyn Bus>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { sessions, bus })
}

/// The OpenAPI document of [`router`]'s routes (the `bearer` security scheme is declared
/// where the documents are merged).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// Every route with its OpenAPI operation: `routes!` takes the path and method from the
/// handler's `#[utoipa::path]`, so a route cannot be added here undocumented.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(get_user))
        .routes(routes!(get_user_by_id))
        .routes(routes!(set_push_token, clear_push_token))
        .routes(routes!(set_mute))
        .routes(routes!(list_mutes))
        .merge(crate::announce::routes())
}

/// The announcements route takes only `Sessions` from the state.
impl FromRef<AppState> for Sessions {
    fn from_ref(state: &AppState) -> Sessions {
        state.sessions.clone()
    }
}

#[derive(Deserialize, ToSchema)]
struct RegisterRequest {
    /// 3–32 of `a-z 0-9 _ . -`.
    #[schema(example = "ann")]
    username: String,
    /// 8–256 bytes.
    password: String,
}

#[derive(Serialize, ToSchema)]
struct UserResponse {
    /// A 64-bit id as a decimal string.
    #[schema(example = "4417245810837507")]
    user_id: String,
    username: String,
}

#[derive(Deserialize, ToSchema)]
struct LoginRequest {
    username: String,
    password: String,
    /// Each login is a new device; this names it (e.g. in a device list).
    #[schema(example = "ann's phone")]
    device_name: String,
}

#[derive(Deserialize, ToSchema)]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
struct LogoutAllResponse {
    /// Devices that were logged in and now are not (the calling one included).
    devices_logged_out: u32,
}

#[derive(Serialize, ToSchema)]
struct SessionResponse {
    user_id: String,
    /// The device this login created (a decimal string).
    device_id: String,
    username: String,
    /// A JWT (HS256): `Authorization: Bearer <access_token>`.
    access_token: String,
    /// Opaque; rotated by every refresh.
    refresh_token: String,
    /// Seconds until the access token expires (900 by default).
    access_expires_in_s: u64,
}

impl From<Grant> for SessionResponse {
    fn from(g: Grant) -> Self {
        SessionResponse {
            user_id: g.user.to_string(),
            device_id: g.device.to_string(),
            username: g.username,
            access_token: g.access_token,
            refresh_token: g.refresh_token,
            access_expires_in_s: g.access_expires_in_s,
        }
    }
}

/// `Authorization: Bearer <token>`, verified and checked against revocation.
pub(crate) fn authenticate(sessions: &Sessions, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Auth(AuthError::Missing))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Auth(AuthError::Malformed))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(ApiError::Auth(AuthError::Malformed)),
    };
    sessions.authenticate(token).map_err(ApiError::Auth)
}

/// Creates an account.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Created", body = UserResponse),
        (status = 400, description = "`invalid_argument`: a malformed body, a username not 3–32 of `a-z 0-9 _ . -`, a password not 8–256 bytes", body = ErrorSchema),
        (status = 409, description = "`conflict`: the username is taken", body = ErrorSchema),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let (id, username) = state.sessions.register(req.username, req.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserResponse {
            user_id: id.to_string(),
            username,
        }),
    ))
}

/// Logs in: a new device of the user, with its access and refresh tokens.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = SessionResponse),
        (status = 400, description = "`invalid_argument`: a malformed body", body = ErrorSchema),
        (status = 401, description = "`unauthorized`: a bad username or password", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = ErrorSchema),
        (status = 429, description = "`too_many_attempts`: too many wrong passwords for this account, or too many failed logins from the caller's address; see `Retry-After`", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let grant = state
        .sessions
        .login(
            req.username,
            req.password,
            req.device_name,
            client.map(|Extension(ClientAddr(ip))| ip),
        )
        .await?;
    Ok(Json(grant.into()))
}

/// New tokens for the device of a refresh token; the refresh token is rotated (the old
/// one stops working). Presenting a refresh token that was already rotated away logs the
/// device out (a stolen copy is in use, or the client lost track of its newest token).
#[utoipa::path(
    post,
    path = "/v1/sessions/refresh",
    tag = "accounts",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "Refreshed", body = SessionResponse),
        (status = 400, description = "`invalid_argument`: a malformed body", body = ErrorSchema),
        (status = 401, description = "`unauthorized`: the refresh token is unknown, expired or revoked. `refresh_token_reused`: it was already used once (rotated away), so the device has been logged out: its tokens stop working and its sockets close with 4001", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let grant = state
        .sessions
        .refresh(req.refresh_token, state.bus.as_ref())
        .await?;
    Ok(Json(grant.into()))
}

/// Logs the calling device out: its tokens stop working and its open sockets close
/// with 4001.
#[utoipa::path(
    delete,
    path = "/v1/sessions/current",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    state.sessions.logout(claims, state.bus.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Logs out every device of the calling user, this one included: their access and
/// refresh tokens stop working and their open sockets close with 4001. For "I lost my
/// phone" or "someone else is in my account"; changing the password is a separate step.
#[utoipa::path(
    delete,
    path = "/v1/sessions/all",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Logged out everywhere", body = LogoutAllResponse),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn logout_all(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<LogoutAllResponse>, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    let devices_logged_out = state
        .sessions
        .logout_all(claims, state.bus.as_ref())
        .await?;
    Ok(Json(LogoutAllResponse { devices_logged_out }))
}

/// The username of a user id, so clients can name the sender of a message or a group
/// member they have not looked up by name.
#[utoipa::path(
    get,
    path = "/v1/users/by-id/{user_id}",
    tag = "users",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "A user id (decimal)")),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 404, description = "`not_found`: no such user (also for a malformed id)", body = ErrorSchema),
    )
)]
async fn get_user_by_id(
    State(state): State<AppState>,
    headers: HeaderMap,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserResponse>, ApiError> {
    authenticate(&state.sessions, &headers)?;
    let user = user_id
        .ok()
        .and_then(|Path(raw)| raw.parse::<u64>().ok())
        .and_then(|raw| UserId::new(raw).ok())
        .ok_or(ApiError::NotFound("no such user"))?;
    let name = state
        .sessions
        .username_of(user)
        .ok_or(ApiError::NotFound("no such user"))?;
    Ok(Json(UserResponse {
        user_id: user.to_string(),
        username: name.to_string(),
    }))
}

/// A user by username.
#[utoipa::path(
    get,
    path = "/v1/users/{username}",
    tag = "users",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "A username")),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 404, description = "`not_found`: no such user", body = ErrorSchema),
    )
)]
async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    username: Result<Path<String>, PathRejection>,
) -> Result<Json<UserResponse>, ApiError> {
    authenticate(&state.sessions, &headers)?;
    // A path segment that does not decode cannot name a user.
    let Ok(Path(username)) = username else {
        return Err(ApiError::NotFound("no such user"));
    };
    let (id, name) = state
        .sessions
        .user_by_name(&username)
        .ok_or(ApiError::NotFound("no such user"))?;
    Ok(Json(UserResponse {
        user_id: id.to_string(),
        username: name.to_string(),
    }))
}

#[derive(Deserialize, ToSchema)]
struct PushTokenRequest {
    /// 1–4,096 printable ASCII bytes: what the push gateway needs to reach the device.
    token: String,
    /// `fcm`, `apns`, `webpush` or `other`.
    #[schema(example = "fcm")]
    platform: String,
}

/// Registers the calling device's push token: 204. The device gets push notifications
/// while none of its user's devices is online; a token another device held moves to
/// this one.
#[utoipa::path(
    put,
    path = "/v1/devices/current/push",
    tag = "push",
    security(("bearer" = [])),
    request_body = PushTokenRequest,
    responses(
        (status = 204, description = "Registered"),
        (status = 400, description = "`invalid_argument`: a malformed body, a bad token or platform", body = ErrorSchema),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn set_push_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<PushTokenRequest>, ApiError>,
) -> Result<StatusCode, ApiError> {
    // The bearer is checked before the body, so an anonymous caller learns nothing.
    let claims = authenticate(&state.sessions, &headers)?;
    let ApiJson(req) = body?;
    state
        .sessions
        .set_push(claims, req.token, req.platform)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forgets the calling device's push token: 204, also when it had none.
#[utoipa::path(
    delete,
    path = "/v1/devices/current/push",
    tag = "push",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn clear_push_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    state.sessions.clear_push(claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
struct MuteRequest {
    /// 0 unmutes, `u64::MAX` mutes forever; a JSON number or a decimal string (like
    /// every 64-bit value of this API, which JavaScript numbers cannot all hold).
    #[serde(deserialize_with = "u64_string_or_number")]
    #[schema(schema_with = u64_string_or_number_schema)]
    until_ms: u64,
}

/// What [`u64_string_or_number`] accepts, as a schema.
fn u64_string_or_number_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,20}$")),
        )
        .description(Some(
            "Unix milliseconds: 0 unmutes, 18446744073709551615 mutes for good; a number \
             or a decimal string",
        ))
        .into()
}

/// A `u64` written as a JSON number or as a string of decimal digits.
fn u64_string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an unsigned 64-bit integer (a number or a decimal string)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            let digits = !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(Visitor)
}

/// Mutes (or unmutes) a conversation for the calling user: 204. Any well-formed id is
/// accepted: sessions does not know who is in which group, and a mute of a conversation
/// the user is not in has no effect.
#[utoipa::path(
    put,
    path = "/v1/conversations/{conversation_id}/mute",
    tag = "mutes",
    security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "`d.<user>.<user>` or `g.<group>`")),
    request_body = MuteRequest,
    responses(
        (status = 204, description = "Muted (or unmuted): no push notifications for that conversation until then"),
        (status = 400, description = "`invalid_argument`: a malformed conversation id or body", body = ErrorSchema),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 409, description = "`conflict`: past 10,000 mutes", body = ErrorSchema),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn set_mute(
    State(state): State<AppState>,
    headers: HeaderMap,
    conversation_id: Result<Path<String>, PathRejection>,
    body: Result<ApiJson<MuteRequest>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    let conversation = conversation_id
        .ok()
        .and_then(|Path(raw)| raw.parse::<ConversationId>().ok())
        .ok_or_else(|| {
            ApiError::InvalidArgument(
                "conversation_id must be `d.<user>.<user>` or `g.<group>`".into(),
            )
        })?;
    let ApiJson(req) = body?;
    state
        .sessions
        .set_mute(claims.user, conversation, req.until_ms)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
struct MutesResponse {
    mutes: Vec<MuteEntry>,
}

#[derive(Serialize, ToSchema)]
struct MuteEntry {
    #[schema(example = "g.8123")]
    conversation_id: String,
    /// Unix milliseconds, a decimal string.
    until_ms: String,
}

/// The calling user's mutes still in force.
#[utoipa::path(
    get,
    path = "/v1/mutes",
    tag = "mutes",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The mutes in force", body = MutesResponse),
        (status = 401, description = "No token, or a bad, expired or revoked one", body = ErrorSchema),
        (status = 403, description = "`account_disabled`: an administrator disabled the account", body = ErrorSchema),
        (status = 500, description = "`internal`", body = ErrorSchema),
    )
)]
async fn list_mutes(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<MutesResponse>, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    let mutes = state.sessions.mutes(claims.user).await?;
    Ok(Json(MutesResponse {
        mutes: mutes
            .into_iter()
            .map(|(conversation_id, until)| MuteEntry {
                conversation_id,
                until_ms: until.to_string(),
            })
            .collect(),
    }))
}

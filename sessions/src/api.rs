//! The REST endpoints: accounts, sessions (login, refresh, logout), user lookup, the
//! calling device's push token and the calling user's muted conversations. Ids
//! are decimal strings in JSON; every error is `{"error":{"code","message"}}` and never
//! carries internal detail (that goes to the log).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, Path, Request, State,
        rejection::{JsonRejection, PathRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use natter_bus::Bus;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use natter_proto::{ConversationId, UserId};

use crate::{AuthError, Claims, Sessions, accounts::Grant};

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
    BadRefreshToken,
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
        if matches!(self, ApiError::Auth(_)) {
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
/// `DELETE /v1/sessions/current`, `GET /v1/users/{username}`,
/// `GET /v1/users/by-id/{user_id}`, `PUT|DELETE /v1/devices/current/push`,
/// `PUT /v1/conversations/{conversation_id}/mute`, `GET /v1/mutes`. Bodies are capped at
/// 16 KiB.
pub fn router(sessions: Sessions, bus: Arc<dyn Bus>) -> Router {
    Router::new()
        .route("/v1/accounts", post(register))
        .route("/v1/sessions", post(login))
        .route("/v1/sessions/refresh", post(refresh))
        .route("/v1/sessions/current", delete(logout))
        .route("/v1/users/{username}", get(get_user))
        .route("/v1/users/by-id/{user_id}", get(get_user_by_id))
        .route(
            "/v1/devices/current/push",
            put(set_push_token).delete(clear_push_token),
        )
        .route("/v1/conversations/{conversation_id}/mute", put(set_mute))
        .route("/v1/mutes", get(list_mutes))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { sessions, bus })
}

#[derive(Deserialize)]
struct RegisterRequest {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct UserResponse {
    user_id: String,
    username: String,
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
    device_name: String,
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize)]
struct SessionResponse {
    user_id: String,
    device_id: String,
    username: String,
    access_token: String,
    refresh_token: String,
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
fn authenticate(sessions: &Sessions, headers: &HeaderMap) -> Result<Claims, ApiError> {
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

async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let grant = state
        .sessions
        .login(req.username, req.password, req.device_name)
        .await?;
    Ok(Json(grant.into()))
}

async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    Ok(Json(
        state.sessions.refresh(req.refresh_token).await?.into(),
    ))
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    state.sessions.logout(claims, state.bus.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The username of a user id, so clients can name the sender of a message or a group
/// member they have not looked up by name.
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

#[derive(Deserialize)]
struct PushTokenRequest {
    token: String,
    platform: String,
}

/// Registers the calling device's push token: 204.
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
async fn clear_push_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let claims = authenticate(&state.sessions, &headers)?;
    state.sessions.clear_push(claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct MuteRequest {
    /// 0 unmutes, `u64::MAX` mutes forever; a JSON number or a decimal string (like
    /// every 64-bit value of this API, which JavaScript numbers cannot all hold).
    #[serde(deserialize_with = "u64_string_or_number")]
    until_ms: u64,
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

#[derive(Serialize)]
struct MutesResponse {
    mutes: Vec<MuteEntry>,
}

#[derive(Serialize)]
struct MuteEntry {
    conversation_id: String,
    until_ms: String,
}

/// The calling user's mutes still in force.
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

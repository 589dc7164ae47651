//! `GET /v1/calls/ice-servers`: the STUN and TURN servers a device gives its
//! `RTCPeerConnection`, with time-limited TURN credentials.
//!
//! The credentials follow the TURN REST API convention (draft-uberti-behave-turn-rest,
//! what coturn's `use-auth-secret` checks): the username is `<unix expiry seconds>:<user
//! id>` and the password is base64(HMAC-SHA1(shared secret, username)). Any TURN server
//! holding the same secret (coturn, or natter's own [`crate::turn`]) accepts them until
//! the expiry, without asking natter.

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, prelude::BASE64_STANDARD};
use natter_proto::UserId;
use natter_sessions::{DeviceAuth, DeviceAuthError, openapi::ErrorBody};
use ring::hmac;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long TURN credentials are valid by default: a day, like coturn's examples.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest TURN username [`check`] accepts. Ours are at most 41 bytes (20 digits,
/// a colon, 20 digits); the bound keeps a hostile client from making us HMAC megabytes.
pub const MAX_USERNAME_BYTES: usize = 128;

/// The STUN and TURN servers handed to devices.
#[derive(Clone)]
pub struct IceConfig {
    /// `stun:` URLs, e.g. `stun:turn.example.com:3478`.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs, e.g. `turn:turn.example.com:3478?transport=udp`. Only
    /// handed out when [`IceConfig::secret`] is set.
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server(s), which sign the credentials.
    pub secret: Option<Arc<str>>,
    /// How long credentials are valid.
    pub ttl: Duration,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            secret: None,
            ttl: DEFAULT_TTL,
        }
    }
}

impl fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceConfig")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl IceConfig {
    /// Adds natter's own TURN server reachable at `public`: `turn:<ip>:<port>?transport=udp`
    /// and `stun:<ip>:<port>` (the TURN server answers STUN binding requests too). IPv6
    /// addresses are bracketed (`turn:[2001:db8::1]:3478?transport=udp`).
    pub fn with_turn_server(mut self, public: SocketAddr) -> Self {
        // SocketAddr's Display brackets IPv6 addresses; a URL has no room for a scope id.
        let host_port = SocketAddr::new(public.ip(), public.port());
        let turn = format!("turn:{host_port}?transport=udp");
        let stun = format!("stun:{host_port}");
        if !self.turn_urls.contains(&turn) {
            self.turn_urls.push(turn);
        }
        if !self.stun_urls.contains(&stun) {
            self.stun_urls.push(stun);
        }
        self
    }
}

/// Why a TURN username was refused by [`check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the username is longer than {MAX_USERNAME_BYTES} bytes")]
    TooLong,
    #[error("the username is not `<expiry>` or `<expiry>:<user>`")]
    Malformed,
    #[error("the credentials expired")]
    Expired,
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The expiry (Unix seconds) of credentials issued at `now` for `ttl`.
fn expiry_secs(ttl: Duration, now: SystemTime) -> u64 {
    unix_secs(now).saturating_add(ttl.as_secs())
}

/// base64(HMAC-SHA1(secret, username)): the TURN REST API password.
fn password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    BASE64_STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// TURN credentials for `user`, valid for `ttl` from `now`: `(username, password)` with
/// username `"<unix expiry seconds>:<user id>"` and password
/// base64(HMAC-SHA1(`secret`, username)).
pub fn credentials(secret: &str, user: UserId, ttl: Duration, now: SystemTime) -> (String, String) {
    let username = format!("{}:{}", expiry_secs(ttl, now), user);
    let password = password(secret, &username);
    (username, password)
}

/// The password a TURN server expects for `username` at `now`, refusing expired or
/// malformed usernames. The expiry is the number before the first `:`; a bare number
/// (what webrtc-rs' `generate_long_term_credentials` produces) is accepted too.
pub fn check(secret: &str, username: &str, now: SystemTime) -> Result<String, CredentialError> {
    if username.len() > MAX_USERNAME_BYTES {
        return Err(CredentialError::TooLong);
    }
    let expiry = username
        .split_once(':')
        .map_or(username, |(expiry, _user)| expiry);
    // `u64::from_str` also takes a leading `+`: only plain digits are an expiry.
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
    if expiry < unix_secs(now) {
        return Err(CredentialError::Expired);
    }
    Ok(password(secret, username))
}

/// One `RTCIceServer` as browsers take it.
#[derive(Debug, Serialize, ToSchema)]
struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    #[schema(example = json!(["turn:turn.example.com:3478?transport=udp"]))]
    urls: Vec<String>,
    /// TURN only: `<unix expiry seconds>:<user id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    /// TURN only: base64(HMAC-SHA1(shared secret, username)).
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

/// The body of `GET /v1/calls/ice-servers`.
#[derive(Debug, Serialize, ToSchema)]
struct IceServers {
    /// For `RTCPeerConnection` as they are; empty when no STUN or TURN is configured.
    ice_servers: Vec<IceServer>,
    /// How long the TURN credentials are valid.
    ttl_s: u64,
    /// When they expire (Unix milliseconds).
    expires_at_ms: u64,
}

fn ice_servers(config: &IceConfig, user: UserId, now: SystemTime) -> IceServers {
    let mut servers = Vec::with_capacity(2);
    if !config.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: config.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let Some(secret) = config.secret.as_deref()
        && !config.turn_urls.is_empty()
    {
        let (username, credential) = credentials(secret, user, config.ttl, now);
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    IceServers {
        ice_servers: servers,
        ttl_s: config.ttl.as_secs(),
        expires_at_ms: expiry_secs(config.ttl, now).saturating_mul(1000),
    }
}

#[derive(Clone)]
struct IceState {
    config: Arc<IceConfig>,
    auth: DeviceAuth,
}

/// The `/v1/calls/ice-servers` route. TURN URLs without a secret are left out (with a
/// warning here): credentials cannot be issued for them.
pub fn router(config: Arc<IceConfig>, auth: DeviceAuth) -> Router {
    if !config.turn_urls.is_empty() && config.secret.is_none() {
        tracing::warn!(
            turn_urls = ?config.turn_urls,
            "TURN URLs are configured without a TURN secret: they are not handed to devices"
        );
    }
    if config.stun_urls.is_empty() && (config.turn_urls.is_empty() || config.secret.is_none()) {
        tracing::info!("no STUN or TURN servers configured: calls only connect directly");
    }
    let (router, _) = routes().split_for_parts();
    router.with_state(IceState { config, auth })
}

/// The route, registered with its OpenAPI operation.
fn routes() -> OpenApiRouter<IceState> {
    OpenApiRouter::new().routes(routes!(get_ice_servers))
}

/// The OpenAPI document of [`router`]'s route (the `bearer` security scheme is declared
/// where the documents are merged).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// An authentication failure, as JSON like the other REST endpoints'.
struct AuthFailure(DeviceAuthError);

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        let (status, code) = match &self.0 {
            DeviceAuthError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            DeviceAuthError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            DeviceAuthError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            DeviceAuthError::AccountDisabled => (StatusCode::FORBIDDEN, "account_disabled"),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": self.0.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if matches!(self.0, DeviceAuthError::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The STUN and TURN servers for a call, with TURN credentials that expire: fetch them
/// again for each call.
#[utoipa::path(
    get,
    path = "/v1/calls/ice-servers",
    tag = "calls",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ICE servers (`Cache-Control: no-store`)", body = IceServers),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 503, description = "Sessions did not answer; retry", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
async fn get_ice_servers(
    State(state): State<IceState>,
    headers: HeaderMap,
) -> Result<Response, AuthFailure> {
    let who = state
        .auth
        .authenticate(&headers, None)
        .await
        .map_err(AuthFailure)?;
    let body = ice_servers(&state.config, who.user, SystemTime::now());
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "natter-test-secret";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn known_answer() {
        // Computed independently with OpenSSL:
        //   printf '%s' '1700000000:42' \
        //     | openssl dgst -sha1 -hmac 'natter-test-secret' -binary | base64
        let (username, password) = credentials(
            SECRET,
            UserId(42),
            Duration::from_secs(100),
            at(1_699_999_900),
        );
        assert_eq!(username, "1700000000:42");
        assert_eq!(password, "GdBDCQDFBKXT3av+VxgB2QgGS/Y=");
        // And a day's TTL (the default):
        //   printf '%s' '1700086400:42' \
        //     | openssl dgst -sha1 -hmac 'natter-test-secret' -binary | base64
        let (username, password) = credentials(SECRET, UserId(42), DEFAULT_TTL, at(1_700_000_000));
        assert_eq!(username, "1700086400:42");
        assert_eq!(password, "rbp8TRcOhh3ZXh2cgzgood3nVY0=");
    }

    #[test]
    fn round_trip() {
        let now = at(1_700_000_000);
        let (username, password) = credentials(SECRET, UserId(7), DEFAULT_TTL, now);
        assert_eq!(check(SECRET, &username, now), Ok(password.clone()));
        // Still valid in the expiry's second, not after.
        assert_eq!(
            check(SECRET, &username, now + DEFAULT_TTL),
            Ok(password.clone())
        );
        // Another secret gives another password.
        assert_ne!(check("another secret", &username, now), Ok(password));
    }

    #[test]
    fn bare_expiry_accepted() {
        // What webrtc-rs' generate_long_term_credentials issues.
        let now = at(1_700_000_000);
        let password = check(SECRET, "1700000100", now).expect("a bare expiry is accepted");
        assert_eq!(password, super::password(SECRET, "1700000100"));
    }

    #[test]
    fn expired_refused() {
        let issued = at(1_700_000_000);
        let (username, _) = credentials(SECRET, UserId(7), Duration::from_secs(60), issued);
        assert_eq!(
            check(SECRET, &username, issued + Duration::from_secs(61)),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            check(SECRET, "1:7", at(1_700_000_000)),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn garbage_refused() {
        let now = at(1_700_000_000);
        for username in [
            "",
            ":",
            ":7",
            "alice",
            "alice:1800000000",
            "+1800000000:7",
            "-1800000000:7",
            " 1800000000:7",
            "18e8:7",
            "99999999999999999999999:7", // beyond u64
        ] {
            assert_eq!(
                check(SECRET, username, now),
                Err(CredentialError::Malformed),
                "{username:?}"
            );
        }
        let long = format!("1800000000:{}", "7".repeat(MAX_USERNAME_BYTES));
        assert_eq!(check(SECRET, &long, now), Err(CredentialError::TooLong));
    }

    #[test]
    fn far_future_does_not_overflow() {
        let (username, _) = credentials(SECRET, UserId(1), Duration::MAX, at(10));
        assert_eq!(username, format!("{}:1", u64::MAX));
        assert!(check(SECRET, &username, at(10)).is_ok());
    }

    #[test]
    fn turn_server_urls() {
        let v4 = IceConfig::default().with_turn_server("203.0.113.5:3478".parse().expect("addr"));
        assert_eq!(v4.turn_urls, ["turn:203.0.113.5:3478?transport=udp"]);
        assert_eq!(v4.stun_urls, ["stun:203.0.113.5:3478"]);
        let v6 = v4
            .clone()
            .with_turn_server("[2001:db8::1]:3478".parse().expect("addr"));
        assert_eq!(
            v6.turn_urls,
            [
                "turn:203.0.113.5:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=udp"
            ]
        );
        assert_eq!(
            v6.stun_urls,
            ["stun:203.0.113.5:3478", "stun:[2001:db8::1]:3478"]
        );
        // Adding the same server twice does not repeat it.
        let again = v6
            .clone()
            .with_turn_server("203.0.113.5:3478".parse().expect("addr"));
        assert_eq!(again.turn_urls, v6.turn_urls);
        assert_eq!(again.stun_urls, v6.stun_urls);
    }

    #[test]
    fn body_shape() {
        let now = at(1_700_000_000);
        let config = IceConfig {
            secret: Some(SECRET.into()),
            ..IceConfig::default()
        }
        .with_turn_server("203.0.113.5:3478".parse().expect("addr"));
        let body = serde_json::to_value(ice_servers(&config, UserId(42), now)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "ice_servers": [
                    { "urls": ["stun:203.0.113.5:3478"] },
                    {
                        "urls": ["turn:203.0.113.5:3478?transport=udp"],
                        "username": "1700086400:42",
                        "credential": "rbp8TRcOhh3ZXh2cgzgood3nVY0=",
                    },
                ],
                "ttl_s": 86_400,
                "expires_at_ms": 1_700_086_400_000_u64,
            })
        );

        // TURN URLs without a secret are left out; no STUN URLs, no STUN entry.
        let config = IceConfig {
            turn_urls: vec!["turn:turn.example.com:3478".into()],
            ..IceConfig::default()
        };
        let body = serde_json::to_value(ice_servers(&config, UserId(42), now)).expect("json");
        assert_eq!(body["ice_servers"], serde_json::json!([]));
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = IceConfig {
            secret: Some(SECRET.into()),
            ..IceConfig::default()
        };
        assert!(!format!("{config:?}").contains(SECRET));
    }

    /// The endpoint over real HTTP, with a fake sessions service on an in-process bus
    /// and tokens signed here like the sessions service signs them (HS256 JWTs).
    mod http {
        use std::sync::Arc;

        use bytes::Bytes;
        use futures::StreamExt as _;
        use natter_bus::{Bus, BusEvent, InProcessBus};
        use natter_proto::{Subject, bus};
        use natter_sessions::TokenVerifier;
        use prost::Message as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        use super::*;

        const TOKEN_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
        /// The device the fake sessions service says is logged out.
        const LOGGED_OUT: u64 = 99;

        fn token(user: u64, device: u64) -> String {
            use base64::prelude::BASE64_URL_SAFE_NO_PAD as B64;
            let now = unix_secs(SystemTime::now());
            let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let claims = serde_json::json!({
                "sub": user.to_string(),
                "did": device.to_string(),
                "iat": now,
                "exp": now + 600,
                "iss": natter_sessions::ISSUER,
            });
            let claims = B64.encode(claims.to_string());
            let signing_input = format!("{header}.{claims}");
            let key = hmac::Key::new(hmac::HMAC_SHA256, TOKEN_SECRET);
            let signature = B64.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
            format!("{signing_input}.{signature}")
        }

        /// Answers device checks: every device is active but [`LOGGED_OUT`].
        async fn fake_sessions(bus: Arc<InProcessBus>) {
            let mut sub = bus
                .subscribe(&Subject::sessions_device(), 16)
                .await
                .expect("subscribe");
            tokio::spawn(async move {
                while let Some(BusEvent::Message(msg)) = sub.next().await {
                    let check = bus::DeviceCheck::decode(msg.payload.clone()).expect("check");
                    let status = bus::DeviceStatus {
                        active: check.device_id != LOGGED_OUT,
                        username: "alice".into(),
                        disabled: false,
                    };
                    natter_bus::reply(bus.as_ref(), &msg, Bytes::from(status.encode_to_vec()))
                        .await
                        .expect("reply");
                }
            });
        }

        /// Serves the router on loopback; returns its address.
        async fn serve(config: IceConfig, bus: Arc<InProcessBus>) -> SocketAddr {
            let verifier = TokenVerifier::from_secret(TOKEN_SECRET).expect("verifier");
            let auth = DeviceAuth::new(verifier, bus, Duration::from_secs(2));
            let app = router(Arc::new(config), auth);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        }

        struct Reply {
            status: u16,
            head: String,
            body: serde_json::Value,
        }

        async fn get(addr: SocketAddr, token: Option<&str>) -> Reply {
            let exchange = async {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let auth = token
                    .map(|t| format!("Authorization: Bearer {t}\r\n"))
                    .unwrap_or_default();
                let request = format!(
                    "GET /v1/calls/ice-servers HTTP/1.1\r\nHost: natter\r\n{auth}Connection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.expect("write");
                let mut raw = Vec::new();
                stream.read_to_end(&mut raw).await.expect("read");
                raw
            };
            let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .expect("the request is answered within 10 s");
            let raw = String::from_utf8(raw).expect("utf-8");
            let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("a status");
            Reply {
                status,
                head: head.to_ascii_lowercase(),
                body: serde_json::from_str(body).expect("a JSON body"),
            }
        }

        fn turn_config() -> IceConfig {
            IceConfig {
                secret: Some(SECRET.into()),
                ttl: Duration::from_secs(3600),
                ..IceConfig::default()
            }
            .with_turn_server("203.0.113.5:3478".parse().expect("addr"))
        }

        #[tokio::test]
        async fn issues_credentials() {
            let bus = Arc::new(InProcessBus::new());
            fake_sessions(bus.clone()).await;
            let addr = serve(turn_config(), bus).await;

            let before = SystemTime::now();
            let reply = get(addr, Some(&token(42, 7))).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert!(
                reply.head.contains("cache-control: no-store"),
                "{}",
                reply.head
            );
            let body = reply.body;
            assert_eq!(body["ttl_s"], 3600);
            let servers = body["ice_servers"].as_array().expect("ice_servers");
            assert_eq!(servers.len(), 2);
            assert_eq!(
                servers[0],
                serde_json::json!({ "urls": ["stun:203.0.113.5:3478"] })
            );
            assert_eq!(
                servers[1]["urls"],
                serde_json::json!(["turn:203.0.113.5:3478?transport=udp"])
            );
            let username = servers[1]["username"].as_str().expect("username");
            let credential = servers[1]["credential"].as_str().expect("credential");
            let (expiry, user) = username.split_once(':').expect("expiry:user");
            assert_eq!(user, "42");
            let expiry: u64 = expiry.parse().expect("expiry");
            let issued = unix_secs(before);
            assert!(
                (issued + 3600..=issued + 3602).contains(&expiry),
                "{expiry}"
            );
            assert_eq!(body["expires_at_ms"], expiry * 1000);
            assert_eq!(
                check(SECRET, username, SystemTime::now()).as_deref(),
                Ok(credential)
            );
        }

        #[tokio::test]
        async fn stun_only_without_secret() {
            let bus = Arc::new(InProcessBus::new());
            fake_sessions(bus.clone()).await;
            let config = IceConfig {
                secret: None,
                ..turn_config()
            };
            let addr = serve(config, bus).await;
            let reply = get(addr, Some(&token(42, 7))).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(
                reply.body["ice_servers"],
                serde_json::json!([{ "urls": ["stun:203.0.113.5:3478"] }])
            );
        }

        #[tokio::test]
        async fn refuses_unauthenticated() {
            let bus = Arc::new(InProcessBus::new());
            fake_sessions(bus.clone()).await;
            let addr = serve(turn_config(), bus).await;
            for token in [
                None,
                Some("not a token".to_owned()),
                Some(token(42, LOGGED_OUT)),
            ] {
                let reply = get(addr, token.as_deref()).await;
                assert_eq!(reply.status, 401, "{token:?}: {}", reply.body);
                assert_eq!(reply.body["error"]["code"], "unauthorized");
                assert!(reply.body["error"]["message"].is_string());
                assert!(
                    reply.head.contains("www-authenticate: bearer"),
                    "{}",
                    reply.head
                );
            }
        }

        #[tokio::test]
        async fn sessions_down_is_503() {
            // Nobody answers device checks on this bus.
            let addr = serve(turn_config(), Arc::new(InProcessBus::new())).await;
            let reply = get(addr, Some(&token(42, 7))).await;
            assert_eq!(reply.status, 503, "{}", reply.body);
            assert_eq!(reply.body["error"]["code"], "unavailable");
        }
    }
}

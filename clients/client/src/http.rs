//! The REST half of the API: accounts, sessions (login, refresh, logout), user lookup and
//! announcements.
//! Media uploads and downloads (also REST) are in `media.rs`.
//! Ids travel as decimal strings in JSON; this module turns them into typed ids.

use std::time::Duration;

use natter_proto::{DeviceId, UserId, v1};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;

use crate::error::HttpError;

/// A registered account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: UserId,
    pub username: String,
}

/// A logged-in device: its ids and tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub username: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Lifetime of the access token, in seconds, when it was issued.
    pub access_expires_in_s: u64,
}

/// Without the tokens: a session printed in a log or a panic message gives nothing away.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("username", &self.username)
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("access_expires_in_s", &self.access_expires_in_s)
            .finish()
    }
}

/// Calls natter's REST API. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: Url,
    pub(crate) http: reqwest::Client,
}

#[derive(Deserialize)]
struct AccountWire {
    user_id: String,
    username: String,
}

#[derive(Deserialize)]
struct SessionWire {
    user_id: String,
    device_id: String,
    username: String,
    access_token: String,
    refresh_token: String,
    #[serde(default)]
    access_expires_in_s: u64,
}

#[derive(Deserialize)]
struct AnnouncementsWire {
    announcements: Vec<AnnouncementWire>,
}

#[derive(Deserialize)]
struct AnnouncementWire {
    id: String,
    text: String,
    created_at_ms: String,
}

#[derive(Deserialize)]
struct ErrorWire {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// natter's error body (`{"error": {"code", "message"}}`) of a failed call, or
/// `Unexpected` when the body is something else.
pub(crate) fn api_error(status: u16, body: &[u8]) -> HttpError {
    match serde_json::from_slice::<ErrorWire>(body) {
        Ok(e) => HttpError::Api {
            status,
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => HttpError::Unexpected {
            status,
            detail: String::from_utf8_lossy(body).chars().take(200).collect(),
        },
    }
}

fn parse_id<T>(
    status: u16,
    what: &str,
    raw: &str,
    make: fn(u64) -> Result<T, natter_proto::IdError>,
) -> Result<T, HttpError> {
    raw.parse::<u64>()
        .ok()
        .and_then(|n| make(n).ok())
        .ok_or_else(|| HttpError::Unexpected {
            status,
            detail: format!("{what} {raw:?} is not an id"),
        })
}

impl SessionWire {
    fn into_session(self, status: u16) -> Result<Session, HttpError> {
        Ok(Session {
            user_id: parse_id(status, "user_id", &self.user_id, UserId::new)?,
            device_id: parse_id(status, "device_id", &self.device_id, DeviceId::new)?,
            username: self.username,
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            access_expires_in_s: self.access_expires_in_s,
        })
    }
}

impl HttpClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, HttpError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Self::with_client(base_url, http)
    }

    /// Like [`HttpClient::new`], with a configured `reqwest::Client`.
    pub fn with_client(base_url: &str, http: reqwest::Client) -> Result<Self, HttpError> {
        let base = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| HttpError::Url(format!("{base_url}: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(HttpError::Url(format!("{base_url}: not an http(s) URL")));
        }
        Ok(Self { base, http })
    }

    /// The base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The WebSocket endpoint of the same server (`ws://host/v1/ws`).
    pub fn ws_url(&self) -> String {
        let mut url = self.base.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        // Both schemes are special and of the same kind, so the change is accepted.
        let _ = url.set_scheme(scheme);
        url.set_query(None);
        format!("{}/v1/ws", url.as_str().trim_end_matches('/'))
    }

    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // `with_client` refused cannot-be-a-base URLs, so this branch always runs.
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Option<T>), HttpError> {
        self.call_url(method, self.url(segments), bearer, body)
            .await
    }

    async fn call_url<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Option<T>), HttpError> {
        let mut req = self.http.request(method, url);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let code = status.as_u16();
        if status == StatusCode::NO_CONTENT {
            return Ok((code, None));
        }
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(api_error(code, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map(|v| (code, Some(v)))
            .map_err(|e| HttpError::Unexpected {
                status: code,
                detail: e.to_string(),
            })
    }

    fn missing_body(status: u16) -> HttpError {
        HttpError::Unexpected {
            status,
            detail: "empty body".into(),
        }
    }

    /// Creates an account. 409 (`conflict`) if the username is taken.
    pub async fn register(&self, username: &str, password: &str) -> Result<Account, HttpError> {
        let body = json!({ "username": username, "password": password });
        let (status, wire) = self
            .call::<AccountWire>(Method::POST, &["v1", "accounts"], None, Some(body))
            .await?;
        let wire = wire.ok_or_else(|| Self::missing_body(status))?;
        Ok(Account {
            user_id: parse_id(status, "user_id", &wire.user_id, UserId::new)?,
            username: wire.username,
        })
    }

    /// Logs in, creating a new device.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Session, HttpError> {
        let body =
            json!({ "username": username, "password": password, "device_name": device_name });
        let (status, wire) = self
            .call::<SessionWire>(Method::POST, &["v1", "sessions"], None, Some(body))
            .await?;
        wire.ok_or_else(|| Self::missing_body(status))?
            .into_session(status)
    }

    /// Trades a refresh token for new tokens (the old refresh token stops working).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, HttpError> {
        let body = json!({ "refresh_token": refresh_token });
        let (status, wire) = self
            .call::<SessionWire>(
                Method::POST,
                &["v1", "sessions", "refresh"],
                None,
                Some(body),
            )
            .await?;
        wire.ok_or_else(|| Self::missing_body(status))?
            .into_session(status)
    }

    /// Logs the device out: its tokens stop working and its connections close (4001).
    pub async fn logout(&self, access_token: &str) -> Result<(), HttpError> {
        self.call::<serde_json::Value>(
            Method::DELETE,
            &["v1", "sessions", "current"],
            Some(access_token),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Logs out every device of the caller's user, this one included (`DELETE
    /// /v1/sessions/all`): their tokens stop working and their connections close (4001).
    /// Returns how many devices were logged in.
    pub async fn logout_everywhere(&self, access_token: &str) -> Result<u32, HttpError> {
        #[derive(Deserialize)]
        struct LogoutAllWire {
            devices_logged_out: u32,
        }
        let (status, wire) = self
            .call::<LogoutAllWire>(
                Method::DELETE,
                &["v1", "sessions", "all"],
                Some(access_token),
                None,
            )
            .await?;
        Ok(wire
            .ok_or_else(|| Self::missing_body(status))?
            .devices_logged_out)
    }

    /// The id of the user called `username`; 404 (`not_found`) if there is none.
    pub async fn lookup_user(
        &self,
        access_token: &str,
        username: &str,
    ) -> Result<UserId, HttpError> {
        let (status, wire) = self
            .call::<AccountWire>(
                Method::GET,
                &["v1", "users", username],
                Some(access_token),
                None,
            )
            .await?;
        let wire = wire.ok_or_else(|| Self::missing_body(status))?;
        parse_id(status, "user_id", &wire.user_id, UserId::new)
    }

    /// The username of `user`; 404 (`not_found`) if there is none.
    pub async fn username_of(&self, access_token: &str, user: UserId) -> Result<String, HttpError> {
        let id = user.to_string();
        let (status, wire) = self
            .call::<AccountWire>(
                Method::GET,
                &["v1", "users", "by-id", &id],
                Some(access_token),
                None,
            )
            .await?;
        let wire = wire.ok_or_else(|| Self::missing_body(status))?;
        Ok(wire.username)
    }

    /// The operators' announcements with ids above `after` (0: from the first), oldest
    /// first, one page of them (`GET /v1/announcements`): what this user missed while
    /// offline. Connected devices get each one as [`crate::Event::Announcement`].
    pub async fn announcements(
        &self,
        access_token: &str,
        after: u64,
    ) -> Result<Vec<v1::Announcement>, HttpError> {
        let mut url = self.url(&["v1", "announcements"]);
        url.query_pairs_mut()
            .append_pair("after", &after.to_string());
        let (status, wire) = self
            .call_url::<AnnouncementsWire>(Method::GET, url, Some(access_token), None)
            .await?;
        let wire = wire.ok_or_else(|| Self::missing_body(status))?;
        wire.announcements
            .into_iter()
            .map(|a| a.into_announcement(status))
            .collect()
    }
}

impl AnnouncementWire {
    fn into_announcement(self, status: u16) -> Result<v1::Announcement, HttpError> {
        let number = |what: &str, raw: &str| {
            raw.parse::<u64>().map_err(|_| HttpError::Unexpected {
                status,
                detail: format!("announcement {what} {raw:?} is not a number"),
            })
        };
        Ok(v1::Announcement {
            id: number("id", &self.id)?,
            text: self.text,
            created_at_ms: number("created_at_ms", &self.created_at_ms)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_from_the_base() {
        let c = HttpClient::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(c.ws_url(), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(
            c.url(&["v1", "users", "a/b"]).as_str(),
            "http://127.0.0.1:8080/v1/users/a%2Fb"
        );
        let c = HttpClient::new("https://example.com/natter").unwrap();
        assert_eq!(c.ws_url(), "wss://example.com/natter/v1/ws");
        assert_eq!(
            c.url(&["v1", "accounts"]).as_str(),
            "https://example.com/natter/v1/accounts"
        );
        assert!(HttpClient::new("ftp://x").is_err());
        assert!(HttpClient::new("not a url").is_err());
    }

    #[test]
    fn announcements_arrive_with_string_numbers() {
        let wire: AnnouncementsWire = serde_json::from_str(
            r#"{"announcements":[{"id":"3","text":"hello \u2713","created_at_ms":"1700000000000"}]}"#,
        )
        .unwrap();
        let got: Vec<v1::Announcement> = wire
            .announcements
            .into_iter()
            .map(|a| a.into_announcement(200).unwrap())
            .collect();
        assert_eq!(
            got,
            [v1::Announcement {
                id: 3,
                text: "hello \u{2713}".into(),
                created_at_ms: 1_700_000_000_000,
            }]
        );
        let bad = AnnouncementWire {
            id: "x".into(),
            text: String::new(),
            created_at_ms: "1".into(),
        };
        assert!(bad.into_announcement(200).is_err());
    }

    #[test]
    fn ids_arrive_as_strings_and_zero_is_refused() {
        let wire: SessionWire = serde_json::from_str(
            r#"{"user_id":"12","device_id":"34","username":"a","access_token":"t","refresh_token":"r","access_expires_in_s":900}"#,
        )
        .unwrap();
        let s = wire.into_session(200).unwrap();
        assert_eq!((s.user_id, s.device_id), (UserId(12), DeviceId(34)));
        assert!(parse_id(200, "user_id", "0", UserId::new).is_err());
        assert!(parse_id(200, "user_id", "x1", UserId::new).is_err());
    }
}

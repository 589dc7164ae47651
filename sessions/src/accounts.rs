//! What the endpoints do: register, login, refresh, logout (of one device or of all of
//! a user's) and user lookups. Disk and argon2 work runs in `spawn_blocking`; the cache is
//! updated after each commit. Login and refresh of a disabled account are refused (403
//! `account_disabled`).
//!
//! Refresh tokens rotate: each refresh replaces the device's token, and a replaced token
//! presented again revokes the device (401 `refresh_token_reused`): either a thief or
//! the device itself is using a token the other already spent, and the server cannot
//! tell which, so neither keeps the device.

use std::{net::IpAddr, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{
    DeviceId, Subject, UserId,
    bus::{UserPush, user_push},
};
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{
    Claims, Inner, Sessions,
    api::ApiError,
    store::{Refresh, StoreError},
};

/// Random bytes in the secret part of a refresh token.
const REFRESH_SECRET_BYTES: usize = 32;
/// Length of that part, base64url without padding.
const REFRESH_SECRET_CHARS: usize = 43;

/// 3..=32 characters of `[a-z0-9_.-]`.
pub(crate) fn valid_username(s: &str) -> bool {
    (3..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// 8..=256 bytes.
pub(crate) fn valid_password(s: &str) -> bool {
    (8..=256).contains(&s.len())
}

/// 1..=64 characters, no control characters.
pub(crate) fn valid_device_name(s: &str) -> bool {
    (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

/// What login and refresh hand out. Its `Debug` leaves the tokens out.
pub(crate) struct Grant {
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    pub(crate) username: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    pub(crate) access_expires_in_s: u64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A new refresh token for `device` and the hash of its secret part.
fn new_refresh_secret() -> (String, [u8; 32]) {
    let mut raw = [0u8; REFRESH_SECRET_BYTES];
    rand::rng().fill_bytes(&mut raw);
    let secret = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash_secret(&secret);
    (secret, hash)
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits `<device_id>.<secret>`; `None` if it cannot be a refresh token.
fn parse_refresh(token: &str) -> Option<(DeviceId, &str)> {
    let (device, secret) = token.split_once('.')?;
    if device.is_empty()
        || device.len() > 20
        || !device.bytes().all(|b| b.is_ascii_digit())
        || secret.len() != REFRESH_SECRET_CHARS
    {
        return None;
    }
    let device = DeviceId::new(device.parse().ok()?).ok()?;
    Some((device, secret))
}

fn ttl_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sessions {
    /// Runs store work on the blocking pool; failures are logged and become `Internal`.
    pub(crate) async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::error!(error = %e, what, "sessions store failed");
                Err(ApiError::Internal)
            }
            Err(e) => {
                tracing::error!(error = %e, what, "sessions blocking task failed");
                Err(ApiError::Internal)
            }
        }
    }

    /// Runs argon2 work on the blocking pool, at most one per CPU at a time.
    async fn hashing<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.inner.hasher.permits.acquire().await.map_err(|_| {
            // The semaphore is never closed.
            tracing::error!("password hashing semaphore closed");
            ApiError::Internal
        })?;
        self.blocking("password hashing", f).await
    }

    pub(crate) async fn register(
        &self,
        username: String,
        password: String,
    ) -> Result<(UserId, String), ApiError> {
        if !valid_username(&username) {
            return Err(ApiError::InvalidArgument(
                "username must be 3 to 32 characters of a-z, 0-9, '_', '.', '-'".into(),
            ));
        }
        if !valid_password(&password) {
            return Err(ApiError::InvalidArgument(
                "password must be 8 to 256 bytes".into(),
            ));
        }
        let taken = || ApiError::Conflict("username is taken".into());
        // Cheap early answer; the store decides for real inside its transaction.
        if self.inner.cache_read().user_id(&username).is_some() {
            return Err(taken());
        }
        let hash = self
            .hashing(move |inner| {
                inner.hasher.hash(password.as_bytes()).map_err(|e| {
                    StoreError::Corrupt(format!("argon2 refused to hash a password: {e}"))
                })
            })
            .await?;
        let name = username.clone();
        let created = self
            .blocking("create user", move |inner| {
                inner
                    .store
                    .create_user(&name, &hash, natter_proto::now_ms())
            })
            .await?;
        let Some(id) = created else {
            return Err(taken());
        };
        self.inner.cache_write().add_user(id, &username);
        tracing::info!(user = %id, "account created");
        Ok((id, username))
    }

    /// Logs in from `client` (the caller's address, when the HTTP server knows it): a
    /// failure counts against that address ([`crate::AddrLimits`]) as well as against
    /// the account.
    pub(crate) async fn login(
        &self,
        username: String,
        password: String,
        device_name: String,
        client: Option<IpAddr>,
    ) -> Result<Grant, ApiError> {
        if !valid_device_name(&device_name) {
            return Err(ApiError::InvalidArgument(
                "device_name must be 1 to 64 characters without control characters".into(),
            ));
        }
        // An address that failed too often is refused before anything else is looked
        // at, like a locked account.
        let attempt = match client {
            Some(ip) => match self.inner.addr_limiter.begin(ip, std::time::Instant::now()) {
                Ok(attempt) => attempt,
                Err(wait) => {
                    metrics::counter!("natter_limit_rejections_total", "limit" => "login_per_ip")
                        .increment(1);
                    return Err(ApiError::TooManyAttemptsFromAddress(wait));
                }
            },
            None => None,
        };
        let result = self.login_checked(username, password, device_name).await;
        if let (Some(attempt), Err(ApiError::BadCredentials)) = (attempt, &result) {
            attempt.failed();
        }
        // Any other outcome drops the attempt, which refunds it.
        result
    }

    async fn login_checked(
        &self,
        username: String,
        password: String,
        device_name: String,
    ) -> Result<Grant, ApiError> {
        // A locked account is refused before its password is looked at: guessing gets
        // no faster by trying harder.
        let started = std::time::Instant::now();
        if let Err(wait) = self.inner.lockout.check(&username, started) {
            return Err(ApiError::TooManyAttempts(wait));
        }
        // Names and passwords that could never have been registered take the same path
        // (and time) as unknown users.
        let plausible = valid_username(&username) && valid_password(&password);
        let name = username.clone();
        let user = self
            .hashing(move |inner| {
                let found = if plausible {
                    inner.store.credentials(&name)?
                } else {
                    None
                };
                Ok(match found {
                    Some((id, hash)) => inner
                        .hasher
                        .verify(password.as_bytes(), &hash)
                        .then_some(id),
                    None => {
                        inner.hasher.verify_dummy(password.as_bytes());
                        None
                    }
                })
            })
            .await?;
        let Some(user) = user else {
            // Unknown names count too (per name), so probing for accounts locks alike;
            // names that could never exist are not kept (they would only take memory).
            if valid_username(&username)
                && let Some(lock) = self.inner.lockout.failed(&username, started)
            {
                tracing::warn!(username = %username, lock_s = lock.as_secs_f64(), "logins locked after repeated wrong passwords");
            }
            return Err(ApiError::BadCredentials);
        };
        self.inner.lockout.succeeded(&username);
        // Only after the password: a ban is nobody else's business.
        if self.inner.cache_read().is_disabled(user) {
            return Err(ApiError::AccountDisabled);
        }
        let (secret, hash) = new_refresh_secret();
        let expires = natter_proto::now_ms().saturating_add(ttl_ms(self.inner.refresh_ttl));
        let device = self
            .blocking("create device", move |inner| {
                inner
                    .store
                    .create_device(user, &device_name, hash, expires, natter_proto::now_ms())
            })
            .await?;
        let Some(device) = device else {
            return Err(ApiError::BadCredentials);
        };
        self.inner.cache_write().set_device(user, device, true);
        tracing::info!(user = %user, device = %device, "logged in");
        self.grant(user, device, username, &secret)
    }

    /// Rotates a refresh token. A token this device held before (a refresh already
    /// replaced it) revokes the device like [`Sessions::logout`] does.
    pub(crate) async fn refresh(&self, token: String, bus: &dyn Bus) -> Result<Grant, ApiError> {
        let Some((device, secret)) = parse_refresh(&token) else {
            return Err(ApiError::BadRefreshToken);
        };
        let presented = hash_secret(secret);
        let (secret, hash) = new_refresh_secret();
        let now = natter_proto::now_ms();
        let expires = now.saturating_add(ttl_ms(self.inner.refresh_ttl));
        let outcome = self
            .blocking("rotate refresh token", move |inner| {
                inner
                    .store
                    .rotate_refresh(device, presented, hash, expires, now)
            })
            .await?;
        match outcome {
            Refresh::Rotated { user, username } => self.grant(user, device, username, &secret),
            Refresh::Refused => Err(ApiError::BadRefreshToken),
            Refresh::Disabled => Err(ApiError::AccountDisabled),
            Refresh::Reused { user } => {
                metrics::counter!("natter_refresh_token_reuse_total").increment(1);
                // Never the token: it may still be the thief's way in elsewhere.
                tracing::warn!(
                    user = %user,
                    device = %device,
                    "a replaced refresh token was presented again: the device is logged out"
                );
                self.inner.cache_write().set_device(user, device, false);
                publish_revoked(bus, user, device).await;
                Err(ApiError::RefreshTokenReused)
            }
        }
    }

    fn grant(
        &self,
        user: UserId,
        device: DeviceId,
        username: String,
        refresh_secret: &str,
    ) -> Result<Grant, ApiError> {
        let access_token = self
            .inner
            .issuer
            .issue(user, device, natter_proto::now_ms())
            .map_err(|e| {
                tracing::error!(error = %e, "signing an access token failed");
                ApiError::Internal
            })?;
        Ok(Grant {
            user,
            device,
            username,
            access_token,
            refresh_token: format!("{device}.{refresh_secret}"),
            access_expires_in_s: self.inner.access_ttl.as_secs(),
        })
    }

    /// Revokes the caller's device and tells its connections to close.
    pub(crate) async fn logout(&self, claims: Claims, bus: &dyn Bus) -> Result<(), ApiError> {
        let Claims { user, device, .. } = claims;
        let found = self
            .blocking("revoke device", move |inner| {
                inner.store.revoke(user, device)
            })
            .await?;
        if !found {
            tracing::warn!(user = %user, device = %device, "logout of an unknown device");
        }
        self.inner.cache_write().set_device(user, device, false);
        publish_revoked(bus, user, device).await;
        tracing::info!(user = %user, device = %device, "logged out");
        Ok(())
    }

    /// Revokes every device of the caller's user (the caller's own included) and tells
    /// their connections to close; returns how many were logged in.
    pub(crate) async fn logout_all(&self, claims: Claims, bus: &dyn Bus) -> Result<u32, ApiError> {
        let user = claims.user;
        let revoked = self
            .blocking("revoke every device", move |inner| {
                inner.store.revoke_all(user)
            })
            .await?;
        {
            let mut cache = self.inner.cache_write();
            for device in &revoked {
                cache.set_device(user, *device, false);
            }
        }
        for device in &revoked {
            publish_revoked(bus, user, *device).await;
        }
        tracing::info!(
            user = %user,
            device = %claims.device,
            devices = revoked.len(),
            "logged out everywhere"
        );
        Ok(u32::try_from(revoked.len()).unwrap_or(u32::MAX))
    }

    /// A user by username, from memory.
    pub(crate) fn user_by_name(&self, username: &str) -> Option<(UserId, Arc<str>)> {
        let cache = self.inner.cache_read();
        let id = cache.user_id(username)?;
        Some((id, cache.username(id)?))
    }

    /// A user's username by id, from memory.
    pub(crate) fn username_of(&self, user: UserId) -> Option<Arc<str>> {
        self.inner.cache_read().username(user)
    }
}

/// Tells the edges holding `device` of `user` that it was revoked: its connections close
/// with 4001.
async fn publish_revoked(bus: &dyn Bus, user: UserId, device: DeviceId) {
    let push = UserPush {
        only_device: 0,
        body: Some(user_push::Body::DeviceRevoked(device.get())),
        skip_device: 0,
        created_at_ms: 0,
    };
    if let Err(e) = bus
        .publish(&Subject::user(user), Bytes::from(push.encode_to_vec()))
        .await
    {
        // The device is revoked either way: its sockets fail their next check.
        tracing::warn!(error = %e, user = %user, device = %device, "publishing device_revoked failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for ok in ["abc", "a_b.c-d", "user123", &"x".repeat(32)] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "ab",
            "Alice",
            "al ice",
            "al/ice",
            "ålice",
            "",
            &"x".repeat(33),
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn device_name_and_password_rules() {
        assert!(valid_device_name("Pixel 9 ✨"));
        assert!(valid_device_name(&"é".repeat(64)));
        assert!(!valid_device_name(&"é".repeat(65)));
        assert!(!valid_device_name(""));
        assert!(!valid_device_name("a\nb"));
        assert!(valid_password("12345678"));
        assert!(!valid_password("1234567"));
        assert!(valid_password(&"p".repeat(256)));
        assert!(!valid_password(&"p".repeat(257)));
    }

    #[test]
    fn refresh_tokens_parse() {
        let (secret, _) = new_refresh_secret();
        assert_eq!(secret.len(), REFRESH_SECRET_CHARS);
        let token = format!("42.{secret}");
        assert_eq!(parse_refresh(&token), Some((DeviceId(42), secret.as_str())));
        for bad in [
            String::new(),
            "42".into(),
            format!("0.{secret}"),
            format!("+42.{secret}"),
            format!(".{secret}"),
            "42.short".into(),
            format!("99999999999999999999999.{secret}"),
        ] {
            assert_eq!(parse_refresh(&bad), None, "{bad}");
        }
    }
}

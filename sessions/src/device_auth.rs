//! Who is calling: a bearer token (the `Authorization` header, or a query token for
//! browsers that cannot set headers on a WebSocket or an `<img>`), verified locally,
//! and the device's logged-in state asked of the sessions service over the bus. The edge
//! and the media service authenticate with this; identity comes from nowhere else.

use std::{sync::Arc, time::Duration};

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{DeviceId, Subject, UserId, bus};
use prost::Message as _;

use crate::{Claims, TokenVerifier};

/// A verified, logged-in device.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub device: DeviceId,
    pub username: String,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceAuthError {
    /// No token, a bad or expired one, or a logged-out device: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// The sessions service did not answer: 503, retry.
    #[error("sessions service unavailable")]
    Unavailable,
    /// The sessions service answered nonsense: 500.
    #[error("internal error")]
    Internal,
    /// A logged-in device whose account an administrator disabled: 403
    /// `account_disabled` (logging in again will not help).
    #[error("this account is disabled")]
    AccountDisabled,
}

/// Authenticates devices. Cheap to clone.
#[derive(Clone)]
pub struct DeviceAuth {
    verifier: TokenVerifier,
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuth").finish_non_exhaustive()
    }
}

impl DeviceAuth {
    pub fn new(verifier: TokenVerifier, bus: Arc<dyn Bus>, timeout: Duration) -> DeviceAuth {
        DeviceAuth {
            verifier,
            bus,
            timeout,
        }
    }

    /// The caller of a request: the bearer token from `headers`, else `query_token`.
    /// A logged-in device of a disabled account is [`DeviceAuthError::AccountDisabled`]
    /// (403, so the client knows logging in again will not help).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Identity, DeviceAuthError> {
        let claims = self.verify(headers, query_token)?;
        self.check(&claims).await
    }

    /// The first half of [`DeviceAuth::authenticate`], local: the token's signature,
    /// expiry and issuer. The edge subscribes to the user's pushes between the halves,
    /// so that a logout or ban committed after the check reaches the connection.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Claims, DeviceAuthError> {
        let header_token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let token = header_token
            .or(query_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| DeviceAuthError::Unauthorized("missing access token".into()))?;
        self.verifier
            .verify(token)
            .map_err(|e| DeviceAuthError::Unauthorized(format!("invalid access token: {e}")))
    }

    /// The second half of [`DeviceAuth::authenticate`]: asks the sessions service whether
    /// the token's device is still logged in and its account enabled.
    pub async fn check(&self, claims: &Claims) -> Result<Identity, DeviceAuthError> {
        let check = bus::DeviceCheck {
            user_id: claims.user.get(),
            device_id: claims.device.get(),
        };
        let reply = self
            .bus
            .request(
                &Subject::sessions_device(),
                Bytes::from(check.encode_to_vec()),
                self.timeout,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "sessions service did not answer a device check");
                DeviceAuthError::Unavailable
            })?;
        let status = bus::DeviceStatus::decode(reply).map_err(|e| {
            tracing::error!(error = %e, "undecodable device status from the sessions service");
            DeviceAuthError::Internal
        })?;
        if status.disabled {
            return Err(DeviceAuthError::AccountDisabled);
        }
        if !status.active {
            return Err(DeviceAuthError::Unauthorized(
                "this device is logged out".into(),
            ));
        }
        Ok(Identity {
            user: claims.user,
            device: claims.device,
            username: status.username,
        })
    }
}

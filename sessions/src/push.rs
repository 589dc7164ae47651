//! Push tokens and muted conversations: what a device registers so the notifier can wake
//! it, and the conversations a user does not want to be woken for. The notifier asks
//! [`Sessions::push_targets`] over the bus (`Subject::sessions_push_targets()`).
//!
//! Sessions does not know group membership: a mute is accepted for any well-formed
//! conversation id, and one on a conversation the user is not in has no effect (no push
//! is ever asked about it).

use natter_proto::{ConversationId, DeviceId, UserId};

use crate::{
    Claims, Sessions,
    api::ApiError,
    store::{MAX_MUTES, PushTargets, PushToken, SetMute, SetPush},
};

/// Longest accepted push token, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;
/// The push services a token can belong to.
pub(crate) const PLATFORMS: [&str; 4] = ["fcm", "apns", "webpush", "other"];

/// 1..=4096 bytes of printable ASCII (space through `~`).
pub(crate) fn valid_push_token(s: &str) -> bool {
    (1..=MAX_TOKEN_BYTES).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

pub(crate) fn valid_platform(s: &str) -> bool {
    PLATFORMS.contains(&s)
}

impl Sessions {
    /// Registers the caller device's push token (replacing its previous one); a device
    /// that held the same token loses it.
    pub(crate) async fn set_push(
        &self,
        claims: Claims,
        token: String,
        platform: String,
    ) -> Result<(), ApiError> {
        if !valid_push_token(&token) {
            return Err(ApiError::InvalidArgument(format!(
                "token must be 1 to {MAX_TOKEN_BYTES} bytes of printable ASCII"
            )));
        }
        if !valid_platform(&platform) {
            return Err(ApiError::InvalidArgument(
                "platform must be one of \"fcm\", \"apns\", \"webpush\", \"other\"".into(),
            ));
        }
        let Claims { user, device, .. } = claims;
        let push = PushToken { token, platform };
        let outcome = self
            .blocking("set push token", move |inner| {
                inner.store.set_push(user, device, push)
            })
            .await?;
        match outcome {
            SetPush::Stored { moved_from } => {
                if let Some((from_user, from_device)) = moved_from {
                    tracing::info!(
                        user = %user, device = %device, %from_user, %from_device,
                        "push token moved from another device"
                    );
                }
                Ok(())
            }
            // Authenticated a moment ago, logged out since.
            SetPush::NoDevice => Err(ApiError::Auth(crate::AuthError::Revoked)),
        }
    }

    /// Forgets the caller device's push token (nothing to forget is fine).
    pub(crate) async fn clear_push(&self, claims: Claims) -> Result<(), ApiError> {
        let Claims { user, device, .. } = claims;
        self.blocking("clear push token", move |inner| {
            inner.store.clear_push(user, device)
        })
        .await?;
        Ok(())
    }

    /// Mutes a conversation for the caller until `until_ms` (0 unmutes, `u64::MAX`
    /// mutes forever).
    pub(crate) async fn set_mute(
        &self,
        user: UserId,
        conversation: ConversationId,
        until_ms: u64,
    ) -> Result<(), ApiError> {
        let outcome = self
            .blocking("set mute", move |inner| {
                inner.store.set_mute(
                    user,
                    conversation.as_str(),
                    until_ms,
                    natter_proto::now_ms(),
                )
            })
            .await?;
        match outcome {
            SetMute::Done => Ok(()),
            SetMute::TooMany => Err(ApiError::Conflict(format!(
                "at most {MAX_MUTES} conversations can be muted; unmute one first"
            ))),
        }
    }

    /// The caller's mutes in force now: (conversation, until).
    pub(crate) async fn mutes(&self, user: UserId) -> Result<Vec<(String, u64)>, ApiError> {
        self.blocking("list mutes", move |inner| {
            inner.store.mutes(user, natter_proto::now_ms())
        })
        .await
    }

    /// Whether `user` muted `conversation` now, and their logged-in devices that
    /// registered a push token. Reads the disk (on the blocking pool).
    pub(crate) async fn push_targets(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<PushTargets, ApiError> {
        self.blocking("push targets", move |inner| {
            inner
                .store
                .push_targets(user, conversation.as_str(), natter_proto::now_ms())
        })
        .await
    }
}

/// A device as the notifier sees it.
pub(crate) fn push_device(device: DeviceId, push: PushToken) -> natter_proto::bus::PushDevice {
    natter_proto::bus::PushDevice {
        device_id: device.get(),
        token: push.token,
        platform: push.platform,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_platform_rules() {
        assert!(valid_push_token("a"));
        assert!(valid_push_token("fcm:AbC-_ ~!"));
        assert!(valid_push_token(&"t".repeat(MAX_TOKEN_BYTES)));
        assert!(!valid_push_token(&"t".repeat(MAX_TOKEN_BYTES + 1)));
        assert!(!valid_push_token(""));
        assert!(!valid_push_token("a\nb"));
        assert!(!valid_push_token("a\tb"));
        assert!(!valid_push_token("a\u{7f}"));
        assert!(!valid_push_token("é"));
        for p in ["fcm", "apns", "webpush", "other"] {
            assert!(valid_platform(p), "{p}");
        }
        for p in ["", "FCM", "gcm", "apns "] {
            assert!(!valid_platform(p), "{p}");
        }
    }
}

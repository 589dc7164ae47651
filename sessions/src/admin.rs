//! What the admin API asks of sessions on `Subject::admin(AdminService::Sessions)`
//! (`AdminSessionsRequest`, answered with `AdminSessionsReply`): search and inspect
//! accounts, disable (ban) or enable one, delete one, and post an announcement. Only the
//! admin role sends these; a client cannot reach the subject.
//!
//! A ban takes effect everywhere at once: the cache is updated before anything else is
//! told, so every later device check, bearer check, login and refresh of the account is
//! refused; then a `Kick` on the user's subject closes its open connections. Devices
//! stay logged in, so enabling the account again makes their tokens work again.
//! Deleting an account kicks it the same way. Every answer is a reply, never a panic:
//! bad input is `INVALID_ARGUMENT`, an unknown user `NOT_FOUND`, a failed store
//! `INTERNAL` (the detail goes to the log).

use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{
    ErrorCode, Subject, UserId,
    bus::{
        AdminAccount, AdminDevice, AdminSessionsReply, AdminSessionsRequest, AdminSetDisabled,
        AdminUserSearch, Kick, UserPush, admin_sessions_request::Op, user_push,
    },
    error, truncate_utf8,
    v1::{self, ServerFrame, server_frame},
};
use prost::Message as _;

use crate::{
    Sessions,
    store::{Account, Announcement, DeviceInfo},
};

/// Accounts a search returns when it asks for 0.
pub(crate) const DEFAULT_SEARCH_LIMIT: usize = 50;
/// Most accounts one search returns (a larger limit is lowered to this).
pub(crate) const MAX_SEARCH_LIMIT: usize = 500;
/// Longest search prefix or `after` username, in bytes (usernames have at most 32).
const MAX_SEARCH_ARG_BYTES: usize = 64;
/// Longest reason for disabling an account, in bytes.
pub(crate) const MAX_REASON_BYTES: usize = 200;
/// Longest reason a kick carries (the client sees it in the close frame, whose reason
/// holds at most 123 bytes).
pub(crate) const MAX_KICK_REASON_BYTES: usize = 100;
/// Longest announcement, in bytes.
pub(crate) const MAX_ANNOUNCEMENT_BYTES: usize = 4096;
/// The reason of the kick that closes a deleted account's connections.
const DELETED_REASON: &str = "account deleted";

/// The reply to one request (its payload as it came off the bus).
pub(crate) async fn answer(
    sessions: &Sessions,
    bus: &dyn Bus,
    payload: &Bytes,
) -> AdminSessionsReply {
    let request = match AdminSessionsRequest::decode(payload.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable AdminSessionsRequest");
            return refused(
                ErrorCode::InvalidArgument,
                "undecodable AdminSessionsRequest",
            );
        }
    };
    let outcome = match request.op {
        None => Err(error(
            ErrorCode::InvalidArgument,
            "the request has no operation",
        )),
        Some(Op::Search(search)) => sessions.admin_search(search).await,
        Some(Op::Inspect(user)) => sessions.admin_inspect(user).await,
        Some(Op::SetDisabled(set)) => sessions.admin_set_disabled(set, bus).await,
        Some(Op::Delete(user)) => sessions.admin_delete(user, bus).await,
        Some(Op::Announce(text)) => {
            sessions
                .announce(&text, bus)
                .await
                .map(|a| AdminSessionsReply {
                    announcement: Some(announcement_of(a)),
                    ..AdminSessionsReply::default()
                })
        }
    };
    outcome.unwrap_or_else(|e| AdminSessionsReply {
        error: Some(e),
        ..AdminSessionsReply::default()
    })
}

fn refused(code: ErrorCode, message: &str) -> AdminSessionsReply {
    AdminSessionsReply {
        error: Some(error(code, message)),
        ..AdminSessionsReply::default()
    }
}

fn internal() -> v1::Error {
    // The store's failure was logged where it happened.
    error(ErrorCode::Internal, "internal error")
}

fn user_id(raw: u64) -> Result<UserId, v1::Error> {
    UserId::new(raw).map_err(|_| error(ErrorCode::InvalidArgument, "user_id is required"))
}

fn no_such_user() -> v1::Error {
    error(ErrorCode::NotFound, "no such user")
}

/// The text of an announcement as stored (trimmed), or why it is refused: empty,
/// longer than [`MAX_ANNOUNCEMENT_BYTES`], or holding a control character other than
/// `\n`.
pub(crate) fn valid_announcement(text: &str) -> Result<&str, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the announcement is empty".into());
    }
    if text.len() > MAX_ANNOUNCEMENT_BYTES {
        return Err(format!(
            "the announcement has {} bytes; at most {MAX_ANNOUNCEMENT_BYTES} are allowed",
            text.len()
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("the announcement holds a control character (only \\n is allowed)".into());
    }
    Ok(text)
}

fn account_of(account: Account) -> AdminAccount {
    AdminAccount {
        user_id: account.id.get(),
        username: account.username,
        created_at_ms: account.created_at_ms,
        disabled: account.disabled,
        disabled_reason: account.disabled_reason,
        disabled_at_ms: account.disabled_at_ms,
        devices: account.devices.into_iter().map(device_of).collect(),
        active_devices: account.active_devices,
    }
}

fn device_of(device: DeviceInfo) -> AdminDevice {
    AdminDevice {
        device_id: device.id.get(),
        name: device.name,
        created_at_ms: device.created_at_ms,
        active: device.active,
        push_platform: device.push_platform,
    }
}

pub(crate) fn announcement_of(a: Announcement) -> v1::Announcement {
    v1::Announcement {
        id: a.id,
        text: a.text,
        created_at_ms: a.created_at_ms,
    }
}

fn one_account(account: Account) -> AdminSessionsReply {
    AdminSessionsReply {
        account: Some(account_of(account)),
        ..AdminSessionsReply::default()
    }
}

/// Closes every connection of `user` (on every edge): the account was disabled or
/// deleted. Best effort: the devices' next checks are refused either way.
async fn kick(bus: &dyn Bus, user: UserId, reason: &str) {
    let push = UserPush {
        body: Some(user_push::Body::Kick(Kick {
            device_id: 0,
            disabled: true,
            reason: truncate_utf8(reason, MAX_KICK_REASON_BYTES).to_owned(),
        })),
        ..UserPush::default()
    };
    if let Err(e) = bus
        .publish(&Subject::user(user), Bytes::from(push.encode_to_vec()))
        .await
    {
        tracing::warn!(error = %e, user = %user, "publishing a kick failed");
    }
}

impl Sessions {
    /// Accounts by username prefix, in username order, a page at a time.
    async fn admin_search(&self, search: AdminUserSearch) -> Result<AdminSessionsReply, v1::Error> {
        let AdminUserSearch {
            prefix,
            after,
            limit,
        } = search;
        if prefix.len() > MAX_SEARCH_ARG_BYTES || after.len() > MAX_SEARCH_ARG_BYTES {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("prefix and after may have at most {MAX_SEARCH_ARG_BYTES} bytes"),
            ));
        }
        let limit = match usize::try_from(limit).unwrap_or(usize::MAX) {
            0 => DEFAULT_SEARCH_LIMIT,
            n => n.min(MAX_SEARCH_LIMIT),
        };
        let (accounts, more) = self
            .blocking("search users", move |inner| {
                inner.store.search_users(&prefix, &after, limit)
            })
            .await
            .map_err(|_| internal())?;
        Ok(AdminSessionsReply {
            accounts: accounts.into_iter().map(account_of).collect(),
            more,
            ..AdminSessionsReply::default()
        })
    }

    /// One account with every device, newest first.
    async fn admin_inspect(&self, user: u64) -> Result<AdminSessionsReply, v1::Error> {
        let user = user_id(user)?;
        self.blocking("inspect user", move |inner| inner.store.account(user))
            .await
            .map_err(|_| internal())?
            .map(one_account)
            .ok_or_else(no_such_user)
    }

    /// Disables or enables an account (idempotent); disabling closes its connections.
    async fn admin_set_disabled(
        &self,
        set: AdminSetDisabled,
        bus: &dyn Bus,
    ) -> Result<AdminSessionsReply, v1::Error> {
        let AdminSetDisabled {
            user_id: raw,
            disabled,
            reason,
        } = set;
        let user = user_id(raw)?;
        if reason.len() > MAX_REASON_BYTES {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("reason may have at most {MAX_REASON_BYTES} bytes"),
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err(error(
                ErrorCode::InvalidArgument,
                "reason may not hold control characters",
            ));
        }
        let stored = reason.clone();
        let account = self
            .blocking("set disabled", move |inner| {
                let _order = inner.admin_lock.lock().unwrap_or_else(|e| e.into_inner());
                let account =
                    inner
                        .store
                        .set_disabled(user, disabled, &stored, natter_proto::now_ms())?;
                if account.is_some() {
                    inner.cache_write().set_disabled(user, disabled);
                }
                Ok(account)
            })
            .await
            .map_err(|_| internal())?
            .ok_or_else(no_such_user)?;
        if disabled {
            // After the cache: a device that reconnects once kicked is refused.
            let shown = if reason.is_empty() {
                "account disabled"
            } else {
                reason.as_str()
            };
            kick(bus, user, shown).await;
            tracing::info!(user = %user, "account disabled");
        } else {
            tracing::info!(user = %user, "account enabled");
        }
        Ok(one_account(account))
    }

    /// Deletes an account and closes its connections; answers the account as it was.
    async fn admin_delete(
        &self,
        user: u64,
        bus: &dyn Bus,
    ) -> Result<AdminSessionsReply, v1::Error> {
        let user = user_id(user)?;
        let deleted = self
            .blocking("delete user", move |inner| {
                let _order = inner.admin_lock.lock().unwrap_or_else(|e| e.into_inner());
                let deleted = inner.store.delete_user(user, natter_proto::now_ms())?;
                if let Some(deleted) = &deleted {
                    inner.cache_write().remove_user(user, &deleted.devices);
                }
                Ok(deleted)
            })
            .await
            .map_err(|_| internal())?
            .ok_or_else(no_such_user)?;
        kick(bus, user, DELETED_REASON).await;
        tracing::info!(user = %user, devices = deleted.devices.len(), "account deleted");
        Ok(one_account(deleted.account))
    }

    /// Stores an announcement and publishes it to every edge (which forward it to every
    /// connection). A failed publish is logged, not returned: the announcement is stored,
    /// and clients list what they missed with `GET /v1/announcements`.
    pub(crate) async fn announce(
        &self,
        text: &str,
        bus: &dyn Bus,
    ) -> Result<Announcement, v1::Error> {
        let text = valid_announcement(text)
            .map_err(|m| error(ErrorCode::InvalidArgument, m))?
            .to_owned();
        let announcement = self
            .blocking("append announcement", move |inner| {
                inner
                    .store
                    .append_announcement(&text, natter_proto::now_ms())
            })
            .await
            .map_err(|_| internal())?;
        let frame = ServerFrame {
            id: 0,
            body: Some(server_frame::Body::Announcement(announcement_of(
                announcement.clone(),
            ))),
        };
        if let Err(e) = bus
            .publish(&Subject::broadcast(), Bytes::from(frame.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, id = announcement.id, "publishing an announcement failed");
        }
        tracing::info!(id = announcement.id, "announcement posted");
        Ok(announcement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_rules() {
        assert_eq!(valid_announcement("  hello\nworld \n"), Ok("hello\nworld"));
        assert_eq!(
            valid_announcement(&"é".repeat(MAX_ANNOUNCEMENT_BYTES / 2)).map(str::len),
            Ok(MAX_ANNOUNCEMENT_BYTES)
        );
        assert!(valid_announcement(&"x".repeat(MAX_ANNOUNCEMENT_BYTES + 1)).is_err());
        for bad in ["", " \n\t ", "a\tb", "a\rb", "a\u{7}b", "a\u{85}b"] {
            assert!(valid_announcement(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("abc", 5), "abc");
        assert_eq!(truncate_utf8("abc", 2), "ab");
        // "é" is two bytes: cutting at 3 of "aéé" keeps "aé".
        assert_eq!(truncate_utf8("aéé", 4), "aé");
        assert_eq!(truncate_utf8("aéé", 2), "a");
        assert_eq!(truncate_utf8("é", 0), "");
    }
}

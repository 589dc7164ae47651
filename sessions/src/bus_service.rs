//! The bus endpoints of sessions (queue group "sessions"): `Subject::sessions_device()`
//! answers `DeviceCheck` with `DeviceStatus`, `Subject::sessions_user()` answers
//! `UserLookup` with `UserInfo`; both are answered from memory, never from disk.
//! `Subject::sessions_push_targets()` answers `PushTargetsRequest` with `PushTargets`
//! (the notifier asks it): that one reads the disk, on the blocking pool, up to
//! `PUSH_TARGETS_CONCURRENCY` at a time on spawned tasks, so the other two wait on it
//! only when that many are already in flight. `Subject::admin(AdminService::Sessions)`
//! answers the admin API's `AdminSessionsRequest` (`admin.rs`), also on spawned tasks,
//! `ADMIN_CONCURRENCY` at a time.

use std::{str::FromStr, sync::Arc};

use bytes::Bytes;
use futures::StreamExt;
use natter_bus::{Bus, BusEvent, BusMessage, Subscription};
use natter_proto::{
    AdminService, ConversationId, DeviceId, ErrorCode, Subject, UserId,
    bus::{DeviceCheck, DeviceStatus, PushTargets, PushTargetsRequest, UserInfo, UserLookup},
    error,
};
use prost::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Sessions, SessionsError, cache::Standing, push::push_device};

/// The queue group every sessions instance joins.
pub(crate) const QUEUE_GROUP: &str = "sessions";
/// Requests buffered per subject before the bus reports lag.
const CAPACITY: usize = 1024;
/// Push-target requests answered concurrently (each reads the disk).
const PUSH_TARGETS_CONCURRENCY: usize = 64;
/// Admin requests answered concurrently (each reads or writes the disk).
const ADMIN_CONCURRENCY: usize = 4;

/// Subscribes the four sessions subjects, then serves them on a spawned task until
/// `shutdown` is cancelled (or the bus closes). Returns once subscribed, so requests
/// sent after it returns are answered.
pub async fn start(
    sessions: Sessions,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, SessionsError> {
    let devices = bus
        .queue_subscribe(&Subject::sessions_device(), QUEUE_GROUP, CAPACITY)
        .await?;
    let users = bus
        .queue_subscribe(&Subject::sessions_user(), QUEUE_GROUP, CAPACITY)
        .await?;
    let push_targets = bus
        .queue_subscribe(&Subject::sessions_push_targets(), QUEUE_GROUP, CAPACITY)
        .await?;
    let admin = bus
        .queue_subscribe(
            &Subject::admin(AdminService::Sessions),
            QUEUE_GROUP,
            CAPACITY,
        )
        .await?;
    Ok(tokio::spawn(serve(
        sessions,
        bus,
        shutdown,
        [devices, users, push_targets, admin],
    )))
}

async fn serve(
    sessions: Sessions,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    [mut devices, mut users, mut push_targets, mut admin]: [Subscription; 4],
) {
    let permits = Arc::new(Semaphore::new(PUSH_TARGETS_CONCURRENCY));
    let admin_permits = Arc::new(Semaphore::new(ADMIN_CONCURRENCY));
    loop {
        let (event, subject) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ev = devices.next() => (ev, "device"),
            ev = users.next() => (ev, "user"),
            ev = push_targets.next() => (ev, "push_targets"),
            ev = admin.next() => (ev, "admin"),
        };
        let msg = match event {
            Some(BusEvent::Message(msg)) => msg,
            Some(BusEvent::Lagged) => {
                // Dropped requests time out at their senders; nothing to repair here.
                tracing::warn!(subject, "sessions bus subscription lagged");
                continue;
            }
            None => {
                tracing::warn!(subject, "sessions bus subscription ended");
                break;
            }
        };
        let reply = match subject {
            "device" => device_status(&sessions, &msg).encode_to_vec(),
            "user" => user_info(&sessions, &msg).encode_to_vec(),
            "admin" => {
                let Ok(permit) = admin_permits.clone().acquire_owned().await else {
                    break;
                };
                let (sessions, bus) = (sessions.clone(), bus.clone());
                tokio::spawn(async move {
                    let reply = crate::admin::answer(&sessions, bus.as_ref(), &msg.payload)
                        .await
                        .encode_to_vec();
                    if let Err(e) = natter_bus::reply(bus.as_ref(), &msg, Bytes::from(reply)).await
                    {
                        tracing::warn!(error = %e, subject = "admin", "sessions reply failed");
                    }
                    drop(permit);
                });
                continue;
            }
            _ => {
                // Waits here (and the subscription buffers) when all permits are out.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (sessions, bus) = (sessions.clone(), bus.clone());
                tokio::spawn(async move {
                    let reply = push_targets_of(&sessions, &msg).await.encode_to_vec();
                    if let Err(e) = natter_bus::reply(bus.as_ref(), &msg, Bytes::from(reply)).await
                    {
                        tracing::warn!(error = %e, subject = "push_targets", "sessions reply failed");
                    }
                    drop(permit);
                });
                continue;
            }
        };
        if let Err(e) = natter_bus::reply(bus.as_ref(), &msg, Bytes::from(reply)).await {
            tracing::warn!(error = %e, subject, "sessions reply failed");
        }
    }
    tracing::debug!("sessions bus endpoints stopped");
}

fn device_status(sessions: &Sessions, msg: &BusMessage) -> DeviceStatus {
    let check = match DeviceCheck::decode(msg.payload.clone()) {
        Ok(c) => c,
        Err(e) => {
            // Answer rather than let the caller wait for a timeout: not active.
            tracing::warn!(error = %e, "undecodable DeviceCheck");
            return DeviceStatus::default();
        }
    };
    let (user, device) = (UserId(check.user_id), DeviceId(check.device_id));
    match sessions.inner.cache_read().standing(user, device) {
        Standing::Active => {}
        Standing::Disabled => {
            return DeviceStatus {
                disabled: true,
                ..DeviceStatus::default()
            };
        }
        Standing::Inactive => return DeviceStatus::default(),
    }
    DeviceStatus {
        active: true,
        username: sessions
            .username_of(user)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        disabled: false,
    }
}

fn user_info(sessions: &Sessions, msg: &BusMessage) -> UserInfo {
    let lookup = match UserLookup::decode(msg.payload.clone()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable UserLookup");
            return UserInfo::default();
        }
    };
    // By id when one is given, else by username.
    let found = if lookup.user_id != 0 {
        let id = UserId(lookup.user_id);
        sessions.username_of(id).map(|name| (id, name))
    } else if !lookup.username.is_empty() {
        sessions.user_by_name(&lookup.username)
    } else {
        None
    };
    match found {
        Some((id, name)) => UserInfo {
            exists: true,
            user_id: id.get(),
            username: name.to_string(),
        },
        None => UserInfo::default(),
    }
}

async fn push_targets_of(sessions: &Sessions, msg: &BusMessage) -> PushTargets {
    let refuse = |message: &str| PushTargets {
        error: Some(error(ErrorCode::InvalidArgument, message)),
        ..PushTargets::default()
    };
    let request = match PushTargetsRequest::decode(msg.payload.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable PushTargetsRequest");
            return refuse("undecodable PushTargetsRequest");
        }
    };
    let Ok(user) = UserId::new(request.user_id) else {
        return refuse("user_id is required");
    };
    let Ok(conversation) = ConversationId::from_str(&request.conversation_id) else {
        return refuse("conversation_id is malformed");
    };
    if sessions.inner.cache_read().is_disabled(user) {
        // A banned user is not woken: none of their devices could connect.
        return PushTargets::default();
    }
    match sessions.push_targets(user, conversation).await {
        Ok(found) => PushTargets {
            muted: found.muted,
            devices: found
                .devices
                .into_iter()
                .map(|(device, push)| push_device(device, push))
                .collect(),
            error: None,
        },
        // Logged where it failed.
        Err(_) => PushTargets {
            error: Some(error(ErrorCode::Internal, "push targets unavailable")),
            ..PushTargets::default()
        },
    }
}

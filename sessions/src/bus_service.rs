//! The bus endpoints of sessions (queue group "sessions"): `Subject::sessions_device()`
//! answers `DeviceCheck` with `DeviceStatus`, `Subject::sessions_user()` answers
//! `UserLookup` with `UserInfo`. Both are answered from memory, never from disk.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use natter_bus::{Bus, BusEvent, BusMessage, Subscription};
use natter_proto::{
    DeviceId, Subject, UserId,
    bus::{DeviceCheck, DeviceStatus, UserInfo, UserLookup},
};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{Sessions, SessionsError};

/// The queue group every sessions instance joins.
pub(crate) const QUEUE_GROUP: &str = "sessions";
/// Requests buffered per subject before the bus reports lag.
const CAPACITY: usize = 1024;

/// Subscribes the two sessions subjects, then serves them on a spawned task until
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
    Ok(tokio::spawn(serve(sessions, bus, shutdown, devices, users)))
}

async fn serve(
    sessions: Sessions,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    mut devices: Subscription,
    mut users: Subscription,
) {
    loop {
        let (event, subject) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ev = devices.next() => (ev, "device"),
            ev = users.next() => (ev, "user"),
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
        let reply = if subject == "device" {
            device_status(&sessions, &msg).encode_to_vec()
        } else {
            user_info(&sessions, &msg).encode_to_vec()
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
    if !sessions.is_device_active(user, device) {
        return DeviceStatus::default();
    }
    DeviceStatus {
        active: true,
        username: sessions
            .username_of(user)
            .map(|n| n.to_string())
            .unwrap_or_default(),
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

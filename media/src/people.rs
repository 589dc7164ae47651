//! Download rights through the people service: a profile photo or a status update's
//! media may be downloaded by whoever the people service, asked *as the downloader*
//! (`natter.people.request` with the downloader as caller), shows it to. Privacy
//! settings ("profile photo": everyone / contacts / nobody), blocks and who sees whose
//! statuses are applied by the people service itself, so the rule is not written twice:
//! a hidden photo comes back empty, an invisible status not at all.

use std::time::Duration;

use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{
    DeviceId, ErrorCode, Subject, UserId, bus,
    v1::{self, people_request::Op},
};
use prost::Message as _;

use crate::MediaError;

/// Asks the people service `op` as `user` (on `device`); `None` when it refuses (an
/// unknown user, say), an error when it does not answer.
async fn ask(
    bus: &dyn Bus,
    timeout: Duration,
    user: UserId,
    device: DeviceId,
    op: Op,
) -> Result<Option<v1::PeopleResult>, MediaError> {
    let query = bus::PeopleQuery {
        caller: Some(bus::Caller {
            user_id: user.get(),
            device_id: device.get(),
        }),
        request: Some(v1::PeopleRequest { op: Some(op) }),
    };
    let unavailable = || MediaError::Unavailable("people service unavailable, retry".into());
    let reply = bus
        .request(
            &Subject::people_request(),
            Bytes::from(query.encode_to_vec()),
            timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "people service did not answer a media access check");
            unavailable()
        })?;
    let reply = bus::PeopleReply::decode(reply)
        .map_err(|e| MediaError::Internal(format!("undecodable people reply: {e}")))?;
    if let Some(error) = reply.error {
        return match ErrorCode::try_from(error.code) {
            Ok(ErrorCode::Unavailable) | Ok(ErrorCode::Internal) => Err(unavailable()),
            _ => Ok(None),
        };
    }
    Ok(reply.result)
}

/// Is media `id` the profile photo of `owner`, as `user` may see `owner`'s profile?
pub(crate) async fn profile_shows(
    bus: &dyn Bus,
    timeout: Duration,
    user: UserId,
    device: DeviceId,
    owner: UserId,
    id: &str,
) -> Result<bool, MediaError> {
    let op = Op::ProfileGet(v1::ProfileGet {
        user_ids: vec![owner.get()],
    });
    let Some(result) = ask(bus, timeout, user, device, op).await? else {
        return Ok(false);
    };
    Ok(result
        .profiles
        .iter()
        .any(|p| p.user_id == owner.get() && !id.is_empty() && p.avatar_media_id == id))
}

/// Is media `id` in one of `owner`'s live status updates that `user` may see?
pub(crate) async fn status_shows(
    bus: &dyn Bus,
    timeout: Duration,
    user: UserId,
    device: DeviceId,
    owner: UserId,
    id: &str,
) -> Result<bool, MediaError> {
    if id.is_empty() {
        return Ok(false);
    }
    // The statuses the caller may see, by user; a user's own are not listed there.
    let op = if owner == user {
        Op::StatusMine(v1::StatusMine {})
    } else {
        Op::StatusList(v1::StatusList {})
    };
    let Some(result) = ask(bus, timeout, user, device, op).await? else {
        return Ok(false);
    };
    let carries = |s: &v1::Status| s.user_id == owner.get() && s.media_id == id;
    Ok(result.statuses.iter().any(carries)
        || result
            .by_user
            .iter()
            .filter(|u| u.user_id == owner.get())
            .any(|u| u.statuses.iter().any(carries)))
}

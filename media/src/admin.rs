//! `natter.admin.media` on the bus: the admin API asks what a user stores (`usage`) or
//! deletes their uploads (`delete_user`). Any number of instances answer (queue group
//! [`crate::describe::QUEUE_GROUP`]); started with the describe endpoint, by
//! [`crate::describe::start`].

use std::sync::Arc;

use bytes::Bytes;
use natter_bus::{Bus, BusError, BusMessage, Subscription};
use natter_proto::{AdminService, ErrorCode, Subject, UserId, bus, error, v1};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::{Media, MediaError, describe::QUEUE_GROUP};

const SUB_CAPACITY: usize = 1024;
/// Deletes can be long (every record of a user): a few at a time.
const MAX_CONCURRENT: usize = 8;

/// Subscribes `natter.admin.media`; [`serve`] answers it.
pub(crate) async fn subscribe(bus: &dyn Bus) -> Result<Subscription, BusError> {
    bus.queue_subscribe(
        &Subject::admin(AdminService::Media),
        QUEUE_GROUP,
        SUB_CAPACITY,
    )
    .await
}

/// Answers `natter.admin.media` until `shutdown`.
pub(crate) async fn serve(
    mut sub: Subscription,
    media: Media,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) {
    // A request taken but not started at shutdown times out at its sender, which retries.
    let _unstarted =
        natter_bus::serve_requests("media.admin", &mut sub, MAX_CONCURRENT, &shutdown, |msg| {
            let media = media.clone();
            let bus = bus.clone();
            async move { answer(&media, bus.as_ref(), msg).await }
        })
        .await;
}

async fn answer(media: &Media, bus: &dyn Bus, msg: BusMessage) {
    let reply = match handle(media, msg.payload.clone()).await {
        Ok((bytes, files)) => bus::AdminMediaReply {
            error: None,
            bytes,
            files,
        },
        Err(e) => bus::AdminMediaReply {
            error: Some(e),
            ..Default::default()
        },
    };
    if let Err(e) = natter_bus::reply(bus, &msg, Bytes::from(reply.encode_to_vec())).await {
        tracing::debug!(error = %e, "media admin reply not delivered");
    }
}

/// `usage`: the bytes counted against the user's quota and their number of uploads.
/// `delete_user`: deletes every upload of the user ([`Media::delete_user_media`]) and
/// answers what they counted before (bytes, uploads); idempotent.
async fn handle(media: &Media, payload: Bytes) -> Result<(u64, u64), v1::Error> {
    use bus::admin_media_request::Op;
    let req = bus::AdminMediaRequest::decode(payload)
        .map_err(|_| error(ErrorCode::BadFrame, "undecodable AdminMediaRequest"))?;
    let user = |raw: u64| {
        UserId::new(raw).map_err(|_| error(ErrorCode::InvalidArgument, "user id missing"))
    };
    let result = match req.op {
        Some(Op::Usage(u)) => media.admin_usage(user(u)?).await,
        Some(Op::DeleteUser(u)) => media.delete_user_media(user(u)?).await,
        None => {
            return Err(error(
                ErrorCode::InvalidArgument,
                "admin media request has no operation",
            ));
        }
    };
    result.map_err(|e| match e {
        MediaError::Internal(m) => error(ErrorCode::Internal, m),
        other => error(ErrorCode::Unavailable, other.to_string()),
    })
}

//! `natter.media.describe` on the bus: the owner of a conversation asks, before it
//! stores a media message, whether the sender may share the media and what it is
//! (`Media::describe`). Any number of instances answer (queue group `media`). [`start`]
//! also serves the admin API's `natter.admin.media` ([`crate::admin`]).

use bytes::Bytes;
use natter_bus::{Bus, BusError, BusMessage};
use natter_proto::{Subject, bus};
use prost::Message as _;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Media;

pub const QUEUE_GROUP: &str = "media";
const SUB_CAPACITY: usize = 4096;
const MAX_CONCURRENT: usize = 64;

/// Serves `natter.media.describe` and `natter.admin.media` until `shutdown`; also runs
/// the garbage collector.
pub async fn start(
    media: Media,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    let mut sub = bus
        .queue_subscribe(&Subject::media_describe(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let admin = crate::admin::subscribe(bus.as_ref()).await?;
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        media.clone(),
        bus.clone(),
        shutdown.clone(),
    ));
    let gc = media.start_gc(shutdown.clone());
    Ok(tokio::spawn(async move {
        // A request taken but not started at shutdown times out at its sender, which
        // retries.
        let _unstarted = natter_bus::serve_requests(
            "media.describe",
            &mut sub,
            MAX_CONCURRENT,
            &shutdown,
            |msg| {
                let media = media.clone();
                let bus = bus.clone();
                async move { answer(&media, bus.as_ref(), msg).await }
            },
        )
        .await;
        let _ = gc.await;
        let _ = admin.await;
        tracing::debug!("media service stopped");
    }))
}

async fn answer(media: &Media, bus: &dyn Bus, msg: BusMessage) {
    let reply = match bus::MediaDescribe::decode(msg.payload.clone()) {
        Ok(request) => media.describe(request).await,
        Err(_) => bus::MediaDescribeReply {
            media: None,
            error: Some(natter_proto::error(
                natter_proto::ErrorCode::BadFrame,
                "undecodable MediaDescribe",
            )),
        },
    };
    if let Err(e) = natter_bus::reply(bus, &msg, Bytes::from(reply.encode_to_vec())).await {
        tracing::debug!(error = %e, "media reply not delivered");
    }
}

//! The bus client of `natter.media.describe`, for the services that store media ids:
//! the messages owner (a media message) and the people service (an avatar, a status).
//! It asks whether the caller may share the media (their upload, or forwarded from a
//! message they can read) and what it is; a yes pins the media against garbage
//! collection. Built without the `service` feature, it links only the bus and proto.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use natter_bus::{Bus, BusError};
use natter_proto::{ErrorCode, Subject, bus, error, v1};
use prost::Message as _;

/// Asks the media service. Cheap to clone.
#[derive(Clone)]
pub struct MediaClient {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl std::fmt::Debug for MediaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaClient").finish_non_exhaustive()
    }
}

impl MediaClient {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Self {
        MediaClient { bus, timeout }
    }

    /// The media service's description of `wanted` (its `id`, and `forwarded_from_*`
    /// when forwarding), asked as `caller`: id, kind, mime, size, sha256, dimensions,
    /// duration, preview. Its refusal (`NOT_FOUND`, `MEDIA_REFUSED`, ...) comes back as
    /// it is; `UNAVAILABLE` when no media service answers.
    pub async fn describe(
        &self,
        caller: bus::Caller,
        wanted: v1::MediaRef,
    ) -> Result<v1::MediaRef, v1::Error> {
        let request = bus::MediaDescribe {
            caller: Some(caller),
            media: Some(wanted),
        };
        let reply = match self
            .bus
            .request(
                &Subject::media_describe(),
                Bytes::from(request.encode_to_vec()),
                self.timeout,
            )
            .await
        {
            Ok(reply) => reply,
            Err(e @ (BusError::NoResponders(_) | BusError::Timeout(_))) => {
                tracing::debug!(error = %e, "media describe unanswered");
                return Err(unavailable());
            }
            Err(e) => {
                tracing::warn!(error = %e, "media describe failed");
                return Err(unavailable());
            }
        };
        let reply = bus::MediaDescribeReply::decode(reply)
            .map_err(|_| error(ErrorCode::Internal, "undecodable media description"))?;
        if let Some(e) = reply.error {
            return Err(e);
        }
        reply
            .media
            .ok_or_else(|| error(ErrorCode::Internal, "empty media description"))
    }
}

fn unavailable() -> v1::Error {
    error(ErrorCode::Unavailable, "media service unavailable, retry")
}

//! Asks the media service (`natter.media.describe`) whether a sender may share a media
//! and what it is, before a media message is stored: the stored reference carries the
//! server's description (kind, size, hash, preview...), never the client's word.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use natter_bus::{Bus, BusError};
use natter_proto::{ErrorCode, Subject, bus, error, v1};
use prost::Message as _;

use crate::Caller;

/// Longest caption, in bytes of UTF-8.
pub const MAX_CAPTION_BYTES: usize = 1024;
/// Longest file name, in bytes of UTF-8.
pub const MAX_FILENAME_BYTES: usize = 255;
/// Longest media id accepted in a Send (ids are 22 characters).
const MAX_MEDIA_ID_BYTES: usize = 64;

/// Checks the client's part of a media reference (before anything is asked).
pub(crate) fn validate(media: &v1::MediaRef) -> Result<(), v1::Error> {
    if media.id.is_empty() || media.id.len() > MAX_MEDIA_ID_BYTES {
        return Err(error(
            ErrorCode::InvalidArgument,
            "media.id is missing or too long",
        ));
    }
    if media.caption.len() > MAX_CAPTION_BYTES {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!("media.caption is longer than {MAX_CAPTION_BYTES} bytes"),
        ));
    }
    if media.filename.len() > MAX_FILENAME_BYTES || media.filename.chars().any(char::is_control) {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!(
                "media.filename must be at most {MAX_FILENAME_BYTES} bytes without control characters"
            ),
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub(crate) struct MediaClient {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl MediaClient {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Self {
        MediaClient { bus, timeout }
    }

    /// The reference to store: the media service's description plus the client's
    /// caption, file name and voice flag (the forwarding source is dropped).
    pub async fn describe(
        &self,
        caller: Caller,
        wanted: &v1::MediaRef,
    ) -> Result<v1::MediaRef, v1::Error> {
        let request = bus::MediaDescribe {
            caller: Some(bus::Caller {
                user_id: caller.user.get(),
                device_id: caller.device.get(),
            }),
            media: Some(wanted.clone()),
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
                return Err(error(
                    ErrorCode::Unavailable,
                    "media service unavailable, retry",
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "media describe failed");
                return Err(error(
                    ErrorCode::Unavailable,
                    "media service unavailable, retry",
                ));
            }
        };
        let reply = bus::MediaDescribeReply::decode(reply)
            .map_err(|_| error(ErrorCode::Internal, "undecodable media description"))?;
        if let Some(e) = reply.error {
            return Err(e);
        }
        let described = reply
            .media
            .ok_or_else(|| error(ErrorCode::Internal, "empty media description"))?;
        Ok(v1::MediaRef {
            caption: wanted.caption.clone(),
            filename: wanted.filename.clone(),
            voice: wanted.voice && described.kind == v1::MediaKind::Audio as i32,
            forwarded_from_conversation: String::new(),
            forwarded_from_seq: 0,
            ..described
        })
    }
}

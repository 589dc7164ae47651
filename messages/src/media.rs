//! Asks the media service (`natter.media.describe`) whether a sender may share a media
//! and what it is, before a media message is stored: the stored reference carries the
//! server's description (kind, size, hash, preview...), never the client's word.

use natter_media::client::MediaClient;
use natter_proto::{ErrorCode, bus, error, v1};

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

/// The reference to store: the media service's description of the client's `wanted`
/// (`natter_media::client`) plus the client's caption, file name and voice flag (the
/// forwarding source is dropped).
pub(crate) async fn describe(
    client: &MediaClient,
    caller: Caller,
    wanted: &v1::MediaRef,
) -> Result<v1::MediaRef, v1::Error> {
    let described = client
        .describe(
            bus::Caller {
                user_id: caller.user.get(),
                device_id: caller.device.get(),
            },
            wanted.clone(),
        )
        .await?;
    Ok(v1::MediaRef {
        caption: wanted.caption.clone(),
        filename: wanted.filename.clone(),
        voice: wanted.voice && described.kind == v1::MediaKind::Audio as i32,
        forwarded_from_conversation: String::new(),
        forwarded_from_seq: 0,
        ..described
    })
}

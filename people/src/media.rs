//! Asks the media service (`natter.media.describe`) whether a user may show a media as
//! their avatar or in a status update, before the people service stores its id: the
//! caller must have uploaded it (the media service's rule, the one a media message
//! follows), and asking pins it, so the garbage collector keeps it. The same request as
//! the messages owner's, through the media service's bus client.

pub(crate) use natter_media::client::MediaClient;
use natter_proto::{ErrorCode, bus, error, v1};

/// What the media is to be used for: which kinds it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A profile photo: an image.
    Avatar,
    /// A status update: an image or a video.
    Status,
}

impl Use {
    fn allows(self, kind: i32) -> bool {
        let image = kind == v1::MediaKind::Image as i32;
        match self {
            Use::Avatar => image,
            Use::Status => image || kind == v1::MediaKind::Video as i32,
        }
    }

    fn refusal(self) -> v1::Error {
        match self {
            Use::Avatar => error(
                ErrorCode::InvalidArgument,
                "avatar_media_id must name an image",
            ),
            Use::Status => error(
                ErrorCode::InvalidArgument,
                "a status media_id must name an image or a video",
            ),
        }
    }
}

/// Checks that `caller` may use media `id` for `what` and pins it (the media service's
/// `describe`, `natter_media::client`). Its refusal (`NOT_FOUND`, `MEDIA_REFUSED`, ...)
/// is returned as it is; `UNAVAILABLE` when it does not answer; `INVALID_ARGUMENT` for
/// a wrong kind.
pub(crate) async fn check(
    client: &MediaClient,
    caller: bus::Caller,
    id: &str,
    what: Use,
) -> Result<(), v1::Error> {
    let wanted = v1::MediaRef {
        id: id.to_owned(),
        ..Default::default()
    };
    let described = client.describe(caller, wanted).await?;
    if !what.allows(described.kind) {
        return Err(what.refusal());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_per_use() {
        let [image, video, audio, document] = [
            v1::MediaKind::Image,
            v1::MediaKind::Video,
            v1::MediaKind::Audio,
            v1::MediaKind::Document,
        ]
        .map(|k| k as i32);
        assert!(Use::Avatar.allows(image));
        assert!(!Use::Avatar.allows(video));
        assert!(!Use::Avatar.allows(document));
        assert!(Use::Status.allows(image));
        assert!(Use::Status.allows(video));
        assert!(!Use::Status.allows(audio));
        assert!(!Use::Status.allows(document));
        assert_eq!(
            Use::Avatar.refusal().code,
            ErrorCode::InvalidArgument as i32
        );
    }
}

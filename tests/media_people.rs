//! Profile photos and status media end to end through the real binary (docs/protocol.md,
//! "People" and "Media" → "Downloading"): an avatar or a status's media must be the
//! user's own upload of a fitting kind (checked and pinned by the media service), and
//! others download it with `?profile=` / `?status=`, as far as the people service shows
//! it to them (privacy settings, blocks, who sees statuses). Uploads and downloads go
//! through natter-client's `HttpClient` (its `MediaVia`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use natter_client::{
    Client, ErrorCode, HttpClient, Session, UserId,
    media::{MediaInfo, MediaVia},
    v1::{self, Visibility, people_request::Op},
};

/// A 3x2 RGB PNG, 73 bytes (the one of tests/media.rs, where it is explained).
const PNG: [u8; 73] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0x00, 0xc1, 0x70, 0x16, 0x00, 0x3b, 0xd8, 0x05, 0xfb, 0x36, 0x11, 0x98, 0xea, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A user with one connected device.
struct Person {
    session: Session,
    client: Client,
}

impl Person {
    async fn new(server: &Server, name: &str) -> Person {
        let session = server.user(name).await;
        let client = server.device(&session).await;
        Person { session, client }
    }

    fn id(&self) -> UserId {
        self.session.user_id
    }

    fn token(&self) -> &str {
        &self.session.access_token
    }

    async fn ok(&self, op: Op) -> v1::PeopleResult {
        let what = format!("{op:?}");
        self.client
            .people(op)
            .await
            .unwrap_or_else(|e| panic!("{what} by {}: {e}", self.session.username))
    }

    async fn refused(&self, op: Op) -> ErrorCode {
        refusal(self.client.people(op).await)
    }

    async fn add_contact(&self, other: &Person) {
        self.ok(Op::ContactAdd(v1::ContactAdd {
            user_id: other.id().get(),
            ..Default::default()
        }))
        .await;
    }

    async fn set_avatar(&self, id: &str) -> Result<v1::PeopleResult, ErrorCode> {
        self.client.people(avatar(id)).await.map_err(common::code)
    }
}

fn avatar(id: &str) -> Op {
    Op::ProfileUpdate(v1::ProfileUpdate {
        avatar_media_id: Some(id.to_owned()),
        ..Default::default()
    })
}

fn photo_visible_to(v: Visibility) -> Op {
    Op::PrivacySet(v1::PrivacySet {
        settings: Some(v1::PrivacySettings {
            profile_photo: v as i32,
            ..Default::default()
        }),
    })
}

fn status_with(post_id: &str, media_id: &str) -> Op {
    Op::StatusPost(v1::StatusPost {
        post_id: post_id.into(),
        media_id: media_id.into(),
        ..Default::default()
    })
}

fn http(server: &Server) -> HttpClient {
    HttpClient::new(&server.base_url()).expect("an HTTP client")
}

async fn upload(http: &HttpClient, who: &Person, name: &str, data: &[u8]) -> MediaInfo {
    let opts = natter_client::UploadOptions {
        filename: Some(name.into()),
        ..Default::default()
    };
    http.upload_media_bytes(who.token(), Bytes::copy_from_slice(data), &opts)
        .await
        .unwrap_or_else(|e| panic!("uploading {name}: {e}"))
}

/// The HTTP status of downloading `id` via `via` as `who` (200 with the content checked).
async fn download(
    http: &HttpClient,
    who: &Person,
    id: &str,
    via: MediaVia<'_>,
    want: &[u8],
) -> u16 {
    match http.download_media(who.token(), id, via).await {
        Ok(bytes) => {
            assert_eq!(&bytes[..], want, "downloaded content of {id} via {via:?}");
            200
        }
        Err(e) => e.status().unwrap_or_else(|| panic!("download {id}: {e}")),
    }
}

/// A PDF of `n` pseudo-random bytes after its header (a document, not an image).
fn pdf(seed: u8) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    out.extend((0..512u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatars_are_checked_pinned_and_shared_by_privacy() {
    let server = Server::start_with(&[
        // Long enough for a loaded CI machine to set the avatar after its upload.
        ("NATTER_MEDIA_GC_GRACE_S", "3"),
        ("NATTER_MEDIA_GC_INTERVAL_S", "1"),
    ])
    .await;
    bounded(60, async {
        let http = http(&server);
        let amy = Person::new(&server, "amy").await;
        let cal = Person::new(&server, "cal").await;
        let dee = Person::new(&server, "dee").await;
        let stranger = Person::new(&server, "stranger").await;
        let pest = Person::new(&server, "pest").await;
        for other in [&cal, &dee, &pest] {
            amy.add_contact(other).await;
        }

        // Her own PNG as her avatar; an unused upload next to it.
        let photo = upload(&http, &amy, "me.png", &PNG).await;
        let unused = upload(&http, &amy, "unused.pdf", &pdf(1)).await;
        let set = amy
            .set_avatar(&photo.id)
            .await
            .expect("her own image as avatar");
        assert_eq!(set.profiles[0].avatar_media_id, photo.id);

        // A contact, and (photo: everyone by default) a stranger, download it.
        let via = MediaVia::Profile(amy.id());
        assert_eq!(download(&http, &cal, &photo.id, via, &PNG).await, 200);
        assert_eq!(download(&http, &stranger, &photo.id, via, &PNG).await, 200);
        let info = http
            .media_info(cal.token(), &photo.id, via)
            .await
            .expect("info via profile");
        assert_eq!(
            (info.kind.as_str(), info.width, info.height),
            ("image", 3, 2)
        );
        http.media_thumbnail(cal.token(), &photo.id, via)
            .await
            .expect("thumbnail via profile");
        // Through nothing, or someone else's profile: refused.
        let none = MediaVia::Own;
        assert_eq!(download(&http, &cal, &photo.id, none, &PNG).await, 403);
        let wrong = MediaVia::Profile(cal.id());
        assert_eq!(download(&http, &cal, &photo.id, wrong, &PNG).await, 403);
        let unused_via = MediaVia::Profile(amy.id());
        assert_eq!(
            download(&http, &cal, &unused.id, unused_via, &[]).await,
            403
        );

        // A blocked user gets 403 (a hidden photo is no access).
        amy.ok(Op::Block(v1::Block {
            user_id: pest.id().get(),
        }))
        .await;
        assert_eq!(download(&http, &pest, &photo.id, via, &PNG).await, 403);

        // Photo visible to nobody: a contact who has not downloaded it yet gets 403.
        amy.ok(photo_visible_to(Visibility::Nobody)).await;
        assert_eq!(download(&http, &dee, &photo.id, via, &PNG).await, 403);

        // Refused avatars: someone else's upload, a document, an unknown id; nothing
        // stored.
        let cals = upload(&http, &cal, "cal.png", &PNG).await;
        assert_eq!(
            amy.set_avatar(&cals.id).await.unwrap_err(),
            ErrorCode::MediaRefused
        );
        let doc = upload(&http, &amy, "doc.pdf", &pdf(2)).await;
        assert_eq!(
            amy.set_avatar(&doc.id).await.unwrap_err(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            amy.set_avatar("AAAAAAAAAAAAAAAAAAAAAA").await.unwrap_err(),
            ErrorCode::NotFound
        );
        let mine = amy.ok(Op::ProfileGet(v1::ProfileGet::default())).await;
        assert_eq!(
            mine.profiles[0].avatar_media_id, photo.id,
            "still her photo"
        );
        // Clearing the avatar asks nothing.
        amy.set_avatar("").await.expect("clearing the avatar");
        amy.set_avatar(&photo.id).await.expect("the photo again");

        // Garbage collection (grace 3 s, every 1 s): the unused upload goes, the avatar
        // (older than it) stays.
        let own = MediaVia::Own;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while download(&http, &amy, &unused.id, own, &pdf(1)).await != 404 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the unused upload was not collected"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(download(&http, &amy, &photo.id, own, &PNG).await, 200);
        amy.ok(photo_visible_to(Visibility::Everyone)).await;
        assert_eq!(download(&http, &dee, &photo.id, via, &PNG).await, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_media_reaches_mutual_contacts_only() {
    let server = Server::start().await;
    bounded(60, async {
        let http = http(&server);
        let sam = Person::new(&server, "sam").await;
        let mia = Person::new(&server, "mia").await;
        let stranger = Person::new(&server, "stranger").await;
        sam.add_contact(&mia).await;
        mia.add_contact(&sam).await;

        let pic = upload(&http, &sam, "story.png", &PNG).await;
        let posted = sam.ok(status_with("s-1", &pic.id)).await;
        assert_eq!(posted.status.expect("the status").media_id, pic.id);

        let via = MediaVia::Status(sam.id());
        assert_eq!(download(&http, &mia, &pic.id, via, &PNG).await, 200);
        assert_eq!(download(&http, &stranger, &pic.id, via, &PNG).await, 403);
        // A status is not a profile photo.
        let profile = MediaVia::Profile(sam.id());
        assert_eq!(
            download(&http, &stranger, &pic.id, profile, &PNG).await,
            403
        );

        // Refused status media: a document, someone else's upload; nothing posted.
        let doc = upload(&http, &sam, "doc.pdf", &pdf(3)).await;
        assert_eq!(
            sam.refused(status_with("s-2", &doc.id)).await,
            ErrorCode::InvalidArgument
        );
        let mias = upload(&http, &mia, "mia.png", &PNG).await;
        assert_eq!(
            sam.refused(status_with("s-3", &mias.id)).await,
            ErrorCode::MediaRefused
        );
        let mine = sam.ok(Op::StatusMine(v1::StatusMine {})).await;
        assert_eq!(mine.statuses.len(), 1, "only the first status: {mine:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_names_one_via() {
    let server = Server::start().await;
    bounded(30, async {
        let amy = Person::new(&server, "amy").await;
        let photo = upload(&http(&server), &amy, "me.png", &PNG).await;
        let client = reqwest::Client::new();
        let base = server.base_url();
        let me = amy.id().get();
        for query in [
            format!("profile={me}&status={me}"),
            format!("profile={me}&conversation=d.1.2&seq=1"),
            "profile=0".to_owned(),
            "status=x".to_owned(),
        ] {
            let r = client
                .get(format!("{base}/v1/media/{}?{query}", photo.id))
                .bearer_auth(amy.token())
                .send()
                .await
                .expect("an answer");
            assert_eq!(r.status().as_u16(), 400, "?{query}");
        }
    })
    .await;
}

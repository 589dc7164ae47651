//! The media service's storage behaviour on each object store: local files, and a real
//! S3-compatible server (`s3s-fs`, started by natter-testkit; skipped with a note when it
//! is not installed, a failure in CI where `scripts/setup` installs it). What is checked
//! here is what the end-to-end tests cannot see from outside: which objects exist
//! afterwards (content stored once, spare copies and refused uploads leave nothing,
//! garbage collection deletes exactly what nothing needs).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::stream;
use natter_bus::{Bus, InProcessBus};
use natter_media::{
    Config, Media, MediaError, Objects, RedbMediaStore, S3Options, service::UploadOptions,
};
use natter_proto::{DeviceId, UserId, bus, v1};
use natter_sessions::{DeviceAuth, Identity, TokenVerifier};

/// A 2x2 PNG (RGB, made with Python's zlib and struct).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0xfd, 0xd4, 0x9a,
    0x73, 0x00, 0x00, 0x00, 0x11, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0xf0, 0x1f, 0x8c, 0x80, 0x18, 0x00, 0x1d, 0xf0, 0x03, 0xfd, 0xd3, 0xd0, 0x7d, 0x26, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn pdf(len: usize, seed: u8) -> Vec<u8> {
    let mut v = b"%PDF-1.4\n".to_vec();
    let mut x = seed as u32 | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

fn who(user: u64) -> Identity {
    Identity {
        user: UserId(user),
        device: DeviceId(user * 10),
        username: format!("u{user}"),
    }
}

struct Fixture {
    media: Media,
    objects: Objects,
    bus: Arc<dyn Bus>,
    _dir: tempfile::TempDir,
    _s3: Option<natter_testkit::S3Server>,
}

enum Backend {
    Local,
    S3,
}

/// A media service on `backend`, or `None` (S3 not installed, outside CI).
fn fixture(backend: Backend, config: Config) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (objects, s3) = match backend {
        Backend::Local => (
            Objects::local(&dir.path().join("objects")).expect("objects"),
            None,
        ),
        Backend::S3 => {
            let Some(server) = natter_testkit::S3Server::start() else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "s3s-fs is not installed in CI (scripts/setup installs it)"
                );
                eprintln!("SKIPPED: s3s-fs is not installed (scripts/setup installs it)");
                return None;
            };
            let env: std::collections::HashMap<String, String> = server.env().into_iter().collect();
            let options = S3Options {
                endpoint: Some(server.endpoint()),
                region: Some("us-east-1".into()),
                access_key_id: env.get("AWS_ACCESS_KEY_ID").cloned(),
                secret_access_key: env.get("AWS_SECRET_ACCESS_KEY").cloned(),
                allow_http: true,
            };
            let objects = Objects::s3(server.bucket(), "media", options).expect("s3 objects");
            (objects, Some(server))
        }
    };
    let store = RedbMediaStore::open(&dir.path().join("media.redb")).expect("store");
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let verifier = TokenVerifier::from_secret(&[7u8; 32]).expect("verifier");
    let auth = DeviceAuth::new(verifier, bus.clone(), Duration::from_secs(1));
    let media = Media::new(config, Arc::new(store), objects.clone(), bus.clone(), auth);
    Some(Fixture {
        media,
        objects,
        bus,
        _dir: dir,
        _s3: s3,
    })
}

fn body(
    data: &[u8],
    chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

async fn keys(objects: &Objects, prefix: &str) -> BTreeSet<String> {
    objects
        .list(prefix)
        .await
        .expect("list")
        .into_iter()
        .collect()
}

async fn describe(media: &Media, user: u64, id: &str) -> v1::MediaRef {
    let reply = media
        .describe(bus::MediaDescribe {
            caller: Some(bus::Caller {
                user_id: user,
                device_id: user * 10,
            }),
            media: Some(v1::MediaRef {
                id: id.to_owned(),
                ..Default::default()
            }),
        })
        .await;
    assert_eq!(reply.error, None);
    reply.media.expect("described")
}

async fn content_is_stored_once_and_spare_copies_are_deleted(backend: Backend) {
    let Some(f) = fixture(backend, Config::default()) else {
        return;
    };
    let data = pdf(300_000, 1);
    let a = f
        .media
        .upload(
            &who(1),
            UploadOptions::default(),
            Some(data.len() as u64),
            body(&data, 7000),
        )
        .await
        .expect("first upload");
    let again = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(&data, 65536))
        .await
        .expect("same user, same content");
    assert_eq!(again.id, a.id, "one user's same content is one media");
    let b = f
        .media
        .upload(&who(2), UploadOptions::default(), None, body(&data, 65536))
        .await
        .expect("another user, same content");
    assert_ne!(b.id, a.id);
    assert_eq!(b.sha256, a.sha256);
    let blobs = keys(&f.objects, "blobs").await;
    assert_eq!(blobs.len(), 1, "one stored copy: {blobs:?}");
    assert_eq!(
        f.media.usage(&who(1)).await.expect("usage").0,
        data.len() as u64
    );
    assert_eq!(
        f.media.usage(&who(2)).await.expect("usage").0,
        data.len() as u64
    );
    // Both read back the same bytes.
    let stored = blobs.iter().next().expect("a blob");
    assert_eq!(f.objects.read_all(stored).await.expect("read"), data);
}

async fn refused_uploads_leave_nothing(backend: Backend) {
    let config = Config {
        quota: 500_000,
        ..Config::default()
    };
    let Some(f) = fixture(backend, config) else {
        return;
    };
    // A type natter does not accept, refused once the first 4 KiB are in.
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(3 << 20, 0);
    let e = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(&elf, 65536))
        .await
        .expect_err("an executable");
    assert!(matches!(e, MediaError::Unsupported(_)), "{e:?}");
    // A wrong hash.
    let data = pdf(100_000, 2);
    let options = UploadOptions {
        sha256: Some("0".repeat(64)),
        ..UploadOptions::default()
    };
    let e = f
        .media
        .upload(&who(1), options, None, body(&data, 65536))
        .await
        .expect_err("a wrong hash");
    assert!(matches!(e, MediaError::HashMismatch { .. }), "{e:?}");
    // Over the quota (no Content-Length: found at commit).
    let big = pdf(600_000, 3);
    let e = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(&big, 65536))
        .await
        .expect_err("over quota");
    assert!(matches!(e, MediaError::QuotaExceeded { .. }), "{e:?}");
    // An image that does not decode.
    let mut png = PNG[..33].to_vec();
    png.extend_from_slice(&[0x55; 5000]);
    let e = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(&png, 65536))
        .await
        .expect_err("a broken image");
    assert!(matches!(e, MediaError::Unsupported(_)), "{e:?}");
    assert_eq!(
        keys(&f.objects, "").await,
        BTreeSet::new(),
        "nothing stored"
    );
    assert_eq!(f.media.usage(&who(1)).await.expect("usage").0, 0);
}

async fn garbage_collection_deletes_only_what_nothing_needs(backend: Backend) {
    let config = Config {
        gc_grace: Duration::ZERO,
        upload_ttl: Duration::ZERO,
        ..Config::default()
    };
    let Some(f) = fixture(backend, config) else {
        return;
    };
    let image = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(PNG, 64))
        .await
        .expect("image");
    assert_eq!((image.width, image.height), (2, 2));
    assert_eq!(keys(&f.objects, "thumbs").await.len(), 1, "a thumbnail");
    let kept = f
        .media
        .upload(
            &who(1),
            UploadOptions::default(),
            None,
            body(&pdf(50_000, 4), 4096),
        )
        .await
        .expect("document");
    let described = describe(&f.media, 1, &kept.id).await;
    assert_eq!(described.sha256, kept.sha256);
    assert_eq!(described.size, 50_000);
    // A resumable upload left half done.
    let data = pdf(200_000, 5);
    let upload = f
        .media
        .create_upload(&who(1), data.len() as u64, UploadOptions::default())
        .await
        .expect("create");
    let state = f
        .media
        .append(
            &who(1),
            &upload.upload_id,
            0,
            None,
            body(&data[..80_000], 10_000),
        )
        .await
        .expect("append");
    assert_eq!(state.offset, 80_000);
    assert_eq!(keys(&f.objects, "parts").await.len(), 1);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let (records, uploads) = f.media.collect_garbage().await.expect("gc");
    assert_eq!((records, uploads), (1, 1));
    // The unreferenced image and its thumbnail are gone; the referenced document stays.
    assert_eq!(keys(&f.objects, "thumbs").await, BTreeSet::new());
    assert_eq!(keys(&f.objects, "parts").await, BTreeSet::new());
    assert_eq!(keys(&f.objects, "blobs").await.len(), 1);
    assert_eq!(
        f.media.usage(&who(1)).await.expect("usage").0,
        50_000,
        "the image's bytes no longer count"
    );
    let e = f
        .media
        .open(&who(1), &image.id, None)
        .await
        .expect_err("collected");
    assert!(matches!(e, MediaError::NotFound(_)), "{e:?}");
    let d = f.media.open(&who(1), &kept.id, None).await.expect("kept");
    assert_eq!(d.blob.size, 50_000);
    // A second round has nothing to do.
    assert_eq!(f.media.collect_garbage().await.expect("gc"), (0, 0));
}

async fn a_resumable_upload_in_parts_assembles_the_content(backend: Backend) {
    let Some(f) = fixture(backend, Config::default()) else {
        return;
    };
    // Parts of uneven sizes across the 5 MiB part boundary of the writer.
    let data = pdf(11 << 20, 6);
    let sha = natter_media::objects::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data));
    let options = UploadOptions {
        sha256: Some(sha.clone()),
        filename: "big.pdf".into(),
        ..UploadOptions::default()
    };
    let upload = f
        .media
        .create_upload(&who(1), data.len() as u64, options)
        .await
        .expect("create");
    let mut offset = 0usize;
    for len in [3 << 20, 6 << 20, 2 << 20] {
        let part = &data[offset..offset + len];
        let state = f
            .media
            .append(
                &who(1),
                &upload.upload_id,
                offset as u64,
                None,
                body(part, 256 << 10),
            )
            .await
            .expect("append");
        offset += len;
        assert_eq!(state.offset, offset as u64);
    }
    let info = f
        .media
        .complete(&who(1), &upload.upload_id)
        .await
        .expect("complete");
    assert_eq!(info.sha256, sha);
    assert_eq!(info.mime, "application/pdf");
    // A retried complete (its answer lost) gets the same answer; someone else's gets 404.
    let again = f
        .media
        .complete(&who(1), &upload.upload_id)
        .await
        .expect("complete again");
    assert_eq!(again, info);
    let e = f
        .media
        .complete(&who(2), &upload.upload_id)
        .await
        .expect_err("not theirs");
    assert!(matches!(e, MediaError::NotFound(_)), "{e:?}");
    assert_eq!(info.filename, "big.pdf");
    assert_eq!(
        keys(&f.objects, "parts").await,
        BTreeSet::new(),
        "parts deleted"
    );
    let d = f.media.open(&who(1), &info.id, None).await.expect("open");
    let ranged = f
        .objects
        .read_range(&d.blob.key, 5_000_000..5_000_100)
        .await
        .expect("range");
    assert_eq!(&ranged[..], &data[5_000_000..5_000_100]);
}

/// Asks `natter.admin.media`.
async fn admin(bus: &dyn Bus, op: bus::admin_media_request::Op) -> bus::AdminMediaReply {
    use prost::Message as _;
    let req = bus::AdminMediaRequest { op: Some(op) };
    let reply = bus
        .request(
            &natter_proto::Subject::admin(natter_proto::AdminService::Media),
            Bytes::from(req.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .expect("the media service answers");
    bus::AdminMediaReply::decode(reply).expect("an AdminMediaReply")
}

/// The admin API over the bus: a user's usage (bytes and uploads), and deleting their
/// uploads, referenced ones too: their quota is free, the objects only they held are
/// gone, a content another user also uploaded stays for that user.
#[tokio::test]
async fn admin_usage_and_delete_user_over_the_bus() {
    use bus::admin_media_request::Op;
    let Some(f) = fixture(Backend::Local, Config::default()) else {
        return;
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let service = natter_media::describe::start(f.media.clone(), f.bus.clone(), stop.clone())
        .await
        .expect("start");
    let image = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(PNG, 64))
        .await
        .expect("image");
    let doc = pdf(50_000, 6);
    let mine = f
        .media
        .upload(&who(1), UploadOptions::default(), None, body(&doc, 4096))
        .await
        .expect("document");
    describe(&f.media, 1, &mine.id).await;
    let theirs = f
        .media
        .upload(&who(2), UploadOptions::default(), None, body(&doc, 4096))
        .await
        .expect("the same document, by another user");
    let total = PNG.len() as u64 + 50_000;

    let usage = admin(f.bus.as_ref(), Op::Usage(1)).await;
    assert_eq!((usage.error, usage.bytes, usage.files), (None, total, 2));
    let deleted = admin(f.bus.as_ref(), Op::DeleteUser(1)).await;
    assert_eq!(
        (deleted.error, deleted.bytes, deleted.files),
        (None, total, 2)
    );
    let usage = admin(f.bus.as_ref(), Op::Usage(1)).await;
    assert_eq!((usage.error, usage.bytes, usage.files), (None, 0, 0));

    // The image's objects went; the document's blob stays for user 2.
    assert_eq!(keys(&f.objects, "thumbs").await, BTreeSet::new());
    assert_eq!(keys(&f.objects, "blobs").await.len(), 1);
    for id in [&image.id, &mine.id] {
        let e = f.media.open(&who(1), id, None).await.expect_err("deleted");
        assert!(matches!(e, MediaError::NotFound(_)), "{e:?}");
    }
    let d = f.media.open(&who(2), &theirs.id, None).await.expect("kept");
    assert_eq!(d.blob.size, 50_000);
    let usage = admin(f.bus.as_ref(), Op::Usage(2)).await;
    assert_eq!((usage.bytes, usage.files), (50_000, 1));

    // Again: nothing left to delete. A user id 0 is refused.
    let again = admin(f.bus.as_ref(), Op::DeleteUser(1)).await;
    assert_eq!((again.error, again.bytes, again.files), (None, 0, 0));
    let e = admin(f.bus.as_ref(), Op::Usage(0))
        .await
        .error
        .expect("refused");
    assert_eq!(e.code, natter_proto::ErrorCode::InvalidArgument as i32);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("stops")
        .expect("task ok");
}

#[tokio::test]
async fn local_content_is_stored_once_and_spare_copies_are_deleted() {
    content_is_stored_once_and_spare_copies_are_deleted(Backend::Local).await;
}

#[tokio::test]
async fn local_refused_uploads_leave_nothing() {
    refused_uploads_leave_nothing(Backend::Local).await;
}

#[tokio::test]
async fn local_garbage_collection_deletes_only_what_nothing_needs() {
    garbage_collection_deletes_only_what_nothing_needs(Backend::Local).await;
}

#[tokio::test]
async fn local_a_resumable_upload_in_parts_assembles_the_content() {
    a_resumable_upload_in_parts_assembles_the_content(Backend::Local).await;
}

#[tokio::test]
async fn s3_content_is_stored_once_and_spare_copies_are_deleted() {
    content_is_stored_once_and_spare_copies_are_deleted(Backend::S3).await;
}

#[tokio::test]
async fn s3_refused_uploads_leave_nothing() {
    refused_uploads_leave_nothing(Backend::S3).await;
}

#[tokio::test]
async fn s3_garbage_collection_deletes_only_what_nothing_needs() {
    garbage_collection_deletes_only_what_nothing_needs(Backend::S3).await;
}

#[tokio::test]
async fn s3_a_resumable_upload_in_parts_assembles_the_content() {
    a_resumable_upload_in_parts_assembles_the_content(Backend::S3).await;
}

//! Media end to end through the real binary (docs/protocol.md, "Media"): upload over HTTP
//! (single-shot and resumable, with a PATCH cut off mid-body), send a `MESSAGE_KIND_MEDIA`
//! message carrying the reference, download with the receiver's own token (ranges, ETag,
//! 304), every refusal with its status and code, who may download what (one-to-one,
//! groups, forwarding, blocks), content addressing, quota, garbage collection, and the
//! same main flows against an S3-compatible store (`s3s-fs`).
//!
//! Few servers are started: one with small limits runs most flows concurrently (each
//! flow is a task; a failing flow does not stop the others, the test lists every failed
//! one), and one each for what needs its own settings (quota, garbage collection, S3).
//! Each flow uses its own users, so the per-user limits never interfere.
//!
//! The test content is generated or embedded: a 3x2 PNG and a 16x8 JPEG as byte arrays
//! (how they were made is said at each), PDFs as `%PDF-1.4\n` and pseudo-random bytes,
//! a WAV voice note. The root package has no `sha2`, `base64` or `image` dev-dependency,
//! so small SHA-256, base64 and JPEG-header helpers are at the end of this file.

mod common;

use std::{
    net::SocketAddr,
    ops::Deref,
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use natter_client::{
    Client, ConversationId, ErrorCode, Event, Seq, Session, Target, UserId,
    v1::{self, group_request::Op},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const WAIT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

/// A 3x2 RGB PNG (red, green, blue columns), 73 bytes. Made with python3's zlib and
/// struct: the signature, IHDR (3x2, 8-bit RGB), one IDAT (`zlib.compress` of the two
/// filtered rows, level 9) and IEND, each chunk with its CRC-32.
const PNG: [u8; 73] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0x00, 0xc1, 0x70, 0x16, 0x00, 0x3b, 0xd8, 0x05, 0xfb, 0x36, 0x11, 0x98, 0xea, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A 16x8 baseline JPEG (a gradient), 652 bytes. Made by a throwaway program with the
/// `image` crate 0.25: `RgbImage::from_fn(16, 8, |x, y| Rgb([x * 16, y * 32, 128]))`
/// encoded by `JpegEncoder::new_with_quality(_, 50)`; `image::load_from_memory` reads it
/// back as 16x8.
const JPEG: [u8; 652] = [
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x02, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x08, 0x00, 0x10, 0x03, 0x01, 0x11,
    0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x10, 0x0b, 0x0c, 0x0e,
    0x0c, 0x0a, 0x10, 0x0e, 0x0d, 0x0e, 0x12, 0x11, 0x10, 0x13, 0x18, 0x28, 0x1a, 0x18, 0x16, 0x16,
    0x18, 0x31, 0x23, 0x25, 0x1d, 0x28, 0x3a, 0x33, 0x3d, 0x3c, 0x39, 0x33, 0x38, 0x37, 0x40, 0x48,
    0x5c, 0x4e, 0x40, 0x44, 0x57, 0x45, 0x37, 0x38, 0x50, 0x6d, 0x51, 0x57, 0x5f, 0x62, 0x67, 0x68,
    0x67, 0x3e, 0x4d, 0x71, 0x79, 0x70, 0x64, 0x78, 0x5c, 0x65, 0x67, 0x63, 0xff, 0xdb, 0x00, 0x43,
    0x01, 0x11, 0x12, 0x12, 0x18, 0x15, 0x18, 0x2f, 0x1a, 0x1a, 0x2f, 0x63, 0x42, 0x38, 0x42, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0xff, 0xc4, 0x00, 0x1f, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
    0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05,
    0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21,
    0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23,
    0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
    0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5,
    0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1,
    0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xff, 0xc4, 0x00, 0x1f, 0x01, 0x00, 0x03,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x11, 0x00,
    0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02, 0x77, 0x00,
    0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13,
    0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15,
    0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27,
    0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
    0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4,
    0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9,
    0xfa, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3f, 0x00, 0xa1,
    0x6f, 0xa1, 0x74, 0xf9, 0x2b, 0xa2, 0x78, 0xb3, 0x87, 0x0f, 0x8e, 0xf3, 0x34, 0xed, 0xf4, 0x2e,
    0x9f, 0x25, 0x72, 0xcf, 0x16, 0x7b, 0xd8, 0x7c, 0x77, 0x99, 0xff, 0xd9,
];

// ---------------------------------------------------------------------------------
// The servers, and the flows each runs.

/// Limits of the main server: small enough to reach with a few MiB. The document limit
/// is the largest of the kinds, so a resumable `size` over it is refused at create.
const MAIN_ENV: &[(&str, &str)] = &[
    ("NATTER_MEDIA_MAX_IMAGE_MIB", "1"),
    ("NATTER_MEDIA_MAX_VIDEO_MIB", "16"),
    ("NATTER_MEDIA_MAX_AUDIO_MIB", "16"),
    ("NATTER_MEDIA_MAX_DOCUMENT_MIB", "20"),
    ("NATTER_MEDIA_SINGLE_MAX_MIB", "4"),
    ("NATTER_MEDIA_MAX_OPEN_UPLOADS", "2"),
];

/// Runs each flow as a task on `server`, all at once, each bounded to `secs`; fails
/// naming every flow that failed (their panics are printed as they happen).
macro_rules! flows {
    ($server:expr, $secs:expr, [$($flow:ident),+ $(,)?]) => {{
        let server: Arc<Server> = $server;
        let mut tasks = Vec::new();
        $({
            let server = Arc::clone(&server);
            let task = tokio::spawn(async move { bounded($secs, $flow(&server)).await });
            tasks.push((stringify!($flow), task));
        })+
        let mut failed = Vec::new();
        for (name, task) in tasks {
            match task.await {
                Ok(()) => eprintln!("flow {name}: ok"),
                Err(e) => {
                    eprintln!("flow {name}: FAILED ({e})");
                    failed.push(name);
                }
            }
        }
        assert!(failed.is_empty(), "failed flows: {failed:?}");
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_main_flows() {
    let server = Arc::new(Server::start_with(MAIN_ENV).await);
    flows!(
        server,
        50,
        [
            one_to_one,
            voice_note,
            resumable,
            ranges,
            rejections,
            too_many_uploads,
            access,
            group_access,
            forwarding_and_blocks,
            content_addressing,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_quota() {
    let server = Arc::new(Server::start_with(&[("NATTER_MEDIA_QUOTA_MIB", "1")]).await);
    flows!(server, 40, [quota]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_garbage_collection() {
    let server = Arc::new(
        Server::start_with(&[
            ("NATTER_MEDIA_GC_GRACE_S", "3"),
            ("NATTER_MEDIA_GC_INTERVAL_S", "1"),
            ("NATTER_MEDIA_UPLOAD_TTL_S", "4"),
        ])
        .await,
    );
    flows!(server, 40, [garbage_collection]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_on_s3() {
    let s3 = tokio::task::spawn_blocking(natter_testkit::S3Server::start)
        .await
        .expect("starting s3s-fs");
    let Some(s3) = s3 else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "s3s-fs is not installed, and CI installs it (scripts/setup)"
        );
        println!("SKIPPED: s3s-fs not installed (scripts/setup installs it)");
        return;
    };
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Arc::new(Server::start_with(&env).await);
    flows!(Arc::clone(&server), 50, [one_to_one, resumable, ranges]);
    // The objects are in the bucket, not on the server's disk.
    let objects = count_files(&s3.bucket_dir());
    assert!(
        objects > 0,
        "no object in the S3 bucket {:?}",
        s3.bucket_dir()
    );
    drop(server);
    drop(s3);
}

// ---------------------------------------------------------------------------------
// Flow 1: upload, send one-to-one, the recipient downloads.

async fn one_to_one(server: &Server) {
    let api = Api::new(server);
    let [al, bea] = people(server, ["al", "bea"]).await;
    let al2 = al.second_device(server).await;
    let c = conv(al.id(), bea.id());

    let up = api.upload_ok(al.token(), "filename=cat.jpg", &JPEG).await;
    let hash = hex(&sha256(&JPEG));
    assert_id(&up.id);
    assert_eq!(
        (
            up.kind.as_str(),
            up.mime.as_str(),
            up.size,
            up.sha256.as_str()
        ),
        ("image", "image/jpeg", JPEG.len() as u64, hash.as_str()),
        "the upload's answer: {up:?}"
    );
    assert_eq!((up.width, up.height), (16, 8), "dimensions: {up:?}");
    assert_eq!((up.filename.as_str(), up.voice), ("cat.jpg", false));
    let (pw, ph) = jpeg_dims(&up.preview).expect("the preview is a JPEG");
    assert!(
        (1..=64).contains(&pw.max(ph)),
        "preview {pw}x{ph} (at most 64 px)"
    );

    // The uploader downloads without conversation/seq.
    let own = api.download(al.token(), &up.id, None, &[]).await;
    own.status(200, "the uploader's download");
    assert_eq!(own.body, JPEG);

    // Sent in a one-to-one message with a caption.
    let sent = media(&up.id, |m| m.caption = "look".into());
    let ack = al
        .send_frame(media_send(bea.id(), sent))
        .await
        .expect("a media send");
    assert_eq!(ack.conversation_id, c.as_str());

    // The recipient gets the server-filled reference.
    let got = message_at(&bea, &c, ack.seq).await;
    assert_eq!(got.kind, v1::MessageKind::Media as i32, "{got:?}");
    assert!(got.body.is_empty(), "a media message has no body: {got:?}");
    let r = got.media.clone().expect("Message.media on a media message");
    assert_ref_is(&r, &up, v1::MediaKind::Image);
    assert_eq!(r.caption, "look");
    assert_eq!(
        r.preview, up.preview,
        "the preview in the message and upload"
    );
    assert_eq!(
        (r.forwarded_from_conversation.as_str(), r.forwarded_from_seq),
        ("", 0)
    );

    // The sender's other device sees the same reference.
    let mine = message_at(&al2, &c, ack.seq).await;
    assert_eq!(mine.media.as_ref(), Some(&r), "the sender's other device");

    // History holds it too.
    let page = bea.history(&c, Seq::ZERO, 10).await.expect("history");
    let h = page.messages.iter().find(|m| m.seq == ack.seq);
    assert_eq!(h.and_then(|m| m.media.as_ref()), Some(&r), "in history");

    // The recipient downloads with their own token.
    let at = Some((&c, ack.seq));
    let d = api.download(bea.token(), &up.id, at, &[]).await;
    d.status(200, "the recipient's download");
    assert_eq!(
        hex(&sha256(&d.body)),
        hash,
        "the downloaded content's SHA-256"
    );
    assert_eq!(d.body, JPEG);
    assert_eq!(d.header("content-type"), Some("image/jpeg"));
    assert_eq!(d.header("x-content-type-options"), Some("nosniff"));
    let etag = d.header("etag").expect("an ETag").to_owned();
    assert_eq!(etag.trim_matches('"'), hash, "the ETag is the SHA-256");
    let cache = d.header("cache-control").unwrap_or_default();
    assert!(
        cache.contains("private") && cache.contains("immutable"),
        "Cache-Control: {cache:?}"
    );
    let again = api
        .download(bea.token(), &up.id, at, &[("if-none-match", etag.as_str())])
        .await;
    again.status(304, "If-None-Match with the ETag");
    assert!(again.body.is_empty());

    // The token in the query, for <img> elements.
    let q = format!(
        "/v1/media/{}?conversation={c}&seq={}&access_token={}",
        up.id,
        ack.seq,
        bea.token()
    );
    let d = api.req("GET", &q, None, &[], None).await;
    d.status(200, "?access_token=");
    assert_eq!(d.body, JPEG);

    // /info and /thumbnail.
    let info = api.sub(bea.token(), &up.id, "/info", at).await;
    info.status(200, "/info");
    let info = Media::of(&info.json());
    assert_eq!(
        (&info.id, &info.kind, &info.mime, info.size, &info.sha256),
        (&up.id, &up.kind, &up.mime, up.size, &up.sha256)
    );
    assert_eq!((info.width, info.height), (16, 8));
    let thumb = api.sub(bea.token(), &up.id, "/thumbnail", at).await;
    thumb.status(200, "/thumbnail");
    assert_eq!(thumb.header("content-type"), Some("image/jpeg"));
    let (tw, th) = jpeg_dims(&thumb.body).expect("the thumbnail is a JPEG");
    assert!(
        (1..=320).contains(&tw.max(th)),
        "thumbnail {tw}x{th} (at most 320 px)"
    );
}

/// A voice note: WAV with `voice=true`; the recipient sees audio, voice and the
/// duration the header says (1 s).
async fn voice_note(server: &Server) {
    let api = Api::new(server);
    let [al, bea] = people(server, ["vo_al", "vo_bea"]).await;
    let c = conv(al.id(), bea.id());
    let wav = wav_1s();
    let up = api
        .upload_ok(al.token(), "filename=note.wav&voice=true", &wav)
        .await;
    assert_eq!(up.kind, "audio", "{up:?}");
    assert!(up.mime.starts_with("audio/"), "{up:?}");
    assert!(up.voice, "voice=true: {up:?}");
    assert_eq!(up.duration_ms, 1000, "the WAV header says 1 s: {up:?}");
    let ack = al
        .send_frame(media_send(bea.id(), media(&up.id, |m| m.voice = true)))
        .await
        .expect("a voice note send");
    let got = message_at(&bea, &c, ack.seq).await;
    let r = got.media.expect("Message.media");
    assert_ref_is(&r, &up, v1::MediaKind::Audio);
    assert!(r.voice, "{r:?}");
    assert_eq!(r.duration_ms, 1000);
    let d = api
        .download(bea.token(), &up.id, Some((&c, ack.seq)), &[])
        .await;
    d.status(200, "the voice note's download");
    assert_eq!(d.body, wav);
}

// ---------------------------------------------------------------------------------
// Flow 2: a resumable upload with a PATCH cut off mid-body.

async fn resumable(server: &Server) {
    let api = Api::new(server);
    let [ann, bo] = users(server, ["res_ann", "res_bo"]).await;
    let size = 12 * MIB;
    let content = pdf(size, 0x5eed);
    let hash = hex(&sha256(&content));

    let created = api
        .create(
            &ann.access_token,
            json!({"size": size, "sha256": hash, "filename": "report.pdf"}),
        )
        .await;
    created.status(201, "create");
    let created = created.json();
    let id = created["upload_id"].as_str().expect("upload_id").to_owned();
    assert_eq!(created["offset"], 0, "{created}");
    assert_eq!(created["size"], size as u64, "{created}");
    assert!(
        created["expires_in_s"].as_u64().unwrap_or(0) > 0,
        "{created}"
    );
    let t = ann.access_token.as_str();

    // A first PATCH of 1 MiB.
    let r = api.patch(t, &id, 0, content[..MIB].to_vec()).await;
    r.status(204, "the first PATCH");
    assert_eq!(r.header_u64("upload-offset"), Some(MIB as u64));
    let h = api.upload_state(t, &id, "HEAD").await;
    h.status(200, "HEAD");
    assert_eq!(h.header_u64("upload-offset"), Some(MIB as u64));
    assert_eq!(h.header_u64("upload-length"), Some(size as u64));
    let g = api.upload_state(t, &id, "GET").await;
    g.status(200, "GET of an upload");
    assert_eq!(g.json()["offset"], MIB as u64, "GET answers JSON");

    // At a wrong offset: 409 with the server's offset.
    let r = api.patch(t, &id, 5, content[5..105].to_vec()).await;
    r.refused(409, "offset_mismatch", "a PATCH at a wrong offset");
    assert_eq!(r.header_u64("upload-offset"), Some(MIB as u64));
    // Completing early.
    api.complete(t, &id)
        .await
        .refused(409, "incomplete", "complete before the end");

    // Someone else's upload is not found, whatever they ask.
    let other = bo.access_token.as_str();
    for method in ["HEAD", "GET"] {
        let r = api.upload_state(other, &id, method).await;
        r.status(404, &format!("{method} of someone else's upload"));
    }
    api.patch(other, &id, MIB as u64, content[MIB..MIB + 10].to_vec())
        .await
        .refused(404, "not_found", "PATCH of someone else's upload");
    api.complete(other, &id)
        .await
        .refused(404, "not_found", "complete of someone else's upload");
    api.delete_upload(other, &id).await.refused(
        404,
        "not_found",
        "DELETE of someone else's upload",
    );

    // A PATCH announcing the whole rest, cut off after part of it.
    let sent = 7 * MIB + 12_345;
    cut_patch(
        server.addr(),
        t,
        &id,
        MIB,
        size - MIB,
        &content[MIB..MIB + sent],
    )
    .await;
    let mut offset = MIB as u64;
    let deadline = Instant::now() + WAIT;
    while offset <= MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "HEAD still says {offset} after a PATCH cut after {sent} bytes: the bytes that \
             arrived must be kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let h = api.upload_state(t, &id, "HEAD").await;
        h.status(200, "HEAD after the cut");
        offset = h.header_u64("upload-offset").expect("Upload-Offset");
    }
    assert!(
        offset <= (MIB + sent) as u64,
        "offset {offset} past the {} bytes sent",
        MIB + sent
    );
    eprintln!(
        "resumable: kept {} of {sent} bytes of the cut PATCH",
        offset - MIB as u64
    );

    // Resume from there.
    let r = api
        .patch(t, &id, offset, content[offset as usize..].to_vec())
        .await;
    r.status(204, "the resuming PATCH");
    assert_eq!(r.header_u64("upload-offset"), Some(size as u64));
    let done = api.complete(t, &id).await;
    done.status(201, "complete");
    let m = Media::of(&done.json());
    assert_id(&m.id);
    assert_eq!(
        (m.kind.as_str(), m.mime.as_str(), m.size, m.sha256.as_str()),
        ("document", "application/pdf", size as u64, hash.as_str()),
        "{m:?}"
    );
    assert_eq!(m.filename, "report.pdf");
    let d = api.download(t, &m.id, None, &[]).await;
    d.status(200, "download of the resumed upload");
    assert_eq!(d.body.len(), size);
    assert!(
        d.body == content,
        "the downloaded bytes differ from the upload"
    );
    let disposition = d.header("content-disposition").unwrap_or_default();
    assert!(
        disposition.starts_with("attachment"),
        "a document is an attachment: {disposition:?}"
    );

    // DELETE abandons an upload.
    let small = pdf(10 * KIB, 2);
    let id = api.create_ok(t, json!({"size": small.len()})).await;
    api.patch(t, &id, 0, small[..100].to_vec())
        .await
        .status(204, "PATCH");
    api.delete_upload(t, &id)
        .await
        .status(204, "DELETE of an upload");
    api.upload_state(t, &id, "HEAD")
        .await
        .status(404, "HEAD after DELETE");
    api.patch(t, &id, 100, small[100..].to_vec()).await.refused(
        404,
        "not_found",
        "PATCH after DELETE",
    );

    // A resumable upload whose content does not match its `sha256`.
    let used = api.usage(t).await.0;
    let wrong = hex(&sha256(b"something else"));
    let id = api
        .create_ok(t, json!({"size": small.len(), "sha256": wrong}))
        .await;
    api.patch(t, &id, 0, small.clone())
        .await
        .status(204, "PATCH");
    api.complete(t, &id)
        .await
        .refused(422, "hash_mismatch", "complete with a wrong sha256");
    assert_eq!(
        api.usage(t).await.0,
        used,
        "a refused upload counts nothing"
    );
}

// ---------------------------------------------------------------------------------
// Flow 3: ranges.

async fn ranges(server: &Server) {
    let api = Api::new(server);
    let [al] = users(server, ["rng_al"]).await;
    let t = al.access_token.as_str();
    let content = pdf(300 * KIB + 7, 3);
    let n = content.len();
    let up = api.upload_ok(t, "filename=clip.pdf", &content).await;
    assert_eq!(up.size, n as u64);

    let full = api.download(t, &up.id, None, &[]).await;
    full.status(200, "a whole download");
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header_u64("content-length"), Some(n as u64));
    assert_eq!(full.header("content-type"), Some("application/pdf"));
    assert!(full.body == content);

    let cases: [(&str, usize, usize); 3] = [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, n - 1),
        ("bytes=-50", n - 50, n - 1),
    ];
    for (range, first, last) in cases {
        let r = api.download(t, &up.id, None, &[("range", range)]).await;
        r.status(206, range);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {first}-{last}/{n}").as_str()),
            "{range}"
        );
        assert_eq!(r.body.len(), last - first + 1, "{range}");
        assert!(r.body == content[first..=last], "{range}: other bytes");
    }
    for range in [
        format!("bytes={n}-"),
        format!("bytes={}-{}", n + 10, n + 20),
    ] {
        let r = api
            .download(t, &up.id, None, &[("range", range.as_str())])
            .await;
        r.status(416, &range);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{n}").as_str()),
            "{range}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Flow 4: every refusal, and that refused uploads count nothing.

async fn rejections(server: &Server) {
    let api = Api::new(server);
    let [al] = users(server, ["rej_al"]).await;
    let t = al.access_token.as_str();
    let (used, quota) = api.usage(t).await;
    assert_eq!((used, quota), (0, 10240 * MIB as u64), "a new user's usage");

    // 413: an image over NATTER_MEDIA_MAX_IMAGE_MIB=1 (a PNG header, then 2 MiB).
    let mut big_png = PNG[..33].to_vec();
    big_png.extend(prng_bytes(2 * MIB, 4));
    api.upload_raw(t, "filename=big.png", big_png)
        .await
        .refused(413, "too_large", "an image over its kind's limit");
    // 413: a single-shot over NATTER_MEDIA_SINGLE_MAX_MIB=4 (a document may be 20).
    api.upload_raw(t, "filename=big.pdf", pdf(5 * MIB, 5))
        .await
        .refused(413, "too_large", "a single-shot over the single-shot limit");
    // 413: a resumable size over every kind's limit, at create.
    api.create(t, json!({"size": 21 * MIB, "filename": "huge.pdf"}))
        .await
        .refused(413, "too_large", "a resumable size over the document limit");

    // 415: what natter does not accept.
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.extend(prng_bytes(8 * KIB, 6));
    let mut png_garbage = PNG[..16].to_vec();
    png_garbage.extend(prng_bytes(4 * KIB, 7));
    let html: &[u8] =
        b"<html><head><title>x</title></head><body><script>alert(1)</script></body></html>\n";
    let refused_types: [(&str, Vec<u8>); 5] = [
        ("random bytes", prng_bytes(64 * KIB, 8)),
        ("an ELF executable", elf),
        ("HTML", html.to_vec()),
        (
            "HTML with a doctype",
            [b"<!DOCTYPE html>\n".as_slice(), html].concat(),
        ),
        ("a PNG signature then garbage", png_garbage),
    ];
    for (what, body) in refused_types {
        api.upload_raw(t, "filename=file.bin", body)
            .await
            .refused(415, "unsupported_type", what);
    }

    // 422: a sha256 that does not match; 400: one that is not a hash.
    let wrong = hex(&sha256(b"not the png"));
    api.upload(t, &format!("filename=a.png&sha256={wrong}"), &PNG)
        .await
        .refused(422, "hash_mismatch", "a sha256 that does not match");
    for bad in ["xyz", "abcd", &hex(&sha256(&PNG))[..63]] {
        api.upload(t, &format!("filename=a.png&sha256={bad}"), &PNG)
            .await
            .refused(400, "invalid_argument", &format!("sha256={bad}"));
    }

    // 401: no token, a garbage one.
    for token in [None, Some("garbage.token.here")] {
        let what = format!("token {token:?}");
        api.req(
            "POST",
            "/v1/media?filename=a.png",
            token,
            &[],
            Some(PNG.to_vec()),
        )
        .await
        .refused(401, "unauthorized", &what);
        api.req("GET", "/v1/media/usage", token, &[], None)
            .await
            .refused(401, "unauthorized", &what);
        api.req(
            "POST",
            "/v1/media/uploads",
            token,
            &[],
            Some(b"{\"size\":10}".to_vec()),
        )
        .await
        .refused(401, "unauthorized", &what);
    }

    // 404: an id that names nothing.
    api.download(t, "AAAAAAAAAAAAAAAAAAAAAA", None, &[])
        .await
        .refused(404, "not_found", "an unknown media id");

    // Nothing refused was counted; an accepted upload is.
    assert_eq!(api.usage(t).await.0, 0, "refused uploads count nothing");
    let up = api.upload_ok(t, "filename=a.png", &PNG).await;
    assert_eq!((up.kind.as_str(), up.mime.as_str()), ("image", "image/png"));
    assert_eq!((up.width, up.height), (3, 2));
    assert_eq!(api.usage(t).await.0, PNG.len() as u64);
}

/// NATTER_MEDIA_MAX_OPEN_UPLOADS=2: a third open upload is refused until one closes.
async fn too_many_uploads(server: &Server) {
    let api = Api::new(server);
    let [al] = users(server, ["open_al"]).await;
    let t = al.access_token.as_str();
    let first = api.create_ok(t, json!({"size": 1000})).await;
    api.create_ok(t, json!({"size": 1000})).await;
    api.create(t, json!({"size": 1000})).await.refused(
        429,
        "too_many_uploads",
        "a third open upload",
    );
    api.delete_upload(t, &first).await.status(204, "DELETE");
    api.create_ok(t, json!({"size": 1000})).await;
}

// ---------------------------------------------------------------------------------
// Flow 5: who may download.

async fn access(server: &Server) {
    let api = Api::new(server);
    let [al, bea, cy] = people(server, ["acc_al", "acc_bea", "acc_cy"]).await;
    let c = conv(al.id(), bea.id());
    let up = api.upload_ok(al.token(), "filename=a.jpg", &JPEG).await;
    let text = al.send_text(bea.id(), "first a text").await.expect("send");
    let ack = al
        .send_frame(media_send(bea.id(), media(&up.id, |_| {})))
        .await
        .expect("a media send");
    message_at(&bea, &c, ack.seq).await;

    // The recipient, with the right seq only (asked before any download succeeded).
    let refusals = [
        ("a seq that carries another message", Some((&c, text.seq))),
        ("a seq past the end", Some((&c, ack.seq + 5))),
        ("the recipient without conversation/seq", None),
    ];
    for (what, at) in refusals {
        api.download(bea.token(), &up.id, at, &[])
            .await
            .refused(403, "forbidden", what);
    }
    api.download(bea.token(), &up.id, Some((&c, ack.seq)), &[])
        .await
        .status(200, "the recipient");
    // A third user: with the right conversation/seq, with made-up ones, with none.
    let made_up = conv(cy.id(), al.id());
    let cases = [
        (
            "a non-member with the right conversation/seq",
            Some((&c, ack.seq)),
        ),
        ("a made-up conversation/seq", Some((&made_up, 1))),
        ("no conversation/seq", None),
    ];
    for (what, at) in cases {
        api.download(cy.token(), &up.id, at, &[])
            .await
            .refused(403, "forbidden", what);
        api.sub(cy.token(), &up.id, "/info", at).await.refused(
            403,
            "forbidden",
            &format!("/info: {what}"),
        );
        api.sub(cy.token(), &up.id, "/thumbnail", at).await.refused(
            403,
            "forbidden",
            &format!("/thumbnail: {what}"),
        );
    }
    let nonsense = "/v1/media/{id}?conversation=g.424242424242&seq=1".replace("{id}", &up.id);
    let r = api.req("GET", &nonsense, Some(cy.token()), &[], None).await;
    r.refused(403, "forbidden", "a group that does not exist");

    // Last (it would hide the checks above): having downloaded through the right message
    // does not open the media through any other (docs/protocol.md: "whoever may read the
    // message seq of conversation and that message carries this media").
    for (what, at) in refusals {
        api.download(bea.token(), &up.id, at, &[]).await.refused(
            403,
            "forbidden",
            &format!("after a download through the right message, {what}"),
        );
    }
}

async fn group_access(server: &Server) {
    let api = Api::new(server);
    let [al, bea, cy] = people(server, ["grp_al", "grp_bea", "grp_cy"]).await;
    let info = al
        .create_group("media", &[bea.id()])
        .await
        .expect("create a group");
    let g: ConversationId = info.conversation_id.parse().expect("a conversation id");
    assert!(g.as_str().starts_with("g."), "{g}");
    let up = api.upload_ok(al.token(), "filename=g.png", &PNG).await;
    let before = al
        .send_frame(media_send(&g, media(&up.id, |m| m.caption = "all".into())))
        .await
        .expect("a media send to the group");
    let got = message_at(&bea, &g, before.seq).await;
    assert_eq!(
        got.media.as_ref().map(|m| m.sha256.as_str()),
        Some(up.sha256.as_str())
    );
    let d = api
        .download(bea.token(), &up.id, Some((&g, before.seq)), &[])
        .await;
    d.status(200, "a member");
    assert_eq!(d.body, PNG);

    // Cy joins after: not that message, but the ones after.
    al.group(Op::AddMembers(v1::GroupAddMembers {
        group_id: info.group_id,
        users: vec![cy.id().get()],
    }))
    .await
    .expect("add a member");
    api.download(cy.token(), &up.id, Some((&g, before.seq)), &[])
        .await
        .refused(403, "forbidden", "a member added after the message");
    let after = al
        .send_frame(media_send(&g, media(&up.id, |_| {})))
        .await
        .expect("a media send to the group");
    message_at(&cy, &g, after.seq).await;
    let d = api
        .download(cy.token(), &up.id, Some((&g, after.seq)), &[])
        .await;
    d.status(200, "a member, a message after they joined");
    assert_eq!(d.body, PNG);
    api.download(bea.token(), &up.id, Some((&g, after.seq)), &[])
        .await
        .status(200, "a member from the start, the later message");
    // Last (it would hide the checks above): Cy's download through the later message
    // does not open the earlier one, from before he joined.
    api.download(cy.token(), &up.id, Some((&g, before.seq)), &[])
        .await
        .refused(
            403,
            "forbidden",
            "after a download through a later message, one from before joining",
        );
}

async fn forwarding_and_blocks(server: &Server) {
    let api = Api::new(server);
    let [al, bea, cy, dee] = people(server, ["fw_al", "fw_bea", "fw_cy", "fw_dee"]).await;
    let c_ab = conv(al.id(), bea.id());
    let c_bc = conv(bea.id(), cy.id());
    let up = api.upload_ok(al.token(), "filename=f.jpg", &JPEG).await;
    let text = al.send_text(bea.id(), "a text").await.expect("send");
    let ack = al
        .send_frame(media_send(bea.id(), media(&up.id, |_| {})))
        .await
        .expect("a media send");
    message_at(&bea, &c_ab, ack.seq).await;

    // Bea may not send Al's media as her own, nor an id that names nothing.
    let refused = bea
        .send_frame(media_send(cy.id(), media(&up.id, |_| {})))
        .await;
    assert_eq!(
        refusal(refused),
        ErrorCode::MediaRefused,
        "someone else's media"
    );
    let unknown = bea
        .send_frame(media_send(cy.id(), media("AAAAAAAAAAAAAAAAAAAAAA", |_| {})))
        .await;
    // docs/protocol.md says NOT_FOUND for an unknown id; client.proto's comment on
    // MEDIA_REFUSED says it covers "names no upload" too: either is taken.
    let unknown = refusal(unknown);
    assert!(
        matches!(unknown, ErrorCode::NotFound | ErrorCode::MediaRefused),
        "an unknown media id: {unknown:?}"
    );
    // Forwarding from a message that does not carry it, or that she cannot read.
    let wrong_seq = bea
        .send_frame(media_send(cy.id(), forward(&up.id, &c_ab, text.seq)))
        .await;
    assert_eq!(
        refusal(wrong_seq),
        ErrorCode::MediaRefused,
        "from a text message"
    );
    let not_hers = cy
        .send_frame(media_send(bea.id(), forward(&up.id, &c_ab, ack.seq)))
        .await;
    assert_eq!(
        refusal(not_hers),
        ErrorCode::MediaRefused,
        "from a chat Cy is not in"
    );

    // Forwarding from the message she got works; Cy downloads through the new message.
    let fwd = bea
        .send_frame(media_send(cy.id(), forward(&up.id, &c_ab, ack.seq)))
        .await
        .expect("a forward");
    assert_eq!(fwd.conversation_id, c_bc.as_str());
    let got = message_at(&cy, &c_bc, fwd.seq).await;
    let r = got.media.expect("Message.media on the forward");
    assert_eq!(
        (r.id.as_str(), r.sha256.as_str()),
        (up.id.as_str(), up.sha256.as_str())
    );
    assert_eq!(
        (r.forwarded_from_conversation.as_str(), r.forwarded_from_seq),
        ("", 0),
        "forwarding info is cleared in the stored message"
    );
    api.download(cy.token(), &up.id, Some((&c_ab, ack.seq)), &[])
        .await
        .refused(403, "forbidden", "the original message is not Cy's");
    let d = api
        .download(cy.token(), &up.id, Some((&c_bc, fwd.seq)), &[])
        .await;
    d.status(200, "the forward's recipient");
    assert_eq!(d.body, JPEG);

    // Bea blocked Dee before he sent: his media message is withheld, and gives no access.
    bea.block(dee.id()).await.expect("block");
    let c_bd = conv(bea.id(), dee.id());
    let dup = api.upload_ok(dee.token(), "filename=d.png", &PNG).await;
    let withheld = dee
        .send_frame(media_send(bea.id(), media(&dup.id, |_| {})))
        .await
        .expect("a blocked sender's send is acked");
    api.download(bea.token(), &dup.id, Some((&c_bd, withheld.seq)), &[])
        .await
        .refused(403, "forbidden", "a blocked sender's withheld media");
    api.sub(bea.token(), &dup.id, "/info", Some((&c_bd, withheld.seq)))
        .await
        .refused(403, "forbidden", "/info of a withheld media");
    api.download(dee.token(), &dup.id, None, &[])
        .await
        .status(200, "the blocked sender still downloads his own upload");

    // Last (it would hide the checks above): having downloaded through the forward does
    // not open the original message's conversation to Cy.
    api.download(cy.token(), &up.id, Some((&c_ab, ack.seq)), &[])
        .await
        .refused(
            403,
            "forbidden",
            "after downloading through the forward, the original message is still not Cy's",
        );
}

// ---------------------------------------------------------------------------------
// Flow 6: content addressing.

async fn content_addressing(server: &Server) {
    let api = Api::new(server);
    let [al, bea] = users(server, ["ca_al", "ca_bea"]).await;
    let content = pdf(64 * KIB, 9);
    let a1 = api
        .upload_ok(&al.access_token, "filename=x.pdf", &content)
        .await;
    let a2 = api
        .upload_ok(&al.access_token, "filename=x.pdf", &content)
        .await;
    assert_eq!(
        a1.id, a2.id,
        "the same user uploading the same bytes gets the same id"
    );
    assert_eq!(
        api.usage(&al.access_token).await.0,
        content.len() as u64,
        "counted once"
    );
    let b = api
        .upload_ok(&bea.access_token, "filename=y.pdf", &content)
        .await;
    assert_eq!(b.sha256, a1.sha256);
    assert_eq!(b.sha256, hex(&sha256(&content)));
    let d = api.download(&bea.access_token, &b.id, None, &[]).await;
    d.status(200, "the second uploader downloads her record");
    assert!(d.body == content);
    if b.id != a1.id {
        // Her record does not open his.
        api.download(&bea.access_token, &a1.id, None, &[])
            .await
            .refused(
                403,
                "forbidden",
                "another user's record of the same content",
            );
    }
}

// ---------------------------------------------------------------------------------
// Flow: quota (NATTER_MEDIA_QUOTA_MIB=1).

async fn quota(server: &Server) {
    let api = Api::new(server);
    let [al] = users(server, ["quo_al"]).await;
    let t = al.access_token.as_str();
    let first = pdf(700 * KIB, 10);
    let second = pdf(700 * KIB, 11);
    assert_eq!(api.usage(t).await, (0, MIB as u64));
    let up = api.upload_ok(t, "filename=1.pdf", &first).await;
    assert_eq!(api.usage(t).await.0, first.len() as u64);
    api.upload_raw(t, "filename=2.pdf", second.clone())
        .await
        .refused(429, "quota_exceeded", "a second 700 KiB document");
    assert_eq!(
        api.usage(t).await.0,
        first.len() as u64,
        "the refused one counts nothing"
    );
    // Resumable: refused at create, or at the latest when the bytes are in.
    let r = api.create(t, json!({"size": second.len()})).await;
    if r.status != 429 {
        r.status(201, "create");
        let id = r.json()["upload_id"]
            .as_str()
            .expect("upload_id")
            .to_owned();
        let p = api.patch(t, &id, 0, second.clone()).await;
        let r = if p.status == 204 {
            api.complete(t, &id).await
        } else {
            p
        };
        r.refused(429, "quota_exceeded", "a resumable upload over the quota");
    } else {
        r.refused(429, "quota_exceeded", "a resumable upload over the quota");
    }
    assert_eq!(api.usage(t).await.0, first.len() as u64);
    // The same content again counts once: not refused ("the same content uploaded twice
    // by one user counts once").
    let again = api.upload(t, "filename=1-again.pdf", &first).await;
    again.status(
        201,
        "the same 700 KiB again, by the same user, near the quota",
    );
    assert_eq!(Media::of(&again.json()).id, up.id);
    assert_eq!(api.usage(t).await.0, first.len() as u64);
}

// ---------------------------------------------------------------------------------
// Flow 7: garbage collection (grace 1 s, every 1 s; uploads expire after 2 s).

async fn garbage_collection(server: &Server) {
    let api = Api::new(server);
    let [al, bea] = people(server, ["gc_al", "gc_bea"]).await;
    let t = al.token();
    let c = conv(al.id(), bea.id());
    let orphan = api.upload_ok(t, "filename=o.png", &PNG).await;
    let kept = api.upload_ok(t, "filename=k.jpg", &JPEG).await;
    // Within the 3 s grace (long enough for a loaded CI machine to send one): both
    // are counted.
    assert_eq!(api.usage(t).await.0, (PNG.len() + JPEG.len()) as u64);
    let ack = al
        .send_frame(media_send(bea.id(), media(&kept.id, |_| {})))
        .await
        .expect("a media send");
    let open = api.create_ok(t, json!({"size": 1000})).await;
    api.patch(t, &open, 0, vec![b'%'; 10])
        .await
        .status(204, "PATCH");

    // The unsent upload goes.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = api.sub(t, &orphan.id, "/info", None).await;
        if r.status == 404 {
            break;
        }
        r.status(200, "an unsent upload, before it is collected");
        assert!(
            Instant::now() < deadline,
            "an upload no message references is still there after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.download(t, &orphan.id, None, &[])
        .await
        .refused(404, "not_found", "a collected upload");
    // The untouched resumable upload expires (TTL 4 s).
    let deadline = Instant::now() + WAIT;
    while api.upload_state(t, &open, "HEAD").await.status != 404 {
        assert!(
            Instant::now() < deadline,
            "an untouched upload is still open after {WAIT:?} (TTL 4 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        api.usage(t).await.0,
        JPEG.len() as u64,
        "usage drops by the collected upload"
    );
    // The sent one survives, for both.
    let d = api.download(t, &kept.id, None, &[]).await;
    d.status(200, "a referenced upload survives (uploader)");
    assert_eq!(d.body, JPEG);
    let d = api
        .download(bea.token(), &kept.id, Some((&c, ack.seq)), &[])
        .await;
    d.status(200, "a referenced upload survives (recipient)");
    assert_eq!(d.body, JPEG);
}

// ---------------------------------------------------------------------------------
// The cast.

/// A registered user with one connected device; derefs to that device's client.
struct Person {
    session: Session,
    client: Client,
}

impl Deref for Person {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Person {
    fn id(&self) -> UserId {
        self.session.user_id
    }

    fn token(&self) -> &str {
        &self.session.access_token
    }

    async fn second_device(&self, server: &Server) -> Client {
        let session = server.login(&self.session.username, "device-2").await;
        server.device(&session).await
    }
}

/// Users registered in the order named, one device each.
async fn people<const N: usize>(server: &Server, names: [&str; N]) -> [Person; N] {
    let mut cast = Vec::with_capacity(N);
    for name in names {
        let session = server.user(name).await;
        let client = server.device(&session).await;
        cast.push(Person { session, client });
    }
    cast.try_into()
        .unwrap_or_else(|_| unreachable!("a person a name"))
}

/// Users registered in the order named, no device connected.
async fn users<const N: usize>(server: &Server, names: [&str; N]) -> [Session; N] {
    let mut out = Vec::with_capacity(N);
    for name in names {
        out.push(server.user(name).await);
    }
    out.try_into()
        .unwrap_or_else(|_| unreachable!("a session a name"))
}

// ---------------------------------------------------------------------------------
// Sending media.

/// A MediaRef naming `id`, changed by `edit`.
fn media(id: &str, edit: impl FnOnce(&mut v1::MediaRef)) -> v1::MediaRef {
    let mut m = v1::MediaRef {
        id: id.to_owned(),
        ..Default::default()
    };
    edit(&mut m);
    m
}

/// A MediaRef forwarding `id` from message `seq` of `from`.
fn forward(id: &str, from: &ConversationId, seq: u64) -> v1::MediaRef {
    media(id, |m| {
        m.forwarded_from_conversation = from.to_string();
        m.forwarded_from_seq = seq;
    })
}

/// A MESSAGE_KIND_MEDIA Send to `to` carrying `media`.
fn media_send(to: impl Into<Target>, media: v1::MediaRef) -> v1::Send {
    let mut send = v1::Send {
        kind: v1::MessageKind::Media as i32,
        media: Some(media.into()),
        ..Default::default()
    };
    match to.into() {
        Target::User(u) => send.to_user = u.get(),
        Target::Conversation(c) => send.conversation_id = c.into(),
    }
    send
}

/// The message `seq` of `conv` as it arrives on `c`.
async fn message_at(c: &Client, conv: &ConversationId, seq: u64) -> v1::Message {
    next_matching(c, WAIT, |ev| match ev {
        Event::Message(m) if m.conversation_id == conv.as_str() && m.seq == seq => Some(m.clone()),
        _ => None,
    })
    .await
}

/// The reference in a message says what the upload answered.
fn assert_ref_is(r: &v1::MediaRef, up: &Media, kind: v1::MediaKind) {
    assert_eq!(r.kind, kind as i32, "{r:?}");
    assert_eq!(
        (r.id.as_str(), r.mime.as_str(), r.size, r.sha256.as_str()),
        (
            up.id.as_str(),
            up.mime.as_str(),
            up.size,
            up.sha256.as_str()
        ),
        "the MediaRef as the server filled it"
    );
    assert_eq!(
        (
            u64::from(r.width),
            u64::from(r.height),
            u64::from(r.duration_ms)
        ),
        (up.width, up.height, up.duration_ms)
    );
}

/// A media id: 22 URL-safe characters.
fn assert_id(id: &str) {
    assert!(
        id.len() == 22
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a media id is 22 URL-safe characters: {id:?}"
    );
}

// ---------------------------------------------------------------------------------
// The REST API.

/// The media as the upload (or /info) answers it.
#[derive(Debug, Clone, PartialEq)]
struct Media {
    id: String,
    kind: String,
    mime: String,
    size: u64,
    sha256: String,
    width: u64,
    height: u64,
    duration_ms: u64,
    preview: Vec<u8>,
    filename: String,
    voice: bool,
}

impl Media {
    fn of(v: &Value) -> Media {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let n = |k: &str| v[k].as_u64().unwrap_or_default();
        let preview = v["preview"].as_str().unwrap_or_default();
        Media {
            id: s("id"),
            kind: s("kind"),
            mime: s("mime"),
            size: n("size"),
            sha256: s("sha256"),
            width: n("width"),
            height: n("height"),
            duration_ms: n("duration_ms"),
            preview: base64_decode(preview)
                .unwrap_or_else(|| panic!("preview is not base64: {preview:?}")),
            filename: s("filename"),
            voice: v["voice"].as_bool().unwrap_or_default(),
        }
    }
}

/// A whole answer: status, headers (names lowercase) and body.
#[derive(Debug)]
struct Resp {
    what: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.trim().parse().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: the answer is not JSON ({e}): {:?}",
                self.what,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        match std::str::from_utf8(&self.body) {
            Ok(t) => t.chars().take(300).collect(),
            Err(_) => format!(
                "<{} bytes of {}>",
                self.body.len(),
                self.header("content-type").unwrap_or("?")
            ),
        }
    }

    /// Asserts the status.
    fn status(&self, want: u16, what: &str) -> &Resp {
        assert_eq!(
            self.status,
            want,
            "{what}: {} answered {} {}",
            self.what,
            self.status,
            self.text()
        );
        self
    }

    /// Asserts a refusal: the status and the JSON error code.
    fn refused(&self, status: u16, code: &str, what: &str) {
        self.status(status, what);
        let v = self.json();
        assert_eq!(
            v["error"]["code"].as_str(),
            Some(code),
            "{what}: {} answered {status} with {v}",
            self.what
        );
        assert!(
            v["error"]["message"].is_string(),
            "{what}: an error has a message: {v}"
        );
    }
}

/// The media endpoints over reqwest, with a raw HTTP/1.1 path for bodies the server
/// may refuse before reading them.
struct Api {
    http: reqwest::Client,
    base: String,
    addr: SocketAddr,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a reqwest client"),
            base: server.base_url(),
            addr: server.addr(),
        }
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let what = format!(
            "{method} {}",
            path.split("access_token").next().unwrap_or(path)
        );
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut rb = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let r = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        let body = r
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_vec();
        Resp {
            what,
            status,
            headers,
            body,
        }
    }

    /// `POST /v1/media?<query>` with `body`.
    async fn upload(&self, token: &str, query: &str, body: &[u8]) -> Resp {
        let path = format!("/v1/media?{query}");
        self.req("POST", &path, Some(token), &[], Some(body.to_vec()))
            .await
    }

    /// A single-shot upload that must be accepted: the media.
    async fn upload_ok(&self, token: &str, query: &str, body: &[u8]) -> Media {
        let r = self.upload(token, query, body).await;
        assert!(
            r.status == 201 || r.status == 200,
            "upload {query}: {} {}",
            r.status,
            r.text()
        );
        Media::of(&r.json())
    }

    /// Like [`Api::upload`] over raw HTTP/1.1: the answer is read while the body is still
    /// being written, so a refusal before the end of the body is seen as an answer.
    async fn upload_raw(&self, token: &str, query: &str, body: Vec<u8>) -> Resp {
        let path = format!("/v1/media?{query}");
        raw_exchange(self.addr, "POST", &path, token, &[], body).await
    }

    /// `POST /v1/media/uploads`.
    async fn create(&self, token: &str, body: Value) -> Resp {
        let headers = [("content-type", "application/json")];
        let body = body.to_string().into_bytes();
        self.req(
            "POST",
            "/v1/media/uploads",
            Some(token),
            &headers,
            Some(body),
        )
        .await
    }

    /// A resumable upload that must be created: its id.
    async fn create_ok(&self, token: &str, body: Value) -> String {
        let r = self.create(token, body).await;
        r.status(201, "create");
        r.json()["upload_id"]
            .as_str()
            .expect("upload_id")
            .to_owned()
    }

    async fn patch(&self, token: &str, id: &str, offset: u64, body: Vec<u8>) -> Resp {
        let path = format!("/v1/media/uploads/{id}");
        let offset = offset.to_string();
        let headers = [
            ("upload-offset", offset.as_str()),
            ("content-type", "application/offset+octet-stream"),
        ];
        self.req("PATCH", &path, Some(token), &headers, Some(body))
            .await
    }

    /// `HEAD` or `GET /v1/media/uploads/{id}`.
    async fn upload_state(&self, token: &str, id: &str, method: &str) -> Resp {
        let path = format!("/v1/media/uploads/{id}");
        self.req(method, &path, Some(token), &[], None).await
    }

    async fn complete(&self, token: &str, id: &str) -> Resp {
        let path = format!("/v1/media/uploads/{id}/complete");
        self.req("POST", &path, Some(token), &[], None).await
    }

    async fn delete_upload(&self, token: &str, id: &str) -> Resp {
        let path = format!("/v1/media/uploads/{id}");
        self.req("DELETE", &path, Some(token), &[], None).await
    }

    /// `GET /v1/media/{id}[?conversation=&seq=]`.
    async fn download(
        &self,
        token: &str,
        id: &str,
        at: Option<(&ConversationId, u64)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let path = format!("/v1/media/{id}{}", at_query(at));
        self.req("GET", &path, Some(token), headers, None).await
    }

    /// `GET /v1/media/{id}{suffix}` (`/info`, `/thumbnail`).
    async fn sub(
        &self,
        token: &str,
        id: &str,
        suffix: &str,
        at: Option<(&ConversationId, u64)>,
    ) -> Resp {
        let path = format!("/v1/media/{id}{suffix}{}", at_query(at));
        self.req("GET", &path, Some(token), &[], None).await
    }

    /// `(used, quota)` in bytes.
    async fn usage(&self, token: &str) -> (u64, u64) {
        let r = self
            .req("GET", "/v1/media/usage", Some(token), &[], None)
            .await;
        r.status(200, "usage");
        let v = r.json();
        let n = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("usage without {k}: {v}"))
        };
        (n("used"), n("quota"))
    }
}

fn at_query(at: Option<(&ConversationId, u64)>) -> String {
    match at {
        Some((c, seq)) => format!("?conversation={c}&seq={seq}"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------
// Raw HTTP/1.1.

/// The request line and headers of a raw request with a body of `len` bytes.
fn raw_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, String)],
    len: usize,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// One request over a new connection; the answer is read while the body is written (a
/// server refusing early may never read the rest), and the write half is kept open until
/// then (a half-closed connection may be dropped without an answer).
async fn raw_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Resp {
    let what = format!("{method} {path} (raw, {} bytes)", body.len());
    let head = raw_head(addr, method, path, token, headers, body.len());
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut r = wr.write_all(head.as_bytes()).await;
        for chunk in body.chunks(64 * KIB) {
            if r.is_err() {
                break;
            }
            r = wr.write_all(chunk).await;
        }
        (wr, r)
    });
    let resp = tokio::time::timeout(WAIT, read_response(&mut rd, method == "HEAD"))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    writer.abort();
    Resp { what, ..resp }
}

/// A PATCH that announces `declared` bytes from `offset`, sends only `sent`, and drops
/// the connection.
async fn cut_patch(
    addr: SocketAddr,
    token: &str,
    id: &str,
    offset: usize,
    declared: usize,
    sent: &[u8],
) {
    assert!(sent.len() < declared);
    let path = format!("/v1/media/uploads/{id}");
    let headers = [
        ("Upload-Offset", offset.to_string()),
        ("Content-Type", "application/offset+octet-stream".to_owned()),
    ];
    let head = raw_head(addr, "PATCH", &path, token, &headers, declared);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write the head");
    s.write_all(sent).await.expect("write part of the body");
    s.flush().await.expect("flush");
    // Dropped: the kernel still delivers what was written, then the FIN.
    drop(s);
}

/// Reads one HTTP/1.1 answer (Content-Length, chunked, or until EOF).
async fn read_response(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    head_only: bool,
) -> Result<Resp, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = rd.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "EOF before the headers: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end..].to_vec();
    let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    if head_only || status == 204 || status == 304 {
        body.clear();
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = rd.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("EOF after {} of {len} body bytes", body.len()));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else {
        // Connection: close; read to the end (a reset after the answer ends it too).
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            body = dechunk(&body);
        }
    }
    Ok(Resp {
        what: String::new(),
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let Ok(size) = size else { break };
        if size == 0 || data.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&data[i + 2..i + 2 + size]);
        data = &data[(i + 4 + size).min(data.len())..];
    }
    out
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

// ---------------------------------------------------------------------------------
// Generated content.

/// `n` deterministic pseudo-random bytes (splitmix64 from `seed`).
fn prng_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A "PDF" of `n` bytes: the header, then pseudo-random bytes.
fn pdf(n: usize, seed: u64) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    out.extend(prng_bytes(n - out.len(), seed));
    out
}

/// A WAV file: 1 s of 8 kHz mono 16-bit PCM (a quiet sawtooth).
fn wav_1s() -> Vec<u8> {
    let rate: u32 = 8000;
    let data_len: u32 = rate * 2;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes a second
    w.extend_from_slice(&2u16.to_le_bytes()); // block align
    w.extend_from_slice(&16u16.to_le_bytes()); // bits a sample
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..rate {
        let sample = ((i % 64) as i16 - 32) * 64;
        w.extend_from_slice(&sample.to_le_bytes());
    }
    w
}

// ---------------------------------------------------------------------------------
// SHA-256, hex, base64, JPEG dimensions.

const K256: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 (FIPS 180-4).
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let whole = data.len() / 64 * 64;
    let mut tail = data[whole..].to_vec();
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    let mut w = [0u32; 64];
    for block in data[..whole].chunks_exact(64).chain(tail.chunks_exact(64)) {
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K256[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard or URL-safe base64, padded or not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The (width, height) in a JPEG's SOF segment.
fn jpeg_dims(data: &[u8]) -> Option<(u32, u32)> {
    if data.get(..2)? != [0xff, 0xd8] {
        return None;
    }
    let mut i = 2;
    while i + 4 <= data.len() {
        if data[i] != 0xff {
            return None;
        }
        let marker = data[i + 1];
        if marker == 0xff {
            i += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
        let sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if sof {
            let s = data.get(i + 5..i + 9)?;
            let h = u16::from_be_bytes([s[0], s[1]]);
            let w = u16::from_be_bytes([s[2], s[3]]);
            return Some((u32::from(w), u32::from(h)));
        }
        i += 2 + len;
    }
    None
}

#[test]
fn the_helpers_are_right() {
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(&[b'a'; 1000])),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        base64_decode("aGVsbG8=").as_deref(),
        Some(b"hello".as_slice())
    );
    assert_eq!(
        base64_decode("aGVsbG8").as_deref(),
        Some(b"hello".as_slice())
    );
    assert_eq!(
        base64_decode("-_8").as_deref(),
        Some([0xfb, 0xff].as_slice())
    );
    assert_eq!(jpeg_dims(&JPEG), Some((16, 8)));
    assert_eq!(&PNG[12..16], b"IHDR");
    assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    assert_eq!(prng_bytes(10, 1), prng_bytes(10, 1));
    assert_eq!(wav_1s().len(), 44 + 16000);
}

//! The people service end to end on its bus contract: an [`InProcessBus`], a
//! [`RedbPeopleStore`] in a temporary directory, and a small stand-in for sessions that
//! answers `UserLookup` on `Subject::sessions_user()` for a few users (sessions' real bus
//! contract), and one for the media service that answers `MediaDescribe` on
//! `Subject::media_describe()` by the id's prefix ([`fake_media`]). Every operation, its
//! errors, and every visibility rule from the reader's side.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use natter_bus::{Bus, BusEvent, InProcessBus, Subscription};
use natter_people::{Config, PeopleStore, RedbPeopleStore};
use natter_proto::{
    ErrorCode, Subject, bus, now_ms,
    v1::{self, people_request::Op},
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

const ANN: u64 = 11;
const BO: u64 = 22;
const CY: u64 = 33;
const DI: u64 = 44;
const ED: u64 = 55;
/// Not a user.
const NOBODY: u64 = 99;

const USERS: [(u64, &str); 5] = [(ANN, "ann"), (BO, "bo"), (CY, "cy"), (DI, "di"), (ED, "ed")];

const TIMEOUT: Duration = Duration::from_secs(5);

struct Env {
    bus: Arc<InProcessBus>,
    store: Arc<RedbPeopleStore>,
    /// Lookups the stand-in for sessions answered.
    lookups: Arc<AtomicUsize>,
    /// (caller, media id) of every MediaDescribe the stand-in for media answered.
    described: Arc<Mutex<Vec<(u64, String)>>>,
    /// Every PeopleChanged published, subscribed before the service started.
    changes: Subscription,
    shutdown: CancellationToken,
    service: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Answers `UserLookup` for [`USERS`] like sessions does (by id when one is given, else by
/// username), until `shutdown`.
async fn fake_sessions(
    bus: Arc<InProcessBus>,
    lookups: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let mut sub = bus
        .queue_subscribe(&Subject::sessions_user(), "sessions", 1024)
        .await
        .expect("subscribe sessions");
    let users: HashMap<u64, &str> = USERS.into_iter().collect();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = sub.next() => match ev {
                    Some(BusEvent::Message(m)) => m,
                    Some(BusEvent::Lagged) => continue,
                    None => break,
                },
            };
            lookups.fetch_add(1, Ordering::SeqCst);
            let q = bus::UserLookup::decode(msg.payload.clone()).unwrap_or_default();
            let found = if q.user_id != 0 {
                users.get(&q.user_id).map(|n| (q.user_id, *n))
            } else {
                users
                    .iter()
                    .find(|(_, n)| **n == q.username)
                    .map(|(&id, n)| (id, *n))
            };
            let info = match found {
                Some((id, name)) => bus::UserInfo {
                    exists: true,
                    user_id: id,
                    username: name.to_owned(),
                },
                None => bus::UserInfo::default(),
            };
            let _ = natter_bus::reply(bus.as_ref(), &msg, Bytes::from(info.encode_to_vec())).await;
        }
    });
}

/// Answers `MediaDescribe` like the media service by the id's prefix, until `shutdown`:
/// `theirs-` MEDIA_REFUSED (someone else's upload), `gone-` NOT_FOUND, `silent-` never
/// answered, `doc-` a document, `video-` a video, anything else an image; the caller's
/// own upload otherwise. Records what it described (and so pinned).
async fn fake_media(
    bus: Arc<InProcessBus>,
    described: Arc<Mutex<Vec<(u64, String)>>>,
    shutdown: CancellationToken,
) {
    let mut sub = bus
        .queue_subscribe(&Subject::media_describe(), "media", 1024)
        .await
        .expect("subscribe media");
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = sub.next() => match ev {
                    Some(BusEvent::Message(m)) => m,
                    Some(BusEvent::Lagged) => continue,
                    None => break,
                },
            };
            let q = bus::MediaDescribe::decode(msg.payload.clone()).unwrap_or_default();
            let caller = q.caller.map_or(0, |c| c.user_id);
            let id = q.media.map(|m| m.id).unwrap_or_default();
            let refuse = |code, m: &str| bus::MediaDescribeReply {
                media: None,
                error: Some(natter_proto::error(code, m)),
            };
            let kind = |k: v1::MediaKind| bus::MediaDescribeReply {
                media: Some(v1::MediaRef {
                    id: id.clone(),
                    kind: k as i32,
                    ..Default::default()
                }),
                error: None,
            };
            let reply = if id.starts_with("silent-") {
                continue;
            } else if id.starts_with("theirs-") {
                refuse(ErrorCode::MediaRefused, "uploaded by someone else")
            } else if id.starts_with("gone-") {
                refuse(ErrorCode::NotFound, "no such media")
            } else {
                described.lock().unwrap().push((caller, id.clone()));
                if id.starts_with("doc-") {
                    kind(v1::MediaKind::Document)
                } else if id.starts_with("video-") {
                    kind(v1::MediaKind::Video)
                } else {
                    kind(v1::MediaKind::Image)
                }
            };
            let _ = natter_bus::reply(bus.as_ref(), &msg, Bytes::from(reply.encode_to_vec())).await;
        }
    });
}

async fn env_with(config: Config, sessions: bool) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbPeopleStore::open(&dir.path().join("people.redb")).expect("open"));
    let bus = Arc::new(InProcessBus::new());
    let shutdown = CancellationToken::new();
    let lookups = Arc::new(AtomicUsize::new(0));
    if sessions {
        fake_sessions(bus.clone(), lookups.clone(), shutdown.clone()).await;
    }
    let described = Arc::new(Mutex::new(Vec::new()));
    fake_media(bus.clone(), described.clone(), shutdown.clone()).await;
    let changes = bus
        .subscribe(&Subject::people_changed(), 1024)
        .await
        .expect("subscribe changes");
    let service = natter_people::start(store.clone(), bus.clone(), config, shutdown.clone())
        .await
        .expect("start");
    Env {
        bus,
        store,
        lookups,
        described,
        changes,
        shutdown,
        service: Some(service),
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with(Config::default(), true).await
}

impl Env {
    /// Sends `op` as `caller` and returns the answer.
    async fn ask(&self, caller: u64, op: Op) -> Result<v1::PeopleResult, v1::Error> {
        let query = bus::PeopleQuery {
            caller: Some(bus::Caller {
                user_id: caller,
                device_id: 1,
            }),
            request: Some(v1::PeopleRequest { op: Some(op) }),
        };
        self.raw(Bytes::from(query.encode_to_vec())).await
    }

    async fn raw(&self, payload: Bytes) -> Result<v1::PeopleResult, v1::Error> {
        let reply = self
            .bus
            .request(&Subject::people_request(), payload, TIMEOUT)
            .await
            .expect("the people service answers");
        let reply = bus::PeopleReply::decode(reply).expect("a PeopleReply");
        match (reply.result, reply.error) {
            (Some(r), None) => Ok(r),
            (None, Some(e)) => Err(e),
            other => panic!("a reply with exactly one of result and error: {other:?}"),
        }
    }

    async fn ok(&self, caller: u64, op: Op) -> v1::PeopleResult {
        let what = format!("{op:?}");
        match self.ask(caller, op).await {
            Ok(r) => r,
            Err(e) => panic!("{what} by {caller} failed: {e:?}"),
        }
    }

    /// The error code `op` gets (panics if it succeeds).
    async fn fails(&self, caller: u64, op: Op) -> ErrorCode {
        let what = format!("{op:?}");
        match self.ask(caller, op).await {
            Ok(r) => panic!("{what} by {caller} succeeded: {r:?}"),
            Err(e) => {
                assert!(!e.message.is_empty(), "an error says why");
                ErrorCode::try_from(e.code).expect("a known code")
            }
        }
    }

    async fn error(&self, caller: u64, op: Op) -> v1::Error {
        self.ask(caller, op).await.expect_err("an error")
    }

    /// The users of the PeopleChanged published since the last call.
    async fn changed(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        // In process, publishing is done when the reply is sent: a short wait suffices.
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(50), self.changes.next()).await
        {
            match ev {
                BusEvent::Message(m) => out.push(
                    bus::PeopleChanged::decode(m.payload)
                        .expect("PeopleChanged")
                        .user_id,
                ),
                BusEvent::Lagged => panic!("changes lagged"),
            }
        }
        out
    }

    async fn audience(&self, user_id: u64) -> bus::Audience {
        let req = bus::AudienceRequest { user_id };
        let reply = self
            .bus
            .request(
                &Subject::people_audience(),
                Bytes::from(req.encode_to_vec()),
                TIMEOUT,
            )
            .await
            .expect("the people service answers");
        bus::Audience::decode(reply).expect("an Audience")
    }

    // Shorthands.

    async fn add_contact(&self, owner: u64, user_id: u64) {
        self.ok(
            owner,
            Op::ContactAdd(v1::ContactAdd {
                user_id,
                ..Default::default()
            }),
        )
        .await;
    }

    async fn mutual(&self, a: u64, b: u64) {
        self.add_contact(a, b).await;
        self.add_contact(b, a).await;
    }

    async fn block(&self, owner: u64, user_id: u64) -> Vec<u64> {
        self.ok(owner, Op::Block(v1::Block { user_id }))
            .await
            .blocked
    }

    async fn set_privacy(&self, owner: u64, settings: v1::PrivacySettings) -> v1::PrivacySettings {
        self.ok(
            owner,
            Op::PrivacySet(v1::PrivacySet {
                settings: Some(settings),
            }),
        )
        .await
        .privacy
        .expect("privacy")
    }

    async fn profiles(&self, reader: u64, user_ids: Vec<u64>) -> Vec<v1::Profile> {
        self.ok(reader, Op::ProfileGet(v1::ProfileGet { user_ids }))
            .await
            .profiles
    }

    async fn profile(&self, reader: u64, user: u64) -> v1::Profile {
        let mut p = self.profiles(reader, vec![user]).await;
        assert_eq!(p.len(), 1, "one profile of {user}");
        p.remove(0)
    }

    async fn post(&self, poster: u64, post_id: &str, text: &str) -> v1::Status {
        self.ok(
            poster,
            Op::StatusPost(v1::StatusPost {
                post_id: post_id.into(),
                text: text.into(),
                media_id: String::new(),
            }),
        )
        .await
        .status
        .expect("status")
    }

    async fn status_list(&self, reader: u64) -> Vec<v1::UserStatuses> {
        self.ok(reader, Op::StatusList(v1::StatusList {}))
            .await
            .by_user
    }

    async fn mine(&self, poster: u64) -> Vec<v1::Status> {
        self.ok(poster, Op::StatusMine(v1::StatusMine {}))
            .await
            .statuses
    }

    async fn view(&self, viewer: u64, status_id: u64) -> Result<v1::PeopleResult, v1::Error> {
        self.ask(viewer, Op::StatusView(v1::StatusView { status_id }))
            .await
    }
}

fn vis(v: v1::Visibility) -> i32 {
    v as i32
}

fn privacy(photo: v1::Visibility, about: v1::Visibility) -> v1::PrivacySettings {
    v1::PrivacySettings {
        profile_photo: vis(photo),
        about: vis(about),
        ..Default::default()
    }
}

fn update(display_name: &str, about: &str, avatar: &str) -> Op {
    Op::ProfileUpdate(v1::ProfileUpdate {
        display_name: Some(display_name.into()),
        about: Some(about.into()),
        avatar_media_id: Some(avatar.into()),
    })
}

/// (about, avatar) of a profile.
fn shown(p: &v1::Profile) -> (&str, &str) {
    (p.about.as_str(), p.avatar_media_id.as_str())
}

// ---------------------------------------------------------------------------------
// Profiles

#[tokio::test]
async fn profile_update_and_own_profile() {
    let e = env().await;
    // Never set: the ids and the username only.
    let own = e.profiles(ANN, vec![]).await;
    assert_eq!(
        own,
        vec![v1::Profile {
            user_id: ANN,
            username: "ann".into(),
            ..Default::default()
        }]
    );
    let before = now_ms();
    let r = e.ok(ANN, update("Ann", "hello", "avatar-1")).await;
    assert_eq!(r.profiles.len(), 1);
    let p = &r.profiles[0];
    assert_eq!(
        (p.user_id, p.username.as_str(), p.display_name.as_str()),
        (ANN, "ann", "Ann")
    );
    assert_eq!(shown(p), ("hello", "avatar-1"));
    assert!(p.updated_at_ms >= before);

    // Absent fields stay; present ones (even empty) replace.
    let r = e
        .ok(
            ANN,
            Op::ProfileUpdate(v1::ProfileUpdate {
                about: Some(String::new()),
                ..Default::default()
            }),
        )
        .await;
    assert_eq!(r.profiles[0].display_name, "Ann");
    assert_eq!(shown(&r.profiles[0]), ("", "avatar-1"));
    assert_eq!(e.profiles(ANN, vec![]).await, r.profiles);
}

#[tokio::test]
async fn avatars_and_status_media_are_checked_by_the_media_service() {
    let e = env_with(
        Config {
            request_timeout: Duration::from_millis(300),
            ..Config::default()
        },
        true,
    )
    .await;
    let avatar = |id: &str| {
        Op::ProfileUpdate(v1::ProfileUpdate {
            avatar_media_id: Some(id.into()),
            ..Default::default()
        })
    };
    let status = |post_id: &str, id: &str| {
        Op::StatusPost(v1::StatusPost {
            post_id: post_id.into(),
            text: String::new(),
            media_id: id.into(),
        })
    };
    e.ok(ANN, avatar("pic-1")).await;
    for (id, code) in [
        ("theirs-1", ErrorCode::MediaRefused),
        ("gone-1", ErrorCode::NotFound),
        ("doc-1", ErrorCode::InvalidArgument),
        ("video-1", ErrorCode::InvalidArgument),
        ("silent-1", ErrorCode::Unavailable),
    ] {
        assert_eq!(e.fails(ANN, avatar(id)).await, code, "avatar {id}");
        // A status may be a video (posted below).
        if id != "video-1" {
            assert_eq!(e.fails(ANN, status(id, id)).await, code, "status {id}");
        }
    }
    // Nothing refused was stored.
    assert_eq!(shown(&e.profiles(ANN, vec![]).await[0]).1, "pic-1");
    // Clearing the avatar, or changing other fields, asks nothing.
    let before = e.described.lock().unwrap().len();
    e.ok(ANN, update("Ann", "hi", "")).await;
    e.ok(
        ANN,
        Op::ProfileUpdate(v1::ProfileUpdate {
            about: Some("x".into()),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(e.described.lock().unwrap().len(), before);
    // A status with an image or a video; a retry asks again nothing.
    e.ok(ANN, status("s-img", "pic-2")).await;
    e.ok(ANN, status("s-vid", "video-2")).await;
    e.ok(ANN, status("s-vid", "video-2")).await;
    let described = e.described.lock().unwrap().clone();
    let asked: Vec<&str> = described.iter().map(|(_, id)| id.as_str()).collect();
    assert!(
        described.iter().all(|(caller, _)| *caller == ANN),
        "{described:?}"
    );
    assert_eq!(
        asked.iter().filter(|id| **id == "video-2").count(),
        1,
        "{asked:?}"
    );
    assert!(
        asked.contains(&"pic-1") && asked.contains(&"pic-2"),
        "{asked:?}"
    );
    let mine = e.mine(ANN).await;
    assert_eq!(mine.len(), 2, "only the accepted statuses: {mine:?}");
}

#[tokio::test]
async fn profile_update_limits() {
    let e = env().await;
    let long = |n: usize| "x".repeat(n);
    for (name, about, avatar) in [(65, 0, 0), (0, 257, 0), (0, 0, 129)] {
        let err = e
            .error(ANN, update(&long(name), &long(about), &long(avatar)))
            .await;
        assert_eq!(err.code, ErrorCode::InvalidArgument as i32);
    }
    let err = e.error(ANN, update(&long(65), "", "")).await;
    assert!(err.message.contains("display_name"), "{}", err.message);
    // At the limits: fine.
    e.ok(ANN, update(&long(64), &long(256), &long(128))).await;
    // Nothing of the refused ones was stored.
    let own = e.profiles(ANN, vec![]).await;
    assert_eq!(own[0].display_name.len(), 64);
}

#[tokio::test]
async fn profile_get_many_unknown_left_out_and_capped() {
    let e = env().await;
    e.ok(BO, update("Bo", "", "")).await;
    let got = e.profiles(ANN, vec![BO, NOBODY, CY, BO, 0]).await;
    let ids: Vec<u64> = got.iter().map(|p| p.user_id).collect();
    assert_eq!(ids, vec![BO, CY]);
    assert_eq!(got[0].display_name, "Bo");
    assert_eq!(got[1].username, "cy");
    assert_eq!(
        e.fails(
            ANN,
            Op::ProfileGet(v1::ProfileGet {
                user_ids: vec![BO; 257]
            })
        )
        .await,
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn profile_photo_and_about_follow_settings_from_the_readers_side() {
    use v1::Visibility::{Contacts, Everyone, Nobody};
    let e = env().await;
    e.ok(ANN, update("Ann", "about ann", "photo")).await;
    // BO is Ann's contact; CY is not (though CY has Ann as a contact: that does not count).
    e.add_contact(ANN, BO).await;
    e.add_contact(CY, ANN).await;

    // Default: everyone sees everything.
    for reader in [BO, CY] {
        assert_eq!(shown(&e.profile(reader, ANN).await), ("about ann", "photo"));
    }

    e.set_privacy(ANN, privacy(Contacts, Nobody)).await;
    let bo = e.profile(BO, ANN).await;
    assert_eq!(shown(&bo), ("", "photo"));
    let cy = e.profile(CY, ANN).await;
    assert_eq!(shown(&cy), ("", ""));
    // Names are for everyone.
    assert_eq!(
        (cy.username.as_str(), cy.display_name.as_str()),
        ("ann", "Ann")
    );
    // Ann sees her own whole, whatever the settings.
    assert_eq!(shown(&e.profile(ANN, ANN).await), ("about ann", "photo"));

    e.set_privacy(ANN, privacy(Nobody, Contacts)).await;
    assert_eq!(shown(&e.profile(BO, ANN).await), ("about ann", ""));
    assert_eq!(shown(&e.profile(CY, ANN).await), ("", ""));

    e.set_privacy(ANN, privacy(Everyone, Contacts)).await;
    assert_eq!(shown(&e.profile(CY, ANN).await), ("", "photo"));

    // Blocked: only the names, even for a contact with everything set to EVERYONE.
    e.set_privacy(ANN, privacy(Everyone, Everyone)).await;
    e.block(ANN, BO).await;
    let bo = e.profile(BO, ANN).await;
    assert_eq!(shown(&bo), ("", ""));
    assert_eq!(
        (bo.username.as_str(), bo.display_name.as_str()),
        ("ann", "Ann")
    );
    // Found by name: the same view.
    let found = e
        .ok(
            BO,
            Op::Find(v1::UserFind {
                username: "ann".into(),
            }),
        )
        .await
        .profiles;
    assert_eq!(found, vec![bo]);
    // Unblocked: all again.
    e.ok(ANN, Op::Unblock(v1::Unblock { user_id: BO })).await;
    assert_eq!(shown(&e.profile(BO, ANN).await), ("about ann", "photo"));
}

#[tokio::test]
async fn user_find() {
    let e = env().await;
    e.ok(BO, update("Bo", "b", "")).await;
    let found = e
        .ok(
            ANN,
            Op::Find(v1::UserFind {
                username: "bo".into(),
            }),
        )
        .await
        .profiles;
    assert_eq!(found.len(), 1);
    assert_eq!(
        (
            found[0].user_id,
            found[0].username.as_str(),
            found[0].about.as_str()
        ),
        (BO, "bo", "b")
    );
    let find = |u: &str| Op::Find(v1::UserFind { username: u.into() });
    assert_eq!(e.fails(ANN, find("zed")).await, ErrorCode::NotFound);
    assert_eq!(e.fails(ANN, find("")).await, ErrorCode::InvalidArgument);
}

// ---------------------------------------------------------------------------------
// Privacy

#[tokio::test]
async fn privacy_get_set_and_changes_published() {
    use v1::Visibility::{Contacts, Everyone, Nobody};
    let mut e = env().await;
    let got = e
        .ok(ANN, Op::PrivacyGet(v1::PrivacyGet {}))
        .await
        .privacy
        .expect("privacy");
    let all = |v| v1::PrivacySettings {
        last_seen: vis(v),
        online: vis(v),
        profile_photo: vis(v),
        about: vis(v),
    };
    assert_eq!(got, all(Everyone));

    let after = e
        .set_privacy(
            ANN,
            v1::PrivacySettings {
                last_seen: vis(Nobody),
                about: vis(Contacts),
                ..Default::default()
            },
        )
        .await;
    let expected = v1::PrivacySettings {
        last_seen: vis(Nobody),
        online: vis(Everyone),
        profile_photo: vis(Everyone),
        about: vis(Contacts),
    };
    assert_eq!(after, expected);
    assert_eq!(e.changed().await, vec![ANN]);
    let got = e.ok(ANN, Op::PrivacyGet(v1::PrivacyGet {})).await.privacy;
    assert_eq!(got, Some(expected));

    // Nothing specified (or no settings at all): unchanged, nothing published.
    assert_eq!(
        e.set_privacy(ANN, v1::PrivacySettings::default()).await,
        expected
    );
    let r = e
        .ok(ANN, Op::PrivacySet(v1::PrivacySet { settings: None }))
        .await;
    assert_eq!(r.privacy, Some(expected));
    assert_eq!(e.changed().await, Vec::<u64>::new());

    // Unknown values are refused, naming the field; nothing changes.
    let err = e
        .error(
            ANN,
            Op::PrivacySet(v1::PrivacySet {
                settings: Some(v1::PrivacySettings {
                    online: 17,
                    about: vis(Nobody),
                    ..Default::default()
                }),
            }),
        )
        .await;
    assert_eq!(err.code, ErrorCode::InvalidArgument as i32);
    assert!(err.message.contains("online"), "{}", err.message);
    let got = e.ok(ANN, Op::PrivacyGet(v1::PrivacyGet {})).await.privacy;
    assert_eq!(got, Some(expected));
    assert_eq!(e.changed().await, Vec::<u64>::new());

    // Each user has their own.
    let bo = e.ok(BO, Op::PrivacyGet(v1::PrivacyGet {})).await.privacy;
    assert_eq!(bo, Some(all(Everyone)));
}

// ---------------------------------------------------------------------------------
// Contacts

#[tokio::test]
async fn contacts_add_rename_list_remove() {
    use v1::Visibility::{Everyone, Nobody};
    let mut e = env().await;
    e.ok(BO, update("Bo", "about bo", "bo.jpg")).await;
    e.ok(CY, update("Cy", "about cy", "cy.jpg")).await;
    e.set_privacy(CY, privacy(Nobody, Everyone)).await;
    e.changed().await;

    let before = now_ms();
    let added = e
        .ok(
            ANN,
            Op::ContactAdd(v1::ContactAdd {
                user_id: BO,
                username: String::new(),
                name: "Bobby".into(),
            }),
        )
        .await
        .contact
        .expect("contact");
    assert_eq!(
        (added.user_id, added.username.as_str(), added.name.as_str()),
        (BO, "bo", "Bobby")
    );
    assert!(added.added_at_ms >= before);
    let profile = added.profile.clone().expect("profile");
    assert_eq!(shown(&profile), ("about bo", "bo.jpg"));
    assert_eq!(e.changed().await, vec![ANN]);

    // By username.
    let cy = e
        .ok(
            ANN,
            Op::ContactAdd(v1::ContactAdd {
                user_id: 0,
                username: "cy".into(),
                name: String::new(),
            }),
        )
        .await
        .contact
        .expect("contact");
    assert_eq!((cy.user_id, cy.username.as_str()), (CY, "cy"));
    // As Ann may see Cy: no photo.
    assert_eq!(
        shown(cy.profile.as_ref().expect("profile")),
        ("about cy", "")
    );
    assert_eq!(e.changed().await, vec![ANN]);

    // Renaming keeps the first added_at and counts once; no audience change.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let renamed = e
        .ok(
            ANN,
            Op::ContactAdd(v1::ContactAdd {
                user_id: BO,
                username: String::new(),
                name: "B".into(),
            }),
        )
        .await
        .contact
        .expect("contact");
    assert_eq!(renamed.name, "B");
    assert_eq!(renamed.added_at_ms, added.added_at_ms);
    assert_eq!(e.changed().await, Vec::<u64>::new());

    let list = e
        .ok(ANN, Op::ContactList(v1::ContactList {}))
        .await
        .contacts;
    let ids: Vec<u64> = list.iter().map(|c| c.user_id).collect();
    assert_eq!(ids, vec![BO, CY]);
    assert_eq!(list[0].name, "B");
    assert_eq!(
        list[0].profile.as_ref().map(|p| p.display_name.as_str()),
        Some("Bo")
    );
    assert_eq!(
        shown(list[1].profile.as_ref().expect("profile")),
        ("about cy", "")
    );

    // Other users' lists are their own.
    assert!(
        e.ok(BO, Op::ContactList(v1::ContactList {}))
            .await
            .contacts
            .is_empty()
    );

    e.ok(ANN, Op::ContactRemove(v1::ContactRemove { user_id: BO }))
        .await;
    assert_eq!(e.changed().await, vec![ANN]);
    // Not a contact (any more): fine, nothing changes.
    e.ok(ANN, Op::ContactRemove(v1::ContactRemove { user_id: BO }))
        .await;
    assert_eq!(e.changed().await, Vec::<u64>::new());
    let ids: Vec<u64> = e
        .ok(ANN, Op::ContactList(v1::ContactList {}))
        .await
        .contacts
        .iter()
        .map(|c| c.user_id)
        .collect();
    assert_eq!(ids, vec![CY]);
    assert_eq!(
        e.fails(ANN, Op::ContactRemove(v1::ContactRemove { user_id: 0 }))
            .await,
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn contact_add_errors() {
    let mut e = env().await;
    let add = |user_id: u64, username: &str, name: &str| {
        Op::ContactAdd(v1::ContactAdd {
            user_id,
            username: username.into(),
            name: name.into(),
        })
    };
    assert_eq!(
        e.fails(ANN, add(ANN, "", "")).await,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        e.fails(ANN, add(0, "ann", "")).await,
        ErrorCode::InvalidArgument
    );
    assert_eq!(e.fails(ANN, add(NOBODY, "", "")).await, ErrorCode::NotFound);
    assert_eq!(e.fails(ANN, add(0, "zed", "")).await, ErrorCode::NotFound);
    assert_eq!(
        e.fails(ANN, add(0, "", "")).await,
        ErrorCode::InvalidArgument
    );
    let err = e.error(ANN, add(BO, "", &"n".repeat(65))).await;
    assert_eq!(err.code, ErrorCode::InvalidArgument as i32);
    assert!(err.message.contains("name"), "{}", err.message);
    assert!(
        e.ok(ANN, Op::ContactList(v1::ContactList {}))
            .await
            .contacts
            .is_empty()
    );
    assert_eq!(e.changed().await, Vec::<u64>::new());
}

#[tokio::test]
async fn contact_limit() {
    let e = env_with(
        Config {
            max_contacts: 2,
            ..Config::default()
        },
        true,
    )
    .await;
    e.add_contact(ANN, BO).await;
    e.add_contact(ANN, CY).await;
    let err = e
        .error(
            ANN,
            Op::ContactAdd(v1::ContactAdd {
                user_id: DI,
                ..Default::default()
            }),
        )
        .await;
    assert_eq!(err.code, ErrorCode::LimitReached as i32);
    assert!(err.message.contains("contact"), "{}", err.message);
    // Renaming one that is there still works at the limit.
    e.ok(
        ANN,
        Op::ContactAdd(v1::ContactAdd {
            user_id: BO,
            username: String::new(),
            name: "again".into(),
        }),
    )
    .await;
    // Removing one makes room.
    e.ok(ANN, Op::ContactRemove(v1::ContactRemove { user_id: CY }))
        .await;
    e.add_contact(ANN, DI).await;
}

// ---------------------------------------------------------------------------------
// Blocks

#[tokio::test]
async fn block_unblock_list_and_errors() {
    let mut e = env().await;
    assert_eq!(e.block(ANN, CY).await, vec![CY]);
    assert_eq!(e.block(ANN, BO).await, vec![BO, CY]);
    assert_eq!(e.changed().await, vec![ANN, ANN]);
    // Again: the same list, no change.
    assert_eq!(e.block(ANN, BO).await, vec![BO, CY]);
    assert_eq!(e.changed().await, Vec::<u64>::new());
    let list = e.ok(ANN, Op::BlockList(v1::BlockList {})).await.blocked;
    assert_eq!(list, vec![BO, CY]);
    assert!(
        e.ok(BO, Op::BlockList(v1::BlockList {}))
            .await
            .blocked
            .is_empty()
    );

    let block = |user_id| Op::Block(v1::Block { user_id });
    assert_eq!(e.fails(ANN, block(ANN)).await, ErrorCode::InvalidArgument);
    assert_eq!(e.fails(ANN, block(0)).await, ErrorCode::InvalidArgument);
    assert_eq!(e.fails(ANN, block(NOBODY)).await, ErrorCode::NotFound);

    let left = e
        .ok(ANN, Op::Unblock(v1::Unblock { user_id: CY }))
        .await
        .blocked;
    assert_eq!(left, vec![BO]);
    assert_eq!(e.changed().await, vec![ANN]);
    // Not blocked: the list, no change.
    let left = e
        .ok(ANN, Op::Unblock(v1::Unblock { user_id: CY }))
        .await
        .blocked;
    assert_eq!(left, vec![BO]);
    assert_eq!(e.changed().await, Vec::<u64>::new());
    assert_eq!(
        e.fails(ANN, Op::Unblock(v1::Unblock { user_id: 0 })).await,
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn block_limit() {
    let e = env_with(
        Config {
            max_blocks: 1,
            ..Config::default()
        },
        true,
    )
    .await;
    e.block(ANN, BO).await;
    let err = e.error(ANN, Op::Block(v1::Block { user_id: CY })).await;
    assert_eq!(err.code, ErrorCode::LimitReached as i32);
    assert!(err.message.contains("block"), "{}", err.message);
    // Blocking the one already blocked is not a new entry.
    assert_eq!(e.block(ANN, BO).await, vec![BO]);
    e.ok(ANN, Op::Unblock(v1::Unblock { user_id: BO })).await;
    assert_eq!(e.block(ANN, CY).await, vec![CY]);
}

// ---------------------------------------------------------------------------------
// Status updates

#[tokio::test]
async fn status_post_checks_and_idempotency() {
    let e = env().await;
    let post = |post_id: &str, text: &str, media_id: &str| {
        Op::StatusPost(v1::StatusPost {
            post_id: post_id.into(),
            text: text.into(),
            media_id: media_id.into(),
        })
    };
    let invalid = ErrorCode::InvalidArgument;
    assert_eq!(e.fails(ANN, post("", "hi", "")).await, invalid);
    assert_eq!(e.fails(ANN, post(&"p".repeat(65), "hi", "")).await, invalid);
    assert_eq!(e.fails(ANN, post("p", &"t".repeat(701), "")).await, invalid);
    assert_eq!(e.fails(ANN, post("p", "", "")).await, invalid);
    assert!(e.mine(ANN).await.is_empty());

    let before = now_ms();
    let s = e.post(ANN, "p1", &"t".repeat(700)).await;
    assert!(s.status_id >= 1 && s.status_id < 1 << 53);
    assert_eq!(s.user_id, ANN);
    assert!(s.created_at_ms >= before);
    assert_eq!(s.expires_at_ms, s.created_at_ms + 24 * 3600 * 1000);
    assert_eq!((s.view_count, s.viewed), (0, false));
    // A retry: the same status, nothing new.
    let again = e.post(ANN, "p1", "other text").await;
    assert_eq!(again, s);
    // Media only is fine.
    let media = e
        .ok(ANN, post("p2", "", "media-1"))
        .await
        .status
        .expect("status");
    assert_eq!(media.media_id, "media-1");
    assert_ne!(media.status_id, s.status_id);
    let mine = e.mine(ANN).await;
    let ids: Vec<u64> = mine.iter().map(|s| s.status_id).collect();
    assert_eq!(ids, vec![s.status_id, media.status_id]);
    // Another user's post_id space is their own.
    let bo = e.post(BO, "p1", "bo's").await;
    assert_ne!(bo.status_id, s.status_id);
}

#[tokio::test]
async fn status_daily_limit() {
    let e = env_with(
        Config {
            max_statuses_per_day: 2,
            ..Config::default()
        },
        true,
    )
    .await;
    let first = e.post(ANN, "a", "1").await;
    e.post(ANN, "b", "2").await;
    let err = e
        .error(
            ANN,
            Op::StatusPost(v1::StatusPost {
                post_id: "c".into(),
                text: "3".into(),
                media_id: String::new(),
            }),
        )
        .await;
    assert_eq!(err.code, ErrorCode::LimitReached as i32);
    assert!(err.message.contains("status"), "{}", err.message);
    // A retry of a stored one still answers.
    assert_eq!(e.post(ANN, "a", "1").await, first);
    // Others are not limited by Ann's.
    e.post(BO, "a", "1").await;
    assert_eq!(e.mine(ANN).await.len(), 2);
}

#[tokio::test]
async fn status_visibility_needs_mutual_contacts_and_no_block() {
    let e = env().await;
    // Ann and Bo: mutual. Cy has Ann, Ann does not have Cy. Ann has Di, Di does not have
    // Ann. Ed: mutual with Ann, but Ann blocks Ed.
    e.mutual(ANN, BO).await;
    e.add_contact(CY, ANN).await;
    e.add_contact(ANN, DI).await;
    e.mutual(ANN, ED).await;
    e.block(ANN, ED).await;

    let s1 = e.post(ANN, "1", "first").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let s2 = e.post(ANN, "2", "second").await;

    // Bo sees both, oldest first, not viewed yet.
    let list = e.status_list(BO).await;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].user_id, list[0].username.as_str()), (ANN, "ann"));
    let ids: Vec<u64> = list[0].statuses.iter().map(|s| s.status_id).collect();
    assert_eq!(ids, vec![s1.status_id, s2.status_id]);
    assert!(
        list[0]
            .statuses
            .iter()
            .all(|s| !s.viewed && s.view_count == 0)
    );
    assert_eq!(list[0].statuses[1].text, "second");

    for reader in [CY, DI, ED] {
        assert!(e.status_list(reader).await.is_empty(), "reader {reader}");
        let err = e.view(reader, s1.status_id).await.expect_err("hidden");
        assert_eq!(err.code, ErrorCode::NotFound as i32, "reader {reader}");
    }
    // Ann's own statuses are not in her list (she has none of her contacts').
    assert!(e.status_list(ANN).await.is_empty());

    // Views: Bo views s1 (twice: counted once); Ann looking at her own is not a view.
    e.view(BO, s1.status_id).await.expect("visible");
    e.view(BO, s1.status_id).await.expect("again");
    e.view(ANN, s1.status_id).await.expect("own");
    let list = e.status_list(BO).await;
    let viewed: Vec<bool> = list[0].statuses.iter().map(|s| s.viewed).collect();
    assert_eq!(viewed, vec![true, false]);
    let counts: Vec<u32> = e.mine(ANN).await.iter().map(|s| s.view_count).collect();
    assert_eq!(counts, vec![1, 0]);

    // Unknown status: NOT_FOUND, like a hidden one; 0: invalid.
    assert_eq!(
        e.view(BO, NOBODY).await.expect_err("unknown").code,
        ErrorCode::NotFound as i32
    );
    assert_eq!(
        e.view(BO, 0).await.expect_err("zero").code,
        ErrorCode::InvalidArgument as i32
    );

    // Ann drops Bo: he no longer sees them. Cy becomes mutual: she does.
    e.ok(ANN, Op::ContactRemove(v1::ContactRemove { user_id: BO }))
        .await;
    e.add_contact(ANN, CY).await;
    assert!(e.status_list(BO).await.is_empty());
    assert_eq!(
        e.view(BO, s2.status_id).await.expect_err("hidden").code,
        ErrorCode::NotFound as i32
    );
    assert_eq!(e.status_list(CY).await.len(), 1);
    e.view(CY, s2.status_id).await.expect("visible now");
    // Ann unblocks Ed: mutual contacts again.
    e.ok(ANN, Op::Unblock(v1::Unblock { user_id: ED })).await;
    assert_eq!(e.status_list(ED).await.len(), 1);
}

#[tokio::test]
async fn status_list_orders_users_by_newest_status() {
    let e = env().await;
    for other in [BO, CY, DI] {
        e.mutual(ANN, other).await;
    }
    let bo1 = e.post(BO, "1", "bo old").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cy1 = e.post(CY, "1", "cy").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let bo2 = e.post(BO, "2", "bo new").await;
    // Di posts nothing: not listed.
    let list = e.status_list(ANN).await;
    let users: Vec<u64> = list.iter().map(|g| g.user_id).collect();
    assert_eq!(users, vec![BO, CY]);
    let bo: Vec<u64> = list[0].statuses.iter().map(|s| s.status_id).collect();
    assert_eq!(bo, vec![bo1.status_id, bo2.status_id]);
    assert_eq!(list[1].statuses[0].status_id, cy1.status_id);
    assert_eq!(list[1].username, "cy");
    // Others' statuses carry no view counts.
    assert!(
        list.iter()
            .flat_map(|g| &g.statuses)
            .all(|s| s.view_count == 0)
    );
}

#[tokio::test]
async fn status_viewers_and_delete_only_for_the_poster() {
    let e = env().await;
    e.mutual(ANN, BO).await;
    e.mutual(ANN, CY).await;
    let s = e.post(ANN, "1", "hi").await;
    e.view(CY, s.status_id).await.expect("visible");
    tokio::time::sleep(Duration::from_millis(5)).await;
    e.view(BO, s.status_id).await.expect("visible");

    let viewers = e
        .ok(
            ANN,
            Op::StatusViewers(v1::StatusViewers {
                status_id: s.status_id,
            }),
        )
        .await
        .viewers;
    let who: Vec<u64> = viewers.iter().map(|v| v.user_id).collect();
    assert_eq!(who, vec![CY, BO]);
    assert!(viewers[0].viewed_at_ms <= viewers[1].viewed_at_ms);
    assert!(viewers[0].viewed_at_ms >= s.created_at_ms);

    // Not the poster: as if there were no such status.
    let viewers_of = |status_id| Op::StatusViewers(v1::StatusViewers { status_id });
    let delete = |status_id| Op::StatusDelete(v1::StatusDelete { status_id });
    assert_eq!(
        e.fails(BO, viewers_of(s.status_id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(e.fails(BO, delete(s.status_id)).await, ErrorCode::NotFound);
    assert_eq!(e.fails(ANN, viewers_of(NOBODY)).await, ErrorCode::NotFound);
    assert_eq!(
        e.fails(ANN, viewers_of(0)).await,
        ErrorCode::InvalidArgument
    );
    assert_eq!(e.fails(ANN, delete(0)).await, ErrorCode::InvalidArgument);
    assert_eq!(e.mine(ANN).await.len(), 1);

    e.ok(ANN, delete(s.status_id)).await;
    assert!(e.mine(ANN).await.is_empty());
    assert!(e.status_list(BO).await.is_empty());
    assert_eq!(e.fails(ANN, delete(s.status_id)).await, ErrorCode::NotFound);
    assert_eq!(
        e.fails(ANN, viewers_of(s.status_id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        e.view(BO, s.status_id).await.expect_err("gone").code,
        ErrorCode::NotFound as i32
    );
}

#[tokio::test]
async fn statuses_expire_and_are_pruned() {
    let e = env_with(
        Config {
            status_ttl: Duration::from_millis(1000),
            prune_interval: Duration::from_millis(50),
            ..Config::default()
        },
        true,
    )
    .await;
    e.mutual(ANN, BO).await;
    let s = e.post(ANN, "1", "short-lived").await;
    assert_eq!(s.expires_at_ms, s.created_at_ms + 1000);
    assert_eq!(e.status_list(BO).await.len(), 1);
    e.view(BO, s.status_id).await.expect("live");

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(e.mine(ANN).await.is_empty());
    assert!(e.status_list(BO).await.is_empty());
    assert_eq!(
        e.view(BO, s.status_id).await.expect_err("expired").code,
        ErrorCode::NotFound as i32
    );
    assert_eq!(
        e.fails(
            ANN,
            Op::StatusViewers(v1::StatusViewers {
                status_id: s.status_id
            })
        )
        .await,
        ErrorCode::NotFound
    );
    // The prune loop already deleted it: nothing left to prune.
    assert_eq!(e.store.prune(now_ms()).await.expect("prune"), 0);
    // The same post_id may be used again once the old one is gone.
    let again = e.post(ANN, "1", "new").await;
    assert_ne!(again.status_id, s.status_id);
}

// ---------------------------------------------------------------------------------
// Audience, identity, failures

#[tokio::test]
async fn audience_answers_settings_contacts_and_blocks() {
    use v1::Visibility::{Contacts, Everyone, Nobody};
    let e = env().await;
    // Never set: defaults, nothing else.
    let a = e.audience(ANN).await;
    assert_eq!(a.user_id, ANN);
    assert_eq!(a.error, None);
    assert!(a.contacts.is_empty() && a.blocked.is_empty());
    assert_eq!(a.privacy.map(|p| p.last_seen), Some(vis(Everyone)));

    for c in [DI, BO, CY] {
        e.add_contact(ANN, c).await;
    }
    e.block(ANN, ED).await;
    e.block(ANN, CY).await;
    e.set_privacy(
        ANN,
        v1::PrivacySettings {
            online: vis(Contacts),
            about: vis(Nobody),
            ..Default::default()
        },
    )
    .await;
    let a = e.audience(ANN).await;
    assert_eq!(a.contacts, vec![BO, CY, DI]);
    assert_eq!(a.blocked, vec![CY, ED]);
    assert_eq!(
        a.privacy,
        Some(v1::PrivacySettings {
            last_seen: vis(Everyone),
            online: vis(Contacts),
            profile_photo: vis(Everyone),
            about: vis(Nobody),
        })
    );
    // What other services decide from it.
    let info = natter_people::AudienceInfo::from_proto(&a);
    assert!(info.may_see(natter_people::Item::Online, natter_proto::UserId(BO)));
    assert!(!info.may_see(natter_people::Item::Online, natter_proto::UserId(CY)));

    // Bad requests are answered, not left to time out.
    let zero = e.audience(0).await;
    assert_eq!(
        zero.error.map(|e| e.code),
        Some(ErrorCode::InvalidArgument as i32)
    );
    let reply = e
        .bus
        .request(
            &Subject::people_audience(),
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            TIMEOUT,
        )
        .await
        .expect("answered");
    let bad = bus::Audience::decode(reply).expect("an Audience");
    assert_eq!(bad.error.map(|e| e.code), Some(ErrorCode::BadFrame as i32));
}

#[tokio::test]
async fn audiences_client_sees_changes() {
    let e = env().await;
    let audiences = natter_people::Audiences::start(e.bus.clone(), TIMEOUT)
        .await
        .expect("audiences");
    let ann = natter_proto::UserId(ANN);
    assert!(
        audiences
            .get(ann)
            .await
            .expect("audience")
            .contacts
            .is_empty()
    );
    e.add_contact(ANN, BO).await;
    // The published change dropped the cached one.
    let mut seen = false;
    for _ in 0..50 {
        if audiences
            .get(ann)
            .await
            .expect("audience")
            .contacts
            .contains(&natter_proto::UserId(BO))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the cached audience was dropped after the change");
}

#[tokio::test]
async fn malformed_requests_are_answered() {
    let e = env().await;
    let err = e
        .raw(Bytes::from_static(&[0xff, 0xff, 0xff]))
        .await
        .expect_err("undecodable");
    assert_eq!(err.code, ErrorCode::BadFrame as i32);
    // No caller.
    let q = bus::PeopleQuery {
        caller: None,
        request: Some(v1::PeopleRequest {
            op: Some(Op::PrivacyGet(v1::PrivacyGet {})),
        }),
    };
    let err = e
        .raw(Bytes::from(q.encode_to_vec()))
        .await
        .expect_err("no caller");
    assert_eq!(err.code, ErrorCode::InvalidArgument as i32);
    // No operation.
    let q = bus::PeopleQuery {
        caller: Some(bus::Caller {
            user_id: ANN,
            device_id: 1,
        }),
        request: Some(v1::PeopleRequest { op: None }),
    };
    let err = e
        .raw(Bytes::from(q.encode_to_vec()))
        .await
        .expect_err("no op");
    assert_eq!(err.code, ErrorCode::InvalidArgument as i32);
}

#[tokio::test]
async fn identity_comes_from_the_caller_only() {
    let e = env().await;
    // Bo's request changes Bo's profile, whatever ids it mentions.
    e.ok(BO, update("Bo", "", "")).await;
    e.add_contact(BO, ANN).await;
    assert!(
        e.ok(ANN, Op::ContactList(v1::ContactList {}))
            .await
            .contacts
            .is_empty()
    );
    assert_eq!(e.profiles(ANN, vec![]).await[0].display_name, "");
}

#[tokio::test]
async fn usernames_are_cached() {
    let e = env().await;
    e.profile(ANN, BO).await;
    let after_first = e.lookups.load(Ordering::SeqCst);
    assert!(after_first >= 1);
    for _ in 0..3 {
        e.profile(ANN, BO).await;
    }
    e.add_contact(ANN, BO).await;
    e.ok(ANN, Op::ContactList(v1::ContactList {})).await;
    assert_eq!(e.lookups.load(Ordering::SeqCst), after_first);
}

#[tokio::test]
async fn without_sessions_lookups_are_unavailable() {
    let e = env_with(Config::default(), false).await;
    let add = Op::ContactAdd(v1::ContactAdd {
        user_id: BO,
        ..Default::default()
    });
    assert_eq!(e.fails(ANN, add).await, ErrorCode::Unavailable);
    // What needs no user lookup still works.
    e.ok(ANN, Op::PrivacyGet(v1::PrivacyGet {})).await;
    e.ok(ANN, Op::BlockList(v1::BlockList {})).await;
}

#[tokio::test]
async fn stops_on_shutdown() {
    let mut e = env().await;
    e.ok(ANN, Op::PrivacyGet(v1::PrivacyGet {})).await;
    e.shutdown.cancel();
    let service = e.service.take().expect("service");
    tokio::time::timeout(TIMEOUT, service)
        .await
        .expect("stops")
        .expect("no panic");
}

// ---------------------------------------------------------------------------------
// The admin API

impl Env {
    /// Sends `AdminPeopleRequest{delete_user}` on `natter.admin.people`.
    async fn admin_delete(&self, user: u64) -> Option<v1::Error> {
        let req = bus::AdminPeopleRequest { delete_user: user };
        let reply = self
            .bus
            .request(
                &Subject::admin(natter_proto::AdminService::People),
                Bytes::from(req.encode_to_vec()),
                TIMEOUT,
            )
            .await
            .expect("the people service answers");
        bus::AdminDone::decode(reply).expect("an AdminDone").error
    }
}

#[tokio::test]
async fn admin_delete_user_drops_their_data_and_publishes_the_change() {
    use v1::Visibility::Nobody;
    let mut e = env().await;
    e.ok(ANN, update("Ann", "about ann", "")).await;
    e.set_privacy(
        ANN,
        v1::PrivacySettings {
            last_seen: vis(Nobody),
            ..Default::default()
        },
    )
    .await;
    e.mutual(ANN, BO).await;
    e.block(ANN, CY).await;
    e.post(ANN, "p1", "hello").await;
    e.changed().await;

    assert_eq!(e.admin_delete(ANN).await, None);
    assert_eq!(e.changed().await, vec![ANN], "caches drop Ann's audience");
    assert_eq!(e.store.profile(natter_proto::UserId(ANN)).await, Ok(None));
    let ann = natter_proto::UserId(ANN);
    assert_eq!(e.store.contacts(ann).await.map(|c| c.len()), Ok(0));
    assert_eq!(e.store.blocks(ann).await, Ok(Vec::new()));
    assert_eq!(e.store.statuses(ann, now_ms()).await, Ok(Vec::new()));
    let audience = e.audience(ANN).await;
    assert!(audience.contacts.is_empty() && audience.blocked.is_empty());
    assert_eq!(
        audience.privacy,
        e.ok(BO, Op::PrivacyGet(v1::PrivacyGet {})).await.privacy,
        "Ann's settings are the defaults again"
    );
    // Bo's list still names Ann (the store does not search other users' lists).
    assert_eq!(
        e.store
            .contacts(natter_proto::UserId(BO))
            .await
            .map(|c| c.len()),
        Ok(1)
    );

    // Idempotent; a request without a user is refused.
    assert_eq!(e.admin_delete(ANN).await, None);
    let err = e.admin_delete(0).await.expect("refused");
    assert_eq!(err.code, ErrorCode::InvalidArgument as i32);
}

//! People end to end through the real binary: profiles, privacy settings, contacts, user
//! lookup, blocks and status updates, each rule checked from the reader's side: what a
//! stranger, a contact, a one-sided contact and a blocked user get to see and receive.
//!
//! "Contacts" always means users in the *owner's* contact list: the owner adding the
//! reader makes the reader a contact, the reader adding the owner does not.
//!
//! The per-user limits (contacts, blocks, statuses a day) are checked on a server started
//! with small ones (`--max-contacts` and friends).

mod common;

use std::{
    ops::Deref,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ErrorCode::{Forbidden, InvalidArgument, NotFound};
use common::*;
use natter_client::{
    Client, ClientOptions, Connection, ConversationId, ErrorCode, Event, Seq, Session, UserId,
    WireFormat,
    v1::{
        self, PresenceState, Visibility, client_frame::Body as CBody, people_request::Op,
        server_frame::Body as SBody,
    },
};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);
/// How long a "nothing arrives" check watches.
const QUIET: Duration = Duration::from_millis(1500);

const EVERYONE: Visibility = Visibility::Everyone;
const CONTACTS: Visibility = Visibility::Contacts;
const NOBODY: Visibility = Visibility::Nobody;

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

    fn uid(&self) -> u64 {
        self.session.user_id.get()
    }

    fn name(&self) -> &str {
        &self.session.username
    }

    /// Logs in and connects another device of this user.
    async fn device(&self, server: &Server, label: &str, opts: ClientOptions) -> Client {
        let session = server.login(&self.session.username, label).await;
        server.connect(&session, opts).await
    }

    /// Logs in another device of this user and connects it frame by frame.
    async fn raw_device(&self, server: &Server, label: &str) -> Connection {
        let session = server.login(&self.session.username, label).await;
        let (conn, _welcome) =
            Connection::connect(&server.ws_url(), &session.access_token, WireFormat::Proto)
                .await
                .unwrap_or_else(|e| panic!("raw connect {}: {e}", self.name()));
        conn
    }
}

async fn person_with(server: &Server, name: &str, opts: ClientOptions) -> Person {
    let session = server.user(name).await;
    let client = server.connect(&session, opts).await;
    Person { session, client }
}

/// Users registered in the order named, one device each connected with [`opts`].
async fn people<const N: usize>(server: &Server, names: [&str; N]) -> [Person; N] {
    let mut cast = Vec::with_capacity(N);
    for name in names {
        cast.push(person_with(server, name, opts()).await);
    }
    cast.try_into()
        .unwrap_or_else(|_| unreachable!("a person a name"))
}

/// Client options with acknowledgements left to the test.
fn manual_ack() -> ClientOptions {
    ClientOptions {
        auto_ack: false,
        ..opts()
    }
}

/// Runs `body` on a fresh server started with `env`, bounded to `secs`.
async fn scenario_with(env: &[(&str, &str)], secs: u64, body: impl AsyncFnOnce(&Server)) {
    let server = Server::start_with(env).await;
    bounded(secs, body(&server)).await;
}

async fn scenario(body: impl AsyncFnOnce(&Server)) {
    scenario_with(&[], 90, body).await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------
// Requests.

/// A people operation that must succeed.
async fn ok(c: &Client, op: Op) -> v1::PeopleResult {
    let what = format!("{op:?}");
    c.people(op)
        .await
        .unwrap_or_else(|e| panic!("{what} by {} failed: {e}", c.user_id()))
}

/// A people operation that must be refused; its error code.
async fn refused(c: &Client, op: Op) -> ErrorCode {
    let what = format!("{op:?}");
    match c.people(op).await {
        Ok(r) => panic!("{what} by {} must be refused, got {r:?}", c.user_id()),
        Err(e) => code(e),
    }
}

/// A 3x2 RGB PNG, 73 bytes (the one of tests/media.rs, where it is explained).
const PNG: [u8; 73] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0x00, 0xc1, 0x70, 0x16, 0x00, 0x3b, 0xd8, 0x05, 0xfb, 0x36, 0x11, 0x98, 0xea, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Uploads a PNG as `p`: the media id (an avatar or a status's media must be the user's
/// own upload).
async fn photo(server: &Server, p: &Person) -> String {
    let http = natter_client::HttpClient::new(&server.base_url()).expect("an HTTP client");
    http.upload_media_bytes(
        &p.session.access_token,
        bytes::Bytes::from_static(&PNG),
        &natter_client::UploadOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("uploading a photo as {}: {e}", p.name()))
    .id
}

fn update(display_name: Option<&str>, about: Option<&str>, avatar: Option<&str>) -> Op {
    Op::ProfileUpdate(v1::ProfileUpdate {
        display_name: display_name.map(str::to_owned),
        about: about.map(str::to_owned),
        avatar_media_id: avatar.map(str::to_owned),
    })
}

fn profile_get(ids: &[u64]) -> Op {
    Op::ProfileGet(v1::ProfileGet {
        user_ids: ids.to_vec(),
    })
}

fn privacy_set(s: v1::PrivacySettings) -> Op {
    Op::PrivacySet(v1::PrivacySet { settings: Some(s) })
}

/// Settings that change only the profile photo and about visibility.
fn photo_about(photo: Visibility, about: Visibility) -> v1::PrivacySettings {
    v1::PrivacySettings {
        profile_photo: photo as i32,
        about: about as i32,
        ..Default::default()
    }
}

fn add_contact(id: u64, name: &str) -> Op {
    Op::ContactAdd(v1::ContactAdd {
        user_id: id,
        username: String::new(),
        name: name.to_owned(),
    })
}

fn add_contact_named(username: &str, name: &str) -> Op {
    Op::ContactAdd(v1::ContactAdd {
        user_id: 0,
        username: username.to_owned(),
        name: name.to_owned(),
    })
}

fn remove_contact(id: u64) -> Op {
    Op::ContactRemove(v1::ContactRemove { user_id: id })
}

fn find(username: &str) -> Op {
    Op::Find(v1::UserFind {
        username: username.to_owned(),
    })
}

fn block(id: u64) -> Op {
    Op::Block(v1::Block { user_id: id })
}

fn unblock(id: u64) -> Op {
    Op::Unblock(v1::Unblock { user_id: id })
}

fn post(post_id: &str, text: &str) -> Op {
    Op::StatusPost(v1::StatusPost {
        post_id: post_id.to_owned(),
        text: text.to_owned(),
        media_id: String::new(),
    })
}

fn view(status_id: u64) -> Op {
    Op::StatusView(v1::StatusView { status_id })
}

fn viewers(status_id: u64) -> Op {
    Op::StatusViewers(v1::StatusViewers { status_id })
}

fn delete_status(status_id: u64) -> Op {
    Op::StatusDelete(v1::StatusDelete { status_id })
}

/// `a` adds `b` to their contacts (`b` does not add `a`).
async fn adds(a: &Person, b: &Person) {
    let c = ok(a, add_contact(b.uid(), "")).await.contact;
    assert_eq!(c.map(|c| c.user_id), Some(b.uid()));
}

/// `a` and `b` add each other.
async fn mutual(a: &Person, b: &Person) {
    adds(a, b).await;
    adds(b, a).await;
}

/// `owner`'s profile as `reader` gets it from ProfileGet.
async fn profile_seen(reader: &Client, owner: &Person) -> v1::Profile {
    let r = ok(reader, profile_get(&[owner.uid()])).await;
    assert_eq!(r.profiles.len(), 1, "one profile asked: {r:?}");
    r.profiles.into_iter().next().expect("one profile")
}

/// `owner`'s entry in `reader`'s contact list.
async fn contact_entry(reader: &Client, owner: &Person) -> v1::Contact {
    let list = ok(reader, Op::ContactList(v1::ContactList {}))
        .await
        .contacts;
    list.into_iter()
        .find(|c| c.user_id == owner.uid())
        .unwrap_or_else(|| panic!("{} is not in the contact list", owner.name()))
}

/// `reader`'s status list, as (user, [status texts]).
async fn status_feed(reader: &Client) -> Vec<(u64, Vec<String>)> {
    ok(reader, Op::StatusList(v1::StatusList {}))
        .await
        .by_user
        .into_iter()
        .map(|u| (u.user_id, u.statuses.into_iter().map(|s| s.text).collect()))
        .collect()
}

async fn my_statuses(c: &Client) -> Vec<v1::Status> {
    ok(c, Op::StatusMine(v1::StatusMine {})).await.statuses
}

async fn block_list(c: &Client) -> Vec<u64> {
    ok(c, Op::BlockList(v1::BlockList {})).await.blocked
}

/// Watches `c` for [`QUIET`]: no event for which `bad` is true may arrive.
async fn quiet(c: &Client, what: &str, mut bad: impl FnMut(&Event) -> bool) {
    let deadline = Instant::now() + QUIET;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match c.recv_timeout(left).await {
            Some(ev) => assert!(!bad(&ev), "{what}: got {ev:?}"),
            None => return,
        }
    }
}

/// The next typing event on `c` from `from`.
async fn typing_from(c: &Client, from: u64) -> v1::TypingEvent {
    next_matching(c, WAIT, |ev| match ev {
        Event::Typing(t) if t.user_id == from => Some(t.clone()),
        _ => None,
    })
    .await
}

/// Shows `from` typing to `to` until `to` gets it (typing is ephemeral and re-sent by
/// clients every few seconds; a change of blocks reaches the messages service's cache a
/// moment after the people service answered). Panics after [`WAIT`].
async fn typing_gets_through(from: &Person, to: &Person) -> v1::TypingEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        from.typing(to.id(), true).await.expect("typing");
        // 2 a second: well within the rate limit.
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match to.recv_timeout(left).await {
                Some(Event::Typing(t)) if t.user_id == from.uid() => return t,
                Some(_) => {}
                None => break,
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}'s typing never reached {}",
            from.name(),
            to.name()
        );
    }
}

/// The next receipt on `c` from `from` of `kind` reaching `up_to`.
async fn receipt_from(c: &Client, from: u64, kind: v1::ReceiptKind, up_to: u64) {
    next_matching(c, WAIT, |ev| match ev {
        Event::Receipt(r) if r.user_id == from && r.kind == kind as i32 => {
            (r.up_to_seq >= up_to).then_some(())
        }
        _ => None,
    })
    .await
}

/// The next `n` Message pushes of `conv` on a raw connection (other frames skipped).
async fn raw_messages(raw: &mut Connection, conv: &ConversationId, n: usize) -> Vec<v1::Message> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = raw
            .recv_timeout(left)
            .await
            .unwrap_or_else(|e| panic!("got {} of {n} pushes: {e}", out.len()));
        if let Some(SBody::Message(m)) = f.body
            && m.conversation_id == conv.as_str()
        {
            out.push(m);
        }
    }
    out
}

/// Syncs a raw connection from scratch: every message of `conv` it is given.
async fn raw_sync(raw: &mut Connection, conv: &ConversationId) -> Vec<v1::Message> {
    let id = 77;
    raw.send(&v1::ClientFrame {
        id,
        body: Some(CBody::Sync(v1::Sync { cursors: vec![] })),
    })
    .await
    .expect("send Sync");
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = raw.recv_timeout(left).await.expect("sync frames");
        match f.body {
            Some(SBody::SyncBatch(b)) if f.id == id => out.extend(
                b.messages
                    .into_iter()
                    .filter(|m| m.conversation_id == conv.as_str()),
            ),
            Some(SBody::SyncDone(_)) if f.id == id => return out,
            Some(SBody::Error(e)) if f.id == id => panic!("sync refused: {e:?}"),
            _ => {}
        }
    }
}

/// A placeholder holds only its place: no body, kind, sender or client_msg_id.
fn assert_placeholder(m: &v1::Message, seq: u64) {
    assert_eq!(m.seq, seq, "{m:?}");
    assert!(
        m.withheld,
        "seq {seq} must be withheld from the blocker: {m:?}"
    );
    assert!(m.body.is_empty(), "a withheld message shows no body: {m:?}");
    assert_eq!(m.kind, 0, "a withheld message shows no kind: {m:?}");
    assert_eq!(
        m.sender_user, 0,
        "a withheld message shows no sender: {m:?}"
    );
    assert!(
        m.client_msg_id.is_empty(),
        "a withheld message shows no client_msg_id: {m:?}"
    );
}

// ---------------------------------------------------------------------------------
// Profiles and privacy settings.

#[tokio::test]
async fn profile_update_get_and_validation() {
    scenario(async |server| {
        let [ann, bo] = people(server, ["ann", "bo"]).await;
        // A new user's profile: the username, nothing else.
        let own = ann.my_profile().await.expect("own profile");
        assert_eq!(
            (
                own.user_id,
                own.username.as_str(),
                own.display_name.as_str()
            ),
            (ann.uid(), ann.name(), "")
        );

        let media_1 = photo(server, &ann).await;
        let media_1 = media_1.as_str();
        let r = ok(&ann, update(Some("Ann A."), Some("hiking"), Some(media_1))).await;
        let p = &r.profiles[0];
        assert_eq!(
            (
                p.display_name.as_str(),
                p.about.as_str(),
                p.avatar_media_id.as_str()
            ),
            ("Ann A.", "hiking", media_1)
        );
        assert!(p.updated_at_ms > 0);
        // Absent fields stay; an empty string clears.
        ok(&ann, update(None, Some(""), None)).await;
        let own = ann.my_profile().await.expect("own profile");
        assert_eq!(
            (
                own.display_name.as_str(),
                own.about.as_str(),
                own.avatar_media_id.as_str()
            ),
            ("Ann A.", "", media_1)
        );
        ok(&ann, update(None, Some("climbing"), None)).await;

        // Someone else reads it (defaults: everyone sees everything).
        let seen = profile_seen(&bo, &ann).await;
        assert_eq!(
            (
                seen.username.as_str(),
                seen.display_name.as_str(),
                seen.about.as_str(),
                seen.avatar_media_id.as_str()
            ),
            (ann.name(), "Ann A.", "climbing", media_1)
        );
        // Unknown users are left out; duplicates answered once.
        let r = ok(&bo, profile_get(&[ann.uid(), 999_999_999, ann.uid()])).await;
        assert_eq!(
            r.profiles.iter().map(|p| p.user_id).collect::<Vec<_>>(),
            [ann.uid()]
        );
        assert_eq!(bo.profile(UserId(999_999_999)).await.expect("get"), None);
        let too_many: Vec<u64> = (1..=257).collect();
        assert_eq!(refused(&bo, profile_get(&too_many)).await, InvalidArgument);

        // Limits, in bytes: 64 for the display name, 256 for about, 128 for the avatar.
        let name64 = "é".repeat(32);
        ok(&ann, update(Some(&name64), None, None)).await;
        for op in [
            update(Some(&format!("{name64}x")), None, None),
            update(None, Some(&"a".repeat(257)), None),
            update(None, None, Some(&"m".repeat(129))),
        ] {
            assert_eq!(refused(&ann, op).await, InvalidArgument);
        }
        ok(&ann, update(None, Some(&"a".repeat(256)), Some(media_1))).await;
        // A refused update changed nothing.
        let own = ann.my_profile().await.expect("own profile");
        assert_eq!(own.display_name, name64);
        assert_eq!(own.about, "a".repeat(256));
    })
    .await;
}

#[tokio::test]
async fn privacy_get_and_set() {
    scenario(async |server| {
        let [ann] = people(server, ["ann"]).await;
        let get = async || {
            ok(&ann, Op::PrivacyGet(v1::PrivacyGet {}))
                .await
                .privacy
                .expect("privacy in the answer")
        };
        let all = |v: Visibility| v1::PrivacySettings {
            last_seen: v as i32,
            online: v as i32,
            profile_photo: v as i32,
            about: v as i32,
        };
        assert_eq!(get().await, all(EVERYONE), "defaults");

        // UNSPECIFIED fields stay as they are; the answer is the whole, after.
        let after = ok(
            &ann,
            privacy_set(photo_about(Visibility::Unspecified, CONTACTS)),
        )
        .await
        .privacy
        .expect("privacy in the answer");
        let expected = v1::PrivacySettings {
            about: CONTACTS as i32,
            ..all(EVERYONE)
        };
        assert_eq!(after, expected);
        assert_eq!(get().await, expected);

        let mixed = v1::PrivacySettings {
            last_seen: NOBODY as i32,
            online: CONTACTS as i32,
            profile_photo: NOBODY as i32,
            about: EVERYONE as i32,
        };
        ok(&ann, privacy_set(mixed)).await;
        assert_eq!(get().await, mixed);

        // Unknown values are refused and change nothing.
        let bad = v1::PrivacySettings {
            about: 9,
            ..Default::default()
        };
        assert_eq!(refused(&ann, privacy_set(bad)).await, InvalidArgument);
        assert_eq!(get().await, mixed);
    })
    .await;
}

#[tokio::test]
async fn photo_and_about_follow_the_owners_settings_for_each_reader() {
    scenario_with(&[], 120, async |server| {
        // Olivia owns the profile; Cat is in her contacts; Fan has Olivia in his own
        // contacts but is not in hers (so he is a stranger to her settings); Sam is a
        // stranger.
        let [olivia, cat, fan, sam] = people(server, ["olivia", "cat", "fan", "sam"]).await;
        let photo_o = photo(server, &olivia).await;
        let photo_o = photo_o.as_str();
        ok(
            &olivia,
            update(Some("Olivia O."), Some("about olivia"), Some(photo_o)),
        )
        .await;
        adds(&olivia, &cat).await;
        adds(&cat, &olivia).await;
        adds(&fan, &olivia).await;

        for photo in [EVERYONE, CONTACTS, NOBODY] {
            for about in [EVERYONE, CONTACTS, NOBODY] {
                ok(&olivia, privacy_set(photo_about(photo, about))).await;
                // (reader, in Olivia's contacts, has Olivia in their own)
                for (reader, is_contact, has_her) in [
                    (&cat, true, true),
                    (&fan, false, true),
                    (&sam, false, false),
                ] {
                    let sees = |v: Visibility| v == EVERYONE || (v == CONTACTS && is_contact);
                    let want = (
                        "Olivia O.",
                        if sees(about) { "about olivia" } else { "" },
                        if sees(photo) { photo_o } else { "" },
                    );
                    let case = format!(
                        "photo {photo:?}, about {about:?}, read by {}",
                        reader.name()
                    );
                    let got = |p: &v1::Profile| {
                        assert_eq!(p.user_id, olivia.uid(), "{case}");
                        assert_eq!(p.username, olivia.name(), "{case}");
                        (
                            p.display_name.clone(),
                            p.about.clone(),
                            p.avatar_media_id.clone(),
                        )
                    };
                    let want = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
                    let p = profile_seen(reader, &olivia).await;
                    assert_eq!(got(&p), want, "ProfileGet, {case}");
                    let p = reader.find_user(olivia.name()).await.expect("find");
                    assert_eq!(got(&p), want, "UserFind, {case}");
                    if has_her {
                        let c = contact_entry(reader, &olivia).await;
                        let p = c.profile.expect("a contact carries the profile");
                        assert_eq!(got(&p), want, "ContactList, {case}");
                    }
                }
                // The owner always sees her whole profile.
                let own = olivia.my_profile().await.expect("own profile");
                assert_eq!(
                    (own.about.as_str(), own.avatar_media_id.as_str()),
                    ("about olivia", photo_o)
                );
            }
        }

        // Removing Cat from her contacts makes Cat a stranger at once.
        ok(&olivia, privacy_set(photo_about(CONTACTS, CONTACTS))).await;
        assert_eq!(profile_seen(&cat, &olivia).await.about, "about olivia");
        ok(&olivia, remove_contact(cat.uid())).await;
        let p = profile_seen(&cat, &olivia).await;
        assert_eq!(
            (
                p.display_name.as_str(),
                p.about.as_str(),
                p.avatar_media_id.as_str()
            ),
            ("Olivia O.", "", "")
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Contacts and lookup.

#[tokio::test]
async fn contacts_add_by_id_and_username_rename_remove_and_list() {
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        ok(&bo, update(Some("Bo B."), Some("bo's about"), None)).await;

        let before = now_ms();
        let c = ok(&ann, add_contact(bo.uid(), "Bobby"))
            .await
            .contact
            .expect("contact in the answer");
        assert_eq!(
            (c.user_id, c.username.as_str(), c.name.as_str()),
            (bo.uid(), bo.name(), "Bobby")
        );
        assert!(c.added_at_ms >= before.saturating_sub(1000), "{c:?}");
        let p = c.profile.as_ref().expect("with the profile");
        assert_eq!(
            (p.display_name.as_str(), p.about.as_str()),
            ("Bo B.", "bo's about")
        );

        let by_name = ann
            .add_contact_by_username(cy.name(), "")
            .await
            .expect("add by username");
        assert_eq!(
            (
                by_name.user_id,
                by_name.username.as_str(),
                by_name.name.as_str()
            ),
            (cy.uid(), cy.name(), "")
        );

        // Adding again renames, keeping when it was first added.
        let renamed = ok(&ann, add_contact_named(bo.name(), "Bo from work"))
            .await
            .contact
            .expect("contact in the answer");
        assert_eq!(renamed.name, "Bo from work");
        assert_eq!(
            renamed.added_at_ms, c.added_at_ms,
            "rename keeps added_at_ms"
        );

        let list = ok(&ann, Op::ContactList(v1::ContactList {})).await.contacts;
        let mut want = vec![
            (bo.uid(), bo.name().to_owned(), "Bo from work".to_owned()),
            (cy.uid(), cy.name().to_owned(), String::new()),
        ];
        want.sort();
        assert_eq!(
            list.iter()
                .map(|c| (c.user_id, c.username.clone(), c.name.clone()))
                .collect::<Vec<_>>(),
            want,
            "ordered by user id, each once"
        );
        for c in &list {
            let p = c.profile.as_ref().expect("each with its profile");
            assert_eq!(p.user_id, c.user_id);
        }
        assert_eq!(
            list.iter()
                .find(|c| c.user_id == bo.uid())
                .and_then(|c| c.profile.as_ref())
                .map(|p| p.display_name.as_str()),
            Some("Bo B.")
        );
        // Bo's list is his own: Ann is not in it.
        assert!(
            ok(&bo, Op::ContactList(v1::ContactList {}))
                .await
                .contacts
                .is_empty()
        );

        ok(&ann, remove_contact(bo.uid())).await;
        // Removing someone who is not a contact is fine.
        ok(&ann, remove_contact(bo.uid())).await;
        let list = ok(&ann, Op::ContactList(v1::ContactList {})).await.contacts;
        assert_eq!(
            list.iter().map(|c| c.user_id).collect::<Vec<_>>(),
            [cy.uid()]
        );

        // Refusals.
        assert_eq!(
            refused(&ann, add_contact(ann.uid(), "")).await,
            InvalidArgument
        );
        assert_eq!(
            refused(&ann, add_contact_named(ann.name(), "")).await,
            InvalidArgument
        );
        assert_eq!(refused(&ann, add_contact(999_999_999, "")).await, NotFound);
        assert_eq!(
            refused(&ann, add_contact_named("nobody_by_this_name", "")).await,
            NotFound
        );
        assert_eq!(refused(&ann, add_contact(0, "")).await, InvalidArgument);
        assert_eq!(
            refused(&ann, add_contact(bo.uid(), &"n".repeat(65))).await,
            InvalidArgument
        );
        assert_eq!(refused(&ann, remove_contact(0)).await, InvalidArgument);
    })
    .await;
}

#[tokio::test]
async fn find_by_username() {
    scenario(async |server| {
        let [ann, bo] = people(server, ["ann", "bo"]).await;
        ok(&bo, update(Some("Bo"), None, None)).await;
        let p = ann.find_user(bo.name()).await.expect("find");
        assert_eq!(
            (p.user_id, p.username.as_str(), p.display_name.as_str()),
            (bo.uid(), bo.name(), "Bo")
        );
        assert_eq!(refused(&ann, find("no_such_user_here")).await, NotFound);
        assert_eq!(refusal(ann.find_user("no_such_user_here").await), NotFound);
        assert_eq!(refused(&ann, find("")).await, InvalidArgument);
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Blocks.

#[tokio::test]
async fn block_list_block_and_unblock() {
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        assert!(block_list(&ann).await.is_empty());
        let mut want = vec![bo.uid(), cy.uid()];
        want.sort_unstable();
        ok(&ann, block(cy.uid())).await;
        let after = ok(&ann, block(bo.uid())).await.blocked;
        assert_eq!(after, want, "the whole list, ordered by user id");
        // Blocking again changes nothing.
        assert_eq!(ok(&ann, block(bo.uid())).await.blocked, want);
        assert_eq!(block_list(&ann).await, want);
        assert_eq!(
            ann.block(bo.id()).await.expect("block"),
            want.iter().map(|&u| UserId(u)).collect::<Vec<_>>()
        );

        assert_eq!(refused(&ann, block(ann.uid())).await, InvalidArgument);
        assert_eq!(refused(&ann, block(999_999_999)).await, NotFound);
        assert_eq!(refused(&ann, block(0)).await, InvalidArgument);

        assert_eq!(ok(&ann, unblock(cy.uid())).await.blocked, [bo.uid()]);
        // Unblocking someone not blocked is fine.
        assert_eq!(ok(&ann, unblock(cy.uid())).await.blocked, [bo.uid()]);
        assert!(ann.unblock(bo.id()).await.expect("unblock").is_empty());
        // The blocked never learn of it from their own lists.
        assert!(block_list(&bo).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_blocked_senders_messages_are_acked_but_withheld_from_the_blocker() {
    scenario(async |server| {
        // Bea blocks Al. Al has a second device; Bea a raw one (to see the wire).
        let [al, bea] = people(server, ["al", "bea"]).await;
        let al2 = al.device(server, "device-2", opts()).await;
        let c = conv(al.id(), bea.id());

        let before = al
            .send_text(bea.id(), "before the block")
            .await
            .expect("send");
        assert_eq!(before.seq, 1);
        let got = messages(&bea, 1, WAIT).await;
        assert_eq!(text(&got[0]), "before the block");
        // Bea's device acks it: Al sees it delivered (the receipt path works).
        receipt_from(&al, bea.uid(), v1::ReceiptKind::Delivered, 1).await;

        assert_eq!(ok(&bea, block(al.uid())).await.blocked, [al.uid()]);
        let mut raw = bea.raw_device(server, "device-raw").await;

        // Al's sends are acked (the single tick): he is not told.
        let a2 = al.send_text(bea.id(), "hidden one").await.expect("acked");
        let a3 = al.send_text(bea.id(), "hidden two").await.expect("acked");
        assert_eq!((a2.seq, a3.seq), (2, 3));

        // On the wire, Bea gets placeholders only.
        let pushed = raw_messages(&mut raw, &c, 2).await;
        assert_placeholder(&pushed[0], 2);
        assert_placeholder(&pushed[1], 3);
        assert_eq!(pushed[0].message_id, a2.message_id);

        // natter-client shows Bea nothing: no message, now or later.
        quiet(&bea, "Bea must see nothing of Al's messages", |ev| {
            matches!(ev, Event::Message(_))
        })
        .await;

        // Al's own other device gets his messages as sent.
        let own = messages(&al2, 3, WAIT).await;
        let own: Vec<(u64, String, bool)> =
            own.iter().map(|m| (m.seq, text(m), m.withheld)).collect();
        assert_eq!(
            own,
            [
                (1, "before the block".to_owned(), false),
                (2, "hidden one".to_owned(), false),
                (3, "hidden two".to_owned(), false)
            ]
        );

        // History: Bea's page holds the places, empty; full_history leaves them out.
        let page = bea.history(&c, Seq::ZERO, 50).await.expect("history");
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(!page.messages[0].withheld);
        assert_eq!(text(&page.messages[0]), "before the block");
        assert_placeholder(&page.messages[1], 2);
        assert_placeholder(&page.messages[2], 3);
        let visible = bea.full_history(&c, 50).await.expect("full history");
        assert_eq!(
            visible.iter().map(text).collect::<Vec<_>>(),
            ["before the block"]
        );
        // Al's history is whole.
        let his = al.full_history(&c, 50).await.expect("full history");
        assert_eq!(
            his.iter()
                .map(|m| (text(m), m.withheld))
                .collect::<Vec<_>>(),
            [
                ("before the block".to_owned(), false),
                ("hidden one".to_owned(), false),
                ("hidden two".to_owned(), false)
            ]
        );

        // Sync: a raw device of Bea's gets placeholders, a natter-client device nothing.
        let synced = raw_sync(&mut raw, &c).await;
        assert_eq!(synced.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_placeholder(&synced[1], 2);
        assert_placeholder(&synced[2], 3);
        let bea3 = bea.device(server, "device-3", opts()).await;
        let seen = sync_collect(&bea3, Duration::from_secs(20)).await;
        let seen: Vec<String> = seen
            .iter()
            .filter(|m| m.conversation_id == c.as_str())
            .map(text)
            .collect();
        assert_eq!(seen, ["before the block"]);

        // Bea's devices acked the placeholders: Al is told nothing of it, and no error
        // ever reaches him.
        quiet(&al, "Al must get no receipt from Bea and no error", |ev| {
            matches!(ev, Event::Receipt(r) if r.user_id == bea.uid())
                || matches!(ev, Event::Error { .. })
        })
        .await;
        assert!(block_list(&al).await.is_empty());

        // Unblocking lets new messages through; the withheld ones stay withheld.
        ok(&bea, unblock(al.uid())).await;
        let a4 = al
            .send_text(bea.id(), "after the unblock")
            .await
            .expect("send");
        assert_eq!(a4.seq, 4);
        let got = messages(&bea, 1, WAIT).await;
        assert_eq!(
            (got[0].seq, text(&got[0])),
            (4, "after the unblock".to_owned())
        );
        let visible = bea.full_history(&c, 50).await.expect("full history");
        assert_eq!(
            visible.iter().map(text).collect::<Vec<_>>(),
            ["before the block", "after the unblock"]
        );
        let page = bea.history(&c, Seq::ZERO, 50).await.expect("history");
        assert_placeholder(&page.messages[1], 2);
    })
    .await;
}

#[tokio::test]
async fn a_blocker_sends_no_receipts_and_sees_no_typing_of_the_blocked() {
    scenario(async |server| {
        let [al, cy] = people(server, ["al", "cy"]).await;
        let bea = person_with(server, "bea", manual_ack()).await;
        let c = conv(al.id(), bea.id());

        // Before the block: receipts and typing go through.
        al.send_text(bea.id(), "one").await.expect("send");
        messages(&bea, 1, WAIT).await;
        bea.received(&c, Seq(1)).await.expect("received");
        receipt_from(&al, bea.uid(), v1::ReceiptKind::Delivered, 1).await;
        al.typing(bea.id(), true).await.expect("typing");
        assert!(typing_from(&bea, al.uid()).await.active);

        ok(&bea, block(al.uid())).await;
        // Bea reads what she had before the block, and acks a withheld message.
        bea.read(&c, Seq(1)).await.expect("read");
        al.send_text(bea.id(), "two").await.expect("acked");
        bea.received(&c, Seq(2)).await.expect("received");
        bea.read(&c, Seq(2)).await.expect("read");
        // Al types and records.
        al.typing(bea.id(), true).await.expect("typing");
        al.chat_state(bea.id(), v1::ChatState::Recording, true)
            .await
            .expect("recording");
        // Cy's typing reaches Bea (and comes after Al's, which must not).
        cy.typing(bea.id(), true).await.expect("typing");
        next_matching(&bea, WAIT, |ev| match ev {
            Event::Typing(t) if t.user_id == al.uid() => {
                panic!("Al's typing reached Bea, who blocked him: {t:?}")
            }
            Event::Typing(t) if t.user_id == cy.uid() => Some(()),
            _ => None,
        })
        .await;
        quiet(
            &bea,
            "Al's typing must not reach Bea",
            |ev| matches!(ev, Event::Typing(t) if t.user_id == al.uid()),
        )
        .await;
        quiet(&al, "Bea's receipts must not reach Al", |ev| {
            matches!(ev, Event::Receipt(r) if r.user_id == bea.uid())
                || matches!(ev, Event::Error { .. })
        })
        .await;

        // Unblocked: both work again.
        ok(&bea, unblock(al.uid())).await;
        assert!(typing_gets_through(&al, &bea).await.active);
        let a3 = al.send_text(bea.id(), "three").await.expect("send");
        messages(&bea, 1, WAIT).await;
        bea.received(&c, Seq(a3.seq)).await.expect("received");
        receipt_from(&al, bea.uid(), v1::ReceiptKind::Delivered, a3.seq).await;
    })
    .await;
}

#[tokio::test]
async fn a_blocked_user_cannot_add_the_blocker_to_groups() {
    scenario(async |server| {
        let [al, bea, cy] = people(server, ["al", "bea", "cy"]).await;
        ok(&bea, block(al.uid())).await;

        assert_eq!(
            refusal(al.create_group("with bea", &[bea.id(), cy.id()]).await),
            Forbidden
        );
        let g = al
            .create_group("without bea", &[cy.id()])
            .await
            .expect("create");
        let add = |users: Vec<u64>| {
            v1::group_request::Op::AddMembers(v1::GroupAddMembers {
                group_id: g.group_id,
                users,
            })
        };
        assert_eq!(refusal(al.group(add(vec![bea.uid()])).await), Forbidden);
        let get = v1::group_request::Op::Get(v1::GroupGet {
            group_id: g.group_id,
        });
        let info = al
            .group(get.clone())
            .await
            .expect("get")
            .group
            .expect("group");
        let mut want = vec![al.uid(), cy.uid()];
        want.sort_unstable();
        assert_eq!(
            info.members.iter().map(|m| m.user_id).collect::<Vec<_>>(),
            want
        );
        // Anyone else may add Bea.
        cy.create_group("cy and bea", &[bea.id()])
            .await
            .expect("Cy is not blocked");

        ok(&bea, unblock(al.uid())).await;
        al.group(add(vec![bea.uid()]))
            .await
            .expect("add after unblock");
        let info = al.group(get).await.expect("get").group.expect("group");
        assert!(info.members.iter().any(|m| m.user_id == bea.uid()));
    })
    .await;
}

#[tokio::test]
async fn a_blocked_user_sees_no_photo_about_status_or_presence() {
    scenario(async |server| {
        // Al and Bea are mutual contacts, with every setting EVERYONE.
        let [al, bea] = people(server, ["al", "bea"]).await;
        mutual(&al, &bea).await;
        let bea_photo = photo(server, &bea).await;
        ok(
            &bea,
            update(Some("Bea B."), Some("bea's about"), Some(&bea_photo)),
        )
        .await;
        let status = bea.post_status("bea's status").await.expect("post");

        let full = |p: &v1::Profile| {
            (
                p.display_name.clone(),
                p.about.clone(),
                p.avatar_media_id.clone(),
            )
        };
        let everything = (
            "Bea B.".to_owned(),
            "bea's about".to_owned(),
            bea_photo.clone(),
        );
        let name_only = ("Bea B.".to_owned(), String::new(), String::new());
        assert_eq!(full(&profile_seen(&al, &bea).await), everything);
        assert_eq!(
            status_feed(&al).await,
            [(bea.uid(), vec!["bea's status".to_owned()])]
        );
        let p = al.subscribe_presence(&[bea.id()]).await.expect("subscribe");
        assert_eq!(p.users.len(), 1);
        assert_eq!(p.users[0].state, PresenceState::Online as i32, "{p:?}");

        ok(&bea, block(al.uid())).await;
        let p = profile_seen(&al, &bea).await;
        assert_eq!(full(&p), name_only, "ProfileGet by the blocked");
        assert_eq!(p.username, bea.name());
        let p = al.find_user(bea.name()).await.expect("find");
        assert_eq!(full(&p), name_only, "UserFind by the blocked");
        let p = contact_entry(&al, &bea).await.profile.expect("profile");
        assert_eq!(full(&p), name_only, "ContactList of the blocked");
        assert!(
            status_feed(&al).await.is_empty(),
            "no status for the blocked"
        );
        assert_eq!(refused(&al, view(status.status_id)).await, NotFound);
        let p = al.subscribe_presence(&[bea.id()]).await.expect("subscribe");
        assert_eq!(
            p.users,
            [v1::UserPresence {
                user_id: bea.uid(),
                state: PresenceState::Unspecified as i32,
                last_seen_ms: 0,
            }],
            "presence hidden from the blocked"
        );
        // Bea still sees Al's (she blocked him, not the other way round).
        let p = bea.subscribe_presence(&[al.id()]).await.expect("subscribe");
        assert_eq!(p.users[0].state, PresenceState::Online as i32, "{p:?}");

        ok(&bea, unblock(al.uid())).await;
        assert_eq!(full(&profile_seen(&al, &bea).await), everything);
        assert_eq!(
            status_feed(&al).await,
            [(bea.uid(), vec!["bea's status".to_owned()])]
        );
        ok(&al, view(status.status_id)).await;
        let p = al.subscribe_presence(&[bea.id()]).await.expect("subscribe");
        assert_eq!(p.users[0].state, PresenceState::Online as i32, "{p:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Status updates.

#[tokio::test]
async fn statuses_reach_mutual_contacts_only() {
    scenario_with(&[], 120, async |server| {
        // Pia posts. Mo and Max are mutual contacts of hers; Olly has Pia but she does not
        // have him; Quin is in Pia's contacts but has not added her; Sal is a stranger;
        // Xan is a mutual contact Pia blocked.
        let [pia, mo, max, olly, quin, sal, xan] =
            people(server, ["pia", "mo", "max", "olly", "quin", "sal", "xan"]).await;
        mutual(&pia, &mo).await;
        mutual(&pia, &max).await;
        adds(&olly, &pia).await;
        adds(&pia, &quin).await;
        mutual(&pia, &xan).await;
        ok(&pia, block(xan.uid())).await;

        let before = now_ms();
        let first = pia.post_status("first").await.expect("post");
        assert_eq!(first.user_id, pia.uid());
        assert_eq!(first.text, "first");
        assert!(first.created_at_ms >= before.saturating_sub(1000));
        assert_eq!(
            first.expires_at_ms - first.created_at_ms,
            24 * 60 * 60 * 1000,
            "24 hours by default"
        );
        let second = pia.post_status("second").await.expect("post");
        assert_ne!(first.status_id, second.status_id);

        for m in [&mo, &max] {
            let feed = ok(m, Op::StatusList(v1::StatusList {})).await.by_user;
            assert_eq!(feed.len(), 1, "{feed:?}");
            assert_eq!(
                (feed[0].user_id, feed[0].username.as_str()),
                (pia.uid(), pia.name())
            );
            assert_eq!(
                feed[0]
                    .statuses
                    .iter()
                    .map(|s| s.text.as_str())
                    .collect::<Vec<_>>(),
                ["first", "second"],
                "oldest first"
            );
            assert!(feed[0].statuses.iter().all(|s| !s.viewed));
        }
        for (who, reader) in [
            ("one-sided (he has her)", &olly),
            ("one-sided (she has him)", &quin),
            ("a stranger", &sal),
            ("blocked", &xan),
        ] {
            assert!(
                status_feed(reader).await.is_empty(),
                "{who} must see no status"
            );
            assert_eq!(
                refused(reader, view(first.status_id)).await,
                NotFound,
                "{who} viewing"
            );
        }

        // Views: counted once per viewer, listed for the poster only, in view order.
        ok(&mo, view(first.status_id)).await;
        ok(&max, view(first.status_id)).await;
        ok(&mo, view(first.status_id)).await;
        // The poster looking at her own is not a view.
        ok(&pia, view(first.status_id)).await;
        let mine = my_statuses(&pia).await;
        assert_eq!(
            mine.iter()
                .map(|s| (s.text.as_str(), s.view_count))
                .collect::<Vec<_>>(),
            [("first", 2), ("second", 0)]
        );
        let v = ok(&pia, viewers(first.status_id)).await.viewers;
        assert_eq!(
            v.iter().map(|v| v.user_id).collect::<Vec<_>>(),
            [mo.uid(), max.uid()],
            "in view order"
        );
        assert!(v[0].viewed_at_ms <= v[1].viewed_at_ms);
        assert!(v[0].viewed_at_ms >= before.saturating_sub(1000));
        for reader in [&mo, &max, &sal] {
            assert_eq!(refused(reader, viewers(first.status_id)).await, NotFound);
        }
        let feed = ok(&mo, Op::StatusList(v1::StatusList {})).await.by_user;
        assert_eq!(
            feed[0]
                .statuses
                .iter()
                .map(|s| (s.text.as_str(), s.viewed))
                .collect::<Vec<_>>(),
            [("first", true), ("second", false)]
        );
        // Others' statuses never carry view counts.
        assert!(feed[0].statuses.iter().all(|s| s.view_count == 0));

        // Users with the newest status come first.
        mutual(&mo, &max).await;
        max.post_status("max's").await.expect("post");
        let order: Vec<u64> = status_feed(&mo).await.iter().map(|(u, _)| *u).collect();
        assert_eq!(order, [max.uid(), pia.uid()]);
        pia.post_status("third").await.expect("post");
        let order: Vec<u64> = status_feed(&mo).await.iter().map(|(u, _)| *u).collect();
        assert_eq!(order, [pia.uid(), max.uid()]);

        // Deleting: only the poster's own.
        assert_eq!(refused(&mo, delete_status(first.status_id)).await, NotFound);
        ok(&pia, delete_status(first.status_id)).await;
        assert_eq!(
            refused(&pia, delete_status(first.status_id)).await,
            NotFound
        );
        assert_eq!(
            status_feed(&mo).await,
            [
                (pia.uid(), vec!["second".to_owned(), "third".to_owned()]),
                (max.uid(), vec!["max's".to_owned()])
            ]
        );
        assert_eq!(
            my_statuses(&pia)
                .await
                .iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>(),
            ["second", "third"]
        );
        assert_eq!(refused(&mo, view(first.status_id)).await, NotFound);
        assert_eq!(refused(&pia, viewers(first.status_id)).await, NotFound);

        // Pia removes Mo from her contacts: the statuses are gone from his side.
        ok(&pia, remove_contact(mo.uid())).await;
        assert_eq!(
            status_feed(&mo).await,
            [(max.uid(), vec!["max's".to_owned()])]
        );
        assert_eq!(refused(&mo, view(second.status_id)).await, NotFound);
    })
    .await;
}

#[tokio::test]
async fn status_post_is_idempotent_and_checked() {
    scenario(async |server| {
        let [pia, mo] = people(server, ["pia", "mo"]).await;
        mutual(&pia, &mo).await;
        let a = ok(&pia, post("post-1", "once"))
            .await
            .status
            .expect("status");
        let b = ok(&pia, post("post-1", "once"))
            .await
            .status
            .expect("status");
        assert_eq!(a.status_id, b.status_id, "a retry returns the same status");
        assert_eq!(a.created_at_ms, b.created_at_ms);
        assert_eq!(my_statuses(&pia).await.len(), 1);
        assert_eq!(
            status_feed(&mo).await,
            [(pia.uid(), vec!["once".to_owned()])]
        );
        // Another post_id is another status.
        let c = ok(&pia, post("post-2", "once"))
            .await
            .status
            .expect("status");
        assert_ne!(c.status_id, a.status_id);
        assert_eq!(my_statuses(&pia).await.len(), 2);

        // Media alone is enough.
        let media_9 = photo(server, &pia).await;
        let m = ok(
            &pia,
            Op::StatusPost(v1::StatusPost {
                post_id: "post-3".into(),
                text: String::new(),
                media_id: media_9.clone(),
            }),
        )
        .await
        .status
        .expect("status");
        assert_eq!(m.media_id, media_9);

        for op in [
            post("", "no post id"),
            post("post-4", ""),
            post("post-5", &"t".repeat(701)),
            post(&"p".repeat(65), "long post id"),
        ] {
            assert_eq!(refused(&pia, op).await, InvalidArgument);
        }
        ok(&pia, post("post-6", &"t".repeat(700))).await;
        assert_eq!(my_statuses(&pia).await.len(), 4);
        assert_eq!(refused(&pia, view(0)).await, InvalidArgument);
        assert_eq!(refused(&mo, view(12345)).await, NotFound);
    })
    .await;
}

#[tokio::test]
async fn statuses_expire_after_the_status_ttl() {
    scenario_with(&[("NATTER_STATUS_TTL_S", "2")], 60, async |server| {
        let [pia, mo] = people(server, ["pia", "mo"]).await;
        mutual(&pia, &mo).await;
        let s = pia.post_status("short-lived").await.expect("post");
        assert_eq!(s.expires_at_ms - s.created_at_ms, 2000, "--status-ttl-s 2");
        assert_eq!(
            status_feed(&mo).await,
            [(pia.uid(), vec!["short-lived".to_owned()])]
        );
        ok(&mo, view(s.status_id)).await;

        // Time itself is the condition: wait until it has expired.
        let wait = s.expires_at_ms.saturating_sub(now_ms()) + 100;
        assert!(wait <= 2200, "expires_at_ms is within the TTL");
        tokio::time::sleep(Duration::from_millis(wait)).await;
        assert!(
            status_feed(&mo).await.is_empty(),
            "expired: gone from the feed"
        );
        assert!(
            my_statuses(&pia).await.is_empty(),
            "expired: gone for the poster"
        );
        assert_eq!(refused(&mo, view(s.status_id)).await, NotFound);
        assert_eq!(refused(&pia, viewers(s.status_id)).await, NotFound);
        // A new one is visible again.
        pia.post_status("next").await.expect("post");
        assert_eq!(
            status_feed(&mo).await,
            [(pia.uid(), vec!["next".to_owned()])]
        );
    })
    .await;
}

#[tokio::test]
async fn per_user_limits_are_refused_with_limit_reached_and_change_nothing() {
    let env = [
        ("NATTER_MAX_CONTACTS", "2"),
        ("NATTER_MAX_BLOCKS", "1"),
        ("NATTER_MAX_STATUSES_PER_DAY", "2"),
    ];
    scenario_with(&env, 90, async |server| {
        let [ann, bo, cy, di] = people(server, ["ann", "bo", "cy", "di"]).await;
        let c = &ann.client;
        // Contacts: two fit; a third is refused and not stored; renaming one that is
        // there still works, and removing one makes room.
        ok(c, add_contact(bo.uid(), "Bo")).await;
        ok(c, add_contact(cy.uid(), "Cy")).await;
        assert_eq!(
            refused(c, add_contact(di.uid(), "Di")).await,
            ErrorCode::LimitReached
        );
        let listed = ok(c, Op::ContactList(v1::ContactList {})).await.contacts;
        assert_eq!(listed.len(), 2, "{listed:?}");
        ok(c, add_contact(cy.uid(), "Cyrus")).await;
        ok(c, remove_contact(bo.uid())).await;
        ok(c, add_contact(di.uid(), "Di")).await;
        // Blocks: one fits; blocking again is no new entry; a second is refused.
        ok(c, block(bo.uid())).await;
        ok(c, block(bo.uid())).await;
        assert_eq!(refused(c, block(cy.uid())).await, ErrorCode::LimitReached);
        assert_eq!(
            ok(c, Op::BlockList(v1::BlockList {})).await.blocked,
            vec![bo.uid()]
        );
        // Statuses: two a day; a retry of one posted still answers; a third is refused.
        let first = ok(c, post("p1", "one")).await.status.expect("status");
        ok(c, post("p2", "two")).await;
        let again = ok(c, post("p1", "one")).await.status.expect("status");
        assert_eq!(again.status_id, first.status_id);
        assert_eq!(
            refused(c, post("p3", "three")).await,
            ErrorCode::LimitReached
        );
        let mine = ok(c, Op::StatusMine(v1::StatusMine {})).await.statuses;
        assert_eq!(mine.len(), 2, "{mine:?}");
    })
    .await;
}

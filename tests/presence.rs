//! Presence and typing end to end through the real binary: online and offline pushed to
//! subscribers, last seen, every privacy setting from a contact's and a stranger's side,
//! blocks, the edge's debounce of a quick reconnect, several devices, and typing or
//! recording indicators (members only, rate limited).
//!
//! What a reader sees of a user (the presence service's rule):
//!
//! | the user is | the reader may see online | may see last seen | the reader gets          |
//! |-------------|---------------------------|-------------------|--------------------------|
//! | online      | yes                       | any               | ONLINE                   |
//! | online      | no                        | yes               | OFFLINE, the last seen   |
//! |             |                           |                   | from before (as if away) |
//! | online      | no                        | no                | UNSPECIFIED              |
//! | offline     | any                       | yes               | OFFLINE, last seen       |
//! | offline     | yes                       | no                | OFFLINE, 0               |
//! | offline     | no                        | no                | UNSPECIFIED              |
//!
//! So a reader who may not see "online" cannot tell online from offline. A blocked reader
//! sees nothing (UNSPECIFIED) and is pushed nothing else. After every change of a user's
//! settings, contacts or blocks the server pushes their presence again to each
//! subscriber as that subscriber may now see it: tests around such changes wait for the
//! push they expect and check that every push before it reveals nothing it may not.

mod common;

use std::{
    ops::Deref,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::*;
use natter_client::{
    Client, Connection, ErrorCode, Event, Session, UserId, WireFormat,
    v1::{self, PresenceState, Visibility, client_frame::Body as CBody, people_request::Op},
};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// The edge's debounce in most tests here (`--presence-debounce-ms`).
const DEBOUNCE_MS: u64 = 300;

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
}

async fn person(server: &Server, name: &str) -> Person {
    let session = server.user(name).await;
    let client = server.device(&session).await;
    Person { session, client }
}

async fn people<const N: usize>(server: &Server, names: [&str; N]) -> [Person; N] {
    let mut cast = Vec::with_capacity(N);
    for name in names {
        cast.push(person(server, name).await);
    }
    cast.try_into()
        .unwrap_or_else(|_| unreachable!("a person a name"))
}

/// A registered user whose devices the test connects and closes itself.
struct Watched {
    session: Session,
    devices: u32,
}

impl Watched {
    async fn new(server: &Server, name: &str) -> Watched {
        Watched {
            session: server.user(name).await,
            devices: 0,
        }
    }

    fn id(&self) -> UserId {
        self.session.user_id
    }

    fn uid(&self) -> u64 {
        self.session.user_id.get()
    }

    /// Connects the first device.
    async fn connect(&self, server: &Server) -> Client {
        server.device(&self.session).await
    }

    /// Logs in and connects another device.
    async fn another_device(&mut self, server: &Server) -> Client {
        self.devices += 1;
        let label = format!("device-extra-{}", self.devices);
        let s = server.login(&self.session.username, &label).await;
        server.device(&s).await
    }
}

async fn scenario_with(env: &[(&str, &str)], secs: u64, body: impl AsyncFnOnce(&Server)) {
    let server = Server::start_with(env).await;
    bounded(secs, body(&server)).await;
}

/// A server whose edge reports offline after [`DEBOUNCE_MS`].
async fn scenario(body: impl AsyncFnOnce(&Server)) {
    let debounce = DEBOUNCE_MS.to_string();
    scenario_with(&[("NATTER_PRESENCE_DEBOUNCE_MS", &debounce)], 90, body).await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Closes a device and returns when it was closed (ms, the test's clock): the instant
/// before and after the close.
fn close(c: Client) -> (u64, u64) {
    let before = now_ms();
    c.close();
    (before, now_ms())
}

// ---------------------------------------------------------------------------------
// Presence as a reader sees it.

fn state(p: &v1::UserPresence) -> PresenceState {
    PresenceState::try_from(p.state).unwrap_or(PresenceState::Unspecified)
}

/// What `reader` is answered about `user` now (subscribing, or renewing).
async fn snapshot(reader: &Client, user: UserId) -> v1::UserPresence {
    let s = reader
        .subscribe_presence(&[user])
        .await
        .unwrap_or_else(|e| panic!("subscribe by {}: {e}", reader.user_id()));
    assert!(s.subscription_ttl_s > 0, "{s:?}");
    assert_eq!(s.users.len(), 1, "{s:?}");
    assert_eq!(s.users[0].user_id, user.get(), "{s:?}");
    s.users[0]
}

/// Asks until `reader`'s snapshot of `user` satisfies `want` (it may take the edge a
/// moment to report a change); panics with the last answer after [`WAIT`].
async fn snapshot_until(
    reader: &Client,
    user: UserId,
    what: &str,
    want: impl Fn(&v1::UserPresence) -> bool,
) -> v1::UserPresence {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = snapshot(reader, user).await;
        if want(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} still sees {p:?}",
            reader.user_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_online(p: &v1::UserPresence) -> bool {
    state(p) == PresenceState::Online && p.last_seen_ms == 0
}

/// The next presence push about `user` on `c`.
async fn pushed(c: &Client, user: UserId) -> v1::UserPresence {
    next_matching(c, WAIT, |ev| match ev {
        Event::Presence(p) if p.user_id == user.get() => Some(*p),
        _ => None,
    })
    .await
}

/// The next presence push about `user` on `c` for which `want` holds; every push before
/// it (re-pushes after a change of settings, contacts or blocks) must satisfy `allowed`.
async fn push_until(
    c: &Client,
    user: UserId,
    what: &str,
    want: impl Fn(&v1::UserPresence) -> bool,
    allowed: impl Fn(&v1::UserPresence) -> bool,
) -> v1::UserPresence {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            Some(Event::Presence(p)) if p.user_id == user.get() => {
                if want(&p) {
                    return p;
                }
                assert!(allowed(&p), "{what}: an unexpected push {p:?}");
            }
            Some(_) => {}
            None => panic!("{what}: no such push within {WAIT:?}"),
        }
    }
}

fn hidden(p: &v1::UserPresence) -> bool {
    state(p) == PresenceState::Unspecified && p.last_seen_ms == 0
}

fn offline_without_time(p: &v1::UserPresence) -> bool {
    state(p) == PresenceState::Offline && p.last_seen_ms == 0
}

/// Offline, last seen at a close between `closing` and `closed` (the test's clock).
fn offline_at(p: &v1::UserPresence, (closing, closed): (u64, u64)) -> bool {
    state(p) == PresenceState::Offline
        && p.last_seen_ms + 50 >= closing
        && p.last_seen_ms <= closed + 1000
}

/// Watches `c` for `window`: every presence push about `user` must hide everything.
async fn nothing_revealed(c: &Client, user: UserId, window: Duration, what: &str) {
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match c.recv_timeout(left).await {
            Some(Event::Presence(p)) if p.user_id == user.get() => {
                assert!(hidden(&p), "{what}: got {p:?}")
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// Watches `c` for `window`: no presence event about `user` may arrive.
async fn no_presence_push(c: &Client, user: UserId, window: Duration, what: &str) {
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match c.recv_timeout(left).await {
            Some(Event::Presence(p)) if p.user_id == user.get() => {
                panic!("{what}: got {p:?}")
            }
            Some(_) => {}
            None => return,
        }
    }
}

fn privacy(online: Visibility, last_seen: Visibility) -> Op {
    Op::PrivacySet(v1::PrivacySet {
        settings: Some(v1::PrivacySettings {
            online: online as i32,
            last_seen: last_seen as i32,
            ..Default::default()
        }),
    })
}

async fn people_op(c: &Client, op: Op) -> v1::PeopleResult {
    let what = format!("{op:?}");
    c.people(op)
        .await
        .unwrap_or_else(|e| panic!("{what} by {} failed: {e}", c.user_id()))
}

/// `owner` adds `who` to their contacts.
async fn add_contact(owner: &Client, who: UserId) {
    people_op(
        owner,
        Op::ContactAdd(v1::ContactAdd {
            user_id: who.get(),
            ..Default::default()
        }),
    )
    .await;
}

/// What a reader should see, by the table in the module comment: the state, and whether
/// the last seen is shown.
fn expected(user_online: bool, sees_online: bool, sees_last_seen: bool) -> (PresenceState, bool) {
    match (user_online, sees_online, sees_last_seen) {
        (true, true, _) => (PresenceState::Online, false),
        (true, false, true) => (PresenceState::Offline, true),
        (true, false, false) => (PresenceState::Unspecified, false),
        (false, _, true) => (PresenceState::Offline, true),
        (false, true, false) => (PresenceState::Offline, false),
        (false, false, false) => (PresenceState::Unspecified, false),
    }
}

// ---------------------------------------------------------------------------------
// Presence.

#[tokio::test]
async fn a_subscriber_is_pushed_online_then_offline_with_last_seen() {
    scenario(async |server| {
        let [wes] = people(server, ["wes"]).await;
        let wes2 = {
            let s = server.login(&wes.session.username, "device-2").await;
            server.device(&s).await
        };
        let uma = Watched::new(server, "uma").await;

        // Never connected: offline, never seen.
        let p = snapshot(&wes, uma.id()).await;
        assert_eq!((state(&p), p.last_seen_ms), (PresenceState::Offline, 0));

        let uma1 = uma.connect(server).await;
        let p = pushed(&wes, uma.id()).await;
        assert!(is_online(&p), "{p:?}");
        // Every device of the subscriber gets the push, not only the one that asked.
        let p = pushed(&wes2, uma.id()).await;
        assert!(is_online(&p), "{p:?}");
        assert!(is_online(&snapshot(&wes, uma.id()).await));

        let (closing, closed) = close(uma1);
        let p = pushed(&wes, uma.id()).await;
        let arrived = now_ms();
        assert_eq!(state(&p), PresenceState::Offline, "{p:?}");
        // Last seen is when the device closed, not when the offline report went out.
        assert!(
            p.last_seen_ms + 50 >= closing && p.last_seen_ms <= closed + 1000,
            "last seen {} not at the close ({closing}..{closed})",
            p.last_seen_ms
        );
        assert!(
            arrived + 50 >= p.last_seen_ms + DEBOUNCE_MS,
            "offline pushed {} ms after the close, before the {DEBOUNCE_MS} ms debounce",
            arrived.saturating_sub(p.last_seen_ms)
        );
        let p2 = pushed(&wes2, uma.id()).await;
        assert_eq!(p2, p);
        // A snapshot says the same.
        assert_eq!(snapshot(&wes, uma.id()).await, p);

        // Unsubscribed: no more pushes.
        wes.unsubscribe_presence(&[uma.id()])
            .await
            .expect("unsubscribe");
        assert!(wes.presence_subscriptions().is_empty());
        let uma2 = uma.connect(server).await;
        no_presence_push(
            &wes,
            uma.id(),
            Duration::from_millis(1500),
            "pushed after unsubscribing",
        )
        .await;
        drop(uma2);

        // Refused: user id 0.
        let e = wes
            .subscribe_presence(&[UserId(0)])
            .await
            .expect_err("user id 0 is refused");
        assert_eq!(e.server_code(), Some(ErrorCode::InvalidArgument));
    })
    .await;
}

#[tokio::test]
async fn snapshots_follow_every_privacy_setting_for_contacts_and_strangers() {
    let debounce = DEBOUNCE_MS.to_string();
    scenario_with(
        &[("NATTER_PRESENCE_DEBOUNCE_MS", &debounce)],
        150,
        async |server| {
            // Cat is in Uma's contacts; Sam is not (though Sam has Uma in his).
            let [cat, sam] = people(server, ["cat", "sam"]).await;
            let uma = Watched::new(server, "uma").await;
            // Uma was here once: last seen at `first` (every setting is EVERYONE now).
            let c = uma.connect(server).await;
            add_contact(&c, cat.id()).await;
            add_contact(&sam, uma.id()).await;
            let first = close(c);
            let seen = snapshot_until(&cat, uma.id(), "Uma's first close", |p| {
                offline_at(p, first)
            })
            .await
            .last_seen_ms;
            let uma1 = uma.connect(server).await;
            snapshot_until(&cat, uma.id(), "Uma online", is_online).await;

            let settings: Vec<(Visibility, Visibility)> = [EVERYONE, CONTACTS, NOBODY]
                .into_iter()
                .flat_map(|o| [EVERYONE, CONTACTS, NOBODY].map(|l| (o, l)))
                .collect();
            let sees = |v: Visibility, contact: bool| v == EVERYONE || (v == CONTACTS && contact);

            // Online: every setting, from both sides. Whoever may not see her online sees
            // what they saw before she came.
            for &(online, last_seen) in &settings {
                people_op(&uma1, privacy(online, last_seen)).await;
                for (reader, contact) in [(&cat, true), (&sam, false)] {
                    let (want, with_time) =
                        expected(true, sees(online, contact), sees(last_seen, contact));
                    let want_seen = if with_time { seen } else { 0 };
                    let case =
                        format!("online, settings online {online:?} last seen {last_seen:?}");
                    snapshot_until(reader, uma.id(), &case, |p| {
                        (state(p), p.last_seen_ms) == (want, want_seen)
                    })
                    .await;
                }
            }

            // Offline: Uma connects to change her settings, and closes again.
            drop(uma1);
            for &(online, last_seen) in &settings {
                let c = uma.connect(server).await;
                people_op(&c, privacy(online, last_seen)).await;
                let (closing, closed) = close(c);
                let case = format!("offline, settings online {online:?} last seen {last_seen:?}");
                // The reader who sees the most first: once they see the offline, it is.
                let mut readers = [(&cat, true), (&sam, false)];
                readers.sort_by_key(|(_, contact)| !contact);
                for (reader, contact) in readers {
                    let (want, with_time) =
                        expected(false, sees(online, contact), sees(last_seen, contact));
                    let p = snapshot_until(reader, uma.id(), &case, |p| {
                        state(p) == want
                            && if with_time {
                                p.last_seen_ms + 50 >= closing && p.last_seen_ms <= closed + 1000
                            } else {
                                p.last_seen_ms == 0
                            }
                    })
                    .await;
                    assert_eq!(p.user_id, uma.uid());
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn pushes_follow_the_privacy_settings() {
    scenario(async |server| {
        let [cat, sam] = people(server, ["cat", "sam"]).await;
        let uma = Watched::new(server, "uma").await;
        let setup = uma.connect(server).await;
        add_contact(&setup, cat.id()).await;
        // Online for contacts, last seen for nobody.
        people_op(&setup, privacy(CONTACTS, NOBODY)).await;
        assert!(is_online(&snapshot(&cat, uma.id()).await));
        let p = snapshot(&sam, uma.id()).await;
        assert!(hidden(&p), "online hidden from the stranger: {p:?}");
        drop(setup);
        let what = "online for contacts, last seen for nobody";
        push_until(&cat, uma.id(), what, offline_without_time, is_online).await;
        assert!(hidden(&snapshot(&sam, uma.id()).await));

        let c = uma.connect(server).await;
        push_until(&cat, uma.id(), what, is_online, offline_without_time).await;
        let first = close(c);
        push_until(&cat, uma.id(), what, offline_without_time, is_online).await;
        nothing_revealed(&sam, uma.id(), Duration::from_millis(500), what).await;

        // Online for nobody, last seen for contacts. Hiding "online" while online turns
        // the contact's view to the last seen from before (pushed at once); no online push
        // after that; each offline with its time, to the contact only.
        let c = uma.connect(server).await;
        push_until(&cat, uma.id(), what, is_online, offline_without_time).await;
        people_op(&c, privacy(NOBODY, CONTACTS)).await;
        let what = "online for nobody, last seen for contacts";
        let before = push_until(&cat, uma.id(), what, |p| offline_at(p, first), is_online).await;
        let second = close(c);
        push_until(
            &cat,
            uma.id(),
            what,
            |p| offline_at(p, second),
            |p| *p == before,
        )
        .await;
        let c = uma.connect(server).await;
        no_presence_push(
            &cat,
            uma.id(),
            Duration::from_millis(1000),
            "online hidden: no push when she comes online",
        )
        .await;
        let p = snapshot(&cat, uma.id()).await;
        assert!(
            offline_at(&p, second),
            "online, seen as away since {second:?}: {p:?}"
        );
        let third = close(c);
        push_until(&cat, uma.id(), what, |p| offline_at(p, third), |_| false).await;
        nothing_revealed(&sam, uma.id(), Duration::from_millis(500), what).await;
    })
    .await;
}

#[tokio::test]
async fn a_blocked_subscriber_sees_and_is_pushed_nothing() {
    scenario(async |server| {
        // Both are in Uma's contacts; she blocks Bob.
        let [bob, wes] = people(server, ["bob", "wes"]).await;
        let uma = Watched::new(server, "uma").await;
        let setup = uma.connect(server).await;
        add_contact(&setup, bob.id()).await;
        add_contact(&setup, wes.id()).await;
        assert!(is_online(&snapshot(&bob, uma.id()).await));
        people_op(&setup, Op::Block(v1::Block { user_id: bob.uid() })).await;
        // The block is pushed to Bob at once: nothing to see any more.
        push_until(&bob, uma.id(), "blocked", hidden, is_online).await;
        assert!(is_online(&snapshot(&wes, uma.id()).await));
        assert!(hidden(&snapshot(&bob, uma.id()).await));
        let what = "Wes watching";
        let offline = |p: &v1::UserPresence| state(p) == PresenceState::Offline;
        drop(setup);
        push_until(&wes, uma.id(), what, offline, is_online).await;
        assert!(hidden(&snapshot(&bob, uma.id()).await));

        let c = uma.connect(server).await;
        push_until(&wes, uma.id(), what, is_online, offline).await;
        close(c);
        push_until(&wes, uma.id(), what, offline, is_online).await;
        nothing_revealed(
            &bob,
            uma.id(),
            Duration::from_millis(500),
            "the blocked subscriber",
        )
        .await;

        // Unblocked: Bob sees her again, and is told so at once.
        let c = uma.connect(server).await;
        people_op(&c, Op::Unblock(v1::Unblock { user_id: bob.uid() })).await;
        push_until(&bob, uma.id(), "unblocked", is_online, hidden).await;
        let closed = close(c);
        push_until(
            &bob,
            uma.id(),
            "unblocked",
            |p| offline_at(p, closed),
            is_online,
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_quick_reconnect_is_no_change_for_subscribers() {
    const DEBOUNCE: u64 = 1500;
    scenario_with(
        &[("NATTER_PRESENCE_DEBOUNCE_MS", &DEBOUNCE.to_string())],
        60,
        async |server| {
            let [wes] = people(server, ["wes"]).await;
            let uma = Watched::new(server, "uma").await;
            snapshot(&wes, uma.id()).await;
            let c = uma.connect(server).await;
            assert!(is_online(&pushed(&wes, uma.id()).await));

            // Closed and back 200 ms later, well within the debounce.
            close(c);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let c = uma.connect(server).await;
            no_presence_push(
                &wes,
                uma.id(),
                Duration::from_millis(2 * DEBOUNCE + 500),
                "a reconnect within the debounce",
            )
            .await;
            assert!(is_online(&snapshot(&wes, uma.id()).await));

            // A real close: offline, no sooner than the debounce after it.
            let (closing, closed) = close(c);
            let p = pushed(&wes, uma.id()).await;
            let arrived = now_ms();
            assert_eq!(state(&p), PresenceState::Offline, "{p:?}");
            assert!(
                p.last_seen_ms + 50 >= closing && p.last_seen_ms <= closed + 1000,
                "last seen {} not at the close ({closing}..{closed})",
                p.last_seen_ms
            );
            assert!(
                arrived + 50 >= closing + DEBOUNCE,
                "offline pushed {} ms after the close, within the {DEBOUNCE} ms debounce",
                arrived - closing
            );
        },
    )
    .await;
}

#[tokio::test]
async fn offline_only_once_the_last_device_closed() {
    scenario(async |server| {
        let [wes] = people(server, ["wes"]).await;
        let mut uma = Watched::new(server, "uma").await;
        snapshot(&wes, uma.id()).await;
        let d1 = uma.connect(server).await;
        assert!(is_online(&pushed(&wes, uma.id()).await));
        let d2 = uma.another_device(server).await;

        close(d1);
        no_presence_push(
            &wes,
            uma.id(),
            Duration::from_millis(DEBOUNCE_MS + 1500),
            "one of two devices closed",
        )
        .await;
        assert!(is_online(&snapshot(&wes, uma.id()).await));

        let (closing, closed) = close(d2);
        let p = pushed(&wes, uma.id()).await;
        assert_eq!(state(&p), PresenceState::Offline, "{p:?}");
        assert!(
            p.last_seen_ms + 50 >= closing && p.last_seen_ms <= closed + 1000,
            "last seen {} must be the last device's close ({closing}..{closed})",
            p.last_seen_ms
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Typing and recording.

/// The next typing event on `c` from `from`.
async fn typing_from(c: &Client, from: u64) -> v1::TypingEvent {
    next_matching(c, WAIT, |ev| match ev {
        Event::Typing(t) if t.user_id == from => Some(t.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn typing_and_recording_carry_their_state_and_expiry() {
    scenario(async |server| {
        let [al, bea] = people(server, ["al", "bea"]).await;
        let c = conv(al.id(), bea.id());
        let fields = |t: &v1::TypingEvent| {
            (
                t.conversation_id.clone(),
                t.user_id,
                t.active,
                v1::ChatState::try_from(t.state).unwrap_or(v1::ChatState::Unspecified),
                t.expires_in_ms,
            )
        };
        let conv_id = c.as_str().to_owned();

        al.chat_state(bea.id(), v1::ChatState::Recording, true)
            .await
            .expect("recording");
        assert_eq!(
            fields(&typing_from(&bea, al.uid()).await),
            (
                conv_id.clone(),
                al.uid(),
                true,
                v1::ChatState::Recording,
                6000
            )
        );
        al.typing(&c, true).await.expect("typing");
        assert_eq!(
            fields(&typing_from(&bea, al.uid()).await),
            (conv_id.clone(), al.uid(), true, v1::ChatState::Typing, 6000)
        );
        al.typing(bea.id(), false).await.expect("typing");
        let t = typing_from(&bea, al.uid()).await;
        assert!(!t.active, "{t:?}");
        // Nothing came back to Al himself.
        assert!(
            !std::iter::from_fn(|| al.try_recv()).any(|ev| matches!(ev, Event::Typing(_))),
            "the typist gets no echo"
        );
    })
    .await;
}

#[tokio::test]
async fn typing_in_a_group_reaches_its_members_only() {
    scenario(async |server| {
        let [al, bea, cy, nat] = people(server, ["al", "bea", "cy", "nat"]).await;
        let g = al
            .create_group("g", &[bea.id(), cy.id()])
            .await
            .expect("create");
        let gc: natter_client::ConversationId =
            g.conversation_id.parse().expect("a conversation id");

        // Nat is not a member: refused (or dropped), and no member sees it.
        nat.chat_state(&gc, v1::ChatState::Recording, true)
            .await
            .expect("sent");
        al.chat_state(&gc, v1::ChatState::Recording, true)
            .await
            .expect("sent");
        for member in [&bea, &cy] {
            let t = next_matching(member, WAIT, |ev| match ev {
                Event::Typing(t) if t.user_id == nat.uid() => {
                    panic!("a non-member's typing reached a member: {t:?}")
                }
                Event::Typing(t) if t.user_id == al.uid() => Some(t.clone()),
                _ => None,
            })
            .await;
            assert_eq!(t.conversation_id, g.conversation_id);
            assert_eq!(t.state, v1::ChatState::Recording as i32);
            assert_eq!(t.expires_in_ms, 6000);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for member in [&bea, &cy] {
            while let Some(ev) = member.try_recv() {
                assert!(
                    !matches!(&ev, Event::Typing(t) if t.user_id == nat.uid()),
                    "a non-member's typing reached a member: {ev:?}"
                );
            }
        }
        while let Some(ev) = nat.try_recv() {
            match ev {
                Event::Error { error, .. } => {
                    assert_eq!(error.code, ErrorCode::Forbidden as i32, "{error:?}")
                }
                Event::Typing(t) => panic!("the non-member got a typing event: {t:?}"),
                _ => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn typing_is_rate_limited_per_connection() {
    scenario(async |server| {
        let [al, bea] = people(server, ["al", "bea"]).await;
        // A burst of 30 (natter-client gives each frame a non-zero id).
        const BURST: usize = 30;
        for _ in 0..BURST {
            al.typing(bea.id(), true).await.expect("typing");
        }
        // Count what Bea got and what Al was refused, until both are quiet.
        let mut relayed = 0;
        let mut limited = 0;
        let quiet = Duration::from_millis(1000);
        let deadline = Instant::now() + WAIT;
        loop {
            let b = bea.recv_timeout(Duration::from_millis(50)).await;
            let a = al.try_recv();
            if let Some(Event::Typing(t)) = &b
                && t.user_id == al.uid()
            {
                relayed += 1;
            }
            if let Some(Event::Error { error, .. }) = &a {
                assert_eq!(error.code, ErrorCode::RateLimited as i32, "{error:?}");
                limited += 1;
            }
            if relayed + limited == BURST {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{relayed} relayed and {limited} refused of {BURST}"
            );
        }
        // 5 a second, bursts of 10: about 10 pass, however the test machine is loaded
        // (a slow burst earns a token per 200 ms).
        assert!(
            (8..=14).contains(&relayed),
            "{relayed} relayed of a burst of {BURST}, {limited} refused"
        );
        // Nothing more arrives.
        let more = bea.recv_timeout(quiet).await;
        assert!(
            !matches!(&more, Some(Event::Typing(_))),
            "more typing than counted: {more:?}"
        );

        // Tokens come back: after a second, indicators pass again.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        al.typing(bea.id(), false).await.expect("typing");
        assert!(!typing_from(&bea, al.uid()).await.active);

        // Frames with id 0 are dropped silently; each connection has its own bucket.
        let s = server.login(&al.session.username, "device-raw").await;
        let (mut raw, _) =
            Connection::connect(&server.ws_url(), &s.access_token, WireFormat::Proto)
                .await
                .expect("raw connect");
        for _ in 0..BURST {
            raw.feed(&v1::ClientFrame {
                id: 0,
                body: Some(CBody::Typing(v1::Typing {
                    to_user: bea.uid(),
                    active: true,
                    ..Default::default()
                })),
            })
            .await
            .expect("feed");
        }
        raw.flush().await.expect("flush");
        let mut relayed = 0;
        while let Some(ev) = bea.recv_timeout(quiet).await {
            if matches!(&ev, Event::Typing(t) if t.user_id == al.uid()) {
                relayed += 1;
            }
        }
        assert!(
            (8..=14).contains(&relayed),
            "{relayed} relayed of a raw burst of {BURST}"
        );
        while let Ok(f) = raw.recv_timeout(Duration::from_millis(200)).await {
            assert!(
                !matches!(f.body, Some(v1::server_frame::Body::Error(_))),
                "no error for frames with id 0: {f:?}"
            );
        }
    })
    .await;
}

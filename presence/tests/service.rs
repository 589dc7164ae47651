//! The presence service on an in-process bus, driven by a fake edge (this test sending
//! `PresenceConn`/`PresenceBeat` requests) and a fake people service (answering
//! `Audience` requests with settings chosen per test), seen from the subscribers' side:
//! the pushes on `Subject::user(reader)` and the snapshots. Runs on `MemoryPresence`
//! and on `RedisPresence` against a real `redis-server` (natter-testkit), including an
//! edge that dies without a word and two service instances reaping concurrently.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt as _;
use natter_bus::{Bus, BusEvent, InProcessBus, Subscription};
use natter_people::Audiences;
use natter_presence::{Config, MemoryPresence, PresenceStore, RedisPresence, start};
use natter_proto::{
    ErrorCode, Subject, bus, now_ms,
    v1::{self, PresenceState, Visibility},
};
use natter_testkit::RedisServer;
use prost::Message as _;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);
/// How long "no push comes" is watched.
const QUIET: Duration = Duration::from_millis(300);
const LONG_TTL_MS: u32 = 60_000;
const SHORT_TTL_MS: u32 = 300;

/// Settings the fake people service answers with, by user (absent: defaults).
type People = Arc<Mutex<HashMap<u64, bus::Audience>>>;

struct Env {
    bus: Arc<dyn Bus>,
    people: People,
    shutdown: CancellationToken,
    /// The store of the first presence instance started, to set up history without
    /// pushes.
    store: Mutex<Option<Arc<dyn PresenceStore>>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn test_config() -> Config {
    Config {
        reap_interval: Duration::from_millis(50),
        max_subscriptions: 3,
        max_per_request: 5,
        ..Config::default()
    }
}

impl Env {
    /// A bus with the fake people service, no presence service yet.
    async fn new() -> Env {
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
        let people: People = Arc::default();
        let shutdown = CancellationToken::new();
        let mut requests = bus
            .subscribe(&Subject::people_audience(), 1024)
            .await
            .expect("subscribe people");
        let (b, p, stop) = (bus.clone(), people.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    ev = requests.next() => match ev {
                        Some(BusEvent::Message(m)) => m,
                        Some(BusEvent::Lagged) => continue,
                        None => break,
                    },
                };
                let Ok(req) = bus::AudienceRequest::decode(msg.payload.clone()) else {
                    continue;
                };
                let answer = p
                    .lock()
                    .expect("people lock")
                    .get(&req.user_id)
                    .cloned()
                    .unwrap_or(bus::Audience {
                        user_id: req.user_id,
                        ..Default::default()
                    });
                natter_bus::reply(b.as_ref(), &msg, Bytes::from(answer.encode_to_vec()))
                    .await
                    .expect("people reply");
            }
        });
        Env {
            bus,
            people,
            shutdown,
            store: Mutex::new(None),
        }
    }

    /// Starts one presence service instance on this bus.
    async fn presence(&self, store: Arc<dyn PresenceStore>, config: Config) {
        self.store
            .lock()
            .expect("store lock")
            .get_or_insert_with(|| store.clone());
        let audiences = Audiences::start(self.bus.clone(), TIMEOUT)
            .await
            .expect("audiences");
        start(
            store,
            audiences,
            self.bus.clone(),
            config,
            self.shutdown.clone(),
        )
        .await
        .expect("start presence");
    }

    fn set_privacy(
        &self,
        user: u64,
        online: Visibility,
        last_seen: Visibility,
        contacts: &[u64],
        blocked: &[u64],
    ) {
        let mut contacts = contacts.to_vec();
        contacts.sort_unstable();
        let mut blocked = blocked.to_vec();
        blocked.sort_unstable();
        self.people.lock().expect("people lock").insert(
            user,
            bus::Audience {
                user_id: user,
                privacy: Some(v1::PrivacySettings {
                    online: online as i32,
                    last_seen: last_seen as i32,
                    ..Default::default()
                }),
                contacts,
                blocked,
                error: None,
            },
        );
    }

    async fn request(&self, subject: Subject, payload: Vec<u8>) -> Bytes {
        self.bus
            .request(&subject, Bytes::from(payload), TIMEOUT)
            .await
            .expect("presence answers")
    }

    async fn conn(&self, node: &str, user: u64, online: bool, at_ms: u64) -> bus::PresenceAck {
        let req = bus::PresenceConn {
            node: node.to_owned(),
            user_id: user,
            online,
            at_ms,
        };
        let reply = self
            .request(Subject::presence_conn(), req.encode_to_vec())
            .await;
        bus::PresenceAck::decode(reply).expect("PresenceAck")
    }

    async fn beat(&self, req: bus::PresenceBeat) -> bus::PresenceAck {
        let reply = self
            .request(Subject::presence_beat(), req.encode_to_vec())
            .await;
        bus::PresenceAck::decode(reply).expect("PresenceAck")
    }

    async fn heartbeat(&self, node: &str, ttl_ms: u32) -> bus::PresenceAck {
        self.beat(bus::PresenceBeat {
            node: node.to_owned(),
            ttl_ms,
            ..Default::default()
        })
        .await
    }

    async fn query(&self, caller: u64, ids: &[u64], unsubscribe: bool) -> bus::PresenceReply {
        let req = bus::PresenceQuery {
            caller: Some(bus::Caller {
                user_id: caller,
                device_id: 1,
            }),
            request: Some(v1::PresenceSubscribe {
                user_ids: ids.to_vec(),
                unsubscribe,
            }),
        };
        let reply = self
            .request(Subject::presence_subscribe(), req.encode_to_vec())
            .await;
        bus::PresenceReply::decode(reply).expect("PresenceReply")
    }

    /// Subscribes and returns the snapshot as (user, state, last seen).
    async fn subscribe(&self, caller: u64, ids: &[u64]) -> Vec<(u64, PresenceState, u64)> {
        let reply = self.query(caller, ids, false).await;
        assert_eq!(reply.error, None);
        let snap = reply.snapshot.expect("snapshot");
        assert_eq!(snap.subscription_ttl_s, 600);
        snap.users.iter().map(view).collect()
    }

    async fn inbox(&self, user: u64) -> Subscription {
        self.bus
            .subscribe(&Subject::user(natter_proto::UserId(user)), 256)
            .await
            .expect("subscribe user")
    }
}

fn view(p: &v1::UserPresence) -> (u64, PresenceState, u64) {
    (
        p.user_id,
        PresenceState::try_from(p.state).unwrap_or(PresenceState::Unspecified),
        p.last_seen_ms,
    )
}

fn user() -> u64 {
    rand::rng().random_range(1..=u64::MAX)
}

fn node() -> String {
    format!("edge-{:08x}", rand::rng().random::<u32>())
}

/// The next presence push in `inbox` within `wait`, as (user, state, last seen).
async fn next_push(inbox: &mut Subscription, wait: Duration) -> Option<(u64, PresenceState, u64)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ev = tokio::time::timeout_at(deadline, inbox.next())
            .await
            .ok()??;
        let BusEvent::Message(msg) = ev else {
            panic!("inbox lagged");
        };
        let push = bus::UserPush::decode(msg.payload).expect("UserPush");
        assert_eq!(push.skip_device, 0);
        let Some(bus::user_push::Body::Frame(frame)) = push.body else {
            continue;
        };
        let frame = v1::ServerFrame::decode(frame).expect("ServerFrame");
        assert_eq!(frame.id, 0, "pushes have id 0");
        if let Some(v1::server_frame::Body::Presence(p)) = frame.body {
            return Some(view(&p));
        }
    }
}

async fn push(inbox: &mut Subscription) -> (u64, PresenceState, u64) {
    next_push(inbox, TIMEOUT).await.expect("a presence push")
}

async fn assert_quiet(inbox: &mut Subscription, who: &str) {
    if let Some(p) = next_push(inbox, QUIET).await {
        panic!("{who} got an unexpected push {p:?}");
    }
}

fn ok(ack: &bus::PresenceAck) {
    assert_eq!(ack.error, None, "{ack:?}");
    assert!(!ack.not_live, "{ack:?}");
}

fn code(e: &Option<v1::Error>) -> ErrorCode {
    e.as_ref()
        .and_then(|e| ErrorCode::try_from(e.code).ok())
        .unwrap_or(ErrorCode::Unspecified)
}

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server")
}

async fn redis_store(server: &RedisServer, prefix: &str) -> Arc<dyn PresenceStore> {
    Arc::new(
        RedisPresence::connect(&server.url(), prefix, Duration::from_secs(2))
            .await
            .expect("connect"),
    )
}

// ---------------------------------------------------------------------------------------
// Scenarios (each store)
// ---------------------------------------------------------------------------------------

/// Online and offline reach a subscriber; sync, leave, conn before beat, self queries.
async fn pushes_follow_the_edges(env: &Env) {
    use PresenceState::{Offline, Online};
    let (n, x, r) = (node(), user(), user());
    let mut inbox = env.inbox(r).await;
    assert_eq!(env.subscribe(r, &[x]).await, vec![(x, Offline, 0)]);

    // A conn before the node's first beat: not live, sync first.
    let ack = env.conn(&n, x, true, 0).await;
    assert!(ack.not_live, "{ack:?}");
    let ack = env.heartbeat(&n, LONG_TTL_MS).await;
    ok(&ack);
    assert!(ack.joined);
    ok(&env.heartbeat(&n, LONG_TTL_MS).await);
    assert!(!env.heartbeat(&n, LONG_TTL_MS).await.joined);

    ok(&env.conn(&n, x, true, 0).await);
    assert_eq!(push(&mut inbox).await, (x, Online, 0));
    assert_eq!(env.subscribe(r, &[x]).await, vec![(x, Online, 0)]);
    // The same report again changes nothing: no push.
    ok(&env.conn(&n, x, true, 0).await);
    let at = now_ms() - 1_000;
    ok(&env.conn(&n, x, false, at).await);
    assert_eq!(push(&mut inbox).await, (x, Offline, at));
    ok(&env.conn(&n, x, false, at).await);
    assert_quiet(&mut inbox, "r").await;
    assert_eq!(env.subscribe(r, &[x]).await, vec![(x, Offline, at)]);

    // Sync makes the node's users exactly the list; leave takes them offline now.
    let y = user();
    ok(&env
        .beat(bus::PresenceBeat {
            node: n.clone(),
            ttl_ms: LONG_TTL_MS,
            sync: true,
            users: vec![x, y],
            leave: false,
        })
        .await);
    assert_eq!(push(&mut inbox).await, (x, Online, 0));
    let before = now_ms();
    ok(&env
        .beat(bus::PresenceBeat {
            node: n.clone(),
            leave: true,
            ..Default::default()
        })
        .await);
    let (who, state, last) = push(&mut inbox).await;
    assert_eq!((who, state), (x, Offline));
    assert!((before..=now_ms()).contains(&last), "{last}");
    assert!(env.conn(&n, x, true, 0).await.not_live);

    // A user asking about themselves sees everything whatever their settings.
    env.set_privacy(y, Visibility::Nobody, Visibility::Nobody, &[], &[]);
    let snap = env.subscribe(y, &[y]).await;
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].1, Offline);
    assert!(snap[0].2 >= before);
    // Unsubscribed: no more pushes.
    let reply = env.query(r, &[x], true).await;
    assert_eq!(reply.error, None);
    assert_eq!(reply.snapshot, Some(v1::PresenceSnapshot::default()));
    ok(&env.heartbeat(&n, LONG_TTL_MS).await);
    ok(&env.conn(&n, x, true, 0).await);
    assert_quiet(&mut inbox, "unsubscribed r").await;
    ok(&env.conn(&n, x, false, 0).await);
}

/// Requests that are refused, each answered.
async fn bad_requests_are_answered(env: &Env) {
    let n = node();
    let ack = env.conn(&n, 0, true, 0).await;
    assert_eq!(code(&ack.error), ErrorCode::InvalidArgument);
    let ack = env.conn("", user(), true, 0).await;
    assert_eq!(code(&ack.error), ErrorCode::InvalidArgument);
    let ack = env.heartbeat(&n, 0).await;
    assert_eq!(code(&ack.error), ErrorCode::InvalidArgument);
    let bad = env
        .request(Subject::presence_beat(), vec![0xff, 0xff, 0xff])
        .await;
    let ack = bus::PresenceAck::decode(bad).expect("ack");
    assert_eq!(code(&ack.error), ErrorCode::BadFrame);

    let r = user();
    let too_many: Vec<u64> = (0..6).map(|_| user()).collect();
    let reply = env.query(r, &too_many, false).await;
    assert_eq!(code(&reply.error), ErrorCode::InvalidArgument);
    let reply = env.query(r, &[user(), 0], false).await;
    assert_eq!(code(&reply.error), ErrorCode::InvalidArgument);
    let reply = env.query(0, &[user()], false).await;
    assert_eq!(code(&reply.error), ErrorCode::InvalidArgument);
    // The limit (3 in these tests), with a clear message; renewing stays within it.
    let (a, b, c, d) = (user(), user(), user(), user());
    assert_eq!(env.subscribe(r, &[a, b, c, a]).await.len(), 3);
    let reply = env.query(r, &[d], false).await;
    assert_eq!(code(&reply.error), ErrorCode::LimitReached, "{reply:?}");
    assert!(
        reply
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("at most 3")),
        "{reply:?}"
    );
    assert_eq!(env.subscribe(r, &[c, b]).await.len(), 2);
    assert_eq!(env.query(r, &[a], true).await.error, None);
    assert_eq!(env.subscribe(r, &[d]).await.len(), 1);
}

/// Every privacy rule from the readers' side: a contact, a stranger and a blocked
/// contact subscribe to users with each combination of settings.
async fn privacy_decides_what_readers_see(env: &Env) {
    use PresenceState::{Offline, Online, Unspecified};
    use Visibility::{Contacts, Everyone, Nobody};
    struct Case {
        online: Visibility,
        last_seen: Visibility,
        /// What (contact, stranger, blocked) see: the snapshot while offline, then the
        /// pushes of online and offline (None: no push).
        expect: [(PresenceState, bool, Option<bool>); 3],
    }
    // (snapshot state, snapshot has the time, push: None / Some(with time)); the online
    // push is there iff the snapshot state of an online user would be Online.
    let cases = [
        Case {
            online: Everyone,
            last_seen: Everyone,
            expect: [
                (Offline, true, Some(true)),
                (Offline, true, Some(true)),
                (Unspecified, false, None),
            ],
        },
        Case {
            online: Contacts,
            last_seen: Contacts,
            expect: [
                (Offline, true, Some(true)),
                (Unspecified, false, None),
                (Unspecified, false, None),
            ],
        },
        Case {
            online: Everyone,
            last_seen: Nobody,
            expect: [
                (Offline, false, Some(false)),
                (Offline, false, Some(false)),
                (Unspecified, false, None),
            ],
        },
        Case {
            online: Nobody,
            last_seen: Nobody,
            expect: [
                (Unspecified, false, None),
                (Unspecified, false, None),
                (Unspecified, false, None),
            ],
        },
        Case {
            online: Nobody,
            last_seen: Contacts,
            expect: [
                (Offline, true, Some(true)),
                (Unspecified, false, None),
                (Unspecified, false, None),
            ],
        },
        Case {
            online: Contacts,
            last_seen: Everyone,
            expect: [
                (Offline, true, Some(true)),
                (Offline, true, Some(true)),
                (Unspecified, false, None),
            ],
        },
    ];
    let n = node();
    ok(&env.heartbeat(&n, LONG_TTL_MS).await);
    for (i, case) in cases.iter().enumerate() {
        let x = user();
        let readers = [user(), user(), user()];
        let [contact, _stranger, blocked] = readers;
        env.set_privacy(
            x,
            case.online,
            case.last_seen,
            &[contact, blocked],
            &[blocked],
        );
        // x has been online once: last seen t0. Written to the store directly, so no
        // push of it can reach the readers after they subscribe.
        let t0 = now_ms() - 10_000;
        let store = env
            .store
            .lock()
            .expect("store lock")
            .clone()
            .expect("store");
        let id = natter_proto::UserId(x);
        store.online(&n, id).await.expect("online");
        store.offline(&n, id, t0).await.expect("offline");
        let mut inboxes = Vec::new();
        for &r in &readers {
            inboxes.push(env.inbox(r).await);
        }
        for (j, &r) in readers.iter().enumerate() {
            let (state, timed, _) = case.expect[j];
            let want = (x, state, if timed { t0 } else { 0 });
            assert_eq!(
                env.subscribe(r, &[x]).await,
                vec![want],
                "case {i} reader {j}"
            );
        }
        ok(&env.conn(&n, x, true, 0).await);
        let t1 = now_ms() - 5_000;
        ok(&env.conn(&n, x, false, t1).await);
        for (j, inbox) in inboxes.iter_mut().enumerate() {
            let sees_online = case.online == Everyone || (case.online == Contacts && j == 0);
            let sees_online = sees_online && j != 2;
            if sees_online {
                assert_eq!(push(inbox).await, (x, Online, 0), "case {i} reader {j}");
            }
            match case.expect[j].2 {
                Some(timed) => assert_eq!(
                    push(inbox).await,
                    (x, Offline, if timed { t1 } else { 0 }),
                    "case {i} reader {j}"
                ),
                None => assert!(!sees_online, "case {i}: online without offline"),
            }
        }
        for (j, inbox) in inboxes.iter_mut().enumerate() {
            assert_quiet(inbox, &format!("case {i} reader {j}")).await;
        }
        // Online now: the snapshot shows it to whoever may see online; whoever may
        // see only last seen still gets the last time (nothing gives away "online").
        ok(&env.conn(&n, x, true, 0).await);
        for (j, &r) in readers.iter().enumerate() {
            let sees_online =
                (case.online == Everyone || (case.online == Contacts && j == 0)) && j != 2;
            let want = if sees_online {
                (x, Online, 0)
            } else if case.expect[j].1 {
                (x, Offline, t1)
            } else {
                (x, Unspecified, 0)
            };
            assert_eq!(
                env.subscribe(r, &[x]).await,
                vec![want],
                "case {i} reader {j}"
            );
        }
        ok(&env.conn(&n, x, false, 0).await);
    }
}

/// An edge that stops beating: its users go offline by themselves, last seen at its
/// last beat, pushed once.
async fn a_dead_edge_takes_its_users_offline(env: &Env) {
    use PresenceState::{Offline, Online};
    let (n, x, r) = (node(), user(), user());
    let mut inbox = env.inbox(r).await;
    env.subscribe(r, &[x]).await;
    ok(&env.heartbeat(&n, SHORT_TTL_MS).await);
    ok(&env.conn(&n, x, true, 0).await);
    assert_eq!(push(&mut inbox).await, (x, Online, 0));
    let before = now_ms();
    ok(&env.heartbeat(&n, SHORT_TTL_MS).await);
    let after = now_ms();
    // No goodbye, no more beats.
    let died = Instant::now();
    let (who, state, last) = push(&mut inbox).await;
    assert_eq!((who, state), (x, Offline));
    assert!(
        died.elapsed() >= Duration::from_millis(u64::from(SHORT_TTL_MS) - 50),
        "offline before the TTL ran out"
    );
    // Redis stamps beats with its own clock; on one machine it agrees within a margin.
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&last),
        "last seen {last} is not the last beat ({before}..{after})"
    );
    assert_eq!(env.subscribe(r, &[x]).await, vec![(x, Offline, last)]);
    assert_quiet(&mut inbox, "r").await;
    // The edge comes back: its beat joins afresh; it syncs; x is online again.
    let ack = env.heartbeat(&n, LONG_TTL_MS).await;
    ok(&ack);
    assert!(ack.joined);
    ok(&env
        .beat(bus::PresenceBeat {
            node: n.clone(),
            ttl_ms: LONG_TTL_MS,
            sync: true,
            users: vec![x],
            leave: false,
        })
        .await);
    assert_eq!(push(&mut inbox).await, (x, Online, 0));
    ok(&env
        .beat(bus::PresenceBeat {
            node: n,
            leave: true,
            ..Default::default()
        })
        .await);
    assert_eq!(push(&mut inbox).await.1, Offline);
}

/// A block (or any privacy change) reaches subscribers at once: the people service
/// publishes PeopleChanged and each subscriber gets the presence as they may see it now.
async fn a_block_hides_presence_at_once(env: &Env) {
    use PresenceState::{Online, Unspecified};
    use Visibility::Everyone;
    let (x, r) = (user(), user());
    let n = node();
    ok(&env.heartbeat(&n, LONG_TTL_MS).await);
    ok(&env.conn(&n, x, true, 0).await);
    let mut inbox = env.inbox(r).await;
    assert_eq!(env.subscribe(r, &[x]).await, vec![(x, Online, 0)]);
    let changed = |user: u64| Bytes::from(bus::PeopleChanged { user_id: user }.encode_to_vec());
    env.set_privacy(x, Everyone, Everyone, &[], &[r]);
    env.bus
        .publish(&Subject::people_changed(), changed(x))
        .await
        .expect("publish");
    assert_eq!(push(&mut inbox).await, (x, Unspecified, 0), "blocked");
    env.set_privacy(x, Everyone, Everyone, &[], &[]);
    env.bus
        .publish(&Subject::people_changed(), changed(x))
        .await
        .expect("publish");
    assert_eq!(push(&mut inbox).await, (x, Online, 0), "unblocked");
    // Someone else's change reaches nobody here.
    env.bus
        .publish(&Subject::people_changed(), changed(user()))
        .await
        .expect("publish");
    assert_quiet(&mut inbox, "an unrelated change").await;
    ok(&env.conn(&n, x, false, 0).await);
}

/// The admin API's view (`natter.admin.presence`): online and last seen as stored,
/// whatever the user's privacy settings hide from readers.
async fn the_admin_api_sees_presence_whatever_the_privacy(env: &Env) {
    let admin = |user_id: u64| async move {
        let req = bus::AdminPresenceRequest { user_id };
        let reply = env
            .request(
                Subject::admin(natter_proto::AdminService::Presence),
                req.encode_to_vec(),
            )
            .await;
        bus::AdminPresenceReply::decode(reply).expect("AdminPresenceReply")
    };
    let (n, x, r) = (node(), user(), user());
    env.set_privacy(x, Visibility::Nobody, Visibility::Nobody, &[], &[]);
    let never = admin(x).await;
    assert_eq!(
        (never.error, never.online, never.last_seen_ms),
        (None, false, 0)
    );

    ok(&env.heartbeat(&n, LONG_TTL_MS).await);
    ok(&env.conn(&n, x, true, 0).await);
    let on = admin(x).await;
    assert_eq!((on.error, on.online), (None, true));
    // A reader sees nothing of it.
    assert_eq!(
        env.subscribe(r, &[x]).await,
        vec![(x, PresenceState::Unspecified, 0)]
    );
    let at = now_ms() - 1_000;
    ok(&env.conn(&n, x, false, at).await);
    let off = admin(x).await;
    assert_eq!((off.error, off.online, off.last_seen_ms), (None, false, at));

    assert_eq!(code(&admin(0).await.error), ErrorCode::InvalidArgument);
    ok(&env
        .beat(bus::PresenceBeat {
            node: n,
            leave: true,
            ..Default::default()
        })
        .await);
}

async fn all_scenarios(env: &Env) {
    pushes_follow_the_edges(env).await;
    a_block_hides_presence_at_once(env).await;
    bad_requests_are_answered(env).await;
    privacy_decides_what_readers_see(env).await;
    a_dead_edge_takes_its_users_offline(env).await;
    the_admin_api_sees_presence_whatever_the_privacy(env).await;
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_service() {
    let env = Env::new().await;
    env.presence(Arc::new(MemoryPresence::new()), test_config())
        .await;
    all_scenarios(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_service() {
    let server = start_redis().await;
    let env = Env::new().await;
    env.presence(redis_store(&server, "natter:svc").await, test_config())
        .await;
    all_scenarios(&env).await;
}

/// Two presence instances on one Redis, both reaping every 20 ms: a dead edge's user
/// is pushed offline exactly once. Edge requests reach either instance (queue group).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_two_instances_push_a_dead_edge_once() {
    use PresenceState::{Offline, Online};
    let server = start_redis().await;
    let env = Env::new().await;
    let config = Config {
        reap_interval: Duration::from_millis(20),
        ..test_config()
    };
    env.presence(redis_store(&server, "natter:two").await, config.clone())
        .await;
    env.presence(redis_store(&server, "natter:two").await, config)
        .await;
    for round in 0..5 {
        let n = node();
        let users: Vec<u64> = (0..3).map(|_| user()).collect();
        let r = user();
        let mut inbox = env.inbox(r).await;
        assert_eq!(env.subscribe(r, &users).await.len(), 3);
        ok(&env.heartbeat(&n, SHORT_TTL_MS).await);
        for &u in &users {
            ok(&env.conn(&n, u, true, 0).await);
        }
        for _ in &users {
            assert_eq!(push(&mut inbox).await.1, Online, "round {round}");
        }
        let mut offline = Vec::new();
        for _ in &users {
            let (u, state, last) = push(&mut inbox).await;
            assert_eq!(state, Offline, "round {round}");
            assert!(last > 0);
            offline.push(u);
        }
        offline.sort_unstable();
        let mut want = users.clone();
        want.sort_unstable();
        assert_eq!(offline, want, "round {round}: each user once");
        assert_quiet(&mut inbox, "r").await;
    }
}

/// Shutdown ends the service task; requests after it are not served.
#[tokio::test]
async fn shutdown_stops_the_service() {
    let env = Env::new().await;
    let audiences = Audiences::start(env.bus.clone(), TIMEOUT)
        .await
        .expect("audiences");
    let stop = CancellationToken::new();
    let task = start(
        Arc::new(MemoryPresence::new()),
        audiences,
        env.bus.clone(),
        test_config(),
        stop.clone(),
    )
    .await
    .expect("start");
    ok(&env.heartbeat(&node(), LONG_TTL_MS).await);
    stop.cancel();
    tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("stops in time")
        .expect("no panic");
    let req = bus::PresenceBeat {
        node: node(),
        ttl_ms: LONG_TTL_MS,
        ..Default::default()
    };
    let answer = env
        .bus
        .request(
            &Subject::presence_beat(),
            Bytes::from(req.encode_to_vec()),
            Duration::from_millis(200),
        )
        .await;
    assert!(answer.is_err(), "a stopped service answered: {answer:?}");
}

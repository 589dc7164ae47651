//! The presence service on the bus: edges' conn and beat requests, subscribe queries,
//! the reaper, and privacy-filtered pushes. See [`start`].

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher as _},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt as _, stream};
use natter_bus::{Bus, BusError, BusEvent, BusMessage, Subscription};
use natter_people::{AudienceInfo, Audiences, Item};
use natter_proto::{
    AdminService, ErrorCode, Subject, UserId, bus, error, now_ms,
    v1::{self, server_frame},
};
use prost::Message as _;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    memory::{MAX_AT_MS, SUBSCRIPTION_LIMIT},
    store::{PresenceError, PresenceStore, Transition},
};

/// Queue group of every presence subscription.
pub const QUEUE_GROUP: &str = "presence";
/// Lanes handling conn and beat requests (one node's requests always share a lane).
const EDGE_LANES: usize = 16;
/// Requests buffered per bus subscription.
const SUB_CAPACITY: usize = 4096;
/// Requests queued per edge lane before the dispatcher waits.
const LANE_QUEUE: usize = 256;
/// Subscribe queries handled concurrently.
const MAX_CONCURRENT_QUERIES: usize = 64;
/// Audiences asked of the people service concurrently for one snapshot.
const AUDIENCE_CONCURRENCY: usize = 32;
/// Push lanes (one user's transitions always share a lane).
const PUSH_LANES: usize = 16;
/// Transitions queued per push lane before new ones are dropped.
const PUSH_QUEUE: usize = 4096;
/// Reap calls per tick at most (each takes a bounded batch of lapsed nodes).
const REAP_ROUNDS: usize = 16;
/// The shortest reap interval used, whatever the configuration says.
const MIN_REAP_INTERVAL: Duration = Duration::from_millis(10);
/// Edge times further in the future than this are replaced by this service's clock.
const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Settings of the presence service.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a subscription lasts unless renewed (sent to devices as
    /// `subscription_ttl_s`).
    pub subscription_ttl: Duration,
    /// Live subscriptions one user may hold.
    pub max_subscriptions: u32,
    /// User ids one `PresenceSubscribe` may name.
    pub max_per_request: usize,
    /// How often this instance reaps lapsed edge nodes.
    pub reap_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            subscription_ttl: Duration::from_secs(600),
            max_subscriptions: 5_000,
            max_per_request: 1_000,
            reap_interval: Duration::from_secs(1),
        }
    }
}

struct Shared {
    store: Arc<dyn PresenceStore>,
    audiences: Arc<Audiences>,
    bus: Arc<dyn Bus>,
    config: Config,
    pushes: Vec<mpsc::Sender<Transition>>,
}

/// A conn or beat request taken off the bus, decoded.
enum EdgeRequest {
    Conn(bus::PresenceConn),
    Beat(bus::PresenceBeat),
}

struct EdgeJob {
    request: EdgeRequest,
    reply: Option<Subject>,
}

/// Starts the presence service. Returns once its subjects are subscribed; the task
/// completes after `shutdown`, when the conn and beat requests taken are answered.
///
/// The service on the bus (queue group [`QUEUE_GROUP`]; any number of instances
/// may share one store):
///
/// * `Subject::presence_conn()`: an edge's `PresenceConn` (a user's first device
///   connected, or the last one closed), answered with `PresenceAck`.
/// * `Subject::presence_beat()`: an edge's `PresenceBeat` (heartbeat, sync or leave),
///   answered with `PresenceAck`.
/// * `Subject::presence_subscribe()`: a device's `PresenceQuery` (subscribe or
///   unsubscribe), answered with `PresenceReply` (a snapshot as the caller may see it).
/// * `Subject::admin(AdminService::Presence)`: the admin API's `AdminPresenceRequest`,
///   answered with `AdminPresenceReply` from the store, without privacy rules.
/// * A reaper calls [`PresenceStore::reap`] every [`Config::reap_interval`], so the users
///   of an edge that died without a word go offline by themselves.
///
/// Every transition a call causes is pushed to the subscribers of its user on
/// `Subject::user(subscriber)` as a `ServerFrame{presence}`, as far as the user's privacy
/// settings and blocks let that subscriber see it (read through [`Audiences`]).
/// Snapshots and pushes follow one rule: a reader sees ONLINE only if they may see the
/// user's online status; an offline user as OFFLINE with the last-seen time if they may
/// see last seen, OFFLINE with 0 if they may see only online status, and not at all
/// (UNSPECIFIED in a snapshot, no push) if neither; an online user whose online status
/// is hidden from them as they were before (OFFLINE with the previous last-seen time if
/// they may see last seen, else UNSPECIFIED), so nothing gives away that they are online. A blocked reader sees nothing; users see all of
/// their own. A query names at most `max_per_request` ids and its caller comes from the
/// edge (`PresenceQuery.caller`), never from the ids.
///
/// Order: conn and beat requests of one node are handled one after the other (requests
/// are spread over 16 lanes by node name), subscribe queries concurrently.
/// The transitions of one user are pushed in the order this instance learned them (one
/// push lane per user, by hash); pushes are best effort (a full lane drops them with a
/// warning) and devices resubscribe, getting a fresh snapshot, at least every
/// `subscription_ttl`. Transitions of one user found by two instances at nearly the same
/// time may be pushed in either order. Debouncing flapping connections is the edge's job.
pub async fn start(
    store: Arc<dyn PresenceStore>,
    audiences: Arc<Audiences>,
    bus: Arc<dyn Bus>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let conns = bus
        .queue_subscribe(&Subject::presence_conn(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let beats = bus
        .queue_subscribe(&Subject::presence_beat(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let queries = bus
        .queue_subscribe(&Subject::presence_subscribe(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let admins = bus
        .queue_subscribe(
            &Subject::admin(AdminService::Presence),
            QUEUE_GROUP,
            SUB_CAPACITY,
        )
        .await?;
    // One instance per change re-evaluates who may see the user's presence.
    let changes = bus
        .queue_subscribe(&Subject::people_changed(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let (pushes, push_queues): (Vec<_>, Vec<_>) =
        (0..PUSH_LANES).map(|_| mpsc::channel(PUSH_QUEUE)).unzip();
    let shared = Arc::new(Shared {
        store,
        audiences,
        bus,
        config,
        pushes,
    });
    Ok(tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        for queue in push_queues {
            tasks.spawn(push_lane(shared.clone(), queue, shutdown.clone()));
        }
        tasks.spawn(reaper(shared.clone(), shutdown.clone()));
        tasks.spawn(serve_edges(shared.clone(), conns, beats, shutdown.clone()));
        tasks.spawn(serve_queries(shared.clone(), queries, shutdown.clone()));
        tasks.spawn(serve_admin(shared.clone(), admins, shutdown.clone()));
        tasks.spawn(serve_changes(shared.clone(), changes, shutdown.clone()));
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a presence task failed");
            }
        }
        tracing::debug!("presence service stopped");
    }))
}

fn lane_of(key: impl Hash, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    // The remainder is below `lanes`, a usize.
    usize::try_from(h.finish() % lanes.max(1) as u64).unwrap_or(0)
}

async fn reply(shared: &Shared, to: Option<&Subject>, payload: Vec<u8>) {
    if let Some(to) = to
        && let Err(e) = shared.bus.publish(to, Bytes::from(payload)).await
    {
        tracing::debug!(error = %e, "presence reply not delivered");
    }
}

fn ack_error(code: ErrorCode, message: impl Into<String>) -> bus::PresenceAck {
    bus::PresenceAck {
        error: Some(error(code, message)),
        ..Default::default()
    }
}

/// A store failure as a client error (logged here; internals are not sent).
fn store_error(e: &PresenceError) -> v1::Error {
    match e {
        PresenceError::Invalid { .. } | PresenceError::NodeNotLive(_) => {
            error(ErrorCode::InvalidArgument, e.to_string())
        }
        PresenceError::Unavailable(_) => {
            tracing::warn!(error = %e, "presence store unavailable");
            error(ErrorCode::Unavailable, "presence store unavailable; retry")
        }
        PresenceError::Malformed(_) => {
            tracing::error!(error = %e, "presence store failure");
            error(ErrorCode::Internal, "presence store failure")
        }
    }
}

fn ack_of(e: &PresenceError) -> bus::PresenceAck {
    match e {
        PresenceError::NodeNotLive(_) => bus::PresenceAck {
            not_live: true,
            ..Default::default()
        },
        _ => bus::PresenceAck {
            error: Some(store_error(e)),
            ..Default::default()
        },
    }
}

/// The time an edge reported, or now if it is missing or too far in the future.
fn edge_time(at_ms: u64) -> u64 {
    let now = now_ms();
    if at_ms == 0 || at_ms > now.saturating_add(MAX_CLOCK_SKEW_MS) {
        now
    } else {
        at_ms.min(MAX_AT_MS)
    }
}

/// Queues transitions for their push lanes (never waits: a full lane drops them).
fn enqueue(shared: &Shared, transitions: Vec<Transition>) {
    for t in transitions {
        let lane = lane_of(t.user, shared.pushes.len());
        let Some(queue) = shared.pushes.get(lane) else {
            continue;
        };
        if let Err(mpsc::error::TrySendError::Full(t)) = queue.try_send(t) {
            tracing::warn!(user = %t.user, "presence push queue full: a change is not pushed");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Edges: conn and beat
// ---------------------------------------------------------------------------------------

/// Takes conn and beat requests off the bus and hands each to its node's lane; after
/// `shutdown` the lanes answer what they were given, then stop.
async fn serve_edges(
    shared: Arc<Shared>,
    mut conns: Subscription,
    mut beats: Subscription,
    shutdown: CancellationToken,
) {
    let mut lanes = Vec::with_capacity(EDGE_LANES);
    let mut running = JoinSet::new();
    for _ in 0..EDGE_LANES {
        let (tx, mut rx) = mpsc::channel::<EdgeJob>(LANE_QUEUE);
        lanes.push(tx);
        let shared = shared.clone();
        running.spawn(async move {
            while let Some(job) = rx.recv().await {
                handle_edge(&shared, job).await;
            }
        });
    }
    loop {
        // Unbiased: a storm of conns must not starve the beats (nor the reverse).
        let (event, is_conn) = tokio::select! {
            () = shutdown.cancelled() => break,
            ev = conns.next() => (ev, true),
            ev = beats.next() => (ev, false),
        };
        let msg = match event {
            Some(BusEvent::Message(msg)) => msg,
            Some(BusEvent::Lagged) => {
                // Dropped requests time out at their edges, which retry.
                tracing::warn!(is_conn, "presence edge subscription lagged");
                continue;
            }
            None => {
                tracing::warn!(is_conn, "presence edge subscription ended");
                break;
            }
        };
        let request = if is_conn {
            bus::PresenceConn::decode(msg.payload).map(EdgeRequest::Conn)
        } else {
            bus::PresenceBeat::decode(msg.payload).map(EdgeRequest::Beat)
        };
        let request = match request {
            Ok(r) => r,
            Err(_) => {
                let ack = ack_error(ErrorCode::BadFrame, "undecodable presence request");
                reply(&shared, msg.reply.as_ref(), ack.encode_to_vec()).await;
                continue;
            }
        };
        let node = match &request {
            EdgeRequest::Conn(c) => c.node.as_str(),
            EdgeRequest::Beat(b) => b.node.as_str(),
        };
        let lane = lane_of(node, lanes.len());
        let job = EdgeJob {
            request,
            reply: msg.reply,
        };
        // `lane_of` is below `lanes.len()` and a lane runs while its sender lives, so
        // neither failure happens; answer rather than drop if one did.
        let refused = match lanes.get(lane) {
            Some(queue) => queue.send(job).await.err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            let ack = ack_error(ErrorCode::Unavailable, "presence service stopping; retry");
            reply(&shared, job.reply.as_ref(), ack.encode_to_vec()).await;
        }
    }
    drop(lanes);
    while let Some(done) = running.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a presence lane failed");
        }
    }
}

async fn handle_edge(shared: &Shared, job: EdgeJob) {
    let (ack, transitions) = match job.request {
        EdgeRequest::Conn(c) => conn(shared, c).await,
        EdgeRequest::Beat(b) => beat(shared, b).await,
    };
    enqueue(shared, transitions);
    reply(shared, job.reply.as_ref(), ack.encode_to_vec()).await;
}

async fn conn(shared: &Shared, c: bus::PresenceConn) -> (bus::PresenceAck, Vec<Transition>) {
    let Ok(user) = UserId::new(c.user_id) else {
        return (
            ack_error(ErrorCode::InvalidArgument, "user_id missing"),
            vec![],
        );
    };
    let done = if c.online {
        shared.store.online(&c.node, user).await
    } else {
        shared
            .store
            .offline(&c.node, user, edge_time(c.at_ms))
            .await
    };
    match done {
        Ok(t) => (bus::PresenceAck::default(), t.into_iter().collect()),
        Err(e) => (ack_of(&e), vec![]),
    }
}

async fn beat(shared: &Shared, b: bus::PresenceBeat) -> (bus::PresenceAck, Vec<Transition>) {
    let store = &shared.store;
    let ttl = Duration::from_millis(u64::from(b.ttl_ms));
    let done = if b.leave {
        store
            .leave(&b.node, now_ms())
            .await
            .map(|t| (bus::PresenceAck::default(), t))
    } else if b.sync {
        if b.users.contains(&0) {
            return (
                ack_error(ErrorCode::InvalidArgument, "user id 0 in users"),
                vec![],
            );
        }
        let users: Vec<UserId> = b.users.iter().map(|&u| UserId(u)).collect();
        store
            .sync(&b.node, ttl, &users, now_ms())
            .await
            .map(|t| (bus::PresenceAck::default(), t))
    } else {
        store.beat(&b.node, ttl).await.map(|beat| {
            let ack = bus::PresenceAck {
                joined: beat.joined,
                ..Default::default()
            };
            (ack, beat.transitions)
        })
    };
    done.unwrap_or_else(|e| (ack_of(&e), vec![]))
}

// ---------------------------------------------------------------------------------------
// The reaper
// ---------------------------------------------------------------------------------------

async fn reaper(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.reap_interval.max(MIN_REAP_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for _ in 0..REAP_ROUNDS {
            match shared.store.reap().await {
                Ok(t) if t.is_empty() => break,
                Ok(t) => enqueue(&shared, t),
                Err(e) => {
                    tracing::warn!(error = %e, "presence reap failed");
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pushes
// ---------------------------------------------------------------------------------------

async fn push_lane(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Transition>,
    shutdown: CancellationToken,
) {
    loop {
        let t = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            t = queue.recv() => match t {
                Some(t) => t,
                None => break,
            },
        };
        push(&shared, t).await;
    }
}

/// What `reader` may see of `who`'s presence: (online, last seen).
fn visibility(who: &AudienceInfo, reader: UserId) -> (bool, bool) {
    (
        who.may_see(Item::Online, reader),
        who.may_see(Item::LastSeen, reader),
    )
}

fn encode_push(p: v1::UserPresence) -> Bytes {
    let frame = v1::ServerFrame {
        id: 0,
        body: Some(server_frame::Body::Presence(p)),
    };
    let push = bus::UserPush {
        only_device: 0,
        body: Some(bus::user_push::Body::Frame(Bytes::from(
            frame.encode_to_vec(),
        ))),
        skip_device: 0,
        created_at_ms: 0,
    };
    Bytes::from(push.encode_to_vec())
}

/// Pushes one transition to every subscriber of its user who may see it. Each distinct
/// frame (online; offline with last seen; offline without) is encoded once.
async fn push(shared: &Shared, t: Transition) {
    let subscribers = match shared.store.subscribers(t.user).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, user = %t.user, "presence subscribers unavailable: change not pushed");
            return;
        }
    };
    if subscribers.iter().all(|&s| s == t.user) {
        return;
    }
    let who = match shared.audiences.get(t.user).await {
        Ok(a) => a,
        Err(e) => {
            // Without the settings nothing may be shown: fail closed.
            tracing::warn!(error = ?e, user = %t.user, "audience unavailable: change not pushed");
            return;
        }
    };
    let user_id = t.user.get();
    let (mut online, mut with_seen, mut without_seen) = (None, None, None);
    for reader in subscribers {
        if reader == t.user {
            continue;
        }
        let (sees_online, sees_last_seen) = visibility(&who, reader);
        let payload = if t.online {
            if !sees_online {
                continue;
            }
            online.get_or_insert_with(|| {
                encode_push(v1::UserPresence {
                    user_id,
                    state: v1::PresenceState::Online as i32,
                    last_seen_ms: 0,
                })
            })
        } else if sees_last_seen {
            with_seen.get_or_insert_with(|| {
                encode_push(v1::UserPresence {
                    user_id,
                    state: v1::PresenceState::Offline as i32,
                    last_seen_ms: t.last_seen_ms,
                })
            })
        } else if sees_online {
            without_seen.get_or_insert_with(|| {
                encode_push(v1::UserPresence {
                    user_id,
                    state: v1::PresenceState::Offline as i32,
                    last_seen_ms: 0,
                })
            })
        } else {
            continue;
        };
        if let Err(e) = shared
            .bus
            .publish(&Subject::user(reader), payload.clone())
            .await
        {
            // Best effort: the device's next subscribe brings a snapshot.
            tracing::debug!(error = %e, %reader, "presence push not published");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Privacy changes
// ---------------------------------------------------------------------------------------

/// Serves `Subject::people_changed()`: when a user's privacy settings, contacts or blocks
/// change, every subscriber of theirs gets their presence again as they may see it now
/// (`UNSPECIFIED` for one who no longer may), so a block or a stricter setting takes
/// effect at once instead of at the next renewal. Best effort, like every push.
async fn serve_changes(
    shared: Arc<Shared>,
    mut changes: Subscription,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ev = changes.next() => ev,
        };
        match event {
            Some(BusEvent::Message(msg)) => {
                let Ok(c) = bus::PeopleChanged::decode(msg.payload) else {
                    tracing::warn!("undecodable PeopleChanged");
                    continue;
                };
                let Ok(user) = UserId::new(c.user_id) else {
                    continue;
                };
                repush(&shared, user).await;
            }
            Some(BusEvent::Lagged) => {
                tracing::warn!("people changes lagged: some presence may stay stale until renewed");
            }
            None => break,
        }
    }
}

async fn repush(shared: &Shared, user: UserId) {
    let subscribers = match shared.store.subscribers(user).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, %user, "presence subscribers unavailable");
            return;
        }
    };
    if subscribers.iter().all(|&s| s == user) {
        return;
    }
    // Ask afresh: this change is what the cache would otherwise serve stale.
    shared.audiences.forget(user);
    let (who, now) = match tokio::try_join!(
        async {
            shared
                .audiences
                .get(user)
                .await
                .map_err(|e| format!("{e:?}"))
        },
        async { shared.store.get(&[user]).await.map_err(|e| e.to_string()) },
    ) {
        Ok((who, now)) => (who, now),
        Err(e) => {
            tracing::warn!(error = %e, %user, "presence not re-pushed after a privacy change");
            return;
        }
    };
    let Some(now) = now.first() else { return };
    let mut encoded: Vec<(v1::UserPresence, Bytes)> = Vec::new();
    for reader in subscribers {
        if reader == user {
            continue;
        }
        let p = visible(now, Some(&who), reader);
        let payload = match encoded.iter().find(|(q, _)| *q == p) {
            Some((_, b)) => b.clone(),
            None => {
                let b = encode_push(p);
                encoded.push((p, b.clone()));
                b
            }
        };
        if let Err(e) = shared.bus.publish(&Subject::user(reader), payload).await {
            tracing::debug!(error = %e, %reader, "presence push not published");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Subscribe queries
// ---------------------------------------------------------------------------------------

async fn serve_queries(
    shared: Arc<Shared>,
    mut queries: Subscription,
    shutdown: CancellationToken,
) {
    let unstarted = natter_bus::serve_requests(
        "presence.subscribe",
        &mut queries,
        MAX_CONCURRENT_QUERIES,
        &shutdown,
        |msg| {
            let shared = shared.clone();
            async move { answer_query(&shared, msg).await }
        },
    )
    .await;
    if let Some(msg) = unstarted {
        let reply_msg = bus::PresenceReply {
            snapshot: None,
            error: Some(error(
                ErrorCode::Unavailable,
                "presence service stopping; retry",
            )),
        };
        reply(&shared, msg.reply.as_ref(), reply_msg.encode_to_vec()).await;
    }
}

/// Answers the admin API until `shutdown`.
async fn serve_admin(shared: Arc<Shared>, mut admins: Subscription, shutdown: CancellationToken) {
    // A request taken but not started at shutdown times out at its sender, which retries.
    let _unstarted = natter_bus::serve_requests(
        "presence.admin",
        &mut admins,
        MAX_CONCURRENT_QUERIES,
        &shutdown,
        |msg| {
            let shared = shared.clone();
            async move {
                let answer = admin(&shared, msg.payload.clone()).await;
                reply(&shared, msg.reply.as_ref(), answer.encode_to_vec()).await;
            }
        },
    )
    .await;
}

/// `natter.admin.presence`: whether the user is online and when they were last seen,
/// as the store has it, whatever their privacy settings (the admin API is no reader).
/// While online, `last_seen_ms` is the previous time (see [`crate::Presence`]); 0 if
/// never seen.
async fn admin(shared: &Shared, payload: Bytes) -> bus::AdminPresenceReply {
    let result = async {
        let req = bus::AdminPresenceRequest::decode(payload)
            .map_err(|_| error(ErrorCode::BadFrame, "undecodable AdminPresenceRequest"))?;
        let user = UserId::new(req.user_id)
            .map_err(|_| error(ErrorCode::InvalidArgument, "user_id missing"))?;
        let found = shared
            .store
            .get(&[user])
            .await
            .map_err(|e| store_error(&e))?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| error(ErrorCode::Internal, "presence store answered nothing"))
    }
    .await;
    match result {
        Ok(p) => bus::AdminPresenceReply {
            error: None,
            online: p.online,
            last_seen_ms: p.last_seen_ms,
        },
        Err(e) => bus::AdminPresenceReply {
            error: Some(e),
            ..Default::default()
        },
    }
}

async fn answer_query(shared: &Shared, msg: BusMessage) {
    let answer = match query(shared, msg.payload.clone()).await {
        Ok(snapshot) => bus::PresenceReply {
            snapshot: Some(snapshot),
            error: None,
        },
        Err(e) => bus::PresenceReply {
            snapshot: None,
            error: Some(e),
        },
    };
    reply(shared, msg.reply.as_ref(), answer.encode_to_vec()).await;
}

/// What `reader` may see of one user's presence. `who` is `None` for the reader's own.
fn visible(p: &crate::Presence, who: Option<&AudienceInfo>, reader: UserId) -> v1::UserPresence {
    let (sees_online, sees_last_seen) = who.map_or((true, true), |w| visibility(w, reader));
    let (state, last_seen_ms) = if p.online {
        if sees_online {
            (v1::PresenceState::Online, 0)
        } else if sees_last_seen {
            // Online hidden, last seen not: what they saw before the user came online,
            // so the snapshot does not give away that they are online now.
            (v1::PresenceState::Offline, p.last_seen_ms)
        } else {
            (v1::PresenceState::Unspecified, 0)
        }
    } else if sees_last_seen {
        (v1::PresenceState::Offline, p.last_seen_ms)
    } else if sees_online {
        (v1::PresenceState::Offline, 0)
    } else {
        (v1::PresenceState::Unspecified, 0)
    };
    v1::UserPresence {
        user_id: p.user.get(),
        state: state as i32,
        last_seen_ms,
    }
}

async fn query(shared: &Shared, payload: Bytes) -> Result<v1::PresenceSnapshot, v1::Error> {
    let q = bus::PresenceQuery::decode(payload)
        .map_err(|_| error(ErrorCode::BadFrame, "undecodable PresenceQuery"))?;
    let caller = q
        .caller
        .and_then(|c| UserId::new(c.user_id).ok())
        .ok_or_else(|| error(ErrorCode::InvalidArgument, "caller missing"))?;
    let request = q
        .request
        .ok_or_else(|| error(ErrorCode::InvalidArgument, "presence request missing"))?;
    let max = shared.config.max_per_request;
    if request.user_ids.len() > max {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!("at most {max} user ids per presence request"),
        ));
    }
    if request.user_ids.contains(&0) {
        return Err(error(ErrorCode::InvalidArgument, "user id 0 in user_ids"));
    }
    // Each id once, in the order asked.
    let mut seen = HashSet::with_capacity(request.user_ids.len());
    let targets: Vec<UserId> = request
        .user_ids
        .iter()
        .filter(|&&u| seen.insert(u))
        .map(|&u| UserId(u))
        .collect();
    let store = &shared.store;
    if request.unsubscribe {
        store
            .unsubscribe(caller, &targets)
            .await
            .map_err(|e| store_error(&e))?;
        return Ok(v1::PresenceSnapshot::default());
    }
    // The settings first (the slow part, and nothing changes if they fail), then the
    // subscription, then presence read as late as possible: a change after the read is
    // pushed after it.
    let audiences: Vec<Option<Arc<AudienceInfo>>> = stream::iter(targets.iter().copied())
        .map(|target| async move {
            if target == caller {
                Ok(None)
            } else {
                shared.audiences.get(target).await.map(Some)
            }
        })
        .buffered(AUDIENCE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, v1::Error>>()?;
    let ttl = shared.config.subscription_ttl;
    let limit = shared.config.max_subscriptions;
    store
        .subscribe(caller, &targets, ttl, limit)
        .await
        .map_err(|e| match e {
            PresenceError::Invalid { what, .. } if what == SUBSCRIPTION_LIMIT => error(
                ErrorCode::LimitReached,
                format!(
                    "at most {limit} presence subscriptions at once: unsubscribe from some first"
                ),
            ),
            e => store_error(&e),
        })?;
    let presences = store.get(&targets).await.map_err(|e| store_error(&e))?;
    if presences.len() != targets.len() {
        tracing::error!("presence store answered get with the wrong number of users");
        return Err(error(ErrorCode::Internal, "presence store failure"));
    }
    let users = presences
        .iter()
        .zip(&audiences)
        .map(|(p, who)| visible(p, who.as_deref(), caller))
        .collect();
    Ok(v1::PresenceSnapshot {
        users,
        subscription_ttl_s: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use natter_people::{Audience as Who, Privacy};

    use super::*;
    use crate::Presence;

    fn who(online: Who, last_seen: Who, contacts: &[u64], blocked: &[u64]) -> AudienceInfo {
        AudienceInfo {
            user: UserId(1),
            privacy: Privacy {
                online,
                last_seen,
                ..Privacy::default()
            },
            contacts: contacts.iter().map(|&u| UserId(u)).collect(),
            blocked: blocked.iter().map(|&u| UserId(u)).collect(),
        }
    }

    fn state(p: &v1::UserPresence) -> (v1::PresenceState, u64) {
        (
            v1::PresenceState::try_from(p.state).unwrap_or(v1::PresenceState::Unspecified),
            p.last_seen_ms,
        )
    }

    #[test]
    fn snapshots_follow_the_settings() {
        use v1::PresenceState::{Offline, Online, Unspecified};
        // Online now; last seen at 300 before that.
        let on = Presence {
            user: UserId(1),
            online: true,
            last_seen_ms: 300,
        };
        let off = Presence {
            user: UserId(1),
            online: false,
            last_seen_ms: 500,
        };
        let a = who(Who::Everyone, Who::Contacts, &[2], &[4]);
        // A contact sees everything, a stranger online and offline without the time.
        assert_eq!(state(&visible(&on, Some(&a), UserId(2))), (Online, 0));
        assert_eq!(state(&visible(&off, Some(&a), UserId(2))), (Offline, 500));
        assert_eq!(state(&visible(&on, Some(&a), UserId(3))), (Online, 0));
        assert_eq!(state(&visible(&off, Some(&a), UserId(3))), (Offline, 0));
        // Blocked: nothing.
        assert_eq!(state(&visible(&on, Some(&a), UserId(4))), (Unspecified, 0));
        assert_eq!(state(&visible(&off, Some(&a), UserId(4))), (Unspecified, 0));
        // Nobody sees anything; the user sees their own.
        let n = who(Who::Nobody, Who::Nobody, &[2], &[]);
        assert_eq!(state(&visible(&on, Some(&n), UserId(2))), (Unspecified, 0));
        assert_eq!(state(&visible(&off, Some(&n), UserId(2))), (Unspecified, 0));
        assert_eq!(state(&visible(&off, None, UserId(1))), (Offline, 500));
        // Last seen without online.
        let l = who(Who::Nobody, Who::Everyone, &[], &[]);
        assert_eq!(state(&visible(&off, Some(&l), UserId(2))), (Offline, 500));
        // Online but hidden: they see what they saw before, not a change.
        assert_eq!(state(&visible(&on, Some(&l), UserId(2))), (Offline, 300));
    }

    #[test]
    fn edge_times_are_bounded() {
        let now = now_ms();
        assert!(edge_time(0) >= now);
        assert_eq!(edge_time(now - 5_000), now - 5_000);
        assert!(edge_time(u64::MAX) < now + MAX_CLOCK_SKEW_MS);
    }

    #[test]
    fn lanes_are_in_range() {
        for n in ["a", "b", "edge-7", ""] {
            assert!(lane_of(n, EDGE_LANES) < EDGE_LANES);
        }
        assert_eq!(lane_of("a", 0), 0);
    }
}

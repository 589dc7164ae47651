//! The calls service on the bus: the call state machine and the SDP/ICE relay.
//!
//! One task (the *actor*) owns every call and handles one command at a time, so a call
//! never sees two transitions at once. Requests come from edges on
//! `Subject::call_request()` (a device's `CallRequest` with the caller the edge
//! verified) and are taken in order per device by one of [`LANES`] lanes: a `CallStart`
//! is checked there (does the callee exist, is either side blocking, is the caller in
//! the group) before it reaches the actor, and the ICE candidates the caller trickles
//! right after it queue behind it. What a transition tells devices is pushed on
//! `Subject::user(..)` as `ServerFrame{call_event}`, addressed to one device
//! (`UserPush.only_device`) or to every device of a user but one (`skip_device`).
//!
//! Calls live in this process's memory: run one calls instance (docs/architecture.md
//! says why and what a restart costs).

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt as _;
use natter_bus::{Bus, BusError, BusEvent, BusMessage};
use natter_people::Audiences;
use natter_proto::{
    ConversationId, DeviceId, ErrorCode, GroupId, Subject, UserId, bus, error,
    ids::ConversationKind,
    now_ms,
    v1::{self, call_request::Op, server_frame},
};
use natter_sessions::{Users, directory::SessionDirectory};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Queue group of the calls service's request subscription.
pub const QUEUE_GROUP: &str = "calls";
/// Lanes taking requests in order per device.
const LANES: usize = 32;
/// Requests queued per lane.
const LANE_QUEUE: usize = 256;
/// Commands queued for the actor.
const ACTOR_QUEUE: usize = 4096;
/// Requests buffered by the bus subscription.
const SUB_CAPACITY: usize = 8192;
/// Longest call id.
const MAX_CALL_ID: usize = 64;
/// Shortest call id.
const MIN_CALL_ID: usize = 8;
/// Longest ICE candidate line (and its mid and ufrag).
const MAX_CANDIDATE_BYTES: usize = 1024;
/// How long an ended call is remembered (a retried frame gets its real outcome).
const ENDED_KEPT: Duration = Duration::from_secs(600);
/// Ended calls remembered at most (the oldest go first past this).
const MAX_ENDED: usize = 100_000;
/// Attempts to write a call's history entry.
const LOG_ATTEMPTS: u32 = 5;

/// Settings of the calls service.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a call rings before it ends with NO_ANSWER.
    pub ring_timeout: Duration,
    /// How long a device in a call may stay disconnected before the call ends for it
    /// (DROPPED).
    pub drop_grace: Duration,
    /// Devices in one call at most (a group call is a full mesh: each device sends its
    /// media to every other, so this stays small).
    pub max_participants: usize,
    /// Members a group may have for a group call (each of them rings).
    pub max_group_ring: usize,
    /// ICE candidates held per device before the call is answered.
    pub max_pending_candidates: usize,
    /// Longest SDP.
    pub max_sdp_bytes: usize,
    /// How long a request to another service may take.
    pub request_timeout: Duration,
    /// How often the devices in calls are looked up in the session directory (when
    /// the service has one), so a device whose edge died without a word drops out.
    pub liveness_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_timeout: Duration::from_secs(45),
            drop_grace: Duration::from_secs(20),
            max_participants: 8,
            max_group_ring: 256,
            max_pending_candidates: 64,
            max_sdp_bytes: 32 * 1024,
            request_timeout: Duration::from_secs(5),
            liveness_interval: Duration::from_secs(5),
        }
    }
}

type Device = (UserId, DeviceId);

/// Who a checked `CallStart` rings.
#[derive(Debug)]
enum Target {
    /// A one-to-one call. `silent`: the callee blocked the caller, so nothing rings and
    /// the caller hears no answer (as in WhatsApp, the block is not revealed).
    Direct {
        conversation: ConversationId,
        callee: UserId,
        silent: bool,
    },
    /// A group call: the members but the caller.
    Group {
        conversation: ConversationId,
        members: Vec<UserId>,
    },
}

enum Cmd {
    Request {
        caller: Device,
        op: Op,
        target: Option<Target>,
        reply: oneshot::Sender<Result<v1::CallInfo, v1::Error>>,
    },
    Device(bus::CallDevice),
    RingTimeout {
        call: String,
        generation: u64,
    },
    DropTimeout {
        device: Device,
        generation: u64,
    },
    /// The devices in calls, for a liveness sweep.
    InCall(oneshot::Sender<Vec<Device>>),
    /// What a liveness sweep found in the session directory.
    Liveness {
        present: Vec<Device>,
        missing: Vec<Device>,
    },
    Prune,
}

/// Starts the calls service. Returns once its subjects are subscribed; the returned task
/// ends after `shutdown`.
///
/// With a session `directory` (the edges' own: in memory in `natter serve`, Redis in a
/// cluster) the service also sweeps it every [`Config::liveness_interval`] for the
/// devices in calls: an edge that dies sends no disconnects, and its devices vanish
/// from the directory after its TTL instead.
pub async fn start(
    bus: Arc<dyn Bus>,
    audiences: Arc<Audiences>,
    directory: Option<Arc<dyn SessionDirectory>>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let mut requests = bus
        .queue_subscribe(&Subject::call_request(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let mut devices = bus
        .queue_subscribe(&Subject::call_device(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let (actor_tx, actor_rx) = mpsc::channel(ACTOR_QUEUE);
    let checker = Arc::new(Checker {
        users: Users::new(bus.clone(), config.request_timeout),
        audiences,
        bus: bus.clone(),
        timeout: config.request_timeout,
        max_group_ring: config.max_group_ring,
    });
    let mut lanes = Vec::with_capacity(LANES);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        lanes.push(tx);
        tasks.spawn(lane(rx, actor_tx.clone(), checker.clone(), bus.clone()));
    }
    let liveness_interval = config.liveness_interval.max(Duration::from_millis(100));
    let actor = Actor {
        bus: bus.clone(),
        config,
        tx: actor_tx.clone(),
        calls: HashMap::new(),
        ended: HashMap::new(),
        in_call: HashMap::new(),
        devices: HashMap::new(),
        generation: 0,
    };
    tasks.spawn(actor.run(actor_rx));
    if let Some(directory) = directory {
        tasks.spawn(sweep(directory, actor_tx.clone(), liveness_interval));
    }
    let prune_tx = actor_tx.clone();
    Ok(tokio::spawn(async move {
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = prune.tick() => {
                    let _ = prune_tx.try_send(Cmd::Prune);
                }
                event = requests.next() => match event {
                    None => break,
                    Some(BusEvent::Lagged) => {
                        tracing::warn!("calls: request subscription lagged; some requests time out");
                    }
                    Some(BusEvent::Message(msg)) => {
                        let Ok(command) = bus::CallCommand::decode(msg.payload.clone()) else {
                            answer(&*bus, &msg, Err(error(ErrorCode::BadFrame, "undecodable CallCommand"))).await;
                            continue;
                        };
                        let device = command.caller.map_or(0, |c| c.device_id);
                        let mut h = DefaultHasher::new();
                        device.hash(&mut h);
                        let lane = (h.finish() % LANES as u64) as usize;
                        if lanes[lane].send((msg, command)).await.is_err() {
                            break;
                        }
                    }
                },
                event = devices.next() => match event {
                    None => break,
                    Some(BusEvent::Lagged) => {
                        tracing::warn!("calls: device events lagged; a dropped device may stay in its call until its peer hangs up");
                    }
                    Some(BusEvent::Message(msg)) => {
                        if let Ok(d) = bus::CallDevice::decode(msg.payload)
                            && actor_tx.send(Cmd::Device(d)).await.is_err()
                        {
                            break;
                        }
                    }
                },
            }
        }
        drop(lanes);
        drop(actor_tx);
        drop(prune_tx);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }))
}

/// Directory lookups one sweep runs at once.
const SWEEP_CONCURRENCY: usize = 16;

/// Looks the devices in calls up in the session directory, every `every`.
async fn sweep(directory: Arc<dyn SessionDirectory>, actor: mpsc::Sender<Cmd>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (tx, rx) = oneshot::channel();
        if actor.send(Cmd::InCall(tx)).await.is_err() {
            return;
        }
        let Ok(devices) = rx.await else {
            return;
        };
        let mut by_user: HashMap<UserId, Vec<DeviceId>> = HashMap::new();
        for (user, device) in devices {
            by_user.entry(user).or_default().push(device);
        }
        let found: Vec<_> = futures::stream::iter(by_user)
            .map(|(user, devices)| {
                let directory = directory.clone();
                async move { (user, devices, directory.devices(user).await) }
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for (user, devices, result) in found {
            match result {
                // No answer is no evidence either way.
                Err(e) => tracing::debug!(error = %e, %user, "calls: directory lookup failed"),
                Ok(locations) => {
                    for device in devices {
                        if locations.iter().any(|l| l.device == device) {
                            present.push((user, device));
                        } else {
                            missing.push((user, device));
                        }
                    }
                }
            }
        }
        if actor
            .send(Cmd::Liveness { present, missing })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn answer(bus: &dyn Bus, msg: &BusMessage, result: Result<v1::CallInfo, v1::Error>) {
    let reply = match result {
        Ok(call) => bus::CallReply {
            result: Some(v1::CallResult { call: Some(call) }),
            error: None,
        },
        Err(e) => bus::CallReply {
            result: None,
            error: Some(e),
        },
    };
    if let Err(e) = natter_bus::reply(bus, msg, Bytes::from(reply.encode_to_vec())).await {
        tracing::debug!(error = %e, "calls: reply not sent");
    }
}

/// Takes one device's requests in order: checks a start, hands each to the actor and
/// waits for its outcome before the next.
async fn lane(
    mut rx: mpsc::Receiver<(BusMessage, bus::CallCommand)>,
    actor: mpsc::Sender<Cmd>,
    checker: Arc<Checker>,
    bus: Arc<dyn Bus>,
) {
    while let Some((msg, command)) = rx.recv().await {
        let result = handle(&actor, &checker, command).await;
        answer(&*bus, &msg, result).await;
    }
}

async fn handle(
    actor: &mpsc::Sender<Cmd>,
    checker: &Checker,
    command: bus::CallCommand,
) -> Result<v1::CallInfo, v1::Error> {
    let caller = match command.caller {
        Some(c) if c.user_id != 0 && c.device_id != 0 => (UserId(c.user_id), DeviceId(c.device_id)),
        _ => {
            return Err(error(
                ErrorCode::InvalidArgument,
                "request without a caller",
            ));
        }
    };
    let op = command
        .request
        .and_then(|r| r.op)
        .ok_or_else(|| error(ErrorCode::InvalidArgument, "CallRequest needs an op"))?;
    let target = match &op {
        Op::Start(start) => Some(checker.check_start(caller.0, start).await?),
        _ => None,
    };
    let (reply, outcome) = oneshot::channel();
    actor
        .send(Cmd::Request {
            caller,
            op,
            target,
            reply,
        })
        .await
        .map_err(|_| unavailable())?;
    outcome.await.map_err(|_| unavailable())?
}

fn unavailable() -> v1::Error {
    error(ErrorCode::Unavailable, "calls service shutting down, retry")
}

/// The checks of a `CallStart` that need other services.
struct Checker {
    users: Users,
    audiences: Arc<Audiences>,
    bus: Arc<dyn Bus>,
    timeout: Duration,
    max_group_ring: usize,
}

impl Checker {
    async fn check_start(
        &self,
        caller: UserId,
        start: &v1::CallStart,
    ) -> Result<Target, v1::Error> {
        let conversation = if start.to_user != 0 {
            let to = UserId::new(start.to_user)
                .map_err(|_| error(ErrorCode::InvalidArgument, "to_user is not a user id"))?;
            if to == caller {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "you cannot call yourself",
                ));
            }
            ConversationId::direct(caller, to)
                .map_err(|_| error(ErrorCode::InvalidArgument, "to_user is not a user id"))?
        } else {
            start
                .conversation_id
                .parse::<ConversationId>()
                .map_err(|_| {
                    error(
                        ErrorCode::InvalidArgument,
                        "conversation_id is not a conversation (or set to_user)",
                    )
                })?
        };
        match conversation.kind() {
            ConversationKind::Direct(a, b) => {
                let callee = if a == caller {
                    b
                } else if b == caller {
                    a
                } else {
                    return Err(error(
                        ErrorCode::Forbidden,
                        "you are not in this conversation",
                    ));
                };
                if callee == caller {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "you cannot call yourself",
                    ));
                }
                match self.users.check_many([callee]).await.remove(&callee) {
                    Some(Ok(true)) => {}
                    Some(Ok(false)) => return Err(error(ErrorCode::NotFound, "no such user")),
                    Some(Err(e)) => return Err(e),
                    None => return Err(error(ErrorCode::Internal, "internal error")),
                }
                let (mine, theirs) =
                    futures::join!(self.audiences.get(caller), self.audiences.get(callee));
                if mine?.blocks(callee) {
                    return Err(error(
                        ErrorCode::Forbidden,
                        "you blocked this user: unblock them to call",
                    ));
                }
                Ok(Target::Direct {
                    conversation,
                    callee,
                    silent: theirs?.blocks(caller),
                })
            }
            ConversationKind::Group(group) => {
                let members = self.group_members(group).await?;
                if !members.contains(&caller) {
                    return Err(error(
                        ErrorCode::Forbidden,
                        "you are not a member of this group",
                    ));
                }
                if members.len() > self.max_group_ring + 1 {
                    return Err(error(
                        ErrorCode::LimitReached,
                        format!(
                            "group calls ring at most {} members; this group is larger",
                            self.max_group_ring
                        ),
                    ));
                }
                Ok(Target::Group {
                    conversation,
                    members: members.into_iter().filter(|&u| u != caller).collect(),
                })
            }
        }
    }

    async fn group_members(&self, group: GroupId) -> Result<Vec<UserId>, v1::Error> {
        let request = bus::GroupStateRequest {
            group_id: group.get(),
        };
        let reply = self
            .bus
            .request(
                &Subject::group_state(),
                Bytes::from(request.encode_to_vec()),
                self.timeout,
            )
            .await
            .map_err(|_| error(ErrorCode::Unavailable, "groups service unavailable, retry"))?;
        let reply = bus::GroupStateReply::decode(reply)
            .map_err(|_| error(ErrorCode::Internal, "internal error"))?;
        if let Some(e) = reply.error {
            return Err(e);
        }
        match reply.state {
            Some(state) if !state.deleted => {
                Ok(state.members.iter().map(|m| UserId(m.user_id)).collect())
            }
            _ => Err(error(ErrorCode::NotFound, "no such group")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ringing,
    Active,
}

struct Call {
    id: String,
    conversation: ConversationId,
    group: bool,
    caller: Device,
    media: v1::CallMedia,
    state: State,
    started_at_ms: u64,
    answered_at_ms: u64,
    /// Devices in the call, the caller's first.
    participants: Vec<Device>,
    /// Users whose devices ring (not yet answered, declined or timed out).
    ringing: HashSet<UserId>,
    /// Group calls: who may join (the members when it started, but the caller).
    members: HashSet<UserId>,
    /// One-to-one: the caller's offer, handed to every ringing device.
    offer: Option<v1::SessionDescription>,
    /// Candidates sent before the answer, per device, handed over when it is answered.
    pending: HashMap<Device, Vec<v1::IceCandidate>>,
    max_seen: u32,
    ring_generation: u64,
}

impl Call {
    fn info(&self) -> v1::CallInfo {
        v1::CallInfo {
            call_id: self.id.clone(),
            conversation_id: self.conversation.as_str().to_owned(),
            caller_user: self.caller.0.get(),
            caller_device: self.caller.1.get(),
            media: self.media as i32,
            state: match self.state {
                State::Ringing => v1::CallState::Ringing,
                State::Active => v1::CallState::Active,
            } as i32,
            end_reason: 0,
            started_at_ms: self.started_at_ms,
            answered_at_ms: self.answered_at_ms,
            duration_ms: 0,
            group: self.group,
            participants: self.participants.iter().map(|&d| participant(d)).collect(),
        }
    }

    fn has(&self, device: Device) -> bool {
        self.participants.contains(&device)
    }
}

fn participant((user, device): Device) -> v1::CallParticipant {
    v1::CallParticipant {
        user_id: user.get(),
        device_id: device.get(),
    }
}

/// A device that is in a call (or placing one), as the actor tracks it.
struct DeviceState {
    call: String,
    /// The connection the device was last seen connect on (0: unknown).
    connection: u64,
    /// Set while the device is disconnected: which drop timer is current.
    lost: Option<u64>,
    /// Liveness sweeps in a row that did not find the device in the session directory.
    misses: u8,
    /// `lost` was set by a sweep (so a sweep that finds the device again clears it).
    swept: bool,
}

struct Actor {
    bus: Arc<dyn Bus>,
    config: Config,
    tx: mpsc::Sender<Cmd>,
    calls: HashMap<String, Call>,
    /// Ended calls, for retried frames: (their last info, by which device it started,
    /// when it ended).
    ended: HashMap<String, (v1::CallInfo, Instant)>,
    /// The call each user is in (any of their devices).
    in_call: HashMap<UserId, String>,
    devices: HashMap<Device, DeviceState>,
    generation: u64,
}

/// A push for one device or for every device of a user but one.
enum To {
    Device(Device),
    UserBut(UserId, Option<DeviceId>),
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Request {
                    caller,
                    op,
                    target,
                    reply,
                } => {
                    let result = self.request(caller, op, target).await;
                    let _ = reply.send(result);
                }
                Cmd::Device(d) => self.device_event(d).await,
                Cmd::RingTimeout { call, generation } => self.ring_timeout(call, generation).await,
                Cmd::DropTimeout { device, generation } => {
                    self.drop_timeout(device, generation).await
                }
                Cmd::InCall(tx) => {
                    let _ = tx.send(self.devices.keys().copied().collect());
                }
                Cmd::Liveness { present, missing } => self.liveness(present, missing).await,
                Cmd::Prune => {
                    let now = Instant::now();
                    self.ended
                        .retain(|_, (_, at)| now.duration_since(*at) < ENDED_KEPT);
                }
            }
        }
    }

    /// Keeps the newer half of the ended calls (a user starting and cancelling calls in
    /// a loop must not grow the map without bound before the next prune).
    fn forget_oldest_ended(&mut self) {
        let mut times: Vec<Instant> = self.ended.values().map(|(_, at)| *at).collect();
        let middle = times.len() / 2;
        let (_, cut, _) = times.select_nth_unstable(middle);
        let cut = *cut;
        self.ended.retain(|_, (_, at)| *at >= cut);
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn after(&self, delay: Duration, cmd: Cmd) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(cmd).await;
        });
    }

    async fn request(
        &mut self,
        caller: Device,
        op: Op,
        target: Option<Target>,
    ) -> Result<v1::CallInfo, v1::Error> {
        let id = match &op {
            Op::Start(s) => &s.call_id,
            Op::Answer(a) => &a.call_id,
            Op::Decline(d) => &d.call_id,
            Op::Hangup(h) => &h.call_id,
            Op::Signal(s) => &s.call_id,
        };
        validate_call_id(id)?;
        // Any call frame from a device that was away means it is back.
        self.device_back(caller, 0).await;
        match op {
            Op::Start(start) => match target {
                Some(target) => self.start(caller, start, target).await,
                None => Err(error(ErrorCode::Internal, "internal error")),
            },
            Op::Answer(a) => self.answer(caller, a).await,
            Op::Decline(d) => self.decline(caller, &d.call_id).await,
            Op::Hangup(h) => self.hangup(caller, &h.call_id).await,
            Op::Signal(s) => self.signal(caller, s).await,
        }
    }

    /// The call `id`, or the error for a call that ended (or never was).
    fn live(&mut self, id: &str) -> Result<&mut Call, v1::Error> {
        if let Some(call) = self.calls.get_mut(id) {
            return Ok(call);
        }
        Err(match self.ended.get(id) {
            Some((info, _)) => error(
                ErrorCode::CallEnded,
                format!("the call has ended ({})", reason_name(info.end_reason)),
            ),
            None => error(ErrorCode::CallEnded, "no such call"),
        })
    }

    async fn start(
        &mut self,
        caller: Device,
        start: v1::CallStart,
        target: Target,
    ) -> Result<v1::CallInfo, v1::Error> {
        if let Some(call) = self.calls.get(&start.call_id) {
            return if call.caller == caller {
                Ok(call.info())
            } else {
                Err(error(
                    ErrorCode::Conflict,
                    "call_id is taken: choose another",
                ))
            };
        }
        if let Some((info, _)) = self.ended.get(&start.call_id) {
            return if info.caller_user == caller.0.get() && info.caller_device == caller.1.get() {
                Ok(info.clone())
            } else {
                Err(error(
                    ErrorCode::Conflict,
                    "call_id is taken: choose another",
                ))
            };
        }
        if self.in_call.contains_key(&caller.0) {
            return Err(error(
                ErrorCode::Conflict,
                "you are in another call: hang up first",
            ));
        }
        let media = match v1::CallMedia::try_from(start.media) {
            Ok(v1::CallMedia::Unspecified) => v1::CallMedia::Voice,
            Ok(m) => m,
            Err(_) => return Err(error(ErrorCode::InvalidArgument, "unknown media")),
        };
        let (conversation, group, ringing, members, silent) = match target {
            Target::Direct {
                conversation,
                callee,
                silent,
            } => {
                let offer = start.offer.as_ref().ok_or_else(|| {
                    error(
                        ErrorCode::InvalidArgument,
                        "a one-to-one call needs the SDP offer",
                    )
                })?;
                self.check_description(offer, Some(v1::SdpType::Offer))?;
                (
                    conversation,
                    false,
                    HashSet::from([callee]),
                    HashSet::new(),
                    silent,
                )
            }
            Target::Group {
                conversation,
                members,
            } => {
                if start.offer.is_some() {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "a group call has no offer: send one to each device that joins (CallSignal)",
                    ));
                }
                let set: HashSet<UserId> = members.into_iter().collect();
                (conversation, true, set.clone(), set, false)
            }
        };
        let generation = self.next_generation();
        let mut call = Call {
            id: start.call_id.clone(),
            conversation,
            group,
            caller,
            media,
            state: State::Ringing,
            started_at_ms: now_ms(),
            answered_at_ms: 0,
            participants: vec![caller],
            ringing,
            members,
            offer: start.offer,
            pending: HashMap::new(),
            max_seen: 1,
            ring_generation: generation,
        };
        // One-to-one and the callee is in another call: busy, at once.
        if !group {
            let callee = call.ringing.iter().next().copied();
            if let Some(callee) = callee
                && self.in_call.contains_key(&callee)
            {
                call.ringing.clear();
                return Ok(self
                    .finish(call, v1::CallEndReason::Busy, Some(caller))
                    .await);
            }
        }
        self.in_call.insert(caller.0, call.id.clone());
        self.join_device(caller, &call.id);
        let ring = if silent {
            call.ringing.clear();
            Vec::new()
        } else {
            // Busy members of a group are not rung.
            call.ringing.retain(|u| !self.in_call.contains_key(u));
            call.ringing.iter().copied().collect::<Vec<_>>()
        };
        let info = call.info();
        let event = v1::CallEvent {
            r#type: v1::CallEventType::Ringing as i32,
            call: Some(info.clone()),
            from_user: caller.0.get(),
            from_device: caller.1.get(),
            description: call.offer.clone(),
            ..Default::default()
        };
        self.after(
            self.config.ring_timeout,
            Cmd::RingTimeout {
                call: call.id.clone(),
                generation,
            },
        );
        tracing::info!(
            call = %call.id,
            conversation = %call.conversation.as_str(),
            caller = %caller.0,
            media = call.media.as_str_name(),
            group = call.group,
            ringing = ring.len(),
            "call started"
        );
        self.calls.insert(call.id.clone(), call);
        for user in ring {
            self.push(To::UserBut(user, None), event.clone()).await;
        }
        // The caller's other devices learn that a call is going on.
        self.push(
            To::UserBut(caller.0, Some(caller.1)),
            v1::CallEvent {
                r#type: v1::CallEventType::Signal as i32,
                call: Some(info.clone()),
                from_user: caller.0.get(),
                from_device: caller.1.get(),
                ..Default::default()
            },
        )
        .await;
        Ok(info)
    }

    async fn answer(
        &mut self,
        device: Device,
        a: v1::CallAnswer,
    ) -> Result<v1::CallInfo, v1::Error> {
        let max = self.config.max_participants;
        let max_sdp = self.config.max_sdp_bytes;
        let busy_elsewhere = self.in_call.get(&device.0).is_some_and(|c| *c != a.call_id);
        let call = self.live(&a.call_id)?;
        if call.has(device) {
            return Ok(call.info());
        }
        if call.group {
            if !call.members.contains(&device.0) {
                return Err(error(ErrorCode::Forbidden, "you are not in this call"));
            }
            if a.answer.is_some() {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "joining a group call takes no SDP: offer to each participant with CallSignal",
                ));
            }
            if call.participants.iter().any(|p| p.0 == device.0) {
                return Err(error(
                    ErrorCode::Conflict,
                    "you are in this call on another device",
                ));
            }
            if busy_elsewhere {
                return Err(error(
                    ErrorCode::Conflict,
                    "you are in another call: hang up first",
                ));
            }
            if call.participants.len() >= max {
                return Err(error(
                    ErrorCode::LimitReached,
                    format!("the call is full ({max} participants)"),
                ));
            }
        } else {
            if !call.ringing.contains(&device.0) {
                return Err(
                    if call.state == State::Active
                        && call.participants.iter().any(|p| p.0 == device.0)
                    {
                        error(
                            ErrorCode::CallEnded,
                            "the call was answered on another device",
                        )
                    } else {
                        error(ErrorCode::Forbidden, "this call is not for you")
                    },
                );
            }
            let answer = a.answer.as_ref().ok_or_else(|| {
                error(ErrorCode::InvalidArgument, "answering needs the SDP answer")
            })?;
            check_description(max_sdp, answer, Some(v1::SdpType::Answer))?;
            if busy_elsewhere {
                return Err(error(
                    ErrorCode::Conflict,
                    "you are in another call: hang up first",
                ));
            }
        }
        let call = self.live(&a.call_id)?;
        let earlier: Vec<Device> = call.participants.clone();
        call.participants.push(device);
        call.max_seen = call.max_seen.max(call.participants.len() as u32);
        call.ringing.remove(&device.0);
        if call.state == State::Ringing {
            call.state = State::Active;
            call.answered_at_ms = now_ms();
        }
        let group = call.group;
        let info = call.info();
        // Candidates held for the answering side go to it; the answering device's own
        // go to the caller.
        let caller = call.caller;
        let to_answerer = if group {
            Vec::new()
        } else {
            call.pending.remove(&caller).unwrap_or_default()
        };
        let from_answerer = if group {
            Vec::new()
        } else {
            call.pending.remove(&device).unwrap_or_default()
        };
        if !group {
            // The other devices of the callee stop ringing; nobody else rings.
            call.ringing.clear();
            call.pending.clear();
        }
        let id = call.id.clone();
        tracing::info!(call = %id, user = %device.0, device = %device.1, "call answered");
        self.in_call.insert(device.0, id.clone());
        self.join_device(device, &id);
        let answered = v1::CallEvent {
            r#type: v1::CallEventType::Answered as i32,
            call: Some(info.clone()),
            from_user: device.0.get(),
            from_device: device.1.get(),
            description: a.answer,
            ..Default::default()
        };
        for &p in &earlier {
            self.push(To::Device(p), answered.clone()).await;
        }
        self.push(
            To::UserBut(device.0, Some(device.1)),
            ended_event(&info, v1::CallEndReason::AnsweredElsewhere),
        )
        .await;
        for candidate in from_answerer {
            self.push(
                To::Device(caller),
                signal_event(&info, device, None, Some(candidate)),
            )
            .await;
        }
        for candidate in to_answerer {
            self.push(
                To::Device(device),
                signal_event(&info, caller, None, Some(candidate)),
            )
            .await;
        }
        Ok(info)
    }

    async fn decline(&mut self, device: Device, id: &str) -> Result<v1::CallInfo, v1::Error> {
        let call = self.live(id)?;
        if !call.ringing.contains(&device.0) {
            return Err(if call.has(device) {
                error(
                    ErrorCode::InvalidArgument,
                    "you are in this call: hang up instead",
                )
            } else {
                error(ErrorCode::CallEnded, "this call does not ring for you")
            });
        }
        call.ringing.remove(&device.0);
        let info = call.info();
        self.push(
            To::UserBut(device.0, Some(device.1)),
            ended_event(&info, v1::CallEndReason::DeclinedElsewhere),
        )
        .await;
        let call = self.live(id)?;
        if !call.group || (call.ringing.is_empty() && call.participants.len() <= 1) {
            let Some(call) = self.calls.remove(id) else {
                return Err(error(ErrorCode::CallEnded, "no such call"));
            };
            return Ok(self.finish(call, v1::CallEndReason::Declined, None).await);
        }
        Ok(info)
    }

    async fn hangup(&mut self, device: Device, id: &str) -> Result<v1::CallInfo, v1::Error> {
        let call = self.live(id)?;
        if !call.has(device) {
            if call.ringing.contains(&device.0) {
                return self.decline(device, id).await;
            }
            return Err(error(
                ErrorCode::CallEnded,
                "this device is not in the call",
            ));
        }
        self.leave(device, id, v1::CallEndReason::Hangup).await
    }

    /// `device` leaves call `id`: the call ends if it was one-to-one, still ringing with
    /// nobody else in it, or a group call left with one device.
    async fn leave(
        &mut self,
        device: Device,
        id: &str,
        reason: v1::CallEndReason,
    ) -> Result<v1::CallInfo, v1::Error> {
        let call = self.live(id)?;
        let ends = !call.group
            || call.participants.len() <= 2 && call.state == State::Active
            || call.participants.len() <= 1;
        if ends {
            let Some(call) = self.calls.remove(id) else {
                return Err(error(ErrorCode::CallEnded, "no such call"));
            };
            let reason = if call.state == State::Ringing && reason == v1::CallEndReason::Hangup {
                v1::CallEndReason::Cancelled
            } else {
                reason
            };
            // The device whose hang-up ended it has the reply. A dropped one is gone
            // (the push is for the case it is back by now); it finds the call's end in
            // the conversation's history when it syncs.
            let skip = (reason != v1::CallEndReason::Dropped).then_some(device);
            return Ok(self.finish(call, reason, skip).await);
        }
        call.participants.retain(|&p| p != device);
        let info = call.info();
        let others = call.participants.clone();
        self.in_call.remove(&device.0);
        self.devices.remove(&device);
        let left = v1::CallEvent {
            r#type: v1::CallEventType::Left as i32,
            call: Some(info.clone()),
            from_user: device.0.get(),
            from_device: device.1.get(),
            reason: reason as i32,
            ..Default::default()
        };
        for p in others {
            self.push(To::Device(p), left.clone()).await;
        }
        let mut mine = info.clone();
        mine.state = v1::CallState::Ended as i32;
        mine.end_reason = reason as i32;
        Ok(mine)
    }

    async fn signal(
        &mut self,
        device: Device,
        s: v1::CallSignal,
    ) -> Result<v1::CallInfo, v1::Error> {
        let max_sdp = self.config.max_sdp_bytes;
        let max_pending = self.config.max_pending_candidates;
        if s.description.is_none() && s.candidate.is_none() {
            return Err(error(
                ErrorCode::InvalidArgument,
                "a signal carries a description or a candidate",
            ));
        }
        if let Some(d) = &s.description {
            check_description(max_sdp, d, None)?;
        }
        if let Some(c) = &s.candidate
            && (c.candidate.len() > MAX_CANDIDATE_BYTES
                || c.sdp_mid.len() > MAX_CANDIDATE_BYTES
                || c.username_fragment.len() > MAX_CANDIDATE_BYTES)
        {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("an ICE candidate is at most {MAX_CANDIDATE_BYTES} bytes"),
            ));
        }
        let call = self.live(&s.call_id)?;
        let ringing_here = !call.group && call.ringing.contains(&device.0);
        if !call.has(device) && !ringing_here {
            return Err(error(
                ErrorCode::Forbidden,
                "this device is not in the call",
            ));
        }
        // Before the answer a one-to-one call's candidates wait for the answering device.
        if !call.group && call.state == State::Ringing {
            if s.description.is_some() {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "renegotiate once the call is answered",
                ));
            }
            let pending = call.pending.entry(device).or_default();
            if pending.len() >= max_pending {
                return Err(error(
                    ErrorCode::LimitReached,
                    format!("at most {max_pending} candidates wait for the answer"),
                ));
            }
            pending.extend(s.candidate);
            return Ok(call.info());
        }
        let to = if s.to_device == 0 {
            if call.group {
                return Err(error(
                    ErrorCode::InvalidArgument,
                    "to_device: name the participant (group call)",
                ));
            }
            call.participants.iter().copied().find(|&p| p != device)
        } else {
            call.participants
                .iter()
                .copied()
                .find(|&p| p.1.get() == s.to_device && p != device)
        };
        let Some(to) = to else {
            return Err(error(
                ErrorCode::InvalidArgument,
                "to_device is not another device in this call",
            ));
        };
        let info = call.info();
        self.push(
            To::Device(to),
            signal_event(&info, device, s.description, s.candidate),
        )
        .await;
        Ok(info)
    }

    fn check_description(
        &self,
        d: &v1::SessionDescription,
        want: Option<v1::SdpType>,
    ) -> Result<(), v1::Error> {
        check_description(self.config.max_sdp_bytes, d, want)
    }

    fn join_device(&mut self, device: Device, call: &str) {
        let connection = self.devices.get(&device).map_or(0, |d| d.connection);
        self.devices.insert(
            device,
            DeviceState {
                call: call.to_owned(),
                connection,
                lost: None,
                misses: 0,
                swept: false,
            },
        );
    }

    /// Ends `call` with `reason`: tells everyone still in it or ringing, frees its
    /// users, remembers it, and writes its history entry.
    async fn finish(
        &mut self,
        call: Call,
        reason: v1::CallEndReason,
        skip: Option<Device>,
    ) -> v1::CallInfo {
        let now = now_ms();
        let mut info = call.info();
        info.state = v1::CallState::Ended as i32;
        info.end_reason = reason as i32;
        if call.answered_at_ms != 0 {
            info.duration_ms = now.saturating_sub(call.answered_at_ms);
        }
        for &p in &call.participants {
            if self.in_call.get(&p.0).is_some_and(|c| *c == call.id) {
                self.in_call.remove(&p.0);
            }
            if self.devices.get(&p).is_some_and(|d| d.call == call.id) {
                self.devices.remove(&p);
            }
        }
        tracing::info!(
            call = %call.id,
            conversation = %call.conversation.as_str(),
            reason = reason.as_str_name(),
            answered = call.answered_at_ms != 0,
            duration_ms = info.duration_ms,
            participants = call.max_seen,
            "call ended"
        );
        let ended = ended_event(&info, reason);
        // Everyone in the call hears of the end, but the device whose request ended it
        // (it gets the reply); ringing users stop ringing.
        for &p in &call.participants {
            if Some(p) != skip {
                self.push(To::Device(p), ended.clone()).await;
            }
        }
        for &u in &call.ringing {
            self.push(To::UserBut(u, None), ended.clone()).await;
        }
        // The caller's other devices saw the call start (a busy call never started).
        if reason != v1::CallEndReason::Busy {
            self.push(
                To::UserBut(call.caller.0, Some(call.caller.1)),
                ended.clone(),
            )
            .await;
        }
        self.ended
            .insert(call.id.clone(), (info.clone(), Instant::now()));
        if self.ended.len() > MAX_ENDED {
            self.forget_oldest_ended();
        }
        let log = v1::CallLog {
            call_id: call.id.clone(),
            media: call.media as i32,
            reason: reason as i32,
            missed: call.answered_at_ms == 0,
            started_at_ms: call.started_at_ms,
            duration_ms: info.duration_ms,
            group: call.group,
            participants: call.max_seen,
        };
        tokio::spawn(write_log(
            self.bus.clone(),
            self.config.request_timeout,
            call.caller,
            call.conversation.clone(),
            log,
        ));
        info
    }

    async fn ring_timeout(&mut self, id: String, generation: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.ring_generation != generation {
            return;
        }
        if call.state == State::Ringing {
            if let Some(call) = self.calls.remove(&id) {
                self.finish(call, v1::CallEndReason::NoAnswer, None).await;
            }
            return;
        }
        // An answered group call: whoever still rings stops.
        let info = call.info();
        let ringing: Vec<UserId> = call.ringing.drain().collect();
        for u in ringing {
            self.push(
                To::UserBut(u, None),
                ended_event(&info, v1::CallEndReason::NoAnswer),
            )
            .await;
        }
    }

    async fn device_event(&mut self, d: bus::CallDevice) {
        let (Ok(user), Ok(device)) = (UserId::new(d.user_id), DeviceId::new(d.device_id)) else {
            return;
        };
        let key = (user, device);
        if d.connected {
            self.device_back(key, d.connection_id).await;
            return;
        }
        let Some(state) = self.devices.get(&key) else {
            return;
        };
        // A newer connection of this device is up: this one's end changes nothing.
        if state.connection != 0 && d.connection_id != 0 && state.connection != d.connection_id {
            return;
        }
        self.lose(key, false).await;
    }

    /// `device` is gone (its edge said so, or `swept`: the session directory no longer
    /// lists it): its peers hear so, and it drops out after the grace period unless it
    /// comes back.
    async fn lose(&mut self, key: Device, swept: bool) {
        let grace = self.config.drop_grace;
        let generation = self.next_generation();
        let Some(state) = self.devices.get_mut(&key) else {
            return;
        };
        if state.lost.is_some() {
            return;
        }
        state.lost = Some(generation);
        state.swept = swept;
        let id = state.call.clone();
        self.after(
            grace,
            Cmd::DropTimeout {
                device: key,
                generation,
            },
        );
        self.tell_peers(&id, key, v1::CallEventType::PeerLost).await;
    }

    /// `device` is connected (again): a pending drop is off. `connection` 0: unknown.
    async fn device_back(&mut self, device: Device, connection: u64) {
        let Some(state) = self.devices.get_mut(&device) else {
            return;
        };
        if connection != 0 {
            state.connection = connection;
        }
        state.misses = 0;
        state.swept = false;
        if state.lost.take().is_some() {
            let id = state.call.clone();
            self.tell_peers(&id, device, v1::CallEventType::PeerBack)
                .await;
        }
    }

    /// A sweep's findings. A device missing from two sweeps in a row is lost (its edge
    /// died without a word, or its disconnect never reached us); one found again after
    /// a sweep lost it is back. One miss is not enough: a device that has just
    /// connected may not be in the directory yet.
    async fn liveness(&mut self, present: Vec<Device>, missing: Vec<Device>) {
        for device in present {
            if self
                .devices
                .get(&device)
                .is_some_and(|s| s.swept && s.lost.is_some())
            {
                self.device_back(device, 0).await;
            } else if let Some(s) = self.devices.get_mut(&device) {
                s.misses = 0;
            }
        }
        for device in missing {
            let Some(s) = self.devices.get_mut(&device) else {
                continue;
            };
            if s.lost.is_some() {
                continue;
            }
            s.misses = s.misses.saturating_add(1);
            if s.misses >= 2 {
                tracing::info!(user = %device.0, device = %device.1, "calls: device gone from the session directory");
                self.lose(device, true).await;
            }
        }
    }

    async fn tell_peers(&mut self, id: &str, device: Device, kind: v1::CallEventType) {
        let Some(call) = self.calls.get(id) else {
            return;
        };
        let info = call.info();
        let peers: Vec<Device> = call
            .participants
            .iter()
            .copied()
            .filter(|&p| p != device)
            .collect();
        let event = v1::CallEvent {
            r#type: kind as i32,
            call: Some(info),
            from_user: device.0.get(),
            from_device: device.1.get(),
            ..Default::default()
        };
        for p in peers {
            self.push(To::Device(p), event.clone()).await;
        }
    }

    async fn drop_timeout(&mut self, device: Device, generation: u64) {
        let Some(state) = self.devices.get(&device) else {
            return;
        };
        if state.lost != Some(generation) {
            return;
        }
        let id = state.call.clone();
        if let Err(e) = self.leave(device, &id, v1::CallEndReason::Dropped).await {
            tracing::debug!(error = %e.message, "calls: dropped device's call already gone");
        }
        self.devices.remove(&device);
    }

    async fn push(&self, to: To, event: v1::CallEvent) {
        let frame = v1::ServerFrame {
            id: 0,
            body: Some(server_frame::Body::CallEvent(Box::new(event))),
        };
        let (user, skip, only) = match to {
            To::Device((u, d)) => (u, 0, d.get()),
            To::UserBut(u, skip) => (u, skip.map_or(0, DeviceId::get), 0),
        };
        let push = bus::UserPush {
            body: Some(bus::user_push::Body::Frame(Bytes::from(
                frame.encode_to_vec(),
            ))),
            skip_device: skip,
            only_device: only,
            created_at_ms: 0,
        };
        if let Err(e) = self
            .bus
            .publish(&Subject::user(user), Bytes::from(push.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, %user, "calls: push not published");
        }
    }
}

fn check_description(
    max: usize,
    d: &v1::SessionDescription,
    want: Option<v1::SdpType>,
) -> Result<(), v1::Error> {
    let kind = v1::SdpType::try_from(d.r#type)
        .ok()
        .filter(|t| *t != v1::SdpType::Unspecified)
        .ok_or_else(|| {
            error(
                ErrorCode::InvalidArgument,
                "SDP type must be offer or answer",
            )
        })?;
    if let Some(want) = want
        && kind != want
    {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!("expected an SDP {}", want.as_str_name()),
        ));
    }
    if d.sdp.is_empty() || d.sdp.len() > max {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!("SDP must be 1..={max} bytes"),
        ));
    }
    Ok(())
}

fn validate_call_id(id: &str) -> Result<(), v1::Error> {
    let ok = (MIN_CALL_ID..=MAX_CALL_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(error(
            ErrorCode::InvalidArgument,
            format!("call_id must be {MIN_CALL_ID}..={MAX_CALL_ID} characters of [A-Za-z0-9_-]"),
        ))
    }
}

fn reason_name(reason: i32) -> &'static str {
    match v1::CallEndReason::try_from(reason) {
        Ok(v1::CallEndReason::Hangup) => "hung up",
        Ok(v1::CallEndReason::Declined) => "declined",
        Ok(v1::CallEndReason::Busy) => "busy",
        Ok(v1::CallEndReason::NoAnswer) => "no answer",
        Ok(v1::CallEndReason::Cancelled) => "cancelled",
        Ok(v1::CallEndReason::Dropped) => "dropped",
        Ok(v1::CallEndReason::AnsweredElsewhere) => "answered elsewhere",
        Ok(v1::CallEndReason::DeclinedElsewhere) => "declined elsewhere",
        _ => "ended",
    }
}

fn ended_event(info: &v1::CallInfo, reason: v1::CallEndReason) -> v1::CallEvent {
    let mut info = info.clone();
    if reason != v1::CallEndReason::AnsweredElsewhere
        && reason != v1::CallEndReason::DeclinedElsewhere
    {
        info.state = v1::CallState::Ended as i32;
        info.end_reason = reason as i32;
    }
    v1::CallEvent {
        r#type: v1::CallEventType::Ended as i32,
        call: Some(info),
        reason: reason as i32,
        ..Default::default()
    }
}

fn signal_event(
    info: &v1::CallInfo,
    from: Device,
    description: Option<v1::SessionDescription>,
    candidate: Option<v1::IceCandidate>,
) -> v1::CallEvent {
    v1::CallEvent {
        r#type: v1::CallEventType::Signal as i32,
        call: Some(info.clone()),
        from_user: from.0.get(),
        from_device: from.1.get(),
        description,
        candidate,
        ..Default::default()
    }
}

/// Writes a call's history entry through the conversation's partition owner (which
/// dedupes it by call id, so a retry after a lost reply writes it once).
async fn write_log(
    bus: Arc<dyn Bus>,
    timeout: Duration,
    caller: Device,
    conversation: ConversationId,
    log: v1::CallLog,
) {
    let to_user = 0;
    let request = bus::PartitionRequest {
        caller: Some(bus::Caller {
            user_id: caller.0.get(),
            device_id: caller.1.get(),
        }),
        body: Some(bus::partition_request::Body::CallLog(bus::CallLogRequest {
            conversation_id: conversation.as_str().to_owned(),
            to_user,
            log: Some(log),
        })),
    };
    let payload = Bytes::from(request.encode_to_vec());
    let subject = Subject::partition(conversation.partition());
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=LOG_ATTEMPTS {
        let outcome = bus.request(&subject, payload.clone(), timeout).await;
        match outcome.map(bus::PartitionReply::decode) {
            Ok(Ok(bus::PartitionReply {
                body: Some(bus::partition_reply::Body::Ack(_)),
            })) => return,
            Ok(Ok(bus::PartitionReply {
                body: Some(bus::partition_reply::Body::Error(e)),
            })) if e.code != ErrorCode::Unavailable as i32 => {
                tracing::warn!(error = %e.message, conversation = %conversation.as_str(), "calls: history entry refused");
                return;
            }
            other => {
                tracing::debug!(attempt, outcome = ?other.err(), "calls: history entry not written yet");
            }
        }
        if attempt < LOG_ATTEMPTS {
            // Half to all of the delay: the entries of calls that met the same outage
            // do not all come back at once. Retrying is safe: the owner dedupes by call id.
            let half = delay / 2;
            let jitter = rand::random_range(0..=u64::try_from(half.as_millis()).unwrap_or(0));
            tokio::time::sleep(half + Duration::from_millis(jitter)).await;
            delay *= 2;
        }
    }
    tracing::warn!(conversation = %conversation.as_str(), "calls: history entry not written");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_the_newer_half_of_ended_calls_is_kept() {
        let (tx, _rx) = mpsc::channel(1);
        let mut actor = Actor {
            bus: Arc::new(natter_bus::InProcessBus::new()),
            config: Config::default(),
            tx,
            calls: HashMap::new(),
            ended: HashMap::new(),
            in_call: HashMap::new(),
            devices: HashMap::new(),
            generation: 0,
        };
        let start = Instant::now();
        for i in 0..10u64 {
            let info = v1::CallInfo {
                call_id: format!("call-{i:04}"),
                ..Default::default()
            };
            actor
                .ended
                .insert(info.call_id.clone(), (info, start + Duration::from_secs(i)));
        }
        actor.forget_oldest_ended();
        let mut kept: Vec<&String> = actor.ended.keys().collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "call-0005",
                "call-0006",
                "call-0007",
                "call-0008",
                "call-0009"
            ]
        );
    }

    #[test]
    fn call_ids_are_bounded_and_url_safe() {
        assert!(validate_call_id("abcdefgh").is_ok());
        assert!(validate_call_id("A1_b2-C3").is_ok());
        assert!(validate_call_id(&"x".repeat(MAX_CALL_ID)).is_ok());
        for bad in [
            "",
            "short",
            "has space1",
            "semi;colon",
            "ünïcödé1",
            &"x".repeat(65),
        ] {
            let e = validate_call_id(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidArgument as i32, "{bad}");
        }
    }

    #[test]
    fn descriptions_need_a_type_a_body_and_a_bound() {
        let offer = |sdp: &str| v1::SessionDescription {
            r#type: v1::SdpType::Offer as i32,
            sdp: sdp.to_owned(),
        };
        assert!(check_description(16, &offer("v=0"), Some(v1::SdpType::Offer)).is_ok());
        assert!(check_description(16, &offer("v=0"), None).is_ok());
        assert!(check_description(16, &offer("v=0"), Some(v1::SdpType::Answer)).is_err());
        assert!(check_description(16, &offer(""), None).is_err());
        assert!(check_description(16, &offer(&"a".repeat(17)), None).is_err());
        let untyped = v1::SessionDescription {
            r#type: 0,
            sdp: "v=0".into(),
        };
        assert!(check_description(16, &untyped, None).is_err());
    }

    #[test]
    fn ended_events_keep_the_call_state_for_devices_answered_elsewhere() {
        let info = v1::CallInfo {
            call_id: "abcdefgh".into(),
            state: v1::CallState::Active as i32,
            ..Default::default()
        };
        let elsewhere = ended_event(&info, v1::CallEndReason::AnsweredElsewhere);
        let call = elsewhere.call.expect("call");
        assert_eq!(call.state, v1::CallState::Active as i32);
        assert_eq!(
            elsewhere.reason,
            v1::CallEndReason::AnsweredElsewhere as i32
        );
        let hung_up = ended_event(&info, v1::CallEndReason::Hangup);
        let call = hung_up.call.expect("call");
        assert_eq!(call.state, v1::CallState::Ended as i32);
        assert_eq!(call.end_reason, v1::CallEndReason::Hangup as i32);
        assert_eq!(hung_up.r#type, v1::CallEventType::Ended as i32);
    }
}

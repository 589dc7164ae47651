//! The presence scenario: N subscribers watch one subject user, who comes online and
//! goes offline `cycles` times; every subscriber must get one push for every change.
//!
//! Setup: the subject adds every subscriber to its contacts (and with contacts-only
//! privacy hides its online state and last seen from everyone else), then leaves; each
//! subscriber connects, adds the subject to its own contacts and subscribes to it. With
//! contacts-only privacy a "stranger" (not in the subject's contacts) subscribes too and
//! must never see the subject. Once every subscriber knows the subject offline the run
//! starts: the subject connects (a transition to online, timed from its Welcome), every
//! subscriber's push is awaited, a pause, the subject closes (a transition to offline,
//! timed from just before its close frame), every push is awaited, a pause, and again.
//! The subject's transitions are strictly one at a time, so each push belongs to the
//! transition in progress: the auditor counts one per subscriber and transition, a
//! repeat of the state a subscriber already holds as a duplicate, a push that misses its
//! transition's timeout as lost (and `late` if it comes afterwards).

use std::collections::HashSet;

use natter_client::v1::{PresenceState, people_request};

use super::*;
use crate::ipc::PresenceOutcome;

/// Subscribers connect and subscribe this many at a time.
const SETUP_CONCURRENCY: usize = 64;
/// The subject's contact adds in flight at once.
const CONTACT_WINDOW: usize = 64;
/// Assumed when a snapshot gives no subscription TTL.
const DEFAULT_TTL_S: u32 = 60;

/// What a subscriber's task tells the driver.
enum Event {
    /// A `UserPresence` push about the subject.
    Push {
        index: usize,
        state: i32,
        at_ns: u64,
    },
    /// The answer to a renewal.
    Snapshot { index: usize, state: i32 },
    /// The connection dropped: this subscriber sees nothing more.
    Dropped { index: usize },
}

/// Everything the scenario's settings say.
pub(super) struct Settings {
    pub cycles: u32,
    pub contacts_only: bool,
    pub pause: Duration,
    pub timeout: Duration,
}

/// One request on `conn`, its reply's body (an error frame is an `Err`).
async fn request(
    ctx: &Ctx,
    conn: &mut Connection,
    body: client_frame::Body,
    what: &str,
) -> Result<server_frame::Body, String> {
    request_seeing(ctx, conn, body, what, &mut Vec::new()).await
}

/// [`request`], keeping the pushes that arrive before the reply in `pushes`.
async fn request_seeing(
    ctx: &Ctx,
    conn: &mut Connection,
    body: client_frame::Body,
    what: &str,
    pushes: &mut Vec<ServerFrame>,
) -> Result<server_frame::Body, String> {
    requests(ctx, conn, vec![body], 1, what, pushes)
        .await?
        .pop()
        .ok_or_else(|| format!("{what}: no reply"))
}

/// `bodies` as requests on `conn`, at most `window` unanswered; the replies' bodies in
/// order. Pushes met on the way go to `pushes`.
async fn requests(
    ctx: &Ctx,
    conn: &mut Connection,
    bodies: Vec<client_frame::Body>,
    window: usize,
    what: &str,
    pushes: &mut Vec<ServerFrame>,
) -> Result<Vec<server_frame::Body>, String> {
    let timeout = ctx.request_timeout().max(Duration::from_secs(30));
    let total = bodies.len();
    let base = ctx.frame_id();
    // Ids base, base + 1 ...: reserve them all.
    for _ in 1..total {
        ctx.frame_id();
    }
    let mut replies: Vec<Option<server_frame::Body>> = (0..total).map(|_| None).collect();
    let mut bodies = bodies.into_iter().enumerate();
    let (mut in_flight, mut answered) = (0, 0);
    while answered < total {
        let mut fed = false;
        while in_flight < window {
            let Some((k, body)) = bodies.next() else {
                break;
            };
            let frame = ClientFrame {
                id: base + k as u64,
                body: Some(body),
            };
            conn.feed(&frame)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            in_flight += 1;
            fed = true;
        }
        if fed {
            conn.flush().await.map_err(|e| format!("{what}: {e}"))?;
        }
        let frame = conn
            .recv_timeout(timeout)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if frame.id < base || frame.id >= base + total as u64 {
            if frame.id == 0 {
                pushes.push(frame);
            }
            continue;
        }
        let k = (frame.id - base) as usize;
        match frame.body {
            Some(server_frame::Body::Error(e)) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                return Err(format!("{what}: {code:?}: {}", e.message));
            }
            Some(body) if replies[k].is_none() => {
                replies[k] = Some(body);
                in_flight -= 1;
                answered += 1;
            }
            _ => {}
        }
    }
    Ok(replies.into_iter().flatten().collect())
}

fn people(op: people_request::Op) -> client_frame::Body {
    client_frame::Body::People(Box::new(v1::PeopleRequest { op: Some(op) }))
}

fn subscribe(user: u64) -> client_frame::Body {
    client_frame::Body::PresenceSubscribe(v1::PresenceSubscribe {
        user_ids: vec![user],
        unsubscribe: false,
    })
}

/// The subject's state in a snapshot (UNSPECIFIED: hidden, or not in it).
fn snapshot_state(s: &v1::PresenceSnapshot, subject: u64) -> i32 {
    s.users
        .iter()
        .find(|u| u.user_id == subject)
        .map_or(PresenceState::Unspecified as i32, |u| u.state)
}

fn state_name(state: i32) -> String {
    PresenceState::try_from(state).map_or_else(|_| format!("state {state}"), |s| format!("{s:?}"))
}

/// The subject's setup: contacts-only privacy if asked, every subscriber a contact.
async fn subject_setup(
    ctx: &Ctx,
    conn: &mut Connection,
    subscribers: &[u64],
    contacts_only: bool,
) -> Result<(), String> {
    if contacts_only {
        let settings = v1::PrivacySettings {
            online: v1::Visibility::Contacts as i32,
            last_seen: v1::Visibility::Contacts as i32,
            ..Default::default()
        };
        let op = people_request::Op::PrivacySet(v1::PrivacySet {
            settings: Some(settings),
        });
        request(ctx, conn, people(op), "setting the subject's privacy").await?;
    }
    let adds = subscribers
        .iter()
        .map(|&user_id| {
            people(people_request::Op::ContactAdd(v1::ContactAdd {
                user_id,
                ..Default::default()
            }))
        })
        .collect();
    requests(
        ctx,
        conn,
        adds,
        CONTACT_WINDOW,
        "the subject adding contacts",
        &mut Vec::new(),
    )
    .await?;
    Ok(())
}

/// A subscriber's setup: connect, add the subject as a contact, subscribe. Returns the
/// connection, the subject's state in the snapshot and the subscription TTL.
async fn subscriber_setup(
    ctx: &Ctx,
    cred: &Cred,
    subject: u64,
) -> Result<(Connection, i32, u32), String> {
    let Some(mut conn) = setup_connect(ctx, cred).await else {
        return Err(format!("user {}: could not connect", cred.user_id));
    };
    let add = people(people_request::Op::ContactAdd(v1::ContactAdd {
        user_id: subject,
        ..Default::default()
    }));
    request(ctx, &mut conn, add, "a subscriber adding the subject").await?;
    let mut pushes = Vec::new();
    let reply = request_seeing(
        ctx,
        &mut conn,
        subscribe(subject),
        "subscribing",
        &mut pushes,
    );
    match reply.await? {
        server_frame::Body::PresenceSnapshot(s) => {
            // The subject is offline for good by now (its setup connection closed before
            // anyone subscribed): a push that overtook the snapshot is the newer news.
            let pushed = pushes.into_iter().rev().find_map(|f| match f.body {
                Some(server_frame::Body::Presence(p)) if p.user_id == subject => Some(p.state),
                _ => None,
            });
            let state = pushed.unwrap_or_else(|| snapshot_state(&s, subject));
            Ok((conn, state, s.subscription_ttl_s))
        }
        other => Err(format!("subscribing: unexpected reply {other:?}")),
    }
}

/// One subscriber's connection: forwards every push about the subject (and renewal
/// answers) to the driver, renews when `renew` moves, pings so the server keeps the
/// connection, and closes at `end`.
async fn run_subscriber(
    ctx: Arc<Ctx>,
    index: usize,
    mut conn: Connection,
    subject: u64,
    events: mpsc::UnboundedSender<Event>,
    mut renew: watch::Receiver<u32>,
    mut end: watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    let mut renewal_id = None;
    loop {
        tokio::select! {
            got = conn.recv() => match got {
                Ok(frame) => match frame.body {
                    Some(server_frame::Body::Presence(p)) if p.user_id == subject => {
                        let _ = events.send(Event::Push { index, state: p.state, at_ns: ctx.now_ns() });
                    }
                    Some(server_frame::Body::PresenceSnapshot(s)) if Some(frame.id) == renewal_id => {
                        renewal_id = None;
                        let _ = events.send(Event::Snapshot { index, state: snapshot_state(&s, subject) });
                    }
                    Some(server_frame::Body::Error(e)) => {
                        ctx.error(format_args!("subscriber: error frame for frame {}: {e:?}", frame.id));
                    }
                    _ => {}
                },
                Err(e) => {
                    ctx.connected.fetch_sub(1, Relaxed);
                    ctx.error(format_args!("subscriber connection dropped: {e}"));
                    let _ = events.send(Event::Dropped { index });
                    return;
                }
            },
            changed = renew.changed() => {
                if changed.is_err() {
                    break;
                }
                let id = ctx.frame_id();
                renewal_id = Some(id);
                let frame = ClientFrame { id, body: Some(subscribe(subject)) };
                if let Err(e) = conn.send(&frame).await {
                    ctx.error(format_args!("renewing a subscription: {e}"));
                }
            }
            _ = ping.tick() => {
                let frame = ClientFrame {
                    id: ctx.frame_id(),
                    body: Some(client_frame::Body::Ping(v1::Ping { client_time_ms: 0 })),
                };
                if let Err(e) = conn.send(&frame).await {
                    ctx.error(format_args!("subscriber ping: {e}"));
                }
            }
            () = released(&mut end) => break,
        }
    }
    ctx.connected.fetch_sub(1, Relaxed);
    let _ = conn.close().await;
}

/// The auditor and clock of the transitions.
struct Driver {
    subscribers: usize,
    /// The stranger's index (== subscribers) when there is one.
    stranger: Option<usize>,
    /// What each subscriber last learnt of the subject.
    known: Vec<i32>,
    /// A transition's push a subscriber missed (counted lost), should it come late.
    missed: Vec<Option<i32>>,
    alive: Vec<bool>,
    events: mpsc::UnboundedReceiver<Event>,
    tally: Tally,
    out: PresenceOutcome,
    all_latency: Histogram<u64>,
    online_latency: Histogram<u64>,
    offline_latency: Histogram<u64>,
    /// When each push of a transition arrived (for the per-second series).
    arrivals_ns: Vec<u64>,
}

impl Driver {
    /// One event outside a transition (setup, pauses, the end): pushes are audited
    /// against what each subscriber holds; the stranger must see nothing.
    fn idle_event(&mut self, ctx: &Ctx, ev: Event) {
        match ev {
            Event::Push { index, state, .. } => self.unasked(ctx, index, state),
            Event::Snapshot { index, state } => self.snapshot(ctx, index, state),
            Event::Dropped { index } => self.alive[index] = false,
        }
    }

    /// A push no transition in progress explains.
    fn unasked(&mut self, ctx: &Ctx, index: usize, state: i32) {
        if Some(index) == self.stranger {
            self.leak(ctx, state);
        } else if self.missed[index] == Some(state) {
            self.missed[index] = None;
            self.known[index] = state;
            self.out.late += 1;
        } else if self.known[index] == state {
            self.tally.duplicated += 1;
        } else {
            self.out.unexpected += 1;
            ctx.error(format_args!(
                "subscriber {index}: pushed {} while holding {} and nothing changed",
                state_name(state),
                state_name(self.known[index])
            ));
            self.known[index] = state;
        }
    }

    fn leak(&mut self, ctx: &Ctx, state: i32) {
        if state != PresenceState::Unspecified as i32 {
            self.out.leaked += 1;
            ctx.error(format_args!(
                "the stranger saw the subject {}: contacts-only privacy leaked",
                state_name(state)
            ));
        }
    }

    fn snapshot(&mut self, ctx: &Ctx, index: usize, state: i32) {
        if Some(index) == self.stranger {
            self.leak(ctx, state);
        } else if state != self.known[index] {
            self.out.unexpected += 1;
            ctx.error(format_args!(
                "subscriber {index}: a renewal's snapshot says {} but the last push said {}",
                state_name(state),
                state_name(self.known[index])
            ));
            self.known[index] = state;
        }
    }

    /// Subscribers (alive, not the stranger) that do not hold `state`.
    fn short_of(&self, state: i32) -> usize {
        (0..self.subscribers)
            .filter(|&i| self.alive[i] && self.known[i] != state)
            .count()
    }

    /// Waits (at most `timeout`) until every subscriber holds `state`, auditing.
    async fn settle_on(&mut self, ctx: &Ctx, state: i32, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.short_of(state) > 0 {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                // The change being waited for (a snapshot may have been older news).
                Ok(Some(Event::Push {
                    index, state: got, ..
                })) if got == state && Some(index) != self.stranger && self.known[index] != got => {
                    self.known[index] = got;
                }
                Ok(Some(ev)) => self.idle_event(ctx, ev),
                Ok(None) | Err(_) => break,
            }
        }
        self.short_of(state)
    }

    /// Takes in what arrives for `d` (the pause between transitions).
    async fn quiet(&mut self, ctx: &Ctx, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.idle_event(ctx, ev);
        }
    }

    /// One transition to `state`, started at `start_ns`: every live subscriber's push,
    /// at most `timeout`. Records the figures; returns how many pushes were missing.
    async fn transition(
        &mut self,
        ctx: &Ctx,
        state: i32,
        start_ns: u64,
        timeout: Duration,
    ) -> usize {
        self.out.transitions += 1;
        let mut waiting: HashSet<usize> =
            (0..self.subscribers).filter(|&i| self.alive[i]).collect();
        // A subscriber already gone cannot get this push.
        let gone = self.subscribers - waiting.len();
        self.tally.owed += self.subscribers as u64;
        self.tally.lost += gone as u64;
        let online = state == PresenceState::Online as i32;
        let (mut first, mut last) = (None, 0u64);
        let deadline = tokio::time::Instant::now() + timeout;
        while !waiting.is_empty() {
            let ev = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => break,
            };
            match ev {
                Event::Push {
                    index,
                    state: got,
                    at_ns,
                } if got == state && waiting.contains(&index) => {
                    waiting.remove(&index);
                    self.known[index] = got;
                    self.missed[index] = None;
                    let ns = at_ns.saturating_sub(start_ns);
                    first.get_or_insert(ns);
                    last = last.max(ns);
                    self.tally.delivered += 1;
                    self.arrivals_ns.push(at_ns);
                    ctx.delivered.fetch_add(1, Relaxed);
                    stats::record_ns(&mut self.all_latency, ns);
                    let h = if online {
                        &mut self.online_latency
                    } else {
                        &mut self.offline_latency
                    };
                    stats::record_ns(h, ns);
                }
                Event::Dropped { index } => {
                    self.alive[index] = false;
                    if waiting.remove(&index) {
                        self.tally.lost += 1;
                    }
                }
                other => self.idle_event(ctx, other),
            }
        }
        let missing = waiting.len();
        self.tally.lost += missing as u64;
        for &i in &waiting {
            self.missed[i] = Some(state);
            self.known[i] = state;
        }
        if missing > 0 {
            ctx.error(format_args!(
                "{missing} of {} subscribers got no {} push within {} s",
                self.subscribers,
                state_name(state),
                timeout.as_secs_f64()
            ));
        }
        let (firsts, lasts) = if online {
            (&mut self.out.online_first_ns, &mut self.out.online_last_ns)
        } else {
            (
                &mut self.out.offline_first_ns,
                &mut self.out.offline_last_ns,
            )
        };
        if let Some(f) = first {
            firsts.push(f);
        }
        if missing == 0 && gone == 0 {
            lasts.push(last);
        }
        missing + gone
    }

    /// Every subscriber subscribes again; waits for their snapshots.
    async fn renew(&mut self, ctx: &Ctx, renew: &watch::Sender<u32>, timeout: Duration) {
        self.out.renewals += 1;
        renew.send_modify(|g| *g += 1);
        let total = self.alive.iter().filter(|a| **a).count();
        let mut answered = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        while answered < total {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if matches!(ev, Event::Snapshot { .. } | Event::Dropped { .. }) {
                        answered += 1;
                    }
                    self.idle_event(ctx, ev);
                }
                Ok(None) | Err(_) => {
                    ctx.error(format_args!(
                        "renewing subscriptions: {} of {total} answered",
                        answered
                    ));
                    break;
                }
            }
        }
    }
}

/// The presence scenario's worker side (one worker holds everything: one clock).
pub(super) async fn presence_task(
    ctx: Arc<Ctx>,
    subject: Cred,
    subscribers: Vec<Cred>,
    stranger: Option<Cred>,
    settings: Settings,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let n = subscribers.len();
    let subject_id = subject.user_id;
    let failed = |e: String| {
        emit(&Report::Failed(e));
        ctx.outcome()
    };
    // The subject: privacy and contacts, then away.
    let t0 = Instant::now();
    let Some(mut sconn) = setup_connect(&ctx, &subject).await else {
        emit(&Report::Ready(ctx.progress()));
        reach(&mut phase, Phase::Stop).await;
        return ctx.outcome();
    };
    let ids: Vec<u64> = subscribers.iter().map(|c| c.user_id).collect();
    if let Err(e) = subject_setup(&ctx, &mut sconn, &ids, settings.contacts_only).await {
        return failed(e);
    }
    let _ = sconn.close().await;
    ctx.connected.fetch_sub(1, Relaxed);
    let contacts_s = stats::secs(t0.elapsed());
    // The subscribers (the stranger last).
    let t1 = Instant::now();
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut setups = Vec::with_capacity(n + 1);
    for cred in subscribers.into_iter().chain(stranger.clone()) {
        let (ctx, gate) = (ctx.clone(), gate.clone());
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            subscriber_setup(&ctx, &cred, subject_id).await
        }));
    }
    let mut conns = Vec::with_capacity(setups.len());
    let mut ttl_s = 0;
    let mut setup_error = None;
    for s in setups {
        match s.await {
            Ok(Ok((conn, state, ttl))) => {
                ttl_s = ttl;
                conns.push((conn, state));
            }
            Ok(Err(e)) => {
                setup_error.get_or_insert(e);
            }
            Err(e) => {
                setup_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = setup_error {
        if ctx.connect_failed.load(Relaxed) > 0 {
            // The coordinator sees the failed connections in Ready and ends the run.
            emit(&Report::Ready(ctx.progress()));
            reach(&mut phase, Phase::Stop).await;
            return ctx.outcome();
        }
        return failed(e);
    }
    let subscribe_s = stats::secs(t1.elapsed());
    let (events_tx, events) = mpsc::unbounded_channel();
    let (renew_tx, renew) = watch::channel(0u32);
    let (end_tx, end) = watch::channel(false);
    let mut known = Vec::with_capacity(conns.len());
    let mut tasks = Vec::with_capacity(conns.len());
    for (index, (conn, state)) in conns.into_iter().enumerate() {
        known.push(state);
        tasks.push(tokio::spawn(run_subscriber(
            ctx.clone(),
            index,
            conn,
            subject_id,
            events_tx.clone(),
            renew.clone(),
            end.clone(),
        )));
    }
    drop(events_tx);
    let total = known.len();
    let mut d = Driver {
        subscribers: n,
        stranger: stranger.is_some().then_some(n),
        known,
        missed: vec![None; total],
        alive: vec![true; total],
        events,
        tally: Tally::default(),
        out: PresenceOutcome {
            subscribers: n,
            contacts_s,
            subscribe_s,
            subscription_ttl_s: ttl_s,
            ..Default::default()
        },
        all_latency: stats::histogram(),
        online_latency: stats::histogram(),
        offline_latency: stats::histogram(),
        arrivals_ns: Vec::with_capacity(n * 2 * settings.cycles as usize),
    };
    if let Some(s) = d.stranger {
        let state = d.known[s];
        d.leak(&ctx, state);
    }
    let offline = PresenceState::Offline as i32;
    let online = PresenceState::Online as i32;
    for (i, &state) in d.known.iter().enumerate().take(n) {
        if state == PresenceState::Unspecified as i32 {
            let _ = end_tx.send(true);
            return failed(format!(
                "subscriber {i} may not see the subject's presence (its snapshot hides it)"
            ));
        }
    }
    // The subject's setup connection may still show: wait for everyone to see it gone
    // (the edge's offline debounce applies).
    let short = d
        .settle_on(&ctx, offline, settings.timeout + Duration::from_secs(10))
        .await;
    if short > 0 {
        let _ = end_tx.send(true);
        return failed(format!(
            "{short} of {n} subscribers never saw the subject offline after setup"
        ));
    }
    d.quiet(&ctx, settings.pause).await;
    // A snapshot and a push may both tell a subscriber of the subject's leaving after
    // setup (the subscription raced the debounced report): not a repeat a user sees.
    d.out.setup_repeats = d.tally.duplicated;
    d.tally.duplicated = 0;
    emit(&Report::Ready(ctx.progress()));
    if reach(&mut phase, Phase::Go).await == Phase::Stop {
        let _ = end_tx.send(true);
        let mut o = ctx.outcome();
        o.interrupted = true;
        return o;
    }
    let go_ns = ctx.now_ns();
    let go = Instant::now();
    let ttl = Duration::from_secs(u64::from(if ttl_s == 0 { DEFAULT_TTL_S } else { ttl_s }));
    // The oldest subscription was made after this.
    let mut subscribed_at = t1;
    let mut interrupted = false;
    let mut fatal = None;
    for _ in 0..settings.cycles {
        if *phase.borrow() == Phase::Stop {
            interrupted = true;
            break;
        }
        // Renew outside the measured transitions, well before the TTL runs out.
        if subscribed_at.elapsed() >= ttl / 2 {
            d.renew(&ctx, &renew_tx, settings.timeout).await;
            subscribed_at = Instant::now();
        }
        let c0 = ctx.now_ns();
        let conn = match ctx.connect(&subject).await {
            Ok(c) => c,
            Err(e) => {
                fatal = Some(format!("the subject could not connect: {e}"));
                break;
            }
        };
        let welcomed = ctx.now_ns();
        d.out.welcome_ns.push(welcomed - c0);
        d.transition(&ctx, online, welcomed, settings.timeout).await;
        d.quiet(&ctx, settings.pause).await;
        let closing = ctx.now_ns();
        let _ = conn.close().await;
        ctx.connected.fetch_sub(1, Relaxed);
        d.transition(&ctx, offline, closing, settings.timeout).await;
        d.quiet(&ctx, settings.pause).await;
    }
    let measured_s = stats::secs(go.elapsed());
    // Late or repeated pushes still on their way.
    d.quiet(&ctx, settings.pause.max(Duration::from_millis(500)))
        .await;
    if let Some(e) = fatal {
        let _ = end_tx.send(true);
        return failed(e);
    }
    // The measured phase is over: the coordinator samples the server, then says Stop.
    if !interrupted {
        emit(&Report::Ready(ctx.progress()));
        reach(&mut phase, Phase::Stop).await;
    }
    let _ = end_tx.send(true);
    for t in tasks {
        if let Err(e) = t.await {
            ctx.error(format_args!("subscriber task failed: {e}"));
        }
    }
    let mut o = ctx.outcome();
    o.tally = d.tally;
    o.latency = stats::encode_histogram(&d.all_latency);
    o.measured_s = measured_s;
    o.series.delivered = stats::per_second(d.arrivals_ns.iter().copied(), go_ns);
    o.interrupted = interrupted;
    d.out.online_latency = stats::encode_histogram(&d.online_latency);
    d.out.offline_latency = stats::encode_histogram(&d.offline_latency);
    o.presence = Some(d.out);
    o
}

//! A worker process: holds its share of the connections, drives them, audits what they
//! receive and reports on stdout (see [`crate::ipc`]). The coordinator starts one per
//! 10,000 connections, since one process may hold only so many open files.

use std::{
    collections::BTreeMap,
    io::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use natter_client::{
    ConnectOptions, Connection, ConnectionError, ErrorCode, WireFormat,
    tungstenite::protocol::WebSocketConfig,
    v1::{self, ClientFrame, ServerFrame, client_frame, server_frame},
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    sync::{Semaphore, mpsc, watch},
};

mod presence;

use crate::{
    audit::{self, Conversation, Origin, Tally},
    ipc::{Control, Cred, Outcome, Plan, Progress, Report, Task},
    stats::{self, Series},
};

/// Where the run is, as the coordinator said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Go,
    Stop,
}

/// Frame ids: a Send uses its message index + 1, everything else counts from here, so
/// replies can be told apart.
const OTHER_IDS: u64 = 1 << 40;
/// How often a held connection or a pair looks at its timers.
const TICK: Duration = Duration::from_millis(50);
/// Reconnect attempts before a connection is given up.
const RECONNECT_ATTEMPTS: u32 = 20;
/// At most this many error messages travel back to the coordinator.
const ERROR_SAMPLES: usize = 5;

/// What every connection of this worker shares.
struct Ctx {
    plan: Plan,
    format: WireFormat,
    started: Instant,
    next_ip: AtomicUsize,
    next_id: AtomicU64,
    connected: AtomicU64,
    connect_failed: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    reconnects: AtomicU64,
    errors: Mutex<(u64, Vec<String>)>,
    /// A draining edge's Reconnect frame, by user: reconnect no earlier than this.
    hints: Mutex<std::collections::HashMap<u64, Instant>>,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn options(&self) -> ConnectOptions {
        let ips = &self.plan.source_ips;
        let local_addr =
            (!ips.is_empty()).then(|| ips[self.next_ip.fetch_add(1, Relaxed) % ips.len()]);
        ConnectOptions {
            websocket: WebSocketConfig::default().read_buffer_size(self.plan.read_buffer),
            local_addr,
            connect_timeout: self.request_timeout().max(Duration::from_secs(10)),
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.plan.request_timeout_s)
    }

    fn frame_id(&self) -> u64 {
        OTHER_IDS + self.next_id.fetch_add(1, Relaxed)
    }

    fn error(&self, what: impl std::fmt::Display) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.0 += 1;
        if e.1.len() < ERROR_SAMPLES {
            e.1.push(what.to_string());
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            connected: self.connected.load(Relaxed),
            connect_failed: self.connect_failed.load(Relaxed),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
        }
    }

    /// Connects `cred`, counting the connection.
    /// The user's own edge first (placement by user id), then the others in turn.
    async fn connect(&self, cred: &Cred) -> Result<Connection, ConnectionError> {
        let urls = &self.plan.ws_urls;
        let n = urls.len().max(1);
        let first = (cred.user_id % n as u64) as usize;
        let mut last = None;
        for k in 0..n {
            let Some(url) = urls.get((first + k) % n) else {
                break;
            };
            match Connection::connect_with(url, &cred.token, self.format, &self.options()).await {
                Ok((conn, _welcome)) => {
                    self.connected.fetch_add(1, Relaxed);
                    return Ok(conn);
                }
                Err(
                    e @ ConnectionError::Rejected {
                        status: 401 | 403, ..
                    },
                ) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectionError::Request("no WebSocket URL".into())))
    }

    /// A Reconnect frame for `cred`: its next reconnect waits `after_ms` (at most a
    /// minute), as a real client spreads its return after a restart.
    fn hint(&self, cred: &Cred, after_ms: u32) {
        let wait = Duration::from_millis(u64::from(after_ms)).min(Duration::from_secs(60));
        self.hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cred.user_id, Instant::now() + wait);
    }

    /// Connects again after a drop, with backoff; `None` when it keeps failing.
    async fn reconnect(&self, cred: &Cred, why: &ConnectionError) -> Option<Connection> {
        let hint = self
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cred.user_id);
        if let Some(at) = hint {
            tokio::time::sleep_until(at.into()).await;
        }
        self.connected.fetch_sub(1, Relaxed);
        self.reconnects.fetch_add(1, Relaxed);
        self.error(format_args!("connection dropped: {why}"));
        let mut wait = Duration::from_millis(50);
        for _ in 0..RECONNECT_ATTEMPTS {
            match self.connect(cred).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    self.error(format_args!("reconnect: {e}"));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        None
    }

    fn outcome(&self) -> Outcome {
        let (errors, error_samples) = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Outcome {
            progress: self.progress(),
            retries: self.retries.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            errors,
            error_samples,
            ..Outcome::default()
        }
    }
}

/// Writes one report line on stdout (whole lines: the lock is held for the write).
pub fn emit(report: &Report) {
    let Ok(line) = serde_json::to_string(report) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout means the coordinator is gone; the stdin watcher ends the run.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Lets this process hold as many files as its hard limit allows.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// The worker's main: reads its plan from stdin, runs it, reports on stdout.
pub async fn main() -> std::process::ExitCode {
    raise_file_limit();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let plan: Plan = match lines.next_line().await {
        Ok(Some(line)) => match serde_json::from_str(&line) {
            Ok(p) => p,
            Err(e) => {
                emit(&Report::Failed(format!("bad plan: {e}")));
                return std::process::ExitCode::from(2);
            }
        },
        _ => return std::process::ExitCode::from(2),
    };
    let (phase_tx, phase) = watch::channel(Phase::Setup);
    tokio::spawn(async move {
        loop {
            let next = match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Control>(&line) {
                    Ok(Control::Go) => Phase::Go,
                    Ok(Control::Stop) => Phase::Stop,
                    Err(_) => continue,
                },
                // The coordinator is gone: stop.
                _ => Phase::Stop,
            };
            let _ = phase_tx.send(next);
            if next == Phase::Stop {
                // Keep the sender alive so receivers see Stop, not a closed channel.
                std::future::pending::<()>().await;
            }
        }
    });
    let format = if plan.format == "json" {
        WireFormat::Json
    } else {
        WireFormat::Proto
    };
    let ctx = Arc::new(Ctx {
        plan,
        format,
        started: Instant::now(),
        next_ip: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        connect_failed: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        errors: Mutex::new((0, Vec::new())),
        hints: Mutex::new(std::collections::HashMap::new()),
    });
    let ticker = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                emit(&Report::Tick(ctx.progress()));
            }
        })
    };
    let outcome = match ctx.plan.task.clone() {
        Task::Connect {
            devices,
            concurrency,
            hold,
        } => connect_task(ctx.clone(), devices, concurrency, hold, phase).await,
        Task::Direct { pairs, window } => direct_task(ctx.clone(), pairs, window, phase).await,
        Task::Offline {
            sender,
            receiver,
            messages,
            window,
        } => offline_task(ctx.clone(), sender, receiver, messages, window, phase).await,
        Task::Group {
            sender,
            members,
            rate,
            window,
        } => group_task(ctx.clone(), sender, members, rate, window, phase).await,
        Task::Presence {
            subject,
            subscribers,
            stranger,
            cycles,
            contacts_only,
            pause_s,
            transition_timeout_s,
        } => {
            let settings = presence::Settings {
                cycles,
                contacts_only,
                pause: Duration::from_secs_f64(pause_s),
                timeout: Duration::from_secs_f64(transition_timeout_s),
            };
            presence::presence_task(ctx.clone(), subject, subscribers, stranger, settings, phase)
                .await
        }
    };
    ticker.abort();
    emit(&Report::Done(Box::new(outcome)));
    std::process::ExitCode::SUCCESS
}

/// Waits until the phase is at least `want` (Stop counts as past everything).
async fn reach(phase: &mut watch::Receiver<Phase>, want: Phase) -> Phase {
    phase
        .wait_for(|p| *p == want || *p == Phase::Stop)
        .await
        .map(|p| *p)
        .unwrap_or(Phase::Stop)
}

// ---------------------------------------------------------------------------------------
// connect / idle

/// Connects every device (bounded concurrency), then holds the connections (pinging so
/// the server keeps them) until released.
async fn connect_task(
    ctx: Arc<Ctx>,
    devices: Vec<Cred>,
    concurrency: usize,
    hold: bool,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    if !hold {
        emit(&Report::Ready(ctx.progress()));
        if reach(&mut phase, Phase::Go).await == Phase::Stop {
            let mut o = ctx.outcome();
            o.interrupted = true;
            return o;
        }
    }
    let total = devices.len();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let (release_tx, release) = watch::channel(false);
    let (done_tx, mut done) = mpsc::unbounded_channel::<Option<u64>>();
    let storm_start = ctx.now_ns();
    let mut holders = Vec::with_capacity(total);
    for cred in devices {
        let (ctx, gate, done_tx, mut release) =
            (ctx.clone(), gate.clone(), done_tx.clone(), release.clone());
        holders.push(tokio::spawn(async move {
            let conn = {
                let Ok(_permit) = gate.acquire().await else {
                    return;
                };
                let t0 = ctx.now_ns();
                match ctx.connect(&cred).await {
                    Ok(c) => {
                        let _ = done_tx.send(Some(ctx.now_ns() - t0));
                        c
                    }
                    Err(e) => {
                        ctx.connect_failed.fetch_add(1, Relaxed);
                        ctx.error(format_args!("connect: {e}"));
                        let _ = done_tx.send(None);
                        return;
                    }
                }
            };
            hold_connection(&ctx, conn, &mut release).await;
        }));
    }
    drop(done_tx);
    let mut latency = stats::histogram();
    let mut welcomed_at = Vec::with_capacity(total);
    let mut interrupted = false;
    while welcomed_at.len() + (ctx.connect_failed.load(Relaxed) as usize) < total {
        tokio::select! {
            got = done.recv() => match got {
                Some(Some(ns)) => {
                    stats::record_ns(&mut latency, ns);
                    welcomed_at.push(ctx.now_ns());
                }
                Some(None) => {}
                None => break,
            },
            _ = reach(&mut phase, Phase::Stop) => {
                interrupted = true;
                break;
            }
        }
    }
    let last_ns = welcomed_at.last().copied().unwrap_or(storm_start);
    let storm_s = (last_ns - storm_start) as f64 / 1e9;
    // Storm done, every connection up: the coordinator samples the server, then says
    // Go (idle: the hold begins) or Stop.
    if !interrupted {
        emit(&Report::Ready(ctx.progress()));
    }
    let mut held_s = 0.0;
    if hold && !interrupted && reach(&mut phase, Phase::Go).await == Phase::Go {
        let t0 = Instant::now();
        reach(&mut phase, Phase::Stop).await;
        held_s = stats::secs(t0.elapsed());
    } else if !interrupted {
        reach(&mut phase, Phase::Stop).await;
    }
    let mut outcome = ctx.outcome();
    // Everyone closes now; a close that hangs is cut off with the task.
    let _ = release_tx.send(true);
    for h in holders {
        if tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .is_err()
        {
            ctx.error("a connection did not close within 10 s");
        }
    }
    outcome.latency = stats::encode_histogram(&latency);
    outcome.measured_s = if hold { held_s } else { storm_s };
    outcome.storm_s = storm_s;
    outcome.series.connections = stats::per_second(welcomed_at.into_iter(), storm_start);
    outcome.interrupted = interrupted;
    outcome
}

/// Resolves once the flag is set (or its sender is gone).
async fn released(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|r| *r).await;
}

/// Keeps one connection open (answering the server's pings by reading, sending our own
/// well inside its idle timeout) until `release`.
async fn hold_connection(ctx: &Ctx, mut conn: Connection, release: &mut watch::Receiver<bool>) {
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    loop {
        tokio::select! {
            got = conn.recv() => {
                if let Err(e) = got {
                    ctx.connected.fetch_sub(1, Relaxed);
                    ctx.error(format_args!("held connection dropped: {e}"));
                    return;
                }
            }
            _ = ping.tick() => {
                let frame = ClientFrame {
                    id: ctx.frame_id(),
                    body: Some(client_frame::Body::Ping(v1::Ping { client_time_ms: 0 })),
                };
                if let Err(e) = conn.send(&frame).await {
                    ctx.connected.fetch_sub(1, Relaxed);
                    ctx.error(format_args!("held connection dropped: {e}"));
                    return;
                }
            }
            () = released(release) => break,
        }
    }
    let _ = conn.close().await;
}

// ---------------------------------------------------------------------------------------
// direct / offline

/// The sending side of a conversation: a window of unacked messages, retried with the
/// same `client_msg_id` until acked.
struct Sender {
    cred: Cred,
    to_user: u64,
    conn: Connection,
    /// Message index → when it was last written.
    inflight: BTreeMap<u32, Instant>,
    conversation_id: String,
    /// Indexes written again since the auditor last heard of it.
    resent: Vec<u32>,
}

impl Sender {
    /// A sender to `to_user` on `conn`, nothing sent yet.
    fn new(cred: Cred, to_user: u64, conn: Connection) -> Sender {
        Sender {
            cred,
            to_user,
            conn,
            inflight: BTreeMap::new(),
            conversation_id: String::new(),
            resent: Vec::new(),
        }
    }

    /// Tells the auditor which messages were sent again since the last call.
    fn report_resent(&mut self, conv: &mut Conversation) {
        for index in self.resent.drain(..) {
            conv.resent(index);
        }
    }

    fn frame(&self, ctx: &Ctx, index: u32) -> ClientFrame {
        // A direct message names the other user; a group message its conversation.
        let conversation_id = match self.to_user {
            0 => self.conversation_id.clone(),
            _ => String::new(),
        };
        ClientFrame {
            id: u64::from(index) + 1,
            body: Some(client_frame::Body::Send(v1::Send {
                client_msg_id: audit::client_msg_id(index),
                conversation_id,
                to_user: self.to_user,
                kind: v1::MessageKind::Binary as i32,
                body: audit::body(index, ctx.plan.body_bytes).into(),
                ..Default::default()
            })),
        }
    }

    /// Fills the window with new messages (up to `limit` messages in all).
    async fn fill(
        &mut self,
        ctx: &Ctx,
        conv: &mut Conversation,
        window: usize,
        limit: u64,
    ) -> Result<(), ConnectionError> {
        let mut fed = false;
        while self.inflight.len() < window && (conv.sent_count() as u64) < limit {
            let index = conv.send(ctx.now_ns());
            self.conn.feed(&self.frame(ctx, index)).await?;
            self.inflight.insert(index, Instant::now());
            ctx.sent.fetch_add(1, Relaxed);
            fed = true;
        }
        if fed {
            self.conn.flush().await?;
        }
        Ok(())
    }

    /// Writes again what has waited longer than the request timeout (`all`: everything).
    async fn resend(&mut self, ctx: &Ctx, all: bool) -> Result<(), ConnectionError> {
        let due = self.due(ctx, all);
        self.resent.extend_from_slice(&due);
        self.rewrite(ctx, &due).await
    }

    /// Unacked messages that have waited longer than the request timeout (`all`: every
    /// unacked one).
    fn due(&self, ctx: &Ctx, all: bool) -> Vec<u32> {
        let now = Instant::now();
        let timeout = ctx.request_timeout();
        self.inflight
            .iter()
            .filter(|(_, t)| all || now.duration_since(**t) >= timeout)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Writes messages `due` again (the caller tells the auditor).
    async fn rewrite(&mut self, ctx: &Ctx, due: &[u32]) -> Result<(), ConnectionError> {
        let now = Instant::now();
        for &index in due {
            self.conn.feed(&self.frame(ctx, index)).await?;
            self.inflight.insert(index, now);
        }
        if !due.is_empty() {
            ctx.retries.fetch_add(due.len() as u64, Relaxed);
            self.conn.flush().await?;
        }
        Ok(())
    }

    fn on_frame(&mut self, ctx: &Ctx, conv: &mut Conversation, frame: ServerFrame) {
        match frame.body {
            Some(server_frame::Body::Ack(ack)) => {
                let Ok(index) = ack.client_msg_id.parse::<u32>() else {
                    ctx.error(format_args!(
                        "ack for unknown message {:?}",
                        ack.client_msg_id
                    ));
                    return;
                };
                conv.ack(index, ack.seq, ack.message_id, ctx.now_ns());
                if self.inflight.remove(&index).is_some() {
                    ctx.acked.fetch_add(1, Relaxed);
                }
                if self.conversation_id.is_empty() {
                    self.conversation_id = ack.conversation_id;
                }
            }
            Some(server_frame::Body::Error(e)) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                ctx.error(format_args!(
                    "error frame {code:?} for frame {}: {}",
                    frame.id, e.message
                ));
                // Unavailable/internal are retried at the request timeout, and so is
                // RATE_LIMITED (not stored: the same client_msg_id later is the retry,
                // and the request timeout is the back-off; the error above shows the
                // run hit the server's --messages-per-second); anything else is a
                // refusal that retrying cannot fix: give the message up (it stays
                // unacked in the tally).
                if !matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited
                ) && (1..OTHER_IDS).contains(&frame.id)
                {
                    self.inflight.remove(&((frame.id - 1) as u32));
                }
            }
            Some(server_frame::Body::Reconnect(r)) => ctx.hint(&self.cred, r.after_ms),
            // Receipts, pongs and the like.
            _ => {}
        }
    }

    /// Reconnects and writes every unacked message again; false when it cannot.
    async fn recover(&mut self, ctx: &Ctx, why: &ConnectionError) -> bool {
        let Some(conn) = ctx.reconnect(&self.cred, why).await else {
            return false;
        };
        self.conn = conn;
        self.resend(ctx, true).await.is_ok()
    }
}

/// The receiving device: audits every frame and acknowledges with `Received`.
struct Receiver {
    cred: Cred,
    conn: Connection,
    /// Which of the conversation's receiving devices this is (for the auditor).
    index: usize,
    /// The `up_to_seq` of the last `Received` written.
    acked_up_to: u64,
    last_received: Instant,
    /// Answers to this Sync are still coming.
    sync_id: Option<u64>,
}

impl Receiver {
    /// A receiver on `conn`, nothing acknowledged yet.
    fn new(cred: Cred, conn: Connection) -> Receiver {
        Receiver::nth(cred, conn, 0)
    }

    /// Receiving device `index` of the conversation, on `conn`.
    fn nth(cred: Cred, conn: Connection, index: usize) -> Receiver {
        Receiver {
            cred,
            conn,
            index,
            acked_up_to: 0,
            last_received: Instant::now(),
            sync_id: None,
        }
    }

    fn on_frame(&mut self, ctx: &Ctx, conv: &mut Conversation, frame: ServerFrame) {
        let before = conv.arrivals().len();
        let now = ctx.now_ns();
        let r = self.index;
        let mut deliver = |origin: Origin, m: v1::Message| {
            if m.kind == v1::MessageKind::System as i32 {
                // A group's "created" / "members added": not ours, but it holds a seq.
                conv.foreign(r, m.seq, m.message_id);
            } else {
                conv.deliver(
                    r,
                    origin,
                    m.seq,
                    m.message_id,
                    &m.client_msg_id,
                    &m.body,
                    now,
                );
            }
        };
        match frame.body {
            Some(server_frame::Body::Message(m)) => deliver(Origin::Live, m),
            Some(server_frame::Body::SyncBatch(b)) => {
                for m in b.messages {
                    deliver(Origin::Sync, m);
                }
            }
            Some(server_frame::Body::SyncDone(_)) if Some(frame.id) == self.sync_id => {
                self.sync_id = None;
            }
            Some(server_frame::Body::Error(e)) => {
                ctx.error(format_args!(
                    "error frame for receiver frame {}: {e:?}",
                    frame.id
                ));
                if Some(frame.id) == self.sync_id {
                    self.sync_id = None;
                }
            }
            Some(server_frame::Body::Reconnect(r)) => ctx.hint(&self.cred, r.after_ms),
            _ => {}
        }
        let new = conv.arrivals().len() - before;
        ctx.delivered.fetch_add(new as u64, Relaxed);
    }

    /// Writes `Received` up to what has arrived in order, when it moved by `every` or
    /// the last one is older than 100 ms.
    async fn acknowledge(
        &mut self,
        ctx: &Ctx,
        conv: &Conversation,
        conversation_id: &str,
        every: u64,
    ) -> Result<(), ConnectionError> {
        let up_to = conv.contiguous(self.index);
        self.acknowledge_up_to(ctx, up_to, conversation_id, every)
            .await
    }

    /// [`Receiver::acknowledge`] with the in-order position already read.
    async fn acknowledge_up_to(
        &mut self,
        ctx: &Ctx,
        up_to: u64,
        conversation_id: &str,
        every: u64,
    ) -> Result<(), ConnectionError> {
        if conversation_id.is_empty() || up_to <= self.acked_up_to {
            return Ok(());
        }
        if up_to - self.acked_up_to < every && self.last_received.elapsed() < TICK * 2 {
            return Ok(());
        }
        let frame = ClientFrame {
            id: ctx.frame_id(),
            body: Some(client_frame::Body::Received(v1::Received {
                conversation_id: conversation_id.to_owned(),
                up_to_seq: up_to,
            })),
        };
        self.conn.send(&frame).await?;
        self.acked_up_to = up_to;
        self.last_received = Instant::now();
        Ok(())
    }

    /// Asks for everything after what has arrived in order (a new epoch for the auditor).
    async fn sync(
        &mut self,
        ctx: &Ctx,
        conv: &mut Conversation,
        conversation_id: &str,
    ) -> Result<(), ConnectionError> {
        conv.new_epoch(self.index);
        let cursor = conv.contiguous(self.index);
        self.sync_from(ctx, cursor, conversation_id).await
    }

    /// Asks for everything after `cursor` (the caller started the auditor's new epoch).
    async fn sync_from(
        &mut self,
        ctx: &Ctx,
        cursor: u64,
        conversation_id: &str,
    ) -> Result<(), ConnectionError> {
        let cursors = if conversation_id.is_empty() {
            Vec::new()
        } else {
            vec![v1::Cursor {
                conversation_id: conversation_id.to_owned(),
                seq: cursor,
            }]
        };
        let id = ctx.frame_id();
        self.sync_id = Some(id);
        self.conn
            .send(&ClientFrame {
                id,
                body: Some(client_frame::Body::Sync(v1::Sync { cursors })),
            })
            .await
    }

    async fn recover(
        &mut self,
        ctx: &Ctx,
        conv: &mut Conversation,
        conversation_id: &str,
        why: &ConnectionError,
    ) -> bool {
        let Some(conn) = ctx.reconnect(&self.cred, why).await else {
            return false;
        };
        self.conn = conn;
        self.acked_up_to = 0;
        self.sync(ctx, conv, conversation_id).await.is_ok()
    }
}

/// Connects `cred` during setup, counting a failure.
async fn setup_connect(ctx: &Ctx, cred: &Cred) -> Option<Connection> {
    match ctx.connect(cred).await {
        Ok(c) => Some(c),
        Err(e) => {
            ctx.connect_failed.fetch_add(1, Relaxed);
            ctx.error(format_args!("connect: {e}"));
            None
        }
    }
}

/// Everything a finished conversation contributes to the outcome.
struct Audited {
    tally: Tally,
    conv: Conversation,
}

fn fold(ctx: &Ctx, audited: Vec<Audited>, go_ns: u64, measured_s: f64) -> Outcome {
    let mut o = ctx.outcome();
    let mut latency = stats::histogram();
    let mut ack_latency = stats::histogram();
    let mut per_second: Vec<Histogram<u64>> = Vec::new();
    let mut series = Series::default();
    for a in &audited {
        o.tally.add(&a.tally);
        for arrival in a.conv.arrivals() {
            stats::record_ns(&mut latency, arrival.latency_ns);
            let s = (arrival.at_ns.saturating_sub(go_ns) / 1_000_000_000) as usize;
            if per_second.len() <= s {
                per_second.resize_with(s + 1, stats::histogram);
            }
            stats::record_ns(&mut per_second[s], arrival.latency_ns);
        }
        for (sent, acked) in a.conv.acks() {
            stats::record_ns(&mut ack_latency, acked - sent);
        }
        stats::add_series(&mut series.sent, &stats::per_second(a.conv.sends(), go_ns));
        stats::add_series(
            &mut series.acked,
            &stats::per_second(a.conv.acks().map(|(_, t)| t), go_ns),
        );
        stats::add_series(
            &mut series.delivered,
            &stats::per_second(a.conv.arrivals().iter().map(|a| a.at_ns), go_ns),
        );
    }
    series.latency = per_second.iter().map(stats::encode_histogram).collect();
    o.series = series;
    o.latency = stats::encode_histogram(&latency);
    o.ack_latency = stats::encode_histogram(&ack_latency);
    o.measured_s = measured_s;
    o
}

/// Sender→receiver pairs, each sender keeping `window` messages unacked.
async fn direct_task(
    ctx: Arc<Ctx>,
    pairs: Vec<(Cred, Cred)>,
    window: usize,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    // Set up every pair before the measured phase.
    let gate = Arc::new(Semaphore::new(64));
    let mut setups = Vec::with_capacity(pairs.len());
    for (s, r) in pairs {
        let (ctx, gate) = (ctx.clone(), gate.clone());
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let sconn = setup_connect(&ctx, &s).await?;
            let rconn = setup_connect(&ctx, &r).await?;
            Some((Sender::new(s, r.user_id, sconn), Receiver::new(r, rconn)))
        }));
    }
    let mut ready = Vec::with_capacity(setups.len());
    for s in setups {
        if let Ok(Some(pair)) = s.await {
            ready.push(pair);
        }
    }
    emit(&Report::Ready(ctx.progress()));
    if reach(&mut phase, Phase::Go).await == Phase::Stop {
        let mut o = ctx.outcome();
        o.interrupted = true;
        return o;
    }
    let go_ns = ctx.now_ns();
    let go = Instant::now();
    let (end_tx, end) = watch::channel(false);
    let tasks: Vec<_> = ready
        .into_iter()
        .map(|(s, r)| tokio::spawn(run_pair(ctx.clone(), s, r, window, end.clone())))
        .collect();
    // The coordinator owns the clock: the measured phase ends at its Stop.
    reach(&mut phase, Phase::Stop).await;
    let measured_s = stats::secs(go.elapsed());
    let _ = end_tx.send(true);
    let mut audited = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(a) => audited.push(a),
            Err(e) => ctx.error(format_args!("pair task failed: {e}")),
        }
    }
    fold(&ctx, audited, go_ns, measured_s)
}

/// Drives one pair until the measured phase ends, then drains: no new messages, until
/// everything acked has arrived or the drain time is up.
async fn run_pair(
    ctx: Arc<Ctx>,
    mut tx: Sender,
    mut rx: Receiver,
    window: usize,
    mut end: watch::Receiver<bool>,
) -> Audited {
    let mut conv = Conversation::new(1);
    let mut running = true;
    let mut drain_until = None;
    let mut tick = tokio::time::interval(TICK);
    let every = (window as u64 / 2).max(1);
    loop {
        // Before any frame that a resend could cause is read.
        tx.report_resent(&mut conv);
        if running
            && let Err(e) = tx.fill(&ctx, &mut conv, window, u64::MAX).await
            && !tx.recover(&ctx, &e).await
        {
            break;
        }
        if !running && conv.settled() {
            break;
        }
        tokio::select! {
            got = rx.conn.recv() => match got {
                Ok(frame) => {
                    rx.on_frame(&ctx, &mut conv, frame);
                    if let Err(e) = rx.acknowledge(&ctx, &conv, &tx.conversation_id, every).await
                        && !rx.recover(&ctx, &mut conv, &tx.conversation_id, &e).await
                    {
                        break;
                    }
                }
                Err(e) => {
                    if !rx.recover(&ctx, &mut conv, &tx.conversation_id, &e).await {
                        break;
                    }
                }
            },
            got = tx.conn.recv() => match got {
                Ok(frame) => tx.on_frame(&ctx, &mut conv, frame),
                Err(e) => {
                    if !tx.recover(&ctx, &e).await {
                        break;
                    }
                }
            },
            _ = tick.tick() => {
                if drain_until.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if let Err(e) = tx.resend(&ctx, false).await
                    && !tx.recover(&ctx, &e).await
                {
                    break;
                }
                if let Err(e) = rx.acknowledge(&ctx, &conv, &tx.conversation_id, 1).await
                    && !rx.recover(&ctx, &mut conv, &tx.conversation_id, &e).await
                {
                    break;
                }
            }
            () = released(&mut end), if running => {
                running = false;
                drain_until = Some(Instant::now() + Duration::from_secs_f64(ctx.plan.drain_s));
            }
        }
    }
    // The last Received, so the server's cursor matches what arrived.
    let _ = rx.acknowledge(&ctx, &conv, &tx.conversation_id, 1).await;
    let _ = tx.conn.close().await;
    let _ = rx.conn.close().await;
    Audited {
        tally: conv.finish(),
        conv,
    }
}

/// One sender stores `messages` for an offline receiver; then the receiver connects and
/// syncs. Latency is send→ack; `store_s` and `sync_s` time the two phases.
async fn offline_task(
    ctx: Arc<Ctx>,
    scred: Cred,
    rcred: Cred,
    messages: u64,
    window: usize,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let Some(sconn) = setup_connect(&ctx, &scred).await else {
        return ctx.outcome();
    };
    emit(&Report::Ready(ctx.progress()));
    if reach(&mut phase, Phase::Go).await == Phase::Stop {
        let mut o = ctx.outcome();
        o.interrupted = true;
        return o;
    }
    let go_ns = ctx.now_ns();
    let go = Instant::now();
    let mut conv = Conversation::new(1);
    let mut tx = Sender::new(scred, rcred.user_id, sconn);
    let mut tick = tokio::time::interval(TICK);
    let mut interrupted = false;
    let mut failed = false;
    while (conv.sent_count() as u64) < messages || !tx.inflight.is_empty() {
        tx.report_resent(&mut conv);
        if let Err(e) = tx.fill(&ctx, &mut conv, window, messages).await
            && !tx.recover(&ctx, &e).await
        {
            failed = true;
            break;
        }
        tokio::select! {
            got = tx.conn.recv() => match got {
                Ok(frame) => tx.on_frame(&ctx, &mut conv, frame),
                Err(e) => if !tx.recover(&ctx, &e).await { failed = true; break; },
            },
            _ = tick.tick() => {
                if let Err(e) = tx.resend(&ctx, false).await
                    && !tx.recover(&ctx, &e).await
                {
                    failed = true;
                    break;
                }
            }
            _ = reach(&mut phase, Phase::Stop) => {
                interrupted = true;
                break;
            }
        }
    }
    let store_s = stats::secs(go.elapsed());
    let conversation_id = tx.conversation_id.clone();
    let _ = tx.conn.close().await;
    // Sync phase: the receiver comes online and catches up.
    let mut sync_s = 0.0;
    if !interrupted && !failed {
        let t0 = Instant::now();
        if let Some(conn) = setup_connect(&ctx, &rcred).await {
            let mut rx = Receiver::new(rcred, conn);
            let deadline = t0 + Duration::from_secs_f64(ctx.plan.drain_s.max(1.0));
            // Conversations not named start from the device's stored cursor: none yet.
            let mut ok = rx.sync(&ctx, &mut conv, "").await.is_ok();
            let mut rounds = 0;
            while ok && !conv.settled() && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::select! {
                    got = tokio::time::timeout(left, rx.conn.recv()) => match got {
                        Ok(Ok(frame)) => {
                            rx.on_frame(&ctx, &mut conv, frame);
                            // A sync that ended short (paged): ask for the rest.
                            if rx.sync_id.is_none() && !conv.settled() && rounds < 1_000 {
                                rounds += 1;
                                ok = rx.sync(&ctx, &mut conv, &conversation_id).await.is_ok();
                            }
                        }
                        Ok(Err(e)) => {
                            ok = rx.recover(&ctx, &mut conv, &conversation_id, &e).await;
                        }
                        Err(_) => break,
                    },
                    _ = reach(&mut phase, Phase::Stop) => {
                        interrupted = true;
                        break;
                    }
                }
            }
            sync_s = stats::secs(t0.elapsed());
            let _ = rx.acknowledge(&ctx, &conv, &conversation_id, 1).await;
            let _ = rx.conn.close().await;
        }
    }
    let measured_s = stats::secs(go.elapsed());
    let tally = conv.finish();
    let mut o = fold(&ctx, vec![Audited { tally, conv }], go_ns, measured_s);
    // For offline the latency that matters is send→ack; send→arrival includes the time
    // the receiver was away by design.
    o.latency = o.ack_latency.clone();
    o.store_s = store_s;
    o.sync_s = sync_s;
    o.interrupted = interrupted;
    o
}

// ---------------------------------------------------------------------------------------
// group

/// The audit of a group's conversation, shared by the sender's task and every member's:
/// each holds the lock only to record a frame, never across an await.
type SharedConversation = Arc<Mutex<Conversation>>;

/// What the group's sender and members share.
struct Audit {
    conv: SharedConversation,
    /// The sender writes no new message (Stop, or it gave up).
    sending_over: Arc<AtomicBool>,
}

fn lock(conv: &Mutex<Conversation>) -> std::sync::MutexGuard<'_, Conversation> {
    conv.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long setup waits for the group's creation to reach every member.
const CREATED_WAIT: Duration = Duration::from_secs(30);

/// Creates the group on `conn` (its user is the owner) with every one of `members` at
/// once. Returns the group's conversation id and the seq of the system message the
/// creation wrote (the conversation's messages up to it are not the harness's).
async fn create_group(
    ctx: &Ctx,
    conn: &mut Connection,
    owner: u64,
    members: &[u64],
) -> Result<(String, u64), String> {
    let request = v1::GroupRequest {
        op: Some(v1::group_request::Op::Create(v1::GroupCreate {
            // Retrying with the same create_id returns the same group.
            create_id: format!("natter-loadtest-{owner}"),
            name: format!("natter-loadtest {} members", members.len() + 1),
            members: members.to_vec(),
            ..Default::default()
        })),
    };
    let size = members.len() + 1;
    let timeout = ctx.request_timeout().max(Duration::from_secs(30));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let id = ctx.frame_id();
        let frame = ClientFrame {
            id,
            body: Some(client_frame::Body::Group(Box::new(request.clone()))),
        };
        conn.send(&frame)
            .await
            .map_err(|e| format!("creating the group: {e}"))?;
        let deadline = Instant::now() + timeout;
        let reply = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match conn.recv_timeout(left).await {
                Ok(f) if f.id == id => break Ok(f.body),
                // The group's own system message pushed to its owner, and the like.
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        match reply {
            Ok(Some(server_frame::Body::GroupResult(r))) => {
                let group = r
                    .group
                    .ok_or("creating the group: a result without the group")?;
                return Ok((group.conversation_id, r.seq));
            }
            Ok(Some(server_frame::Body::Error(e))) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                if matches!(code, ErrorCode::Unavailable | ErrorCode::Internal) && attempt < 3 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let hint = match code {
                    ErrorCode::GroupFull => {
                        " (raise the server's limit: natter serve --max-group-members)"
                    }
                    _ => "",
                };
                return Err(format!(
                    "creating a group of {size} members: {code:?}: {}{hint}",
                    e.message
                ));
            }
            Ok(other) => {
                return Err(format!("creating the group: unexpected reply {other:?}"));
            }
            Err(ConnectionError::Timeout(_)) if attempt < 3 => {}
            Err(e) => return Err(format!("creating a group of {size} members: {e}")),
        }
    }
}

/// One sender, every other device a member of one group: the members connect, the
/// sender creates the group with all of them, and once the creation has reached every
/// member the sender sends `rate` messages a second (at most `window` unacked) until
/// Stop. Every member device must receive every message once, in order.
async fn group_task(
    ctx: Arc<Ctx>,
    scred: Cred,
    members: Vec<Cred>,
    rate: f64,
    window: usize,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let sconn = setup_connect(&ctx, &scred).await;
    // Members connect 64 at a time, like the direct scenario's pairs.
    let gate = Arc::new(Semaphore::new(64));
    let mut setups = Vec::with_capacity(members.len());
    for (i, cred) in members.into_iter().enumerate() {
        let (ctx, gate) = (ctx.clone(), gate.clone());
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let conn = setup_connect(&ctx, &cred).await?;
            Some(Receiver::nth(cred, conn, i))
        }));
    }
    let total = setups.len();
    let mut receivers = Vec::with_capacity(total);
    for s in setups {
        if let Ok(Some(r)) = s.await {
            receivers.push(r);
        }
    }
    let Some(mut sconn) = sconn.filter(|_| receivers.len() == total) else {
        // The coordinator sees the failed connections in Ready and ends the run.
        emit(&Report::Ready(ctx.progress()));
        reach(&mut phase, Phase::Stop).await;
        return ctx.outcome();
    };
    let member_ids: Vec<u64> = receivers.iter().map(|r| r.cred.user_id).collect();
    let (conversation_id, created_seq) =
        match create_group(&ctx, &mut sconn, scred.user_id, &member_ids).await {
            Ok(c) => c,
            Err(e) => {
                emit(&Report::Failed(e));
                return ctx.outcome();
            }
        };
    let conv: SharedConversation = Arc::new(Mutex::new(Conversation::new(total)));
    lock(&conv).foreign_up_to(created_seq);
    // Members read from now on: the group's creation reaches them before Go.
    let (end_tx, end) = watch::channel(false);
    // Set once the sender writes no new message: until then a member holding every
    // message so far is not done (the sender's last one may be on its way).
    let sending_over = Arc::new(AtomicBool::new(false));
    let every = (window as u64 / 2).max(1);
    let indexes: Vec<usize> = receivers.iter().map(|r| r.index).collect();
    let member_tasks: Vec<_> = receivers
        .into_iter()
        .map(|rx| {
            tokio::spawn(run_member(
                ctx.clone(),
                rx,
                Audit {
                    conv: conv.clone(),
                    sending_over: sending_over.clone(),
                },
                conversation_id.clone(),
                every,
                end.clone(),
            ))
        })
        .collect();
    let waited = Instant::now();
    let short = loop {
        let short = {
            let c = lock(&conv);
            indexes
                .iter()
                .filter(|&&r| c.contiguous(r) < created_seq)
                .count()
        };
        if short == 0 || waited.elapsed() >= CREATED_WAIT {
            break short;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = reach(&mut phase, Phase::Stop) => break short,
        }
    };
    if short > 0 {
        ctx.error(format_args!(
            "{short} of {total} members did not get the group's creation (seq {created_seq}) \
             within {} s",
            CREATED_WAIT.as_secs()
        ));
    }
    emit(&Report::Ready(ctx.progress()));
    let go_phase = reach(&mut phase, Phase::Go).await;
    let go_ns = ctx.now_ns();
    let go = Instant::now();
    let mut sender = None;
    if go_phase == Phase::Go {
        let mut tx = Sender::new(scred, 0, sconn);
        tx.conversation_id = conversation_id;
        sender = Some(tokio::spawn(run_group_sender(
            ctx.clone(),
            tx,
            Audit {
                conv: conv.clone(),
                sending_over: sending_over.clone(),
            },
            rate,
            window,
            end.clone(),
        )));
        // The coordinator owns the clock: the measured phase ends at its Stop.
        reach(&mut phase, Phase::Stop).await;
    }
    let measured_s = stats::secs(go.elapsed());
    if sender.is_none() {
        sending_over.store(true, Release);
    }
    let _ = end_tx.send(true);
    if let Some(t) = sender
        && let Err(e) = t.await
    {
        ctx.error(format_args!("sender task failed: {e}"));
    }
    for t in member_tasks {
        if let Err(e) = t.await {
            ctx.error(format_args!("member task failed: {e}"));
        }
    }
    if go_phase != Phase::Go {
        let mut o = ctx.outcome();
        o.interrupted = true;
        return o;
    }
    let conv = match Arc::try_unwrap(conv) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => {
            ctx.error("the group's audit is still shared after every task ended");
            return ctx.outcome();
        }
    };
    let tally = conv.finish();
    fold(&ctx, vec![Audited { tally, conv }], go_ns, measured_s)
}

/// The group's one sender: `rate` messages a second on a fixed schedule from Go, at
/// most `window` unacked (a sender behind its schedule catches up as acks free the
/// window), retried with the same client_msg_id after the request timeout. After Stop it
/// sends nothing new and waits (at most the drain) for the last acks.
async fn run_group_sender(
    ctx: Arc<Ctx>,
    mut tx: Sender,
    audit: Audit,
    rate: f64,
    window: usize,
    mut end: watch::Receiver<bool>,
) {
    let Audit { conv, sending_over } = audit;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut running = true;
    let mut drain_until = None;
    let mut tick = tokio::time::interval(TICK);
    loop {
        if running {
            // Message k is due at k / rate seconds after Go.
            let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
            if let Err(e) = group_fill(&ctx, &mut tx, &conv, window, due, &mut sent).await
                && !group_sender_recover(&ctx, &mut tx, &conv, &e).await
            {
                break;
            }
        }
        if !running && tx.inflight.is_empty() {
            break;
        }
        let next = start + Duration::from_secs_f64(sent as f64 / rate);
        let may_send = running && tx.inflight.len() < window;
        tokio::select! {
            got = tx.conn.recv() => match got {
                Ok(frame) => {
                    let mut c = lock(&conv);
                    tx.on_frame(&ctx, &mut c, frame);
                }
                Err(e) => {
                    if !group_sender_recover(&ctx, &mut tx, &conv, &e).await {
                        break;
                    }
                }
            },
            () = tokio::time::sleep_until(next.into()), if may_send => {}
            _ = tick.tick() => {
                if drain_until.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let due = tx.due(&ctx, false);
                if !due.is_empty() {
                    // Told before the retry is written: members may see its re-push at once.
                    {
                        let mut c = lock(&conv);
                        for &i in &due {
                            c.resent(i);
                        }
                    }
                    if let Err(e) = tx.rewrite(&ctx, &due).await
                        && !group_sender_recover(&ctx, &mut tx, &conv, &e).await
                    {
                        break;
                    }
                }
            }
            () = released(&mut end), if running => {
                running = false;
                sending_over.store(true, Release);
                drain_until = Some(Instant::now() + Duration::from_secs_f64(ctx.plan.drain_s));
            }
        }
    }
    // Also when the sender gave up early.
    sending_over.store(true, Release);
    let _ = tx.conn.close().await;
}

/// Sends what is due (`sent` < `due`) while the window has room.
async fn group_fill(
    ctx: &Ctx,
    tx: &mut Sender,
    conv: &Mutex<Conversation>,
    window: usize,
    due: u64,
    sent: &mut u64,
) -> Result<(), ConnectionError> {
    let mut fed = false;
    while tx.inflight.len() < window && *sent < due {
        let index = lock(conv).send(ctx.now_ns());
        // In flight before it is written: a failed write is retried after a reconnect.
        tx.inflight.insert(index, Instant::now());
        *sent += 1;
        ctx.sent.fetch_add(1, Relaxed);
        fed = true;
        tx.conn.feed(&tx.frame(ctx, index)).await?;
    }
    if fed {
        tx.conn.flush().await?;
    }
    Ok(())
}

/// Reconnects the sender and writes every unacked message again; false when it cannot.
async fn group_sender_recover(
    ctx: &Ctx,
    tx: &mut Sender,
    conv: &Mutex<Conversation>,
    why: &ConnectionError,
) -> bool {
    let Some(conn) = ctx.reconnect(&tx.cred, why).await else {
        return false;
    };
    tx.conn = conn;
    let due = tx.due(ctx, true);
    {
        let mut c = lock(conv);
        for &i in &due {
            c.resent(i);
        }
    }
    tx.rewrite(ctx, &due).await.is_ok()
}

/// One member device: records every frame for the auditor and acknowledges with
/// `Received` (every `every` messages, or 100 ms after the last), until Stop and then
/// until it holds every acked message or the drain is over.
async fn run_member(
    ctx: Arc<Ctx>,
    mut rx: Receiver,
    audit: Audit,
    conversation_id: String,
    every: u64,
    mut end: watch::Receiver<bool>,
) {
    let Audit { conv, sending_over } = audit;
    let mut running = true;
    let mut drain_until = None;
    let mut tick = tokio::time::interval(TICK);
    // Syncs asked again because one ended short of the conversation's head.
    let mut resyncs = 0;
    loop {
        if !running && sending_over.load(Acquire) && lock(&conv).receiver_settled(rx.index) {
            break;
        }
        tokio::select! {
            got = rx.conn.recv() => match got {
                Ok(frame) => {
                    // A sync of ours ending: did it reach the head?
                    let head = match &frame.body {
                        Some(server_frame::Body::SyncDone(d)) if Some(frame.id) == rx.sync_id => d
                            .heads
                            .iter()
                            .find(|h| h.conversation_id == conversation_id)
                            .map(|h| h.seq),
                        _ => None,
                    };
                    let up_to = {
                        let mut c = lock(&conv);
                        rx.on_frame(&ctx, &mut c, frame);
                        c.contiguous(rx.index)
                    };
                    let mut result = rx
                        .acknowledge_up_to(&ctx, up_to, &conversation_id, every)
                        .await;
                    if head.is_some_and(|h| h > up_to) && resyncs < 1_000 && result.is_ok() {
                        resyncs += 1;
                        let cursor = {
                            let mut c = lock(&conv);
                            c.new_epoch(rx.index);
                            c.contiguous(rx.index)
                        };
                        result = rx.sync_from(&ctx, cursor, &conversation_id).await;
                    }
                    if let Err(e) = result
                        && !member_recover(&ctx, &mut rx, &conv, &conversation_id, &e).await
                    {
                        break;
                    }
                }
                Err(e) => {
                    if !member_recover(&ctx, &mut rx, &conv, &conversation_id, &e).await {
                        break;
                    }
                }
            },
            _ = tick.tick() => {
                if drain_until.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let up_to = lock(&conv).contiguous(rx.index);
                if let Err(e) = rx.acknowledge_up_to(&ctx, up_to, &conversation_id, 1).await
                    && !member_recover(&ctx, &mut rx, &conv, &conversation_id, &e).await
                {
                    break;
                }
            }
            () = released(&mut end), if running => {
                running = false;
                drain_until = Some(Instant::now() + Duration::from_secs_f64(ctx.plan.drain_s));
            }
        }
    }
    // The last Received, so the server's cursor matches what arrived.
    let up_to = lock(&conv).contiguous(rx.index);
    let _ = rx.acknowledge_up_to(&ctx, up_to, &conversation_id, 1).await;
    let _ = rx.conn.close().await;
}

/// Reconnects a member and syncs from what it holds in order; false when it cannot.
async fn member_recover(
    ctx: &Ctx,
    rx: &mut Receiver,
    conv: &Mutex<Conversation>,
    conversation_id: &str,
    why: &ConnectionError,
) -> bool {
    let Some(conn) = ctx.reconnect(&rx.cred, why).await else {
        return false;
    };
    rx.conn = conn;
    rx.acked_up_to = 0;
    let cursor = {
        let mut c = lock(conv);
        c.new_epoch(rx.index);
        c.contiguous(rx.index)
    };
    rx.sync_from(ctx, cursor, conversation_id).await.is_ok()
}

//! The coordinator: provisions users, starts the workers, owns the clock, samples the
//! server, shows progress, and turns the workers' outcomes into the summary.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, stream};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use natter_client::HttpClient;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};

use crate::{
    audit::Tally,
    ipc::{Control, Cred, Outcome, Plan, PresenceOutcome, Progress, Report, Task},
    report,
    stats::{self, ProcProbe, ProcSample, Series},
};

/// Connections one worker holds at most by default (the file limit here is 20,000).
pub const CONNECTIONS_PER_WORKER: usize = 10_000;

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub url: String,
    /// Edge WebSocket URLs; empty: the one derived from `url`.
    pub ws_urls: Vec<String>,
    pub server_pid: Option<u32>,
    pub workers: Option<usize>,
    pub report: Option<PathBuf>,
    pub format: String,
    pub provision_concurrency: usize,
    pub request_timeout: Duration,
    pub drain: Duration,
    pub body_bytes: usize,
    pub read_buffer: Option<usize>,
    /// Spread connections over 127.0.0.0/8 source addresses when the server is on loopback.
    pub spread_sources: bool,
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Scenario {
    Idle {
        connections: usize,
        duration: Duration,
        concurrency: usize,
    },
    Connect {
        connections: usize,
        concurrency: usize,
    },
    Direct {
        users: usize,
        window: usize,
        duration: Duration,
    },
    Offline {
        messages: u64,
        window: usize,
    },
    /// One sender and `members - 1` other members of one group.
    Group {
        members: usize,
        rate: u32,
        window: usize,
        duration: Duration,
    },
    /// One watched user and `subscribers` users subscribed to its presence (plus a
    /// stranger with `contacts_only`).
    Presence {
        subscribers: usize,
        cycles: u32,
        contacts_only: bool,
        pause: Duration,
        transition_timeout: Duration,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle { .. } => "idle",
            Scenario::Connect { .. } => "connect",
            Scenario::Direct { .. } => "direct",
            Scenario::Offline { .. } => "offline",
            Scenario::Group { .. } => "group",
            Scenario::Presence { .. } => "presence",
        }
    }

    /// Devices to provision (one user each).
    fn devices(&self) -> usize {
        match self {
            Scenario::Idle { connections, .. } | Scenario::Connect { connections, .. } => {
                *connections
            }
            Scenario::Direct { users, .. } => *users,
            Scenario::Offline { .. } => 2,
            Scenario::Group { members, .. } => *members,
            Scenario::Presence {
                subscribers,
                contacts_only,
                ..
            } => subscribers + 1 + usize::from(*contacts_only),
        }
    }

    fn latency_kind(&self) -> &'static str {
        match self {
            Scenario::Idle { .. } | Scenario::Connect { .. } => "connect_to_welcome",
            Scenario::Direct { .. } | Scenario::Group { .. } => "send_to_arrival",
            Scenario::Offline { .. } => "send_to_ack",
            Scenario::Presence { .. } => "transition_to_push",
        }
    }
}

/// How a run ended, as the exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything measured, the auditor found nothing.
    Ok,
    /// The auditor found lost, duplicated, misordered, gapped or corrupted messages.
    AuditFailed,
    /// The run could not be carried out (server unreachable, worker died...).
    Error,
    /// Ctrl-C: what was measured is printed.
    Interrupted,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::AuditFailed => 1,
            Verdict::Error => 2,
            Verdict::Interrupted => 130,
        }
    }
}

/// Progress bars on stderr (hidden when stderr is not a terminal).
struct Bars {
    multi: MultiProgress,
    main: ProgressBar,
    messages: ProgressBar,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let main = multi.add(ProgressBar::new(0));
        main.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:40}] {pos}/{len} {per_sec} {elapsed} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let messages = multi.add(ProgressBar::new_spinner());
        messages.set_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        messages.set_prefix("messages");
        Bars {
            multi,
            main,
            messages,
        }
    }

    fn stage(&self, name: &str, len: usize) {
        self.main.reset();
        self.main.set_prefix(name.to_owned());
        self.main.set_length(len as u64);
        self.main.set_position(0);
    }

    fn finish(&self) {
        self.main.finish_and_clear();
        self.messages.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// Ctrl-C as a future that can be polled again and again.
struct Interrupt {
    rx: mpsc::UnboundedReceiver<()>,
    fired: bool,
}

impl Interrupt {
    fn new() -> Interrupt {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        Interrupt { rx, fired: false }
    }

    async fn wait(&mut self) {
        if self.fired {
            return std::future::pending().await;
        }
        if self.rx.recv().await.is_some() {
            self.fired = true;
            eprintln!("interrupted: stopping, the summary follows");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Creates `count` users (and logs each in once) through the REST API.
async fn provision(
    http: &HttpClient,
    count: usize,
    concurrency: usize,
    bars: &Bars,
    interrupt: &mut Interrupt,
) -> Result<Option<Vec<Cred>>, String> {
    let run: String = {
        use rand::Rng as _;
        let mut rng = rand::rng();
        (0..8)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect()
    };
    let password = format!("loadtest-{run}");
    bars.stage("users", count);
    let mut creds = vec![None; count];
    let mut jobs = stream::iter(0..count)
        .map(|i| {
            let (http, password) = (http.clone(), password.clone());
            let name = format!("lt{run}x{i}");
            async move { (i, provision_one(&http, &name, &password).await) }
        })
        .buffer_unordered(concurrency.max(1));
    loop {
        tokio::select! {
            next = jobs.next() => match next {
                Some((i, Ok(cred))) => {
                    creds[i] = Some(cred);
                    bars.main.inc(1);
                }
                Some((_, Err(e))) => return Err(format!("provisioning users: {e}")),
                None => break,
            },
            () = interrupt.wait() => return Ok(None),
        }
    }
    Ok(Some(creds.into_iter().flatten().collect()))
}

/// Registers and logs in one user, retrying what a busy server may refuse for a moment.
pub(crate) async fn provision_one(
    http: &HttpClient,
    name: &str,
    password: &str,
) -> Result<Cred, String> {
    let mut attempt = 0;
    let mut registered = false;
    loop {
        attempt += 1;
        let result = async {
            if !registered {
                match http.register(name, password).await {
                    Ok(_) => {}
                    // An earlier attempt got through before its answer was lost.
                    Err(e) if e.status() == Some(409) && attempt > 1 => {}
                    Err(e) => return Err(e),
                }
                registered = true;
            }
            http.login(name, password, "loadtest").await
        }
        .await;
        match result {
            Ok(s) => {
                return Ok(Cred {
                    user_id: s.user_id.get(),
                    token: s.access_token,
                });
            }
            Err(e) if attempt < 3 && e.status().is_none_or(|s| s >= 500 || s == 429) => {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
}

/// A worker process and the pipe to its stdin.
struct Worker {
    child: Child,
    stdin: ChildStdin,
}

impl Worker {
    async fn control(&mut self, c: Control) {
        let Ok(mut line) = serde_json::to_string(&c) else {
            return;
        };
        line.push('\n');
        // A worker that is gone shows up as its missing Done.
        let _ = self.stdin.write_all(line.as_bytes()).await;
        let _ = self.stdin.flush().await;
    }
}

/// Starts `plans.len()` workers (this binary, `__worker`), each in its own process group
/// so a terminal's Ctrl-C reaches only the coordinator, which stops them in order.
async fn spawn_workers(
    plans: Vec<Plan>,
    reports: mpsc::UnboundedSender<(usize, Report)>,
) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let mut workers = Vec::with_capacity(plans.len());
    for plan in plans {
        let index = plan.worker;
        let mut child = Command::new(&exe)
            .arg("__worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting worker {index}: {e}"))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("worker {index}: no pipes"));
        };
        let mut line = serde_json::to_string(&plan).map_err(|e| e.to_string())?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("worker {index}: {e}"))?;
        let reports = reports.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut done = false;
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Report>(&line) {
                    Ok(r) => {
                        done |= matches!(r, Report::Done(_) | Report::Failed(_));
                        let _ = reports.send((index, r));
                    }
                    Err(e) => {
                        let _ = reports.send((index, Report::Failed(format!("bad report: {e}"))));
                    }
                }
            }
            if !done {
                let _ = reports.send((index, Report::Failed("exited without a result".into())));
            }
        });
        workers.push(Worker { child, stdin });
    }
    Ok(workers)
}

/// Source addresses for worker `w`: 50 addresses of 127.<w+1>.x.y when the server is on
/// loopback IPv4 (each address has its own ~28,000 ephemeral ports), none otherwise.
fn source_ips(ws_url: &str, worker: usize, spread: bool) -> Vec<IpAddr> {
    let host = ws_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .and_then(|h| h.parse::<IpAddr>().ok());
    match host {
        Some(IpAddr::V4(v4)) if spread && v4.is_loopback() => (0..50u8)
            .map(|k| IpAddr::from([127, (worker % 250 + 1) as u8, 0, k + 2]))
            .collect(),
        _ => Vec::new(),
    }
}

/// Splits `items` into `n` shares whose sizes differ by at most one (no empty shares).
fn shares<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let n = n.clamp(1, items.len().max(1));
    let (base, extra) = (items.len() / n, items.len() % n);
    let mut it = items.into_iter();
    (0..n)
        .map(|i| {
            it.by_ref()
                .take(base + usize::from(i < extra))
                .collect::<Vec<T>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Everything the workers said, folded.
#[derive(Default)]
struct Folded {
    tally: Tally,
    progress: Progress,
    latency: Option<hdrhistogram::Histogram<u64>>,
    ack_latency: Option<hdrhistogram::Histogram<u64>>,
    series: Series,
    latency_per_second: Vec<hdrhistogram::Histogram<u64>>,
    measured_s: f64,
    store_s: f64,
    sync_s: f64,
    storm_s: f64,
    retries: u64,
    reconnects: u64,
    errors: u64,
    error_samples: Vec<String>,
    presence: Option<PresenceOutcome>,
}

impl Folded {
    fn add(&mut self, o: &Outcome) -> Result<(), String> {
        self.tally.add(&o.tally);
        let p = &o.progress;
        self.progress.connected += p.connected;
        self.progress.connect_failed += p.connect_failed;
        self.progress.sent += p.sent;
        self.progress.acked += p.acked;
        self.progress.delivered += p.delivered;
        for (into, enc) in [
            (&mut self.latency, &o.latency),
            (&mut self.ack_latency, &o.ack_latency),
        ] {
            let h = into.get_or_insert_with(stats::histogram);
            if !enc.is_empty() {
                stats::merge(h, &stats::decode_histogram(enc)?);
            }
        }
        stats::add_series(&mut self.series.sent, &o.series.sent);
        stats::add_series(&mut self.series.acked, &o.series.acked);
        stats::add_series(&mut self.series.delivered, &o.series.delivered);
        stats::add_series(&mut self.series.connections, &o.series.connections);
        for (s, enc) in o.series.latency.iter().enumerate() {
            if self.latency_per_second.len() <= s {
                self.latency_per_second.resize_with(s + 1, stats::histogram);
            }
            stats::merge(
                &mut self.latency_per_second[s],
                &stats::decode_histogram(enc)?,
            );
        }
        self.measured_s = self.measured_s.max(o.measured_s);
        self.store_s = self.store_s.max(o.store_s);
        self.sync_s = self.sync_s.max(o.sync_s);
        self.storm_s = self.storm_s.max(o.storm_s);
        self.retries += o.retries;
        self.reconnects += o.reconnects;
        self.errors += o.errors;
        for e in &o.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(e.clone());
            }
        }
        // Presence runs in one worker.
        if o.presence.is_some() {
            self.presence.clone_from(&o.presence);
        }
        Ok(())
    }
}

/// Runs a scenario to its end (or Ctrl-C) and prints the summary line.
pub async fn run(common: Common, scenario: Scenario) -> Verdict {
    let mut interrupt = Interrupt::new();
    let bars = Bars::new();
    let started = Instant::now();
    let probe = match common.server_pid.map(ProcProbe::new).transpose() {
        Ok(p) => p,
        Err(e) => {
            bars.finish();
            eprintln!("natter-loadtest: --server-pid: {e}");
            return Verdict::Error;
        }
    };
    let http = match HttpClient::new(&common.url) {
        Ok(h) => h,
        Err(e) => {
            bars.finish();
            eprintln!("natter-loadtest: --url: {e}");
            return Verdict::Error;
        }
    };
    let mut summary = Summary::new(&common, &scenario);
    let t0 = Instant::now();
    let creds = match provision(
        &http,
        scenario.devices(),
        common.provision_concurrency,
        &bars,
        &mut interrupt,
    )
    .await
    {
        Ok(Some(c)) => c,
        Ok(None) => {
            bars.finish();
            summary.interrupted = true;
            return summary.print(None);
        }
        Err(e) => {
            bars.finish();
            eprintln!("natter-loadtest: {e}");
            return Verdict::Error;
        }
    };
    summary.provision_s = stats::secs(t0.elapsed());
    let ws_urls = match common.ws_urls.is_empty() {
        true => vec![http.ws_url()],
        false => common.ws_urls.clone(),
    };
    let verdict = drive(
        &common,
        &scenario,
        creds,
        &ws_urls,
        probe.as_ref(),
        &bars,
        &mut interrupt,
        &mut summary,
    )
    .await;
    bars.finish();
    summary.wall_s = stats::secs(started.elapsed());
    match verdict {
        Err(e) => {
            eprintln!("natter-loadtest: {e}");
            summary.error = Some(e);
            summary.print(None);
            Verdict::Error
        }
        Ok(folded) => summary.print(Some(folded)),
    }
}

/// Waits for the next report; Ctrl-C returns `None`.
async fn next_report(
    reports: &mut mpsc::UnboundedReceiver<(usize, Report)>,
    interrupt: &mut Interrupt,
) -> Option<(usize, Report)> {
    tokio::select! {
        r = reports.recv() => r,
        () = interrupt.wait() => None,
    }
}

/// The live view of every worker's counters.
struct Live {
    per_worker: Vec<Progress>,
    ready: Vec<bool>,
    done: Vec<Option<Box<Outcome>>>,
    last: (Instant, u64),
}

impl Live {
    fn total(&self) -> Progress {
        let mut t = Progress::default();
        for p in &self.per_worker {
            t.connected += p.connected;
            t.connect_failed += p.connect_failed;
            t.sent += p.sent;
            t.acked += p.acked;
            t.delivered += p.delivered;
        }
        t
    }

    /// Applies one report; `Err` when a worker failed.
    fn apply(&mut self, w: usize, r: Report, bars: &Bars) -> Result<(), String> {
        match r {
            Report::Ready(p) => {
                self.per_worker[w] = p;
                self.ready[w] = true;
            }
            Report::Tick(p) => self.per_worker[w] = p,
            Report::Done(o) => {
                self.per_worker[w] = o.progress;
                self.done[w] = Some(o);
            }
            Report::Failed(e) => return Err(format!("worker {w}: {e}")),
        }
        let t = self.total();
        bars.main.set_position(t.connected + t.connect_failed);
        let elapsed = self.last.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let rate = (t.delivered - self.last.1.min(t.delivered)) as f64 / elapsed;
            self.last = (Instant::now(), t.delivered);
            bars.messages.set_message(format!(
                "sent {} acked {} delivered {} ({rate:.0}/s)",
                t.sent, t.acked, t.delivered
            ));
        }
        Ok(())
    }

    fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| *r)
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(Option::is_some)
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    common: &Common,
    scenario: &Scenario,
    creds: Vec<Cred>,
    ws_urls: &[String],
    probe: Option<&ProcProbe>,
    bars: &Bars,
    interrupt: &mut Interrupt,
    summary: &mut Summary,
) -> Result<Folded, String> {
    let connections = creds.len();
    let workers = match scenario {
        // One process holds the whole group: its one audit sees the sender's clock and
        // every member's arrivals (a group is far below a worker's 10,000 connections).
        Scenario::Group { .. } | Scenario::Presence { .. } => {
            if common.workers.is_some_and(|w| w > 1) {
                eprintln!(
                    "natter-loadtest: {} runs in one worker process; --workers ignored",
                    scenario.name()
                );
            }
            1
        }
        _ => common
            .workers
            .unwrap_or_else(|| connections.div_ceil(CONNECTIONS_PER_WORKER))
            .clamp(1, connections.max(1)),
    };
    let read_buffer = common.read_buffer.unwrap_or(match scenario {
        // Held connections receive little: keep the client small too.
        Scenario::Idle { .. } | Scenario::Connect { .. } => 1024,
        _ => 16 * 1024,
    });
    let tasks: Vec<Task> = match scenario {
        Scenario::Idle { concurrency, .. } | Scenario::Connect { concurrency, .. } => {
            let hold = matches!(scenario, Scenario::Idle { .. });
            shares(creds, workers)
                .into_iter()
                .map(|devices| Task::Connect {
                    devices,
                    concurrency: (*concurrency).div_ceil(workers),
                    hold,
                })
                .collect()
        }
        Scenario::Direct { window, .. } => {
            let mut it = creds.into_iter();
            let mut pairs = Vec::new();
            while let (Some(s), Some(r)) = (it.next(), it.next()) {
                pairs.push((s, r));
            }
            shares(pairs, workers)
                .into_iter()
                .map(|pairs| Task::Direct {
                    pairs,
                    window: *window,
                })
                .collect()
        }
        Scenario::Offline { messages, window } => {
            let mut it = creds.into_iter();
            let (Some(sender), Some(receiver)) = (it.next(), it.next()) else {
                return Err("provisioning returned too few users".into());
            };
            vec![Task::Offline {
                sender,
                receiver,
                messages: *messages,
                window: *window,
            }]
        }
        Scenario::Group { rate, window, .. } => {
            let mut it = creds.into_iter();
            let Some(sender) = it.next() else {
                return Err("provisioning returned too few users".into());
            };
            vec![Task::Group {
                sender,
                members: it.collect(),
                rate: f64::from(*rate),
                window: *window,
            }]
        }
        Scenario::Presence {
            cycles,
            contacts_only,
            pause,
            transition_timeout,
            ..
        } => {
            let mut creds = creds;
            let stranger = if *contacts_only { creds.pop() } else { None };
            let mut it = creds.into_iter();
            let Some(subject) = it.next() else {
                return Err("provisioning returned too few users".into());
            };
            vec![Task::Presence {
                subject,
                subscribers: it.collect(),
                stranger,
                cycles: *cycles,
                contacts_only: *contacts_only,
                pause_s: pause.as_secs_f64(),
                transition_timeout_s: transition_timeout.as_secs_f64(),
            }]
        }
    };
    let plans: Vec<Plan> = tasks
        .into_iter()
        .enumerate()
        .map(|(worker, task)| Plan {
            worker,
            ws_urls: ws_urls.to_vec(),
            format: common.format.clone(),
            source_ips: source_ips(&ws_urls[0], worker, common.spread_sources),
            read_buffer,
            body_bytes: common.body_bytes,
            request_timeout_s: common.request_timeout.as_secs_f64(),
            drain_s: common.drain.as_secs_f64(),
            task,
        })
        .collect();
    summary.workers = plans.len();
    summary.connections = connections;
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let sample = |what: &str| sample_server(probe, what);
    // Idle memory is measured against the server before any of our connections.
    summary.server_before = sample_server(probe, "baseline");
    let mut workers = spawn_workers(plans, reports_tx).await?;
    let n = workers.len();
    let mut live = Live {
        per_worker: vec![Progress::default(); n],
        ready: vec![false; n],
        done: (0..n).map(|_| None).collect(),
        last: (Instant::now(), 0),
    };
    let result = conduct(
        scenario,
        &mut workers,
        &mut live,
        &mut reports,
        bars,
        interrupt,
        summary,
        &sample,
        connections,
    )
    .await;
    if result.is_err() || !live.all_done() {
        // Stop whoever is left and collect what they measured, for at most a drain.
        for w in &mut workers {
            w.control(Control::Stop).await;
        }
        let deadline = tokio::time::sleep(common.drain + Duration::from_secs(15));
        tokio::pin!(deadline);
        while !live.all_done() {
            tokio::select! {
                r = reports.recv() => match r {
                    Some((w, r)) => {
                        if let Err(e) = live.apply(w, r, bars) {
                            eprintln!("natter-loadtest: {e}");
                            live.done[w].get_or_insert_with(Default::default);
                        }
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
    }
    for mut w in workers {
        // End of input: a worker still waiting for a control line stops.
        drop(w.stdin);
        if tokio::time::timeout(Duration::from_secs(5), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.start_kill();
        }
    }
    result?;
    let mut folded = Folded::default();
    for o in live.done.iter().flatten() {
        folded.add(o)?;
    }
    folded.series.latency = folded
        .latency_per_second
        .iter()
        .map(stats::encode_histogram)
        .collect();
    if live.done.iter().any(Option::is_none) {
        return Err("a worker did not report its results".into());
    }
    Ok(folded)
}

/// The server's RSS and CPU time now, if a probe was given (a failure is reported).
fn sample_server(probe: Option<&ProcProbe>, what: &str) -> Option<ProcSample> {
    probe.and_then(|p| {
        p.sample()
            .map_err(|e| eprintln!("natter-loadtest: sampling the server ({what}): {e}"))
            .ok()
    })
}

/// Runs the phases: everyone set up (Ready), Go, the measured phase, Stop, the drain.
#[allow(clippy::too_many_arguments)]
async fn conduct(
    scenario: &Scenario,
    workers: &mut [Worker],
    live: &mut Live,
    reports: &mut mpsc::UnboundedReceiver<(usize, Report)>,
    bars: &Bars,
    interrupt: &mut Interrupt,
    summary: &mut Summary,
    sample: &dyn Fn(&str) -> Option<ProcSample>,
    connections: usize,
) -> Result<(), String> {
    let setup_conns = match scenario {
        Scenario::Idle { .. } => connections,
        Scenario::Direct { .. } | Scenario::Group { .. } | Scenario::Presence { .. } => connections,
        Scenario::Connect { .. } | Scenario::Offline { .. } => 0,
    };
    bars.stage("connecting", setup_conns);
    // Wait until every worker is Ready.
    macro_rules! wait_until {
        ($cond:expr) => {
            while !$cond {
                match next_report(reports, interrupt).await {
                    Some((w, r)) => live.apply(w, r, bars)?,
                    None => {
                        summary.interrupted = true;
                        return Ok(());
                    }
                }
            }
        };
    }
    wait_until!(live.all_ready());
    let setup = live.total();
    if setup.connect_failed > 0 && !matches!(scenario, Scenario::Connect { .. }) {
        return Err(format!(
            "{} of {} connections failed during setup",
            setup.connect_failed, setup_conns
        ));
    }
    match scenario {
        Scenario::Connect { .. } => {
            bars.stage("connecting", connections);
            for r in live.ready.iter_mut() {
                *r = false;
            }
            summary.server_start = sample("start");
            control_all(workers, Control::Go).await;
            wait_until!(live.all_ready());
            summary.server_end = sample("all connected");
        }
        Scenario::Idle { duration, .. } => {
            summary.server_start = sample("all connected");
            control_all(workers, Control::Go).await;
            bars.stage("holding", duration.as_secs() as usize);
            measured_phase(*duration, live, reports, bars, interrupt, summary).await?;
            summary.server_end = sample("end of hold");
        }
        Scenario::Direct { duration, .. } | Scenario::Group { duration, .. } => {
            summary.server_start = sample("start");
            control_all(workers, Control::Go).await;
            bars.stage("sending", duration.as_secs() as usize);
            measured_phase(*duration, live, reports, bars, interrupt, summary).await?;
            summary.server_end = sample("end of the measured phase");
            bars.stage("draining", 0);
        }
        Scenario::Presence { cycles, .. } => {
            bars.stage(&format!("{cycles} cycles"), 0);
            for r in live.ready.iter_mut() {
                *r = false;
            }
            summary.server_start = sample("start");
            control_all(workers, Control::Go).await;
            // Ready again once the last transition is in: the measured phase is over.
            wait_until!(live.all_ready() || live.all_done());
            summary.server_end = sample("end of the transitions");
            control_all(workers, Control::Stop).await;
            wait_until!(live.all_done());
            return Ok(());
        }
        Scenario::Offline { messages, .. } => {
            summary.server_start = sample("start");
            bars.stage("messages", *messages as usize);
            control_all(workers, Control::Go).await;
            wait_until!(live.all_done());
            summary.server_end = sample("end");
            return Ok(());
        }
    }
    control_all(workers, Control::Stop).await;
    wait_until!(live.all_done());
    summary.server_after = sample("after the drain");
    Ok(())
}

/// The measured phase: `duration` on the coordinator's clock (Ctrl-C ends it early),
/// keeping the live view current.
async fn measured_phase(
    duration: Duration,
    live: &mut Live,
    reports: &mut mpsc::UnboundedReceiver<(usize, Report)>,
    bars: &Bars,
    interrupt: &mut Interrupt,
    summary: &mut Summary,
) -> Result<(), String> {
    let t0 = Instant::now();
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = &mut end => return Ok(()),
            r = next_report(reports, interrupt) => match r {
                Some((w, r)) => {
                    live.apply(w, r, bars)?;
                    bars.main.set_position(t0.elapsed().as_secs());
                }
                None => {
                    summary.interrupted = true;
                    return Ok(());
                }
            }
        }
    }
}

async fn control_all(workers: &mut [Worker], c: Control) {
    for w in workers {
        w.control(c).await;
    }
}

/// The summary line, filled in as the run goes.
struct Summary {
    scenario: &'static str,
    latency_kind: &'static str,
    format: String,
    connections: usize,
    workers: usize,
    duration_s: Option<f64>,
    window: Option<usize>,
    provision_s: f64,
    wall_s: f64,
    server_before: Option<ProcSample>,
    server_start: Option<ProcSample>,
    server_end: Option<ProcSample>,
    server_after: Option<ProcSample>,
    interrupted: bool,
    error: Option<String>,
    report: Option<PathBuf>,
    /// Group: members (the sender included) and the target send rate.
    group: Option<(usize, u32)>,
    /// Presence: cycles and the privacy setting.
    presence: Option<(u32, &'static str)>,
}

impl Summary {
    fn new(common: &Common, scenario: &Scenario) -> Summary {
        let (duration_s, window) = match scenario {
            Scenario::Idle { duration, .. } => (Some(duration.as_secs_f64()), None),
            Scenario::Direct {
                duration, window, ..
            } => (Some(duration.as_secs_f64()), Some(*window)),
            Scenario::Offline { window, .. } => (None, Some(*window)),
            Scenario::Group {
                duration, window, ..
            } => (Some(duration.as_secs_f64()), Some(*window)),
            Scenario::Connect { .. } | Scenario::Presence { .. } => (None, None),
        };
        Summary {
            scenario: scenario.name(),
            latency_kind: scenario.latency_kind(),
            format: common.format.clone(),
            connections: scenario.devices(),
            workers: 0,
            duration_s,
            window,
            provision_s: 0.0,
            wall_s: 0.0,
            server_before: None,
            server_start: None,
            server_end: None,
            server_after: None,
            interrupted: false,
            error: None,
            report: common.report.clone(),
            group: match scenario {
                Scenario::Group { members, rate, .. } => Some((*members, *rate)),
                _ => None,
            },
            presence: match scenario {
                Scenario::Presence {
                    cycles,
                    contacts_only,
                    ..
                } => Some((
                    *cycles,
                    if *contacts_only {
                        "contacts"
                    } else {
                        "everyone"
                    },
                )),
                _ => None,
            },
        }
    }

    /// Prints the JSON line, writes the report, and says how the run went.
    fn print(&self, folded: Option<Folded>) -> Verdict {
        let f = folded.unwrap_or_default();
        let t = &f.tally;
        let latency = f.latency.clone().unwrap_or_else(stats::histogram);
        let full_seconds = f.measured_s.floor() as usize;
        let (rate, delivered_for_rate) = match self.scenario {
            "direct" | "group" if full_seconds >= 1 => {
                let n: u64 = f.series.delivered.iter().take(full_seconds).sum();
                (n as f64 / full_seconds as f64, n)
            }
            "direct" | "group" => (per_s(t.delivered, f.measured_s), t.delivered),
            "offline" => (per_s(t.delivered, f.sync_s), t.delivered),
            // Pushes per second of fan-out: every push over the transitions' durations.
            "presence" => (
                f.presence.as_ref().map_or(0.0, presence_push_rate),
                t.delivered,
            ),
            // Storm or setup: accepted connections per second.
            _ => (per_s(f.progress.connected, f.storm_s), f.progress.connected),
        };
        let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| {
            a.zip(b).map(|(a, b)| round3(b.cpu_s - a.cpu_s))
        };
        let end = self.server_end.or(self.server_after);
        let server_cpu_s = cpu(self.server_start, self.server_after.or(self.server_end));
        let mut v = json!({
            "scenario": self.scenario,
            "connections": self.connections,
            "sent": t.sent,
            "acked": t.acked,
            "delivered": t.delivered,
            "rate_per_s": round3(rate),
            "p50_ms": round3(stats::ms_at(&latency, 0.50)),
            "p90_ms": round3(stats::ms_at(&latency, 0.90)),
            "p99_ms": round3(stats::ms_at(&latency, 0.99)),
            "p999_ms": round3(stats::ms_at(&latency, 0.999)),
            "max_ms": round3(latency.max() as f64 / 1000.0),
            "latency": self.latency_kind,
            "latency_samples": latency.len(),
            "lost": t.lost,
            "duplicated": t.duplicated,
            "misordered": t.misordered,
            "gaps": t.gaps,
            "corrupted": t.corrupted,
            "redelivered": t.redelivered,
            "unacked": t.unacked,
            "server_rss_bytes": end.map(|s| s.rss_bytes),
            "server_rss_peak_bytes": self.server_after.or(end).map(|s| s.rss_peak_bytes),
            "server_cpu_s": server_cpu_s,
            "measured_s": round3(f.measured_s),
            "provision_s": round3(self.provision_s),
            "wall_s": round3(self.wall_s),
            "connected": f.progress.connected,
            "connect_failed": f.progress.connect_failed,
            "retries": f.retries,
            "reconnects": f.reconnects,
            "errors": f.errors,
            "workers": self.workers,
            "format": self.format,
            "duration_s": self.duration_s,
            "window": self.window,
            "interrupted": self.interrupted,
            "version": env!("CARGO_PKG_VERSION"),
        });
        let extra = |v: &mut Value, k: &str, x: Value| {
            if let Some(o) = v.as_object_mut() {
                o.insert(k.to_owned(), x);
            }
        };
        match self.scenario {
            "idle" => {
                let per_conn = self
                    .server_before
                    .zip(self.server_end)
                    .filter(|_| f.progress.connected > 0)
                    .map(|(a, b)| {
                        (b.rss_bytes as f64 - a.rss_bytes as f64) / f.progress.connected as f64
                    });
                extra(
                    &mut v,
                    "server_bytes_per_connection",
                    json!(per_conn.map(|x| x.round())),
                );
                extra(
                    &mut v,
                    "server_rss_baseline_bytes",
                    json!(self.server_before.map(|s| s.rss_bytes)),
                );
                extra(&mut v, "connect_s", json!(round3(f.storm_s)));
            }
            "connect" => {
                extra(&mut v, "storm_s", json!(round3(f.storm_s)));
                extra(
                    &mut v,
                    "server_rss_baseline_bytes",
                    json!(self.server_before.map(|s| s.rss_bytes)),
                );
            }
            "direct" => {
                let ack = f.ack_latency.clone().unwrap_or_else(stats::histogram);
                extra(&mut v, "delivered_in_measured_s", json!(delivered_for_rate));
                extra(&mut v, "ack_p50_ms", json!(round3(stats::ms_at(&ack, 0.5))));
                extra(
                    &mut v,
                    "ack_p99_ms",
                    json!(round3(stats::ms_at(&ack, 0.99))),
                );
                extra(
                    &mut v,
                    "server_cpu_s_per_1000_msgs",
                    json!(
                        server_cpu_s
                            .filter(|_| t.delivered > 0)
                            .map(|c| round3(c * 1000.0 / t.delivered as f64))
                    ),
                );
            }
            "group" => {
                let ack = f.ack_latency.clone().unwrap_or_else(stats::histogram);
                let (members, rate_target) = self.group.unwrap_or_default();
                let receivers = members.saturating_sub(1) as u64;
                extra(&mut v, "members", json!(members));
                extra(&mut v, "rate_target_msgs_per_s", json!(rate_target));
                extra(
                    &mut v,
                    "expected_rate_per_s",
                    json!(u64::from(rate_target) * receivers),
                );
                let sent_in_measured: u64 = f.series.sent.iter().take(full_seconds).sum();
                extra(
                    &mut v,
                    "sent_rate_per_s",
                    json!(round3(if full_seconds >= 1 {
                        sent_in_measured as f64 / full_seconds as f64
                    } else {
                        per_s(t.sent, f.measured_s)
                    })),
                );
                extra(&mut v, "delivered_in_measured_s", json!(delivered_for_rate));
                extra(&mut v, "deliveries_owed", json!(t.owed));
                extra(&mut v, "ack_p50_ms", json!(round3(stats::ms_at(&ack, 0.5))));
                extra(
                    &mut v,
                    "ack_p99_ms",
                    json!(round3(stats::ms_at(&ack, 0.99))),
                );
                extra(
                    &mut v,
                    "server_cpu_s_per_1000_deliveries",
                    json!(
                        server_cpu_s
                            .filter(|_| t.delivered > 0)
                            .map(|c| round3(c * 1000.0 / t.delivered as f64))
                    ),
                );
            }
            "presence" => {
                let (cycles, privacy) = self.presence.unwrap_or((0, "everyone"));
                extra(&mut v, "cycles", json!(cycles));
                extra(&mut v, "privacy", json!(privacy));
                if let Some(p) = &f.presence {
                    presence_figures(&mut v, p);
                }
                extra(
                    &mut v,
                    "server_cpu_s_per_1000_pushes",
                    json!(
                        server_cpu_s
                            .filter(|_| t.delivered > 0)
                            .map(|c| round3(c * 1000.0 / t.delivered as f64))
                    ),
                );
            }
            "offline" => {
                extra(&mut v, "store_s", json!(round3(f.store_s)));
                extra(&mut v, "sync_s", json!(round3(f.sync_s)));
                extra(
                    &mut v,
                    "store_rate_per_s",
                    json!(round3(per_s(t.acked, f.store_s))),
                );
            }
            _ => {}
        }
        if !f.error_samples.is_empty() {
            extra(&mut v, "error_samples", json!(f.error_samples));
        }
        if let Some(e) = &self.error {
            extra(&mut v, "error", json!(e));
        }
        let verdict = if self.error.is_some() {
            Verdict::Error
        } else if !t.clean()
            || f.presence
                .as_ref()
                .is_some_and(|p| p.leaked > 0 || p.unexpected > 0)
        {
            Verdict::AuditFailed
        } else if self.interrupted {
            Verdict::Interrupted
        } else {
            // Every message owed must have arrived: unacked or undelivered at the end of
            // the drain is a failed run too (the drain was too short, or the server stuck).
            // Every acked message is owed to every receiving device (one for direct).
            let settled = t.delivered + t.lost >= t.owed.max(t.acked)
                && t.unacked == 0
                && f.progress.connect_failed == 0;
            if settled {
                Verdict::Ok
            } else {
                Verdict::AuditFailed
            }
        };
        extra(&mut v, "ok", json!(verdict == Verdict::Ok));
        println!("{v}");
        if let Some(dir) = &self.report {
            match report::write(dir, &v, &f.series, &latency) {
                Ok(paths) => {
                    for p in paths {
                        eprintln!("wrote {}", p.display());
                    }
                }
                Err(e) => {
                    eprintln!("natter-loadtest: --report: {e}");
                    return Verdict::Error;
                }
            }
        }
        verdict
    }
}

/// Pushes per second while transitions were fanning out: all complete transitions'
/// pushes over the sum of their durations (start → last push).
fn presence_push_rate(p: &PresenceOutcome) -> f64 {
    let lasts = p.online_last_ns.iter().chain(&p.offline_last_ns);
    let (count, ns) = lasts.fold((0u64, 0u64), |(c, t), &x| (c + 1, t + x));
    per_s(count * p.subscribers as u64, ns as f64 / 1e9)
}

/// The `q` quantile of `xs` (nearest rank), in milliseconds; `None` when empty.
fn quantile_ms(xs: &[u64], q: f64) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).map(|&ns| round3(ns as f64 / 1e6))
}

/// The presence scenario's own fields of the summary.
fn presence_figures(v: &mut Value, p: &PresenceOutcome) {
    let Some(o) = v.as_object_mut() else {
        return;
    };
    let n = p.subscribers as f64;
    o.insert("subscribers".into(), json!(p.subscribers));
    o.insert("transitions".into(), json!(p.transitions));
    for (kind, lasts, firsts, hist) in [
        (
            "online",
            &p.online_last_ns,
            &p.online_first_ns,
            &p.online_latency,
        ),
        (
            "offline",
            &p.offline_last_ns,
            &p.offline_first_ns,
            &p.offline_latency,
        ),
    ] {
        // Start of the transition → the last subscriber's push, across transitions.
        for (q, name) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
            o.insert(
                format!("{kind}_last_{name}_ms"),
                json!(quantile_ms(lasts, q)),
            );
        }
        o.insert(
            format!("{kind}_first_p50_ms"),
            json!(quantile_ms(firsts, 0.5)),
        );
        // Every push, start of its transition → arrival.
        let h = stats::decode_histogram(hist).unwrap_or_else(|_| stats::histogram());
        o.insert(
            format!("{kind}_push_p50_ms"),
            json!(round3(stats::ms_at(&h, 0.5))),
        );
        o.insert(
            format!("{kind}_push_p99_ms"),
            json!(round3(stats::ms_at(&h, 0.99))),
        );
        // One transition's pushes over its median time to the last push.
        o.insert(
            format!("{kind}_pushes_per_s"),
            json!(
                quantile_ms(lasts, 0.5)
                    .filter(|ms| *ms > 0.0)
                    .map(|ms| round3(n * 1000.0 / ms))
            ),
        );
        o.insert(format!("{kind}_transitions_complete"), json!(lasts.len()));
    }
    o.insert(
        "welcome_p50_ms".into(),
        json!(quantile_ms(&p.welcome_ns, 0.5)),
    );
    o.insert("late".into(), json!(p.late));
    o.insert("leaked".into(), json!(p.leaked));
    o.insert("unexpected".into(), json!(p.unexpected));
    o.insert("renewals".into(), json!(p.renewals));
    o.insert("setup_repeats".into(), json!(p.setup_repeats));
    o.insert("subscription_ttl_s".into(), json!(p.subscription_ttl_s));
    o.insert("contacts_setup_s".into(), json!(round3(p.contacts_s)));
    o.insert("subscribe_setup_s".into(), json!(round3(p.subscribe_s)));
}

fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_evenly_and_keep_everything() {
        let s = shares((0..10).collect(), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(s.iter().all(|x| x.len() >= 3));
        assert_eq!(shares((0..2).collect::<Vec<_>>(), 5).len(), 2);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = |x: u64| x * 1_000_000;
        let xs: Vec<u64> = (1..=20).rev().map(ms).collect();
        assert_eq!(quantile_ms(&xs, 0.5), Some(10.0));
        assert_eq!(quantile_ms(&xs, 0.99), Some(20.0));
        assert_eq!(quantile_ms(&xs, 1.0), Some(20.0));
        assert_eq!(quantile_ms(&[ms(7)], 0.5), Some(7.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[test]
    fn push_rate_is_pushes_over_the_transitions_time() {
        let p = PresenceOutcome {
            subscribers: 1000,
            // Two transitions of 100 ms and 300 ms: 2,000 pushes in 0.4 s.
            online_last_ns: vec![100_000_000],
            offline_last_ns: vec![300_000_000],
            ..Default::default()
        };
        assert!((presence_push_rate(&p) - 5000.0).abs() < 1e-6);
        assert_eq!(presence_push_rate(&PresenceOutcome::default()), 0.0);
    }

    #[test]
    fn source_addresses_only_for_loopback_v4() {
        let ips = source_ips("ws://127.0.0.1:8080/v1/ws", 1, true);
        assert_eq!(ips.len(), 50);
        assert!(ips.iter().all(|ip| ip.is_loopback()));
        assert_ne!(ips[0], source_ips("ws://127.0.0.1:8080/v1/ws", 2, true)[0]);
        assert!(source_ips("ws://example.com:8080/v1/ws", 0, true).is_empty());
        assert!(source_ips("ws://127.0.0.1:8080/v1/ws", 0, false).is_empty());
    }
}

//! Fixtures for the end-to-end tests: a real `natter serve` process on a free port in a
//! temporary data directory (kill -9, restart on the same data, SIGTERM), and helpers for
//! users, devices and waiting with deadlines (never fixed sleeps).

#![allow(dead_code)] // each test binary uses part of this module

pub mod cluster;
pub mod traffic;
pub mod webhook;

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use natter_client::{
    Client, ClientOptions, ConversationId, Event, HttpClient, Session, UserId, v1,
};
use rand::Rng as _;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    time::Instant,
};

/// Password of every test user.
pub const PASSWORD: &str = "correct horse battery staple";

/// How long a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `natter serve` child process.
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: Option<SocketAddr>,
    starts: u32,
    env: Vec<(String, String)>,
    pub http: HttpClient,
}

impl Server {
    /// Starts a server on a free port in a new temporary data directory.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Like [`Server::start`], with extra environment variables (e.g. `NATTER_IDLE_TIMEOUT_S`).
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = Server {
            child: None,
            dir,
            addr: None,
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            // Replaced once the port is known.
            http: HttpClient::new("http://127.0.0.1:1").expect("a valid URL"),
        };
        server.spawn_until_listening().await;
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the server has started once")
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn ws_url(&self) -> String {
        self.http.ws_url()
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("server-{n}.log"))
    }

    /// Starts the process, retrying while the port is not free yet (restart), and waits
    /// for its "listening" line.
    async fn spawn_until_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_once(deadline).await {
                Ok(addr) => {
                    self.addr = Some(addr);
                    self.http =
                        HttpClient::new(&format!("http://{addr}")).expect("a valid base URL");
                    return;
                }
                Err(e) if Instant::now() < deadline && self.addr.is_some() => {
                    // The old port may still be held for a moment after a crash.
                    eprintln!("restart attempt failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("natter did not start: {e}\n{}", self.log_tail(80)),
            }
        }
    }

    async fn spawn_once(&mut self, deadline: Instant) -> Result<SocketAddr, String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).map_err(|e| e.to_string())?;
        let listen = match self.addr {
            Some(a) => a.to_string(),
            None => "127.0.0.1:0".to_owned(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("NATTER_ARGON2_MEMORY_KIB", "256")
            .env("NATTER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout_at(deadline, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                return Err(format!(
                    "no listening line ({other:?}); exit status {status:?}\n{}",
                    self.log_tail(30)
                ));
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = line
            .strip_prefix("natter listening on http://")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        self.child = Some(child);
        Ok(addr)
    }

    /// The last lines of the current server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Crashes the server (SIGKILL) and waits until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill9() or terminate() first");
        self.spawn_until_listening().await;
        self.wait_healthy().await;
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running server");
        let pid = child.id().expect("a running child has a pid");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            other => {
                let _ = child.start_kill();
                panic!(
                    "natter did not exit within {timeout:?} of SIGTERM: {other:?}\n{}",
                    self.log_tail(40)
                )
            }
        }
    }

    /// True if `GET /healthz` answers 200.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.base_url());
        match reqwest::get(&url).await {
            Ok(r) => r.status() == reqwest::StatusCode::OK,
            Err(_) => false,
        }
    }

    /// Polls `/healthz` until it answers 200.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy().await {
            assert!(
                Instant::now() < deadline,
                "natter is not healthy\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Registers a user with a unique name and logs in one device.
    pub async fn user(&self, prefix: &str) -> Session {
        register(&self.http, prefix).await
    }

    /// Logs in another device of an existing user.
    pub async fn login(&self, username: &str, device: &str) -> Session {
        login(&self.http, username, device).await
    }

    /// Connects a device with `opts`.
    pub async fn connect(&self, session: &Session, opts: ClientOptions) -> Client {
        Client::connect(&self.ws_url(), &session.access_token, opts)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", session.username))
    }

    /// Connects a device with [`opts`].
    pub async fn device(&self, session: &Session) -> Client {
        self.connect(session, opts()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- natter log (last lines, start #{}) ----\n{}",
                self.starts,
                self.log_tail(60)
            );
        }
    }
}

/// Registers a user with a unique name through `http` and logs in one device.
pub async fn register(http: &HttpClient, prefix: &str) -> Session {
    let name = unique_name(prefix);
    http.register(&name, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    login(http, &name, "device-1").await
}

/// Logs in a device of an existing user through `http`.
pub async fn login(http: &HttpClient, username: &str, device: &str) -> Session {
    http.login(username, PASSWORD, device)
        .await
        .unwrap_or_else(|e| panic!("login {username}: {e}"))
}

/// A username that no other test uses: `<prefix>_<random hex>`, at most 32 characters.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    let mut name = format!("{}_{suffix:016x}", prefix.to_lowercase());
    name.truncate(32);
    name
}

/// Client options for tests: protobuf, generous deadlines, quick gap filling.
pub fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        send_deadline: Duration::from_secs(60),
        sync_timeout: Duration::from_secs(60),
        gap_fill_delay: Duration::from_millis(100),
        ..Default::default()
    }
}

/// Runs a test body, failing it if it takes longer than `secs`.
pub async fn bounded<F: Future>(secs: u64, body: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), body).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// The direct conversation of two users.
pub fn conv(a: UserId, b: UserId) -> ConversationId {
    ConversationId::direct(a, b).expect("two different users")
}

/// A message body as text.
pub fn text(m: &v1::Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// The next event for which `pick` returns `Some`, skipping others; panics after `timeout`.
pub async fn next_matching<T>(
    client: &Client,
    timeout: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.recv()).await {
            Ok(Some(ev)) => {
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
            Ok(None) => panic!("the client shut down"),
            Err(_) => panic!("no matching event within {timeout:?}"),
        }
    }
}

/// The next `n` messages, in the order they are yielded.
pub async fn messages(client: &Client, n: usize, timeout: Duration) -> Vec<v1::Message> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.recv()).await {
            Ok(Some(Event::Message(m))) => out.push(m),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the client shut down"),
            Err(_) => panic!(
                "got {} of {n} messages within {timeout:?}; last seq {:?}",
                out.len(),
                out.last().map(|m| m.seq)
            ),
        }
    }
    out
}

/// Syncs while reading events, returning the messages yielded by the time SyncDone arrived.
pub async fn sync_collect(client: &Client, timeout: Duration) -> Vec<v1::Message> {
    bounded(timeout.as_secs().max(1), async {
        let mut out = Vec::new();
        let sync = client.sync();
        tokio::pin!(sync);
        loop {
            tokio::select! {
                done = &mut sync => {
                    done.unwrap_or_else(|e| panic!("sync failed: {e}"));
                    break;
                }
                ev = client.recv() => {
                    if let Some(Event::Message(m)) = ev {
                        out.push(m);
                    }
                }
            }
        }
        // Everything of the sync is queued before SyncDone resolves.
        while let Some(ev) = client.try_recv() {
            if let Event::Message(m) = ev {
                out.push(m);
            }
        }
        out
    })
    .await
}

/// Asserts `msgs` is exactly one conversation's seqs `1..=n`, in order, each once.
pub fn assert_gap_free(msgs: &[v1::Message]) {
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=msgs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "seqs must be 1..=n in order, no gaps, no repeats"
    );
    let ids: HashSet<&str> = msgs.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(ids.len(), msgs.len(), "a client_msg_id was stored twice");
    let mids: HashSet<u64> = msgs.iter().map(|m| m.message_id).collect();
    assert_eq!(mids.len(), msgs.len(), "a message_id repeats");
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two bystanders with a conversation; [`Bystanders::check`] proves it still works.
pub struct Bystanders {
    pub a: Session,
    pub b: Session,
    pub ca: Client,
    pub cb: Client,
}

impl Bystanders {
    pub async fn new(server: &Server) -> Bystanders {
        let a = server.user("by_a").await;
        let b = server.user("by_b").await;
        let ca = server.device(&a).await;
        let cb = server.device(&b).await;
        Bystanders { a, b, ca, cb }
    }

    /// A message from a to b arrives, and the server is healthy.
    pub async fn check(&self, server: &Server) {
        let body = format!("still there {}", rand::rng().random::<u32>());
        let ack = self
            .ca
            .send_text(self.b.user_id, &body)
            .await
            .expect("the bystanders' send works");
        let got = next_matching(&self.cb, Duration::from_secs(10), |ev| match ev {
            Event::Message(m) if m.seq == ack.seq => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text(&got), body);
        assert!(server.healthy().await, "/healthz must stay 200");
    }
}

/// The error code of an error frame (panics on any other failure).
pub fn code(e: natter_client::ClientError) -> natter_client::v1::ErrorCode {
    e.server_code()
        .unwrap_or_else(|| panic!("expected an error frame, got {e}"))
}

/// The error code of a request that must be refused.
pub fn refusal<T: std::fmt::Debug>(
    r: Result<T, natter_client::ClientError>,
) -> natter_client::v1::ErrorCode {
    match r {
        Ok(v) => panic!("must be refused, got {v:?}"),
        Err(e) => code(e),
    }
}

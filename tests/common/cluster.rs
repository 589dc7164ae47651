//! A cluster of real processes on loopback: `nats-server` and `redis-server` (started by
//! natter-testkit on ephemeral ports), and `natter sessions`, `natter store`,
//! `natter groups`, N × `natter messages` and M × `natter edge` (and, when the shape asks,
//! `natter people` and `natter presence`), each its own child process that can be killed
//! with SIGKILL and restarted on the same port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use natter_client::{Client, ClientOptions, HttpClient, Session};
use natter_testkit::{NatsServer, RedisServer};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    time::Instant,
};

/// Two users, each with a connected device.
pub struct Pair {
    pub alice: Session,
    pub bob: Session,
    pub ca: Arc<Client>,
    pub cb: Client,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One natter role process.
pub struct Role {
    pub name: String,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    addr: Option<SocketAddr>,
    starts: u32,
}

impl Role {
    fn new(name: &str, dir: &Path, args: Vec<String>) -> Role {
        Role {
            name: name.to_owned(),
            args,
            dir: dir.to_owned(),
            child: None,
            addr: None,
            starts: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the role has started once")
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr())
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}-{n}.log", self.name))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it (on its old port after the first time) and waits for its address line.
    pub async fn start(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_once(deadline).await {
                Ok(addr) => {
                    self.addr = Some(addr);
                    return;
                }
                Err(e) if Instant::now() < deadline && self.addr.is_some() => {
                    eprintln!("{}: restart attempt failed ({e}); retrying", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{} did not start: {e}\n{}", self.name, self.log_tail(60)),
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
        cmd.args(&self.args)
            .arg("--listen")
            .arg(&listen)
            .env("NATTER_LOG", "info")
            // Stats for the admin API twice a second, so tests see rates quickly.
            .env("NATTER_STATS_INTERVAL_MS", "500")
            .env_remove("NATTER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                return Err(format!("no listening line ({other:?}); exit {status:?}"));
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = line
            .strip_prefix("natter listening on http://")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        self.child = Some(child);
        Ok(addr)
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, and wait (bounded) for a clean exit.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("a running role");
        let pid = child.id().expect("a running child has a pid");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {pid} failed");
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) => assert!(status.success(), "{} exited with {status}", self.name),
            other => panic!("{} did not stop on SIGTERM: {other:?}", self.name),
        }
    }

    /// GET a path of its HTTP listener.
    pub async fn get(&self, path: &str) -> Option<reqwest::Response> {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base_url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} log (last lines, start #{}) ----\n{}",
                self.name,
                self.starts,
                self.log_tail(40)
            );
        }
    }
}

/// The whole cluster.
pub struct Cluster {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub sessions: Role,
    pub store: Role,
    pub groups: Role,
    pub messages: Vec<Role>,
    pub edges: Vec<Role>,
    /// `natter people` (embedded store), if the shape asked for it.
    pub people: Option<Role>,
    /// `natter presence` on the cluster's Redis, if the shape asked for it.
    pub presence: Option<Role>,
    /// `natter media` (embedded records, bytes in a directory), if the shape asked for it.
    pub media: Option<Role>,
    /// `natter calls` and `natter turn` (its relay on `turn_addr`), if the shape asked.
    pub calls: Option<Role>,
    pub turn: Option<Role>,
    pub turn_addr: Option<SocketAddr>,
    /// `natter notifier`, if the shape named a webhook.
    pub notifier: Option<Role>,
    /// `natter admin`, if the shape asked for it, with its admin token.
    pub admin: Option<Role>,
    pub admin_token: String,
    pub http: HttpClient,
    _dir: tempfile::TempDir,
}

/// Cluster shape and timings.
pub struct Shape {
    pub edges: usize,
    pub messages: usize,
    pub lease_ttl_ms: u64,
    /// The edges' `--directory-ttl-ms` (also how long the presence store keeps a silent
    /// edge's users online).
    pub directory_ttl_ms: u64,
    /// The edges' `--presence-debounce-ms` (`None`: the binary's default).
    pub presence_debounce_ms: Option<u64>,
    /// Run a `natter people` role.
    pub people: bool,
    /// Run a `natter presence` role on the cluster's Redis.
    pub presence: bool,
    /// Run a `natter media` role.
    pub media: bool,
    /// Run `natter calls` (with this drop grace, ms) and a `natter turn` relay.
    pub calls: Option<u64>,
    /// Run `natter notifier` posting to this webhook (and messages with `--notify`).
    pub push_webhook: Option<String>,
    /// Run `natter admin`.
    pub admin: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            edges: 2,
            messages: 2,
            lease_ttl_ms: 3_000,
            directory_ttl_ms: 3_000,
            presence_debounce_ms: None,
            people: false,
            presence: false,
            media: false,
            calls: None,
            push_webhook: None,
            admin: false,
        }
    }
}

impl Cluster {
    pub async fn start(shape: Shape) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let secret = dir.path().join("jwt.key");
        std::fs::write(&secret, rand::random::<[u8; 32]>()).expect("writing the JWT secret");
        let secret = secret.display().to_string();
        let common = |role: &str| vec![role.to_owned(), "--nats".into(), nats.url()];

        // Sessions takes its settings from a TOML file, as an operator might. Access
        // tokens last a day: the load test does not refresh its tokens, and a soak
        // (tests/chaos.rs with NATTER_CHAOS_S) outlasts the default 15 minutes.
        let config = dir.path().join("natter.toml");
        std::fs::write(
            &config,
            format!(
                "[sessions]\ndata-dir = {:?}\njwt_secret_file = {:?}\nargon2-memory-kib = 256\naccess-ttl-s = 86400\n",
                dir.path().join("sessions").display().to_string(),
                secret,
            ),
        )
        .expect("writing natter.toml");
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        args.extend(common("sessions"));
        let mut sessions = Role::new("sessions", dir.path(), args);
        let mut args = common("store");
        args.extend([
            "--data-dir".into(),
            dir.path().join("store").display().to_string(),
        ]);
        let mut store = Role::new("store", dir.path(), args);
        let mut args = common("groups");
        args.extend([
            "--data-dir".into(),
            dir.path().join("groups").display().to_string(),
        ]);
        let mut groups = Role::new("groups", dir.path(), args);
        let mut messages: Vec<Role> = (0..shape.messages)
            .map(|i| {
                let mut args = common("messages");
                args.extend([
                    "--redis".into(),
                    redis.url(),
                    "--instance-id".into(),
                    format!("messages-{i}"),
                    "--lease-ttl-ms".into(),
                    shape.lease_ttl_ms.to_string(),
                    "--store-timeout-ms".into(),
                    "3000".into(),
                ]);
                if shape.push_webhook.is_some() {
                    args.push("--notify".into());
                }
                Role::new(&format!("messages-{i}"), dir.path(), args)
            })
            .collect();
        let mut edges: Vec<Role> = (0..shape.edges)
            .map(|i| {
                let mut args = common("edge");
                args.extend([
                    "--redis".into(),
                    redis.url(),
                    "--node-id".into(),
                    format!("edge-{i}"),
                    "--jwt-secret-file".into(),
                    secret.clone(),
                    "--directory-ttl-ms".into(),
                    shape.directory_ttl_ms.to_string(),
                ]);
                if let Some(ms) = shape.presence_debounce_ms {
                    args.extend(["--presence-debounce-ms".into(), ms.to_string()]);
                }
                Role::new(&format!("edge-{i}"), dir.path(), args)
            })
            .collect();
        let mut people = shape.people.then(|| {
            let mut args = common("people");
            args.extend([
                "--data-dir".into(),
                dir.path().join("people").display().to_string(),
            ]);
            Role::new("people", dir.path(), args)
        });
        let mut presence = shape.presence.then(|| {
            let mut args = common("presence");
            args.extend(["--redis".into(), redis.url()]);
            Role::new("presence", dir.path(), args)
        });
        let mut media = shape.media.then(|| {
            let mut args = common("media");
            args.extend([
                "--data-dir".into(),
                dir.path().join("media").display().to_string(),
                "--jwt-secret-file".into(),
                secret.clone(),
            ]);
            Role::new("media", dir.path(), args)
        });
        let turn_secret = dir.path().join("turn.key");
        std::fs::write(&turn_secret, "cluster-test-turn-secret-0123456789").expect("turn secret");
        let turn_secret = turn_secret.display().to_string();
        // A free UDP port for the relay (the calls role must name it in --turn-url).
        let turn_addr = shape.calls.map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free UDP port")
        });
        let mut calls = shape.calls.map(|grace_ms| {
            let mut args = common("calls");
            let turn = turn_addr.expect("a relay address with calls");
            args.extend([
                "--jwt-secret-file".into(),
                secret.clone(),
                "--turn-secret-file".into(),
                turn_secret.clone(),
                "--turn-url".into(),
                format!("turn:{turn}?transport=udp"),
                "--call-drop-grace-ms".into(),
                grace_ms.to_string(),
                "--redis".into(),
                redis.url(),
                "--call-liveness-interval-ms".into(),
                "300".into(),
            ]);
            Role::new("calls", dir.path(), args)
        });
        let mut turn = turn_addr.map(|addr| {
            let args = vec![
                "turn".to_owned(),
                "--turn-listen".into(),
                addr.to_string(),
                "--turn-secret-file".into(),
                turn_secret.clone(),
            ];
            Role::new("turn", dir.path(), args)
        });
        let mut notifier = shape.push_webhook.as_ref().map(|url| {
            let mut args = common("notifier");
            args.extend([
                "--redis".into(),
                redis.url(),
                "--push-webhook-url".into(),
                url.clone(),
                "--push-backoff-ms".into(),
                "20".into(),
            ]);
            Role::new("notifier", dir.path(), args)
        });
        let admin_token = format!("{:032x}", rand::random::<u128>());
        let mut admin = shape.admin.then(|| {
            let tokens = dir.path().join("admin.token");
            std::fs::write(&tokens, format!("ops:{admin_token}\n")).expect("admin token file");
            let mut args = common("admin");
            args.extend([
                "--redis".into(),
                redis.url(),
                "--admin-token-file".into(),
                tokens.display().to_string(),
            ]);
            Role::new("admin", dir.path(), args)
        });
        sessions.start().await;
        store.start().await;
        groups.start().await;
        // Before the edges, so that their first presence reports find a service.
        for r in people
            .iter_mut()
            .chain(presence.iter_mut())
            .chain(media.iter_mut())
            .chain(calls.iter_mut())
            .chain(turn.iter_mut())
            .chain(notifier.iter_mut())
            .chain(admin.iter_mut())
        {
            r.start().await;
        }
        for m in &mut messages {
            m.start().await;
        }
        for e in &mut edges {
            e.start().await;
        }
        let http = HttpClient::new(&sessions.base_url()).expect("a valid base URL");
        let cluster = Cluster {
            nats,
            redis,
            sessions,
            store,
            groups,
            messages,
            edges,
            people,
            presence,
            media,
            calls,
            turn,
            turn_addr,
            notifier,
            admin,
            admin_token,
            http,
            _dir: dir,
        };
        cluster.wait_balanced().await;
        cluster
    }

    /// Waits until each running instance owns its fair share and every partition is
    /// owned exactly once.
    pub async fn wait_balanced(&self) {
        let running = self
            .messages
            .iter()
            .filter(|m| m.is_running())
            .count()
            .max(1);
        let share = 256usize.div_ceil(running);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let owned = self.ownership().await;
            if owned.iter().flatten().all(|o| o.len() >= share - 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partitions not balanced: {:?}",
                owned
                    .iter()
                    .map(|o| o.as_ref().map(|o| o.len()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_all_partitions_owned().await;
    }

    /// Partitions owned by each running messages instance, by instance.
    pub async fn ownership(&self) -> Vec<Option<std::collections::BTreeMap<u16, u64>>> {
        let mut out = Vec::new();
        for m in &self.messages {
            let owned = match m.is_running() {
                true => match m.get("/v1/partitions").await {
                    Some(r) => r.json().await.ok(),
                    None => None,
                },
                false => None,
            };
            out.push(owned);
        }
        out
    }

    /// Which messages instance owns partition `p` (if one does).
    pub async fn owner_of(&self, p: u16) -> Option<usize> {
        self.ownership()
            .await
            .iter()
            .position(|o| o.as_ref().is_some_and(|o| o.contains_key(&p)))
    }

    /// Waits until every partition has exactly one owner among the running instances.
    pub async fn wait_all_partitions_owned(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let owned = self.ownership().await;
            let mut count = vec![0u32; 256];
            for o in owned.iter().flatten() {
                for p in o.keys() {
                    count[usize::from(*p)] += 1;
                }
            }
            if count.iter().all(|&c| c == 1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "partitions not owned exactly once: {:?}",
                count
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c != 1)
                    .take(10)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers a user with a unique name and logs in one device.
    pub async fn user(&self, prefix: &str) -> Session {
        super::register(&self.http, prefix).await
    }

    /// Logs in another device of an existing user.
    pub async fn login(&self, username: &str, device: &str) -> Session {
        super::login(&self.http, username, device).await
    }

    /// Alice and Bob, Alice's device on edge 0 (shared, to send from a task) and Bob's on
    /// edge 1.
    pub async fn alice_and_bob(&self, opts: ClientOptions) -> Pair {
        let alice = self.user("alice").await;
        let bob = self.user("bob").await;
        let ca = Arc::new(self.connect(&alice, 0, opts.clone()).await);
        let cb = self.connect(&bob, 1, opts).await;
        Pair { alice, bob, ca, cb }
    }

    /// Connects a device to edge `i`, with the other edges as alternates.
    pub async fn connect(&self, session: &Session, i: usize, mut opts: ClientOptions) -> Client {
        opts.alternate_urls = (1..self.edges.len())
            .map(|k| self.edges[(i + k) % self.edges.len()].ws_url())
            .collect();
        Client::connect(&self.edges[i].ws_url(), &session.access_token, opts)
            .await
            .unwrap_or_else(|e| panic!("connect {} to edge {i}: {e}", session.username))
    }
}

/// `natter-loadtest` of the same build: next to `natter`, or built now when it is
/// missing or older than `natter`.
pub fn loadtest_bin() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_natter"))
        .parent()
        .expect("binary has a directory")
        .to_owned();
    let bin = dir.join("natter-loadtest");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (
        modified(&bin),
        modified(std::path::Path::new(env!("CARGO_BIN_EXE_natter"))),
    ) {
        (Some(lt), Some(n)) => lt < n,
        _ => true,
    };
    if stale {
        // `cargo test -p natter` alone does not build the load test (or leaves an old one).
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "build",
            "--locked",
            "-p",
            "natter-loadtest",
            "--bin",
            "natter-loadtest",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build --bin natter-loadtest");
        assert!(status.success(), "cargo build --bin natter-loadtest failed");
    }
    bin
}

/// `natter-loadtest direct` against every edge of `cluster` for `secs`, as a child.
pub fn direct_load(
    cluster: &Cluster,
    users: u32,
    secs: u64,
    drain_s: u64,
) -> tokio::process::Command {
    let edges = cluster
        .edges
        .iter()
        .map(|e| e.ws_url())
        .collect::<Vec<_>>()
        .join(",");
    let mut loadtest = tokio::process::Command::new(loadtest_bin());
    loadtest
        .args(["--url", &cluster.sessions.base_url(), "--ws-url", &edges])
        // A short retry timer: sends caught by a fault are retried every 2 s until the
        // cluster has recovered; the drain ends once everything is settled.
        .args(["--workers", "2", "--request-timeout", "2s"])
        .args(["--drain", &format!("{drain_s}s")])
        .args(["direct", "--users", &users.to_string()])
        .args(["--duration", &format!("{secs}s")])
        .kill_on_drop(true);
    loadtest
}

/// The load test's JSON summary, checked for a clean audit.
pub fn audited_clean(out: std::process::Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: summary is JSON ({e}): {stdout}\n{stderr}"));
    eprintln!("{what} summary: {summary}");
    for key in [
        "lost",
        "duplicated",
        "misordered",
        "gaps",
        "corrupted",
        "unacked",
    ] {
        assert_eq!(summary[key].as_u64(), Some(0), "{what}: {key} in {summary}");
    }
    assert!(
        summary["delivered"].as_u64().unwrap_or(0) > 100,
        "{what}: messages flowed: {summary}"
    );
    assert_eq!(summary["ok"], true, "{what}: {summary}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
    summary
}

//! The natter binary: parses configuration, composes the roles and runs them until a
//! signal. `natter serve` runs every role in one process on embedded defaults.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, http::StatusCode, routing::get};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

mod config;
mod metrics;
mod openapi;
mod roles;
use natter_bus::{Bus, InProcessBus};
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration (EX_USAGE), so supervisors can tell it from a crash.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "natter",
    version,
    about = "natter: a real-time messaging backend. One binary, every role."
)]
struct Cli {
    /// TOML file with settings: top-level keys for every role, `[edge]`, `[messages]`,
    /// ... tables for one. Flags and NATTER_* variables override it.
    #[arg(long, global = true, env = "NATTER_CONFIG")]
    config: Option<PathBuf>,
    /// Log level or tracing filter (e.g. `info`, `natter_edge=debug,info`).
    #[arg(long, global = true, env = "NATTER_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "NATTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Load balancers and proxies whose `X-Forwarded-For` names the client (addresses or
    /// CIDR networks, comma-separated). Limits per client address use it; from anyone
    /// else the header is ignored.
    #[arg(
        long,
        global = true,
        env = "NATTER_TRUSTED_PROXIES",
        default_value = ""
    )]
    trusted_proxies: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every role in one process: WebSocket edge, accounts and tokens, messages,
    /// groups, people, presence and media, with an in-process bus and embedded stores under the
    /// data directory.
    Serve(Box<ServeArgs>),
    /// Run the WebSocket edge role against NATS (and Redis for the session directory).
    Edge(roles::EdgeArgs),
    /// Run the messages role: partitions leased in Redis, store in ScyllaDB (or the
    /// store role), requests over NATS.
    Messages(roles::MessagesArgs),
    /// Run the sessions role: accounts, logins and tokens (REST) and its NATS endpoints.
    Sessions(roles::SessionsArgs),
    /// Serve the embedded message store over NATS, for clusters without ScyllaDB.
    Store(roles::StoreArgs),
    /// Run the groups role: membership, roles, invites and limits, over NATS, with its
    /// store in ScyllaDB (or embedded, for a single instance).
    Groups(roles::GroupsArgs),
    /// Run the people role: profiles, privacy settings, contacts, blocks and status
    /// updates, over NATS, with its store in ScyllaDB (or embedded, for one instance).
    People(roles::PeopleArgs),
    /// Run the presence role: online and last seen per user in Redis (heartbeats per
    /// edge), subscriptions and privacy-filtered pushes, over NATS.
    Presence(roles::PresenceArgs),
    /// Run the media role: uploads (single-shot and resumable), access-checked
    /// downloads, thumbnails, quotas and garbage collection, with the bytes in S3 (or a
    /// directory) and the records in ScyllaDB (or embedded, for one instance).
    Media(roles::MediaArgs),
    /// Run the calls role: the call state machine and the SDP/ICE relay over NATS, and
    /// `GET /v1/calls/ice-servers` (STUN/TURN URLs with time-limited credentials). Run
    /// one instance: calls live in its memory.
    Calls(roles::CallsArgs),
    /// Run natter's TURN relay (UDP), checking the credentials the calls role hands out.
    Turn(roles::TurnArgs),
    /// Run the notifier: push notifications for users with no device online, from the
    /// messages role's jobs (JetStream) to a webhook (an FCM/APNs gateway).
    Notifier(roles::NotifierArgs),
    /// Run the admin API (`/admin/v1`): users and bans, sessions and kicks, groups,
    /// moderation, stats and announcements, over NATS, with the session directory in
    /// Redis. Needs an admin token file.
    Admin(roles::AdminArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on for HTTP and WebSocket (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the embedded stores and the token signing key live.
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// File holding the JWT signing secret (clusters share one). Default: generated on
    /// first start as <data-dir>/jwt.key.
    #[arg(long, env = "NATTER_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    #[command(flatten)]
    jwt_previous: roles::JwtPreviousArgs,
    #[command(flatten)]
    login_limits: roles::LoginLimitArgs,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "NATTER_ACCESS_TTL_S", default_value_t = 900)]
    access_ttl_s: u64,
    /// Memory cost of password hashing (argon2id), in KiB.
    #[arg(long, env = "NATTER_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    argon2_memory_kib: u32,
    /// Seconds a connection may stay silent before it is closed.
    #[arg(long, env = "NATTER_IDLE_TIMEOUT_S", default_value_t = 90)]
    idle_timeout_s: u64,
    /// Seconds to let connections and in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
    /// Most members a group may have.
    #[arg(long, env = "NATTER_MAX_GROUP_MEMBERS", default_value_t = 1024)]
    max_group_members: u32,
    /// Most groups a user may be a member of (deleted groups do not count).
    #[arg(long, env = "NATTER_MAX_GROUPS_PER_USER", default_value_t = 2_000)]
    max_groups_per_user: u32,
    #[command(flatten)]
    edge_limits: roles::EdgeLimitArgs,
    /// Milliseconds a user's last connection must stay closed before they show as
    /// offline (a reconnect within it is no change for anyone watching).
    #[arg(long, env = "NATTER_PRESENCE_DEBOUNCE_MS", default_value_t = 3_000)]
    presence_debounce_ms: u64,
    /// On shutdown each connection is told to reconnect after a random delay below
    /// this many milliseconds, so clients do not all come back at once.
    #[arg(long, env = "NATTER_RECONNECT_SPREAD_MS", default_value_t = 5_000)]
    reconnect_spread_ms: u64,
    #[command(flatten)]
    people: roles::PeopleConfigArgs,
    #[command(flatten)]
    media: roles::MediaConfigArgs,
    #[command(flatten)]
    calls: roles::CallsConfigArgs,
    #[command(flatten)]
    turn: roles::TurnListenArgs,
    #[command(flatten)]
    push: roles::PushConfigArgs,
    /// File of admin API tokens (`name:token` per line). Default: one token generated on
    /// first start into <data-dir>/admin.token (mode 0600).
    #[arg(long, env = "NATTER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

/// Pending connections the kernel queues for `accept` (tokio's default is 1,024; a
/// connect storm of thousands overflows it and clients wait a 1 s SYN retransmit).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the HTTP/WebSocket listener with a deep accept queue.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn main() -> ExitCode {
    let args = match config::with_file(&Cli::command(), std::env::args_os().collect(), |k| {
        std::env::var_os(k)
    }) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("natter: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not failures; every other parse error is bad config.
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            // Printing to a closed terminal has nothing left to report.
            e.print().ok();
            return ExitCode::from(code);
        }
    };
    if let Err(e) = init_tracing(&cli) {
        eprintln!("natter: {e:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match natter_sessions::client_addr::TrustedProxies::parse(&cli.trusted_proxies) {
        Ok(proxies) => crate::metrics::trust_proxies(proxies),
        Err(e) => {
            eprintln!("natter: bad configuration: --trusted-proxies: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    // Before anything records: crates cache their metric handles on first use.
    crate::metrics::install();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Edge(args) => roles::edge(args).await,
            Command::Messages(args) => roles::messages(args).await,
            Command::Sessions(args) => roles::sessions(args).await,
            Command::Store(args) => roles::store(args).await,
            Command::Groups(args) => roles::groups(args).await,
            Command::People(args) => roles::people(args).await,
            Command::Presence(args) => roles::presence(args).await,
            Command::Media(args) => roles::media(args).await,
            Command::Calls(args) => roles::calls(args).await,
            Command::Turn(args) => roles::turn(args).await,
            Command::Notifier(args) => roles::notifier(args).await,
            Command::Admin(args) => roles::admin(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("natter: bad configuration: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("natter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(anyhow::Error),
    Runtime(anyhow::Error),
}

fn config_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Config(e.into())
}

fn init_tracing(cli: &Cli) -> anyhow::Result<()> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("--log-level `{}`", cli.log_level))?;
    // The TURN server (webrtc-rs `turn`) logs every datagram it refuses (a bad password,
    // garbage) at error level: anyone on the internet could fill the log. natter's own
    // credential check logs refusals at debug; name `turn` in the filter to see these.
    if !cli.log_level.contains("turn")
        && let Ok(quiet) = "turn::server=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    // Configuration first, before binding anything: a bad flag exits 64 with no side effects.
    let jwt_secret = match &args.jwt_secret_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --jwt-secret-file {}", path.display()))
                .map_err(Failure::Config)?,
        ),
        None => None,
    };
    if let Some(secret) = &jwt_secret
        && secret.len() < natter_sessions::MIN_SECRET_BYTES
    {
        return Err(Failure::Config(anyhow::anyhow!(
            "--jwt-secret-file must hold at least {} bytes",
            natter_sessions::MIN_SECRET_BYTES
        )));
    }
    let jwt_previous_secrets = args.jwt_previous.secrets()?;
    let addr_limits = args.login_limits.addr_limits()?;
    if args.max_group_members < 2 {
        return Err(Failure::Config(anyhow::anyhow!(
            "--max-group-members must be at least 2"
        )));
    }
    if args.access_ttl_s == 0 || args.idle_timeout_s == 0 {
        return Err(Failure::Config(anyhow::anyhow!(
            "--access-ttl-s and --idle-timeout-s must be positive"
        )));
    }
    if args.max_groups_per_user == 0 {
        return Err(Failure::Config(anyhow::anyhow!(
            "--max-groups-per-user must be positive"
        )));
    }
    let edge_limits = args.edge_limits.config()?;
    let people_config = args.people.config()?;
    let (media_config, media_objects) = args.media.config(&args.data_dir)?;
    let calls_config = args.calls.config()?;
    let push_config = args.push.config()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))
        .map_err(Failure::Config)?;
    let turn_secret = match args.calls.turn_secret()? {
        Some(secret) => secret,
        None => {
            let key = natter_sessions::load_or_create_key(&args.data_dir.join("turn.key"))
                .context("creating the TURN secret")
                .map_err(Failure::Config)?;
            Arc::from(hex(&key))
        }
    };
    let turn_config = args.turn.config(&turn_secret)?;
    let admin_token_file = args
        .admin_token_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.token"));
    let admin_tokens = if args.admin_token_file.is_some() {
        natter_admin::AdminTokens::from_file(&admin_token_file)
    } else {
        natter_admin::AdminTokens::load_or_create(&admin_token_file)
    }
    .context("the admin token file")
    .map_err(Failure::Config)?;
    let mut ice = args.calls.ice(Some(turn_secret))?;

    let run = |e: anyhow::Error| Failure::Runtime(e);
    let services_stop = CancellationToken::new();
    let edge_stop = CancellationToken::new();
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    metrics::report_stats(bus.clone(), "natter-serve");
    let admin_stats = natter_admin::StatsCollector::start(bus.clone(), services_stop.clone())
        .await
        .context("starting the admin API's stats")
        .map_err(run)?;

    let sessions = natter_sessions::Sessions::open(natter_sessions::Config {
        data_dir: args.data_dir.clone(),
        jwt_secret,
        jwt_previous_secrets,
        access_ttl: Duration::from_secs(args.access_ttl_s),
        argon2_memory_kib: args.argon2_memory_kib,
        addr_limits,
        ..Default::default()
    })
    .context("opening the sessions store")
    .map_err(run)?;
    let sessions_task =
        natter_sessions::start(sessions.clone(), bus.clone(), services_stop.clone())
            .await
            .context("starting the sessions service")
            .map_err(run)?;

    let group_store = natter_groups::RedbGroupStore::open(&args.data_dir.join("groups.redb"))
        .context("opening the group store")
        .map_err(run)?;
    let groups_task = natter_groups::start(
        natter_groups::Config {
            limits: natter_groups::Limits {
                max_members: args.max_group_members,
                max_groups_per_user: args.max_groups_per_user,
                ..Default::default()
            },
            ..Default::default()
        },
        group_store,
        bus.clone(),
        services_stop.clone(),
    )
    .await
    .context("starting the groups service")
    .map_err(run)?;

    let people_store = natter_people::RedbPeopleStore::open(&args.data_dir.join("people.redb"))
        .context("opening the people store")
        .map_err(run)?;
    let people_task = natter_people::start(
        Arc::new(people_store),
        bus.clone(),
        people_config,
        services_stop.clone(),
    )
    .await
    .context("starting the people service")
    .map_err(run)?;
    let audiences = natter_people::Audiences::start(bus.clone(), Duration::from_secs(5))
        .await
        .context("starting the presence service")
        .map_err(run)?;
    let presence_task = natter_presence::start(
        Arc::new(natter_presence::MemoryPresence::new()),
        audiences,
        bus.clone(),
        natter_presence::Config::default(),
        services_stop.clone(),
    )
    .await
    .context("starting the presence service")
    .map_err(run)?;

    let store = natter_messages::RedbStore::open(&args.data_dir.join("messages.redb"))
        .context("opening the message store")
        .map_err(run)?;
    let messages = natter_messages::start(
        natter_messages::Config {
            notify: push_config.is_some(),
            ..Default::default()
        },
        store,
        bus.clone(),
        natter_messages::Placement::All,
        services_stop.clone(),
    )
    .await
    .context("starting the messages service")
    .map_err(run)?;
    let messages_task = messages.task;

    let media_store = natter_media::RedbMediaStore::open(&args.data_dir.join("media.redb"))
        .context("opening the media store")
        .map_err(run)?;
    let media = natter_media::Media::new(
        media_config,
        Arc::new(media_store),
        media_objects,
        bus.clone(),
        natter_sessions::DeviceAuth::new(sessions.verifier(), bus.clone(), Duration::from_secs(10)),
    );
    let media_task =
        natter_media::describe::start(media.clone(), bus.clone(), services_stop.clone())
            .await
            .context("starting the media service")
            .map_err(run)?;

    let calls_audiences = natter_people::Audiences::start(bus.clone(), Duration::from_secs(5))
        .await
        .context("starting the calls service")
        .map_err(run)?;
    // One session directory, the edge's: the calls service sweeps it for devices in
    // calls whose connections are gone.
    let directory: Arc<dyn natter_sessions::directory::SessionDirectory> =
        Arc::new(natter_sessions::directory::MemoryDirectory::new());
    let calls_task = natter_calls::service::start(
        bus.clone(),
        calls_audiences,
        Some(directory.clone()),
        calls_config,
        services_stop.clone(),
    )
    .await
    .context("starting the calls service")
    .map_err(run)?;
    let notifier_task = match push_config {
        None => None,
        Some(config) => Some(
            natter_notify::service::start(
                bus.clone(),
                Arc::new(natter_notify::service::BusTargets::new(bus.clone())),
                Arc::new(natter_notify::service::DirectoryOnline(directory.clone())),
                config,
                services_stop.clone(),
            )
            .await
            .context("starting the notifier")
            .map_err(run)?,
        ),
    };
    let turn = match turn_config {
        None => None,
        Some(config) => {
            let public = config.relay_ip;
            let relay = natter_calls::turn::TurnServer::start(config)
                .await
                .context("starting the TURN relay (--turn-listen)")
                .map_err(run)?;
            let addr = std::net::SocketAddr::new(public, relay.local_addr().port());
            tracing::info!(%addr, "TURN relay listening");
            ice = ice.with_turn_server(addr);
            Some(relay)
        }
    };

    let admin = natter_admin::Admin::new(
        natter_admin::Config::default(),
        bus.clone(),
        directory.clone(),
        admin_tokens,
        admin_stats,
    );
    let edge = natter_edge::Edge::new(
        natter_edge::Config {
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            presence_debounce: Duration::from_millis(args.presence_debounce_ms),
            reconnect_spread: Duration::from_millis(args.reconnect_spread_ms),
            ..edge_limits
        },
        bus.clone(),
        sessions.verifier(),
        directory,
        edge_stop.clone(),
    );
    let calls_auth =
        natter_sessions::DeviceAuth::new(sessions.verifier(), bus.clone(), Duration::from_secs(10));
    let app = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        // Every service runs in this process on the in-process bus: serving is ready.
        .route("/readyz", get(|| async { (StatusCode::OK, "ready\n") }))
        .merge(natter_sessions::router(sessions, bus.clone()))
        .merge(natter_media::router(media))
        .merge(natter_calls::ice::router(Arc::new(ice), calls_auth))
        .merge(natter_admin::router(admin))
        .merge(edge.router())
        .merge(openapi::router());

    tracing::info!(data_dir = %args.data_dir.display(), "natter starting");
    tracing::info!(
        token_file = %admin_token_file.display(),
        "admin API under /admin/v1 (Authorization: Bearer <token from the file>)"
    );
    let server = roles::serve_http("serve", args.listen, app, edge_stop.clone()).await?;

    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    // Edges first: connections stop reading, finish in-flight requests (acks go out) and
    // close with 1001. Services keep running until then so those requests can complete.
    edge_stop.cancel();
    let grace = Duration::from_secs(args.drain_grace_s);
    if !edge.drained(grace).await {
        tracing::warn!(
            open = edge.open_connections(),
            "connections still open after the drain grace"
        );
    }
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop within the grace period"),
    }
    services_stop.cancel();
    for (name, task) in [
        ("messages", messages_task),
        ("media", media_task),
        ("calls", calls_task),
        ("groups", groups_task),
        ("presence", presence_task),
        ("people", people_task),
        ("sessions", sessions_task),
    ] {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(service = name, error = %e, "service task failed"),
            Err(_) => tracing::warn!(
                service = name,
                "service did not stop within the grace period"
            ),
        }
    }
    if let Some(task) = notifier_task
        && tokio::time::timeout(grace, task).await.is_err()
    {
        tracing::warn!(
            service = "notifier",
            "service did not stop within the grace period"
        );
    }
    if let Some(relay) = turn {
        relay.close().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

//! `natter-loadtest`: drives a natter server with many WebSocket connections, audits every
//! message (lost, duplicated, misordered), measures latency and throughput, and prints
//! one JSON summary line. See `natter-loadtest --help` and docs/benchmarks.md.

mod audit;
mod ipc;
mod media;
mod report;
mod run;
mod stats;
mod worker;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Load harness and delivery auditor for natter.
///
/// Provisions its own users through the REST API, opens connections from worker
/// processes (one per 10,000 connections), and prints one JSON line with the results.
/// Exit code: 0 ok, 1 the run failed its checks (lost, duplicated, misordered or
/// undelivered messages, failed connections), 2 the run could not be carried out,
/// 130 interrupted (the summary is still printed).
#[derive(Debug, Parser)]
#[command(name = "natter-loadtest", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    scenario: ScenarioCmd,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Base URL of the natter server (REST and WebSocket).
    #[arg(
        long,
        global = true,
        env = "NATTER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// WebSocket URL(s) of the edges, comma separated (default: derived from --url).
    /// With several, each user connects to the one its id hashes to (as a load balancer
    /// placing by user would) and falls back to the others when that one is down.
    #[arg(long, global = true, env = "NATTER_WS_URL", value_delimiter = ',')]
    ws_url: Vec<String>,
    /// Process id of the server, to read its RSS and CPU time from /proc (same machine).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Worker processes (default: one per 10,000 connections).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Also write summary.json, series.csv and latency/throughput charts (PNG, SVG) here.
    #[arg(long, global = true)]
    report: Option<PathBuf>,
    /// Wire format: the binary protocol (`proto`) or JSON.
    #[arg(long, global = true, default_value = "proto", value_parser = ["proto", "json"])]
    format: String,
    /// Users registered in parallel while provisioning.
    #[arg(long, global = true, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    provision_concurrency: u16,
    /// How long a request may stay unanswered before it is retried (same client_msg_id).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// After the measured phase: how long everything owed may take to arrive.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// Message body size in bytes.
    #[arg(long, global = true, default_value_t = 100, value_parser = clap::value_parser!(u32).range(4..=65_536))]
    body_bytes: u32,
    /// WebSocket read buffer per client connection, bytes (default 1 KiB for idle and
    /// connect, 16 KiB otherwise).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    read_buffer: Option<u32>,
    /// Do not spread connections over 127.0.0.0/8 source addresses on loopback.
    #[arg(long, global = true)]
    no_source_spread: bool,
}

#[derive(Debug, Subcommand)]
enum ScenarioCmd {
    /// Hold C authenticated connections for T; reports server RSS growth per connection.
    Idle {
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        connections: u32,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Handshakes in flight at once (all workers together).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
        concurrency: u32,
    },
    /// Connect storm: C connections as fast as the server accepts them.
    Connect {
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        connections: u32,
        /// Handshakes in flight at once (all workers together).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
        concurrency: u32,
    },
    /// U users in sender→receiver pairs, each sender keeping W messages unacked.
    Direct {
        #[arg(long, default_value_t = 1000, value_parser = parse_even_users)]
        users: u32,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        window: u32,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// N messages to an offline user, who then connects and syncs.
    Offline {
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        messages: u64,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        window: u32,
    },
    /// One group of M members (the sender among them), all connected: one sender sends
    /// R messages a second for T; every other member's device must get each one once.
    Group {
        /// Members of the group, the sender included (the server's limit applies:
        /// `natter serve --max-group-members`, 1,024 by default).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(2..=10_000))]
        members: u32,
        /// Messages per second the sender sends (on a fixed schedule from the start).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        /// Most messages the sender keeps unacked; a sender behind its schedule waits.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        window: u32,
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// One user watched by S subscribers: every subscriber subscribes to the user's
    /// presence, then the user connects and disconnects `cycles` times; every subscriber
    /// must get one push for each change. Times the fan-out of each transition. Run the
    /// server with a short offline debounce (`natter serve --presence-debounce-ms 0`):
    /// the offline figures include it.
    Presence {
        /// Users subscribed to the watched user (each is in its contacts, and has it in
        /// theirs).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        subscribers: u32,
        /// Times the watched user connects and disconnects (two transitions each).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        cycles: u32,
        /// The watched user's online and last-seen setting. With `contacts`, one more
        /// user (not a contact) subscribes too and must never see it.
        #[arg(long, default_value = "everyone", value_parser = ["everyone", "contacts"])]
        privacy: String,
        /// Pause after each transition's last push before the next transition.
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        pause: Duration,
        /// How long a transition's pushes may take; missing ones count as lost.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        transition_timeout: Duration,
    },
    /// Media over HTTP: one user uploads a document of `--size-mib` (`%PDF-1.4` then
    /// pseudo-random bytes, generated as sent) as a resumable upload in PATCHes of
    /// `--chunk-mib`, completes it, downloads it and checks its SHA-256. With `--single`:
    /// `--count` single-shot uploads of `--size-mib` (default 16), `--concurrency` at a
    /// time. Reports throughput, latency, and with --server-pid the server's RSS over
    /// time and its peak. The server's limits must allow the size
    /// (`NATTER_MEDIA_MAX_DOCUMENT_MIB`, `--media-single-max-mib`).
    Media {
        /// File size in MiB (default 1024, or 16 with --single).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        size_mib: Option<u64>,
        /// File size in bytes (instead of --size-mib).
        #[arg(long, conflicts_with = "size_mib", value_parser = clap::value_parser!(u64).range(1..=(1u64 << 36)))]
        size_bytes: Option<u64>,
        /// Bytes per PATCH of the resumable upload, in MiB.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
        chunk_mib: u64,
        /// Single-shot uploads (`POST /v1/media`) instead of one resumable upload.
        #[arg(long)]
        single: bool,
        /// With --single: uploads in all.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// With --single: uploads in flight at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: u32,
        /// Seed of the content (default: random, so the server does not deduplicate
        /// against an earlier run's upload).
        #[arg(long)]
        seed: Option<u64>,
        /// How often RSS is sampled.
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        sample: Duration,
        /// The whole run's time limit.
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Internal: one worker process (plan on stdin, reports on stdout).
    #[command(name = "__worker", hide = true)]
    Worker,
}

/// Durations like `30s`, `2m`, `500ms`; at most a day.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 2m)"))?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("{s:?}: at most 24h"));
    }
    Ok(d)
}

fn parse_even_users(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if n < 2 || !n.is_multiple_of(2) || n > 1_000_000 {
        return Err(format!(
            "{n}: users come in pairs: an even number from 2 to 1,000,000"
        ));
    }
    Ok(n)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natter-loadtest: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let c = cli.common;
    if let ScenarioCmd::Media {
        size_mib,
        size_bytes,
        chunk_mib,
        single,
        count,
        concurrency,
        seed,
        sample,
        timeout,
    } = cli.scenario
    {
        let media = media::Media {
            url: c.url,
            server_pid: c.server_pid,
            size: size_bytes.unwrap_or(size_mib.unwrap_or(if single { 16 } else { 1024 }) << 20),
            mode: if single {
                media::Mode::Single {
                    count: count as usize,
                    concurrency: concurrency as usize,
                }
            } else {
                media::Mode::Resumable {
                    chunk: chunk_mib << 20,
                }
            },
            seed: seed.unwrap_or_else(rand::random),
            sample: sample.max(Duration::from_millis(10)),
            timeout,
            report: c.report,
        };
        let verdict = runtime.block_on(media::run(media));
        runtime.shutdown_timeout(Duration::from_secs(1));
        return ExitCode::from(verdict.exit_code());
    }
    let common = run::Common {
        url: c.url,
        ws_urls: c.ws_url,
        server_pid: c.server_pid,
        workers: c.workers.map(usize::from),
        report: c.report,
        format: c.format,
        provision_concurrency: c.provision_concurrency.into(),
        request_timeout: c.request_timeout.max(Duration::from_millis(100)),
        drain: c.drain,
        body_bytes: c.body_bytes as usize,
        read_buffer: c.read_buffer.map(|b| b as usize),
        spread_sources: !c.no_source_spread,
    };
    let scenario = match cli.scenario {
        // Handled above.
        ScenarioCmd::Media { .. } => return ExitCode::from(2),
        ScenarioCmd::Worker => {
            let code = runtime.block_on(worker::main());
            // The stdin reader may sit in a blocking read: do not wait for it.
            runtime.shutdown_background();
            return code;
        }
        ScenarioCmd::Idle {
            connections,
            duration,
            concurrency,
        } => run::Scenario::Idle {
            connections: connections as usize,
            duration,
            concurrency: concurrency as usize,
        },
        ScenarioCmd::Connect {
            connections,
            concurrency,
        } => run::Scenario::Connect {
            connections: connections as usize,
            concurrency: concurrency as usize,
        },
        ScenarioCmd::Direct {
            users,
            window,
            duration,
        } => run::Scenario::Direct {
            users: users as usize,
            window: window as usize,
            duration,
        },
        ScenarioCmd::Offline { messages, window } => run::Scenario::Offline {
            messages,
            window: window as usize,
        },
        ScenarioCmd::Group {
            members,
            rate,
            window,
            duration,
        } => run::Scenario::Group {
            members: members as usize,
            rate,
            window: window as usize,
            duration,
        },
        ScenarioCmd::Presence {
            subscribers,
            cycles,
            privacy,
            pause,
            transition_timeout,
        } => run::Scenario::Presence {
            subscribers: subscribers as usize,
            cycles,
            contacts_only: privacy == "contacts",
            pause,
            transition_timeout: transition_timeout.max(Duration::from_millis(100)),
        },
    };
    let verdict = runtime.block_on(run::run(common, scenario));
    // Worker pipes and the Ctrl-C listener must not hold the process open.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(verdict.exit_code())
}

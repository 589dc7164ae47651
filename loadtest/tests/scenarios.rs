//! Runs every available scenario at a tiny size against a real `natter serve` (embedded
//! store, loopback, ephemeral port) and checks the summary's accounting.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const LOADTEST: &str = env!("CARGO_BIN_EXE_natter-loadtest");

/// The `natter` binary of the same build: next to natter-loadtest, or built now.
fn natter_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATTER_BIN") {
        return p.into();
    }
    let dir = Path::new(LOADTEST)
        .parent()
        .expect("binary has a directory");
    let bin = dir.join("natter");
    if !bin.exists() {
        // `cargo test -p natter-loadtest` alone does not build the server.
        let profile_release = dir.ends_with("release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // From the workspace root: in this package's directory there is no `natter` bin.
        cmd.args(["build", "--locked", "--bin", "natter"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build --bin natter");
        assert!(status.success(), "cargo build --bin natter failed");
    }
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// `natter serve` on an ephemeral loopback port, stopped on drop.
struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra `natter serve` arguments.
    fn start_with(extra: &[&str]) -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(natter_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            // Cheap password hashing: provisioning hundreds of users stays fast.
            .env("NATTER_ARGON2_MEMORY_KIB", "256")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting natter serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("natter serve exited before listening")
                .expect("reading natter's stdout");
            if let Some(rest) = line.strip_prefix("natter listening on ") {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            url,
            _data: data,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs natter-loadtest (bounded in time) and returns its exit code and summary line.
fn loadtest(server: &Server, args: &[&str]) -> (Option<i32>, Value, Output) {
    let mut child = Command::new(LOADTEST)
        .args([
            "--url",
            &server.url,
            "--server-pid",
            &server.pid().to_string(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting natter-loadtest");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("natter-loadtest {args:?} ran longer than 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one summary line expected, got {stdout:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(lines[0]).expect("summary is JSON");
    (out.status.code(), summary, out)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// The auditor's counts are all zero and the run says ok.
fn assert_clean(code: Option<i32>, v: &Value, out: &Output) {
    for key in [
        "lost",
        "duplicated",
        "misordered",
        "gaps",
        "corrupted",
        "unacked",
    ] {
        assert_eq!(u(v, key), 0, "{key} in {v}");
    }
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        code,
        Some(0),
        "exit code; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(f(v, "server_rss_bytes") > 0.0, "server RSS sampled: {v}");
    assert!(v["server_cpu_s"].is_number(), "server CPU sampled: {v}");
}

#[test]
fn direct_delivers_everything_once_in_order_and_writes_a_report() {
    let server = Server::start();
    let report = tempfile::tempdir().expect("tempdir");
    let report_dir = report.path().join("direct");
    let (code, v, out) = loadtest(
        &server,
        &[
            "--workers",
            "2",
            "--report",
            report_dir.to_str().expect("utf-8 path"),
            "direct",
            "--users",
            "8",
            "--window",
            "4",
            "--duration",
            "2s",
        ],
    );
    assert_clean(code, &v, &out);
    assert_eq!(v["scenario"], "direct");
    assert_eq!(u(&v, "connections"), 8);
    assert_eq!(u(&v, "workers"), 2);
    let sent = u(&v, "sent");
    assert!(sent > 0, "{v}");
    assert_eq!(u(&v, "acked"), sent, "{v}");
    assert_eq!(u(&v, "delivered"), sent, "{v}");
    assert_eq!(
        u(&v, "latency_samples"),
        sent,
        "one latency per delivery: {v}"
    );
    assert!(f(&v, "rate_per_s") > 0.0, "{v}");
    let (p50, p99, max) = (f(&v, "p50_ms"), f(&v, "p99_ms"), f(&v, "max_ms"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{v}");
    // The report holds the same summary, the per-second series and the charts.
    let json: Value = serde_json::from_slice(
        &std::fs::read(report_dir.join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    assert_eq!(json["sent"], v["sent"]);
    let csv = std::fs::read_to_string(report_dir.join("series.csv")).expect("series.csv");
    let delivered_in_csv: u64 = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(3)
                .and_then(|d| d.parse::<u64>().ok())
                .expect("count")
        })
        .sum();
    assert_eq!(delivered_in_csv, sent, "per-second series adds up: {csv}");
    for chart in [
        "latency.svg",
        "latency.png",
        "throughput.svg",
        "throughput.png",
    ] {
        let len = std::fs::metadata(report_dir.join(chart))
            .unwrap_or_else(|e| panic!("{chart}: {e}"))
            .len();
        assert!(len > 100, "{chart} is {len} bytes");
    }
}

#[test]
fn offline_user_syncs_every_message() {
    let server = Server::start();
    let (code, v, out) = loadtest(&server, &["offline", "--messages", "300", "--window", "10"]);
    assert_clean(code, &v, &out);
    assert_eq!(u(&v, "sent"), 300);
    assert_eq!(u(&v, "acked"), 300);
    assert_eq!(u(&v, "delivered"), 300);
    assert!(f(&v, "store_s") > 0.0 && f(&v, "sync_s") > 0.0, "{v}");
    assert_eq!(v["latency"], "send_to_ack");
}

#[test]
fn idle_holds_connections_and_reports_memory_per_connection() {
    let server = Server::start();
    let (code, v, out) = loadtest(
        &server,
        &[
            "--workers",
            "2",
            "idle",
            "--connections",
            "40",
            "--duration",
            "1s",
        ],
    );
    assert_clean(code, &v, &out);
    assert_eq!(u(&v, "connected"), 40, "{v}");
    assert_eq!(u(&v, "connect_failed"), 0);
    assert_eq!(
        u(&v, "latency_samples"),
        40,
        "one connect latency each: {v}"
    );
    assert!(v["server_bytes_per_connection"].is_number(), "{v}");
    assert!(f(&v, "measured_s") >= 1.0, "held for the duration: {v}");
}

#[test]
fn connect_storm_counts_every_connection() {
    let server = Server::start();
    let (code, v, out) = loadtest(
        &server,
        &[
            "--workers",
            "2",
            "connect",
            "--connections",
            "40",
            "--concurrency",
            "8",
        ],
    );
    assert_clean(code, &v, &out);
    assert_eq!(u(&v, "connected"), 40, "{v}");
    assert!(f(&v, "rate_per_s") > 0.0, "{v}");
    assert!(f(&v, "storm_s") > 0.0, "{v}");
}

#[test]
fn bad_server_is_a_run_error_not_a_pass() {
    // Nothing listens on port 9 of loopback: provisioning fails, exit code 2.
    let out = Command::new(LOADTEST)
        .args([
            "--url",
            "http://127.0.0.1:9",
            "direct",
            "--users",
            "2",
            "--duration",
            "1s",
        ])
        .output()
        .expect("running natter-loadtest");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("provisioning"),
        "{out:?}"
    );
}

#[test]
fn group_delivers_every_message_to_every_member_once_in_order() {
    let server = Server::start();
    let members = 20;
    let (code, v, out) = loadtest(
        &server,
        &[
            "group",
            "--members",
            &members.to_string(),
            "--rate",
            "20",
            "--duration",
            "2s",
        ],
    );
    assert_clean(code, &v, &out);
    assert_eq!(v["scenario"], "group");
    assert_eq!(u(&v, "connections"), members, "{v}");
    assert_eq!(u(&v, "members"), members, "{v}");
    assert_eq!(u(&v, "workers"), 1, "{v}");
    let sent = u(&v, "sent");
    // 20 a second for 2 s: about 40 (the schedule starts with one at once).
    assert!((30..=45).contains(&sent), "{v}");
    assert_eq!(u(&v, "acked"), sent, "{v}");
    // Every member but the sender gets every message once; the group's system
    // message(s) are not counted.
    let owed = sent * (members - 1);
    assert_eq!(u(&v, "delivered"), owed, "{v}");
    assert_eq!(u(&v, "deliveries_owed"), owed, "{v}");
    assert_eq!(u(&v, "redelivered"), 0, "{v}");
    assert_eq!(
        u(&v, "latency_samples"),
        owed,
        "one latency per delivery: {v}"
    );
    assert_eq!(u(&v, "expected_rate_per_s"), 20 * (members - 1), "{v}");
    assert!(f(&v, "rate_per_s") > 0.0, "{v}");
    let (p50, p99, max) = (f(&v, "p50_ms"), f(&v, "p99_ms"), f(&v, "max_ms"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{v}");
}

#[test]
fn group_larger_than_the_server_allows_is_a_run_error() {
    let server = Server::start_with(&["--max-group-members", "4"]);
    let (code, v, out) = loadtest(&server, &["group", "--members", "5", "--duration", "1s"]);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GroupFull"), "{stderr}");
}

/// The presence scenario against a server with a short offline debounce: every
/// subscriber sees every transition once, and the summary's accounting adds up.
fn presence_run(privacy: &str) {
    let server = Server::start_with(&["--presence-debounce-ms", "0"]);
    let (subscribers, cycles) = (8u64, 3u64);
    let (code, v, out) = loadtest(
        &server,
        &[
            "presence",
            "--subscribers",
            &subscribers.to_string(),
            "--cycles",
            &cycles.to_string(),
            "--privacy",
            privacy,
            "--pause",
            "50ms",
        ],
    );
    assert_clean(code, &v, &out);
    assert_eq!(v["scenario"], "presence");
    assert_eq!(v["privacy"], privacy, "{v}");
    let stranger = u64::from(privacy == "contacts");
    assert_eq!(u(&v, "connections"), subscribers + 1 + stranger, "{v}");
    assert_eq!(u(&v, "subscribers"), subscribers, "{v}");
    assert_eq!(u(&v, "transitions"), 2 * cycles, "{v}");
    let owed = 2 * cycles * subscribers;
    assert_eq!(u(&v, "delivered"), owed, "{v}");
    assert_eq!(u(&v, "latency_samples"), owed, "one latency per push: {v}");
    for key in ["leaked", "unexpected", "late"] {
        assert_eq!(u(&v, key), 0, "{key} in {v}");
    }
    for kind in ["online", "offline"] {
        assert_eq!(
            u(&v, &format!("{kind}_transitions_complete")),
            cycles,
            "{v}"
        );
        let p50 = f(&v, &format!("{kind}_last_p50_ms"));
        let max = f(&v, &format!("{kind}_last_max_ms"));
        assert!(p50 <= max, "{v}");
        // A median under the clock's resolution (the online pushes can arrive as X's
        // Welcome is taken) leaves no rate to report: null, not infinity.
        let rate = &v[format!("{kind}_pushes_per_s")];
        if p50 > 0.0 {
            assert!(rate.as_f64().is_some_and(|r| r > 0.0), "{v}");
        } else {
            assert!(rate.is_null(), "{v}");
        }
    }
    assert!(f(&v, "rate_per_s") > 0.0, "{v}");
    assert!(v["server_cpu_s_per_1000_pushes"].is_number(), "{v}");
}

#[test]
fn presence_reaches_every_subscriber_at_every_transition() {
    presence_run("everyone");
}

#[test]
fn presence_with_contacts_only_privacy_hides_the_user_from_a_stranger() {
    presence_run("contacts");
}

#[test]
fn presence_pushes_missing_their_timeout_fail_the_run() {
    // The default 3 s offline debounce against a 1 s transition timeout: every offline
    // push comes too late.
    let server = Server::start();
    let (code, v, _out) = loadtest(
        &server,
        &[
            "presence",
            "--subscribers",
            "3",
            "--cycles",
            "1",
            "--transition-timeout",
            "1s",
        ],
    );
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(u(&v, "lost"), 3, "the offline transition's pushes: {v}");
    assert_eq!(u(&v, "delivered"), 3, "the online transition's pushes: {v}");
    assert_eq!(u(&v, "online_transitions_complete"), 1, "{v}");
    assert_eq!(u(&v, "offline_transitions_complete"), 0, "{v}");
}

/// A media run passed: exit 0, ok, and the server's memory was sampled.
fn assert_media_ok(code: Option<i32>, v: &Value, out: &Output) {
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        code,
        Some(0),
        "exit code; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["scenario"], "media");
    assert!(f(v, "server_vmhwm_mib") > 0.0, "{v}");
    assert!(f(v, "server_rss_max_sampled_mib") > 0.0, "{v}");
    assert!(f(v, "client_vmhwm_mib") > 0.0, "{v}");
    assert!(
        !v["rss_series"].as_array().expect("series").is_empty(),
        "{v}"
    );
}

#[test]
fn media_resumable_upload_completes_and_downloads_intact() {
    let server = Server::start();
    // Not a multiple of the chunk: the last PATCH is short.
    let size = 3 * 1024 * 1024 + 5;
    let (code, v, out) = loadtest(
        &server,
        &[
            "media",
            "--size-bytes",
            &size.to_string(),
            "--chunk-mib",
            "1",
            "--seed",
            "7",
        ],
    );
    assert_media_ok(code, &v, &out);
    assert_eq!(v["mode"], "resumable");
    assert_eq!(u(&v, "size_bytes"), size);
    assert_eq!(u(&v["upload"], "patches"), 4);
    assert_eq!(u(&v["upload"], "retries"), 0);
    assert!(f(&v["upload"], "mib_per_s") > 0.0, "{v}");
    assert!(f(&v["download"], "mib_per_s") > 0.0, "{v}");
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64), "{v}");
}

#[test]
fn media_single_shot_uploads_report_latency() {
    let server = Server::start();
    let (code, v, out) = loadtest(
        &server,
        &[
            "media",
            "--single",
            "--size-mib",
            "1",
            "--count",
            "6",
            "--concurrency",
            "3",
        ],
    );
    assert_media_ok(code, &v, &out);
    assert_eq!(v["mode"], "single");
    assert_eq!(u(&v["upload"], "uploads"), 6);
    assert_eq!(u(&v["upload"], "failed"), 0);
    assert!(f(&v["upload"], "latency_ms_p99") >= f(&v["upload"], "latency_ms_p50"));
}

#[test]
fn media_refused_by_the_server_is_a_run_error() {
    // Larger than the server's document limit: the server learns the kind from the first
    // bytes of the first PATCH and refuses the upload (413), possibly before reading the
    // rest of the body, which the client then sees as a closed connection (and the
    // upload gone): exit 2 either way.
    let server = Server::start_with(&["--media-max-document-mib", "1"]);
    let (code, v, _) = loadtest(&server, &["media", "--size-mib", "2"]);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("413") || e.contains("PATCH at 0")),
        "{v}"
    );
}

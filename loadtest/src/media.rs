//! The media scenario: uploads and downloads over HTTP, with the server's memory watched.
//!
//! Resumable (default): one user uploads one large document (`%PDF-1.4\n` then
//! deterministic pseudo-random bytes) in PATCH chunks, completes it, downloads it and
//! checks its SHA-256. Single (`--single`): `count` single-shot uploads, `concurrency` at
//! a time, each a different content, timed one by one.
//!
//! The content is generated on the fly from a seed (any byte from its offset), so neither
//! side of the client ever holds a whole file: request bodies are streams of 256 KiB
//! pieces, the download is hashed as it arrives. The SHA-256 sent with the upload comes
//! from a first pass over the generated content, timed on its own (`hash_s`), so the
//! client's hashing does not share the upload's clock.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, stream};
use natter_client::HttpClient;
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    run::{Verdict, provision_one},
    stats::{self, ProcProbe, ProcSample},
};

/// The first bytes of every generated file: natter sniffs it as a PDF document.
const HEADER: &[u8] = b"%PDF-1.4\n";
/// Size of each piece of a streamed request body.
const PIECE: usize = 256 * 1024;
const MIB: f64 = 1_048_576.0;
/// Attempts at one PATCH (a dropped connection resumes from the server's offset).
const PATCH_TRIES: u32 = 5;
/// At most this much of an error answer is shown.
const ERROR_BODY_MAX: usize = 512;

/// What to run.
#[derive(Debug, Clone)]
pub struct Media {
    pub url: String,
    pub server_pid: Option<u32>,
    /// Bytes per file.
    pub size: u64,
    pub mode: Mode,
    /// Seed of the first file's content (the others use the next seeds).
    pub seed: u64,
    /// How often the server's and this process's RSS are sampled.
    pub sample: Duration,
    /// The whole run's time limit.
    pub timeout: Duration,
    /// Also write summary.json and rss.csv here.
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// One resumable upload in PATCHes of `chunk` bytes, then its download.
    Resumable { chunk: u64 },
    /// `count` single-shot uploads, `concurrency` in flight.
    Single { count: usize, concurrency: usize },
}

/// A file's content: `HEADER`, then splitmix64 words of `seed` (little-endian), `size`
/// bytes in all. Any range can be generated on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    pub seed: u64,
    pub size: u64,
}

fn word(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Content {
    /// Fills `buf` with the bytes from `offset` on (the caller keeps within `size`).
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let byte = |p: u64| word(self.seed, p / 8).to_le_bytes()[(p % 8) as usize];
        let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
        for (k, b) in buf[..head].iter_mut().enumerate() {
            *b = byte(offset + k as u64);
        }
        let mut pos = offset + head as u64;
        let mut words = buf[head..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&word(self.seed, pos / 8).to_le_bytes());
            pos += 8;
        }
        let tail = word(self.seed, pos / 8).to_le_bytes();
        for (b, t) in words.into_remainder().iter_mut().zip(tail) {
            *b = t;
        }
        if let Some(h) = HEADER
            .get(offset as usize..)
            .filter(|_| offset < HEADER.len() as u64)
        {
            let n = h.len().min(buf.len());
            buf[..n].copy_from_slice(&h[..n]);
        }
    }

    /// The bytes `start..end` as a stream of pieces, generated as they are polled.
    fn stream(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        stream::unfold(start, move |pos| async move {
            if pos >= end {
                return None;
            }
            let n = (end - pos).min(PIECE as u64) as usize;
            let mut buf = vec![0u8; n];
            self.fill(pos, &mut buf);
            Some((Ok(Bytes::from(buf)), pos + n as u64))
        })
    }

    /// Hex SHA-256 of the whole content, generated 1 MiB at a time.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < self.size {
            let n = (self.size - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            h.update(&buf[..n]);
            pos += n as u64;
        }
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A run that did not pass: its checks failed (exit 1) or it could not be done (exit 2).
#[derive(Debug)]
enum Failure {
    Check(String),
    Error(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Check(m) | Failure::Error(m) => m,
        }
    }
}

fn err(e: impl std::fmt::Display) -> Failure {
    Failure::Error(e.to_string())
}

/// Phases, as recorded with each RSS sample.
const PHASES: [&str; 6] = ["setup", "hash", "upload", "complete", "download", "done"];
const SETUP: u8 = 0;
const HASH: u8 = 1;
const UPLOAD: u8 = 2;
const COMPLETE: u8 = 3;
const DOWNLOAD: u8 = 4;
const DONE: u8 = 5;

#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    phase: u8,
    server_rss: Option<u64>,
    client_rss: u64,
}

/// Samples the server's and this process's RSS every `every` while the run lasts.
struct Sampler {
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
    server: Option<ProcProbe>,
    client: Option<ProcProbe>,
}

impl Sampler {
    fn start(server: Option<ProcProbe>, every: Duration) -> Sampler {
        let client = ProcProbe::new(std::process::id()).ok();
        let phase = Arc::new(AtomicU8::new(SETUP));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (phase, samples) = (phase.clone(), samples.clone());
            let (server, client) = (server.clone(), client.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    let s = Sample {
                        t_s: t0.elapsed().as_secs_f64(),
                        phase: phase.load(Ordering::Relaxed),
                        server_rss: server
                            .as_ref()
                            .and_then(|p| p.sample().ok())
                            .map(|s| s.rss_bytes),
                        client_rss: client
                            .as_ref()
                            .and_then(|p| p.sample().ok())
                            .map_or(0, |s| s.rss_bytes),
                    };
                    if let Ok(mut v) = samples.lock() {
                        v.push(s);
                    }
                }
            })
        };
        Sampler {
            phase,
            samples,
            task,
            server,
            client,
        }
    }

    fn enter(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn server_now(&self) -> Option<ProcSample> {
        self.server.as_ref().and_then(|p| p.sample().ok())
    }

    fn client_now(&self) -> Option<ProcSample> {
        self.client.as_ref().and_then(|p| p.sample().ok())
    }

    fn stop(self) -> Vec<Sample> {
        self.task.abort();
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn mib(bytes: u64) -> f64 {
    round1(bytes as f64 / MIB)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rate(bytes: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        round1(bytes as f64 / MIB / d.as_secs_f64())
    }
}

/// CPU seconds between two samples of one process.
fn cpu(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    a.zip(b).map(|(a, b)| round3(b.cpu_s - a.cpu_s))
}

/// The RSS figures: peaks per phase, the series once a second, and VmHWM.
fn rss_figures(samples: &[Sample], every: Duration) -> Value {
    let peak = |phase: Option<u8>, f: fn(&Sample) -> Option<u64>| {
        samples
            .iter()
            .filter(|s| phase.is_none_or(|p| s.phase == p))
            .filter_map(f)
            .max()
            .map(mib)
    };
    let server = |s: &Sample| s.server_rss;
    let client = |s: &Sample| Some(s.client_rss);
    let mut per_phase = serde_json::Map::new();
    for (i, name) in PHASES.iter().enumerate() {
        if let Some(p) = peak(Some(i as u8), server) {
            per_phase.insert((*name).to_owned(), json!(p));
        }
    }
    let step = (1.0 / every.as_secs_f64().max(0.001)).round().max(1.0) as usize;
    let series: Vec<Value> = samples
        .iter()
        .step_by(step)
        .map(|s| {
            json!([
                round1(s.t_s),
                PHASES[usize::from(s.phase).min(PHASES.len() - 1)],
                s.server_rss.map(mib),
                mib(s.client_rss)
            ])
        })
        .collect();
    json!({
        "server_rss_max_sampled_mib": peak(None, server),
        "server_rss_max_by_phase_mib": per_phase,
        "client_rss_max_sampled_mib": peak(None, client),
        "rss_series": series,
        "rss_series_columns": ["t_s", "phase", "server_rss_mib", "client_rss_mib"],
    })
}

/// An error answer's status and (the start of) its body.
async fn refusal(what: &str, r: reqwest::Response) -> Failure {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    let body: String = body.chars().take(ERROR_BODY_MAX).collect();
    Failure::Error(format!("{what}: {status}: {body}"))
}

fn header_u64(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// What the server answered about a stored media.
struct Stored {
    id: String,
    sha256: String,
    size: u64,
    kind: String,
}

fn stored(v: &Value) -> Result<Stored, Failure> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Stored {
        id: s("id").ok_or_else(|| Failure::Error(format!("no id in the media: {v}")))?,
        sha256: s("sha256").unwrap_or_default(),
        size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
        kind: s("kind").unwrap_or_default(),
    })
}

fn check_stored(m: &Stored, c: &Content, sha: &str) -> Result<(), Failure> {
    if m.sha256 != sha || m.size != c.size || m.kind != "document" {
        return Err(Failure::Check(format!(
            "the server stored kind {:?}, {} bytes, sha256 {}; sent a document of {} bytes, sha256 {sha}",
            m.kind, m.size, m.sha256, c.size
        )));
    }
    Ok(())
}

/// Shared by the phases of a run.
struct Cx {
    http: Client,
    base: String,
    token: String,
}

impl Cx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Runs the scenario, prints the JSON summary line, and says how it went.
pub async fn run(m: Media) -> Verdict {
    let started = Instant::now();
    let probe = match m.server_pid.map(ProcProbe::new).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("natter-loadtest: --server-pid: {e}");
            return Verdict::Error;
        }
    };
    let sampler = Sampler::start(probe, m.sample);
    let server_start = sampler.server_now();
    let mut v = json!({
        "scenario": "media",
        "mode": match m.mode { Mode::Resumable { .. } => "resumable", Mode::Single { .. } => "single" },
        "size_bytes": m.size,
        "seed": m.seed,
    });
    let outcome = tokio::select! {
        r = tokio::time::timeout(m.timeout, scenario(&m, &sampler, &mut v)) => {
            r.unwrap_or_else(|_| Err(Failure::Error(format!("not done within --timeout {:?}", m.timeout))))
        }
        _ = tokio::signal::ctrl_c() => {
            v["interrupted"] = json!(true);
            Ok(())
        }
    };
    sampler.enter(DONE);
    let server_end = sampler.server_now();
    let client_end = sampler.client_now();
    let samples = sampler.stop();
    let rss = rss_figures(&samples, m.sample);
    if let (Some(obj), Value::Object(r)) = (v.as_object_mut(), rss) {
        obj.extend(r);
    }
    v["server_rss_start_mib"] = json!(server_start.map(|s| mib(s.rss_bytes)));
    v["server_rss_end_mib"] = json!(server_end.map(|s| mib(s.rss_bytes)));
    v["server_vmhwm_mib"] = json!(server_end.map(|s| mib(s.rss_peak_bytes)));
    v["server_vmhwm_start_mib"] = json!(server_start.map(|s| mib(s.rss_peak_bytes)));
    v["client_vmhwm_mib"] = json!(client_end.map(|s| mib(s.rss_peak_bytes)));
    v["wall_s"] = json!(stats::secs(started.elapsed()));
    let verdict = match &outcome {
        _ if v.get("interrupted").is_some() => Verdict::Interrupted,
        Ok(()) => Verdict::Ok,
        Err(Failure::Check(_)) => Verdict::AuditFailed,
        Err(Failure::Error(_)) => Verdict::Error,
    };
    v["ok"] = json!(verdict == Verdict::Ok);
    if let Err(f) = &outcome {
        v["error"] = json!(f.message());
        eprintln!("natter-loadtest: {}", f.message());
    }
    if let Some(dir) = &m.report
        && let Err(e) = write_report(dir, &v, &samples)
    {
        eprintln!("natter-loadtest: --report: {e}");
    }
    println!("{v}");
    verdict
}

fn write_report(dir: &std::path::Path, v: &Value, samples: &[Sample]) -> std::io::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.json"), format!("{v:#}\n"))?;
    let mut csv = String::from("t_s,phase,server_rss_mib,client_rss_mib\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.3},{},{},{}",
            s.t_s,
            PHASES[usize::from(s.phase).min(PHASES.len() - 1)],
            s.server_rss.map(|b| mib(b).to_string()).unwrap_or_default(),
            mib(s.client_rss)
        );
    }
    std::fs::write(dir.join("rss.csv"), csv)
}

async fn scenario(m: &Media, sampler: &Sampler, v: &mut Value) -> Result<(), Failure> {
    let api = HttpClient::new(&m.url).map_err(|e| err(format_args!("--url: {e}")))?;
    let http = Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // Between two reads of an answer; a chunk's upload itself may take longer.
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(err)?;
    let name = {
        use rand::Rng as _;
        let n: u64 = rand::rng().random();
        format!("ltmedia{:x}", n & 0xffff_ffff_ffff)
    };
    let cred = provision_one(&api, &name, &format!("loadtest-{name}"))
        .await
        .map_err(|e| err(format_args!("provisioning a user: {e}")))?;
    let cx = Cx {
        http,
        base: api.base_url().as_str().trim_end_matches('/').to_owned(),
        token: cred.token,
    };
    match m.mode {
        Mode::Resumable { chunk } => resumable(m, &cx, chunk, sampler, v).await,
        Mode::Single { count, concurrency } => single(m, &cx, count, concurrency, sampler, v).await,
    }
}

async fn hash_all(contents: Vec<Content>) -> Result<Vec<String>, Failure> {
    tokio::task::spawn_blocking(move || contents.iter().map(Content::sha256).collect())
        .await
        .map_err(err)
}

async fn resumable(
    m: &Media,
    cx: &Cx,
    chunk: u64,
    sampler: &Sampler,
    v: &mut Value,
) -> Result<(), Failure> {
    let content = Content {
        seed: m.seed,
        size: m.size,
    };
    v["chunk_bytes"] = json!(chunk);
    sampler.enter(HASH);
    let t = Instant::now();
    let sha = hash_all(vec![content])
        .await?
        .pop()
        .ok_or_else(|| err("no hash"))?;
    v["hash_s"] = json!(stats::secs(t.elapsed()));
    v["sha256"] = json!(sha);

    sampler.enter(UPLOAD);
    let (server0, client0) = (sampler.server_now(), sampler.client_now());
    let t_upload = Instant::now();
    let r = cx
        .http
        .post(cx.url("/v1/media/uploads"))
        .bearer_auth(&cx.token)
        .json(&json!({"size": content.size, "sha256": sha, "filename": "loadtest.pdf"}))
        .send()
        .await
        .map_err(|e| err(format_args!("creating the upload: {e}")))?;
    if r.status() != StatusCode::CREATED {
        return Err(refusal("creating the upload", r).await);
    }
    let created: Value = r
        .json()
        .await
        .map_err(|e| err(format_args!("creating the upload: {e}")))?;
    let upload_id = created
        .get("upload_id")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format_args!("no upload_id in {created}")))?
        .to_owned();
    let upload_url = cx.url(&format!("/v1/media/uploads/{upload_id}"));

    let mut patch_latency = stats::histogram();
    let (mut offset, mut patches, mut retries) = (0u64, 0u64, 0u32);
    let mut last_report = 0u64;
    while offset < content.size {
        let end = (offset + chunk).min(content.size);
        let t = Instant::now();
        let sent = cx
            .http
            .patch(&upload_url)
            .bearer_auth(&cx.token)
            .header("Upload-Offset", offset)
            .header(header::CONTENT_LENGTH, end - offset)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(content.stream(offset, end)))
            .send()
            .await;
        let resume = match sent {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                let now = header_u64(&r, "upload-offset")
                    .ok_or_else(|| err("a PATCH answered without Upload-Offset"))?;
                if now != end {
                    return Err(Failure::Check(format!(
                        "PATCH {offset}..{end} answered Upload-Offset {now}"
                    )));
                }
                stats::record_ns(&mut patch_latency, t.elapsed().as_nanos() as u64);
                patches += 1;
                offset = now;
                if offset - last_report >= content.size / 4 && offset < content.size {
                    last_report = offset;
                    eprintln!(
                        "upload: {:.0}/{:.0} MiB, {} MiB/s",
                        offset as f64 / MIB,
                        content.size as f64 / MIB,
                        rate(offset, t_upload.elapsed())
                    );
                }
                continue;
            }
            Ok(r) if r.status() == StatusCode::CONFLICT => header_u64(&r, "upload-offset"),
            Ok(r) => return Err(refusal(&format!("PATCH at {offset}"), r).await),
            Err(e) => {
                eprintln!("PATCH at {offset}: {e}; resuming");
                // The server may have refused (413, 415...) before reading the whole body
                // and closed the connection: then HEAD tells the upload is gone.
                let e = format!("PATCH at {offset}: {e}");
                Some(
                    server_offset(cx, &upload_url)
                        .await
                        .map_err(|h| Failure::Error(format!("{e}; then {}", h.message())))?,
                )
            }
        };
        retries += 1;
        if retries >= PATCH_TRIES {
            return Err(err(format_args!(
                "PATCH at {offset}: {retries} failed tries"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(retries))).await;
        offset = match resume {
            Some(o) => o,
            None => server_offset(cx, &upload_url).await?,
        };
    }
    let upload_d = t_upload.elapsed();
    let server1 = sampler.server_now();

    sampler.enter(COMPLETE);
    let t = Instant::now();
    let r = cx
        .http
        .post(format!("{upload_url}/complete"))
        .bearer_auth(&cx.token)
        .send()
        .await
        .map_err(|e| err(format_args!("completing the upload: {e}")))?;
    if r.status() != StatusCode::CREATED {
        return Err(refusal("completing the upload", r).await);
    }
    let media: Value = r
        .json()
        .await
        .map_err(|e| err(format_args!("completing: {e}")))?;
    let complete_d = t.elapsed();
    let total_d = t_upload.elapsed();
    let (server2, client2) = (sampler.server_now(), sampler.client_now());
    let stored = stored(&media)?;
    v["media_id"] = json!(stored.id);
    v["upload"] = json!({
        "s": stats::secs(upload_d),
        "mib_per_s": rate(content.size, upload_d),
        "patches": patches,
        "retries": retries,
        "patch_ms_p50": stats::ms_at(&patch_latency, 0.5),
        "patch_ms_p99": stats::ms_at(&patch_latency, 0.99),
        "patch_ms_max": patch_latency.max() as f64 / 1000.0,
        "complete_s": stats::secs(complete_d),
        "with_complete_s": stats::secs(total_d),
        "with_complete_mib_per_s": rate(content.size, total_d),
        "server_cpu_s": cpu(server0, server2),
        "server_cpu_complete_s": cpu(server1, server2),
        "client_cpu_s": cpu(client0, client2),
    });
    check_stored(&stored, &content, &sha)?;
    eprintln!(
        "upload: {} MiB/s, complete {:.2} s",
        rate(content.size, upload_d),
        complete_d.as_secs_f64()
    );

    sampler.enter(DOWNLOAD);
    let (server0, client0) = (sampler.server_now(), sampler.client_now());
    let t = Instant::now();
    let r = cx
        .http
        .get(cx.url(&format!("/v1/media/{}", stored.id)))
        .bearer_auth(&cx.token)
        .send()
        .await
        .map_err(|e| err(format_args!("downloading: {e}")))?;
    if r.status() != StatusCode::OK {
        return Err(refusal("downloading", r).await);
    }
    let first_byte = t.elapsed();
    let mut body = r.bytes_stream();
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| err(format_args!("downloading, at byte {got}: {e}")))?;
        got += piece.len() as u64;
        hasher.update(&piece);
    }
    let download_d = t.elapsed();
    let (server1, client1) = (sampler.server_now(), sampler.client_now());
    let got_sha = hex(&hasher.finalize());
    v["download"] = json!({
        "s": stats::secs(download_d),
        "mib_per_s": rate(got, download_d),
        "first_byte_ms": round3(first_byte.as_secs_f64() * 1000.0),
        "server_cpu_s": cpu(server0, server1),
        "client_cpu_s": cpu(client0, client1),
    });
    if got != content.size || got_sha != sha {
        return Err(Failure::Check(format!(
            "downloaded {got} bytes, sha256 {got_sha}; uploaded {} bytes, sha256 {sha}",
            content.size
        )));
    }
    eprintln!("download: {} MiB/s, hash ok", rate(got, download_d));
    Ok(())
}

/// Where the server says an upload stands (after a PATCH was cut off).
async fn server_offset(cx: &Cx, upload_url: &str) -> Result<u64, Failure> {
    let r = cx
        .http
        .head(upload_url)
        .bearer_auth(&cx.token)
        .send()
        .await
        .map_err(|e| err(format_args!("HEAD {upload_url}: {e}")))?;
    if r.status() != StatusCode::OK {
        return Err(refusal("HEAD of the upload", r).await);
    }
    header_u64(&r, "upload-offset").ok_or_else(|| err("HEAD answered without Upload-Offset"))
}

async fn single(
    m: &Media,
    cx: &Cx,
    count: usize,
    concurrency: usize,
    sampler: &Sampler,
    v: &mut Value,
) -> Result<(), Failure> {
    v["count"] = json!(count);
    v["concurrency"] = json!(concurrency);
    let contents: Vec<Content> = (0..count as u64)
        .map(|i| Content {
            seed: m.seed.wrapping_add(i),
            size: m.size,
        })
        .collect();
    sampler.enter(HASH);
    let t = Instant::now();
    let hashes = hash_all(contents.clone()).await?;
    v["hash_s"] = json!(stats::secs(t.elapsed()));

    sampler.enter(UPLOAD);
    let (server0, client0) = (sampler.server_now(), sampler.client_now());
    let t_all = Instant::now();
    let mut uploads = stream::iter(contents.into_iter().zip(hashes).enumerate())
        .map(|(i, (content, sha))| async move {
            let t = Instant::now();
            let r = cx
                .http
                .post(cx.url("/v1/media"))
                .query(&[
                    ("filename", format!("loadtest-{i}.pdf")),
                    ("sha256", sha.clone()),
                ])
                .bearer_auth(&cx.token)
                .header(header::CONTENT_LENGTH, content.size)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::wrap_stream(content.stream(0, content.size)))
                .send()
                .await
                .map_err(|e| err(format_args!("upload {i}: {e}")))?;
            if r.status() != StatusCode::CREATED {
                return Err(refusal(&format!("upload {i}"), r).await);
            }
            let media: Value = r
                .json()
                .await
                .map_err(|e| err(format_args!("upload {i}: {e}")))?;
            let elapsed = t.elapsed();
            check_stored(&stored(&media)?, &content, &sha)?;
            Ok(elapsed)
        })
        .buffer_unordered(concurrency.max(1));
    let mut latency = stats::histogram();
    let (mut done, mut failed) = (0u64, 0u64);
    let mut first_failure = None;
    while let Some(r) = uploads.next().await {
        match r {
            Ok(d) => {
                done += 1;
                stats::record_ns(&mut latency, d.as_nanos() as u64);
            }
            Err(f) => {
                failed += 1;
                first_failure.get_or_insert(f);
            }
        }
    }
    let all_d = t_all.elapsed();
    let (server1, client1) = (sampler.server_now(), sampler.client_now());
    v["upload"] = json!({
        "s": stats::secs(all_d),
        "uploads": done,
        "failed": failed,
        "mib_per_s": rate(done * m.size, all_d),
        "per_s": if all_d.is_zero() { 0.0 } else { round1(done as f64 / all_d.as_secs_f64()) },
        "latency_ms_p50": stats::ms_at(&latency, 0.5),
        "latency_ms_p99": stats::ms_at(&latency, 0.99),
        "latency_ms_max": latency.max() as f64 / 1000.0,
        "server_cpu_s": cpu(server0, server1),
        "client_cpu_s": cpu(client0, client1),
    });
    match first_failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_the_same_whatever_the_pieces() {
        let c = Content {
            seed: 7,
            size: 1000,
        };
        let mut whole = vec![0u8; 1000];
        c.fill(0, &mut whole);
        assert!(whole.starts_with(HEADER));
        for (start, len) in [
            (0, 3),
            (3, 17),
            (5, 8),
            (9, 1),
            (13, 987),
            (999, 1),
            (64, 0),
        ] {
            let mut part = vec![0u8; len];
            c.fill(start as u64, &mut part);
            assert_eq!(part, whole[start..start + len], "at {start}+{len}");
        }
        let other = Content {
            seed: 8,
            size: 1000,
        };
        let mut o = vec![0u8; 1000];
        other.fill(0, &mut o);
        assert_ne!(o, whole);
        assert_eq!(o[..HEADER.len()], whole[..HEADER.len()]);
    }

    #[test]
    fn streamed_pieces_and_hash_match_the_content() {
        let c = Content {
            seed: 42,
            size: 3 * PIECE as u64 + 5,
        };
        let mut whole = vec![0u8; c.size as usize];
        c.fill(0, &mut whole);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let streamed: Vec<u8> = rt.block_on(async {
            let mut out = Vec::new();
            let mut s = std::pin::pin!(c.stream(100, c.size));
            while let Some(p) = s.next().await {
                let p = p.unwrap();
                assert!(p.len() <= PIECE);
                out.extend_from_slice(&p);
            }
            out
        });
        assert_eq!(streamed, whole[100..]);
        assert_eq!(c.sha256(), hex(&Sha256::digest(&whole)));
        let empty = Content { seed: 1, size: 0 };
        assert_eq!(
            empty.sha256(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn rss_figures_by_phase_and_once_a_second() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                t_s: f64::from(i) * 0.25,
                phase: if i < 10 { UPLOAD } else { DOWNLOAD },
                server_rss: Some((100 + i as u64) << 20),
                client_rss: 10 << 20,
            })
            .collect();
        let v = rss_figures(&samples, Duration::from_millis(250));
        assert_eq!(v["server_rss_max_sampled_mib"], json!(119.0));
        assert_eq!(v["server_rss_max_by_phase_mib"]["upload"], json!(109.0));
        assert_eq!(v["server_rss_max_by_phase_mib"]["download"], json!(119.0));
        assert_eq!(v["rss_series"].as_array().map(Vec::len), Some(5));
        assert_eq!(v["client_rss_max_sampled_mib"], json!(10.0));
    }
}

//! Test fixtures: real `nats-server` and `redis-server` processes on ephemeral loopback
//! ports, each in its own temporary directory, killed when dropped. They can be killed
//! (SIGKILL) and restarted on the same port to test recovery.
//!
//! The binaries come from Debian's `nats-server` and `redis-server` packages, which
//! `scripts/test` installs when they are missing. A missing binary fails the test with
//! that hint rather than skipping it. [`S3Server`] (an S3-compatible server, `s3s-fs`,
//! installed by `cargo install` in `scripts/setup`) is optional: `start` answers None
//! without it.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Tries with a new port when the chosen one was taken in the meantime.
const PORT_TRIES: u32 = 5;

/// Where an executable is on `PATH` (or the sbin directories Debian installs servers to).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn require(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/setup (or `apt-get install -y {name}`)")
    })
}

/// A free loopback port right now (another process may take it before we do).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// One server process plus what it needs to be started again on the same port.
struct Process {
    name: &'static str,
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    args: fn(&Path, u16) -> Vec<String>,
    ready: fn(SocketAddr) -> bool,
}

impl Process {
    fn start(
        name: &'static str,
        args: fn(&Path, u16) -> Vec<String>,
        ready: fn(SocketAddr) -> bool,
    ) -> Process {
        Process::start_bin(name, require(name), args, ready)
    }

    fn start_bin(
        name: &'static str,
        bin: PathBuf,
        args: fn(&Path, u16) -> Vec<String>,
        ready: fn(SocketAddr) -> bool,
    ) -> Process {
        let mut p = Process {
            name,
            bin,
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: 0,
            child: None,
            args,
            ready,
        };
        for _ in 0..PORT_TRIES {
            p.port = free_port();
            if p.spawn() {
                return p;
            }
        }
        panic!("{name} did not start on any of {PORT_TRIES} ports; see its log in the test output");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the process and waits until it accepts; false if it exited first.
    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("creating the server log");
        let err = out.try_clone().expect("cloning the log handle");
        let mut child = Command::new(&self.bin)
            .args((self.args)(self.dir.path(), self.port))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "{} exited with {status} on port {}:\n{}",
                    self.name,
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                return false;
            }
            if (self.ready)(self.addr()) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} was not ready within {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        // The old socket may linger a moment; the servers set SO_REUSEADDR, so a few
        // tries are enough.
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not restart on port {}", self.name, self.port);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    Some(s)
}

/// A `nats-server` with JetStream, storing under its temporary directory.
pub struct NatsServer(Process);

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer(Process::start(
            "nats-server",
            |dir, port| {
                vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-js".into(),
                    "-sd".into(),
                    dir.join("js").display().to_string(),
                ]
            },
            |addr| {
                // Ready when it greets with INFO.
                let Some(s) = connect(addr) else { return false };
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO")
            },
        ))
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://{}", self.0.addr())
    }

    /// SIGKILL: clients see the connection drop.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same port (and the same JetStream directory).
    pub fn restart(&mut self) {
        self.0.restart();
    }
}

/// A `redis-server` with an append-only file fsynced every write, so a restart keeps
/// what was written (as a production Redis holding leases would be configured).
pub struct RedisServer(Process);

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer(Process::start(
            "redis-server",
            |dir, port| {
                vec![
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string(),
                    "--dir".into(),
                    dir.display().to_string(),
                    "--appendonly".into(),
                    "yes".into(),
                    "--appendfsync".into(),
                    "always".into(),
                    "--save".into(),
                    String::new(),
                    "--protected-mode".into(),
                    "no".into(),
                ]
            },
            |addr| {
                let Some(mut s) = connect(addr) else {
                    return false;
                };
                if s.write_all(b"PING\r\n").is_err() {
                    return false;
                }
                let mut buf = [0u8; 7];
                // A loading server answers -LOADING; only +PONG means ready.
                s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
            },
        ))
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://{}", self.0.addr())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.0.restart();
    }
}

/// The bucket [`S3Server`] serves (a directory created before it starts).
pub const S3_BUCKET: &str = "natter-test";
/// The credentials [`S3Server`] accepts (SigV4).
const S3_ACCESS_KEY: &str = "natter-test-key";
const S3_SECRET_KEY: &str = "natter-test-secret";

/// An S3-compatible server (`s3s-fs`, from crates.io: `scripts/setup` installs it with
/// `cargo install`) over a temporary directory, with one bucket, [`S3_BUCKET`].
/// Requests must be signed (SigV4) with the credentials in [`S3Server::env`].
///
/// s3s-fs answers 500 to a suffix range longer than the object (`bytes=-n`, n > size),
/// where S3 answers the whole object; object_store retries 500s.
pub struct S3Server(Process);

impl S3Server {
    /// None when `s3s-fs` is not installed (tests that need it may then skip, saying so).
    pub fn start() -> Option<S3Server> {
        // `cargo install` puts it in $CARGO_HOME/bin, which PATH may lack.
        let bin = find_binary("s3s-fs").or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
            Some(home.join("bin").join("s3s-fs")).filter(|p| p.is_file())
        })?;
        Some(S3Server(Process::start_bin(
            "s3s-fs",
            bin,
            |dir, port| {
                // A bucket is a directory under the root; idempotent, so restarts keep it.
                let root = dir.join("root");
                std::fs::create_dir_all(root.join(S3_BUCKET))
                    .expect("creating the s3s-fs bucket directory");
                vec![
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string(),
                    "--access-key".into(),
                    S3_ACCESS_KEY.into(),
                    "--secret-key".into(),
                    S3_SECRET_KEY.into(),
                    root.display().to_string(),
                ]
            },
            |addr| http_status(addr, "/").is_some(),
        )))
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.0.addr())
    }

    /// The one bucket, [`S3_BUCKET`].
    pub fn bucket(&self) -> &str {
        S3_BUCKET
    }

    /// Environment for a natter server storing its media here: the AWS_* variables
    /// object_store reads, and `NATTER_MEDIA_STORE=s3://natter-test`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("NATTER_MEDIA_STORE", format!("s3://{S3_BUCKET}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The directory holding the bucket's objects (`<root>/natter-test`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.0.dir.path().join("root").join(S3_BUCKET)
    }

    /// SIGKILL: requests fail until [`S3Server::restart`].
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same port with the same objects.
    pub fn restart(&mut self) {
        self.0.restart();
    }
}

/// The status code of an unauthenticated `GET path` (HTTP/1.1, `Connection: close`), or
/// None when nothing answers HTTP there.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = connect(addr)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).take(256).read_line(&mut line).ok()?;
    let rest = line.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_restarts_on_its_port() {
        let mut r = RedisServer::start();
        let url = r.url();
        r.kill();
        assert!(connect(r.0.addr()).is_none(), "killed server still accepts");
        r.restart();
        assert_eq!(r.url(), url);
        assert!((r.0.ready)(r.0.addr()));
    }

    #[test]
    fn nats_starts_and_greets() {
        let n = NatsServer::start();
        assert!(n.url().starts_with("nats://127.0.0.1:"));
        assert!((n.0.ready)(n.0.addr()));
    }

    #[test]
    fn s3_answers_http_and_refuses_unsigned_requests() {
        let Some(mut s3) = S3Server::start() else {
            eprintln!("skipped: s3s-fs is not installed (run scripts/setup)");
            return;
        };
        assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
        assert_eq!(s3.bucket(), "natter-test");
        assert!(s3.bucket_dir().is_dir());
        let env = s3.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("AWS_ENDPOINT_URL"), Some(s3.endpoint()));
        assert_eq!(
            get("NATTER_MEDIA_STORE").as_deref(),
            Some("s3://natter-test")
        );
        // Unsigned: S3 refuses (403 AccessDenied), but it is S3 answering over HTTP.
        let status = http_status(s3.0.addr(), "/natter-test/missing").expect("an HTTP answer");
        assert!(
            (400..500).contains(&status),
            "unsigned GET answered {status}"
        );
        // Signed with the credentials of env(), through curl's SigV4 when curl is here.
        if find_binary("curl").is_some() {
            let object = format!("{}/{}/probe/hello.txt", s3.endpoint(), s3.bucket());
            let file = s3.0.dir.path().join("hello.txt");
            std::fs::write(&file, b"hello s3").unwrap();
            let curl = |extra: &[&str]| {
                let out = Command::new("curl")
                    .args(["-sS", "--max-time", "10", "--fail-with-body", "--aws-sigv4"])
                    .arg("aws:amz:us-east-1:s3")
                    .arg("--user")
                    .arg(format!(
                        "{}:{}",
                        get("AWS_ACCESS_KEY_ID").unwrap(),
                        get("AWS_SECRET_ACCESS_KEY").unwrap()
                    ))
                    .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
                    .args(extra)
                    .arg(&object)
                    .output()
                    .expect("running curl");
                assert!(
                    out.status.success(),
                    "curl {extra:?}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                out.stdout
            };
            curl(&["-T", &file.display().to_string()]);
            assert_eq!(curl(&[]), b"hello s3");
        } else {
            eprintln!("no curl: the signed PUT/GET is skipped");
        }
        s3.kill();
        assert!(
            http_status(s3.0.addr(), "/").is_none(),
            "killed server still answers"
        );
        s3.restart();
        assert!(http_status(s3.0.addr(), "/").is_some());
    }
}

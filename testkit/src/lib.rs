//! Test fixtures: real `nats-server` and `redis-server` processes on ephemeral loopback
//! ports, each in its own temporary directory, killed when dropped. They can be killed
//! (SIGKILL) and restarted on the same port to test recovery.
//!
//! The binaries come from Debian's `nats-server` and `redis-server` packages, which
//! `scripts/test` installs when they are missing. A missing binary fails the test with
//! that hint rather than skipping it.

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
        let mut p = Process {
            name,
            bin: require(name),
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
}

//! `natter-cli` end to end: the real CLI binary, one config directory per identity,
//! against a real `natter serve` on an ephemeral loopback port. Covers login and the
//! session file, sending by @username, listen, history, groups, token refresh, and the
//! exit codes scripts rely on (2 not logged in, 3 refused, 4 unreachable).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use common::*;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::Command,
    time::Instant,
};

/// How long one CLI run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `natter-cli` binary. It belongs to another package of the workspace, so cargo does
/// not build it for this test: build it (a no-op when fresh) into the same target
/// directory as `natter`, once per test binary.
fn cli_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let natter = PathBuf::from(env!("CARGO_BIN_EXE_natter"));
        let profile_dir = natter.parent().expect("the binary is in a directory");
        let target_dir = profile_dir
            .parent()
            .expect("a profile directory has a parent");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "natter-cli",
            "--bin",
            "natter-cli",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building natter-cli failed: {status}");
        let bin = profile_dir.join(format!("natter-cli{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// One identity: its own config directory, like a second terminal with
/// `NATTER_CLI_CONFIG_DIR` set.
struct Terminal {
    dir: tempfile::TempDir,
    server: String,
}

impl Terminal {
    fn new(server: &Server) -> Terminal {
        Terminal {
            dir: tempfile::tempdir().expect("a temporary directory"),
            server: server.base_url(),
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("natter")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli_bin());
        cmd.args(args)
            .env("NATTER_CLI_CONFIG_DIR", self.config_dir())
            .env("NATTER_PASSWORD", PASSWORD)
            .env("NATTER_SERVER", &self.server)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the CLI to the end (bounded).
    async fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output();
        match tokio::time::timeout(RUN_TIMEOUT, out).await {
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
                    "natter-cli {args:?} panicked: {stderr}"
                );
                out
            }
            Ok(Err(e)) => panic!("natter-cli {args:?} did not run: {e}"),
            Err(_) => panic!("natter-cli {args:?} did not finish within {RUN_TIMEOUT:?}"),
        }
    }

    /// Runs the CLI, which must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "natter-cli {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs the CLI with `--json`, which must succeed; every output line parsed.
    async fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok(&all)
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Registers and logs in a new user; its name.
    async fn sign_up(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.ok(&["register", &name]).await;
        let out = self.ok(&["login", &name, "--device", "test"]).await;
        assert!(out.contains(&format!("logged in as {name}")), "{out}");
        name
    }

    fn whoami_id(&self) -> String {
        let text = std::fs::read_to_string(self.config_dir().join("session.json"))
            .expect("a session file");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        v["user_id"].to_string()
    }
}

/// Runs `listen --json` in the background and returns the first printed message for which
/// `pick` is true, with everything printed before it.
async fn listen_until(t: &Terminal, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut child = t
        .command(&["--json", "listen", "--for", "30s"])
        .spawn()
        .expect("listen starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(l))) => l,
            other => panic!("listen ended or timed out ({other:?}); saw {seen:?}"),
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let done = pick(&v);
        seen.push(v);
        if done {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return seen;
        }
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn two_terminals_chat_by_username() {
    bounded(120, async {
        let server = Server::start().await;
        let (a, b) = (Terminal::new(&server), Terminal::new(&server));
        let ann = a.sign_up("ann").await;
        let bo = b.sign_up("bo").await;

        #[cfg(unix)]
        {
            assert_eq!(mode(&a.config_dir().join("session.json")), 0o600);
            assert_eq!(mode(&a.config_dir()), 0o700);
        }
        let who = a.json(&["whoami"]).await;
        assert_eq!(who[0]["username"], ann.as_str());
        assert_eq!(who[0]["server"], server.base_url().as_str());

        let ack = a.json(&["send", &format!("@{bo}"), "hello bo"]).await;
        assert_eq!(ack[0]["seq"], 1);
        let conversation = ack[0]["conversation_id"]
            .as_str()
            .expect("a conversation")
            .to_owned();
        assert!(conversation.starts_with("d."), "{conversation}");

        let got = b.json(&["listen", "--count", "1", "--for", "20s"]).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["text"], "hello bo");
        assert_eq!(got[0]["conversation_id"], conversation.as_str());
        assert_eq!(got[0]["sender_user"].as_str(), Some(a.whoami_id().as_str()));
        // Bo never looked ann up: the CLI asks the server for her name by id.
        assert_eq!(got[0]["sender_username"], ann.as_str(), "{got:?}");

        // A reply by conversation id, and one as a plain line.
        let line = b.ok(&["send", &conversation, "hi ann"]).await;
        assert_eq!(line.trim(), format!("sent {conversation} #2"));
        let lines = b.ok(&["history", &conversation]).await;
        assert_eq!(
            lines.trim(),
            format!("{conversation} #1 {ann}: hello bo\n{conversation} #2 {bo}: hi ann")
        );

        // History, oldest first, from both sides; ann knows bo's name from the lookup.
        let hist = a.json(&["history", &conversation]).await;
        let texts: Vec<&str> = hist.iter().filter_map(|m| m["text"].as_str()).collect();
        assert_eq!(texts, ["hello bo", "hi ann"]);
        let lines = a.ok(&["history", &format!("@{bo}"), "--limit", "1"]).await;
        assert_eq!(lines.trim(), format!("{conversation} #2 {bo}: hi ann"));

        // An access token the server refuses is refreshed once and the new one saved.
        let path = a.config_dir().join("session.json");
        let mut saved: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let old_refresh = saved["refresh_token"].clone();
        saved["access_token"] = "not-a-token".into();
        std::fs::write(&path, saved.to_string()).expect("write");
        let ack = a.json(&["send", &format!("@{bo}"), "after refresh"]).await;
        assert_eq!(ack[0]["seq"], 3);
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        assert_ne!(saved["access_token"], "not-a-token");
        assert_ne!(saved["refresh_token"], old_refresh);

        // Logging out forgets the session: the next command is "not logged in".
        a.ok(&["logout"]).await;
        assert!(!path.exists());
        let out = a.run(&["send", &format!("@{bo}"), "gone"]).await;
        assert_eq!(out.status.code(), Some(2));
    })
    .await;
}

#[tokio::test]
async fn groups_from_the_command_line() {
    bounded(120, async {
        let server = Server::start().await;
        let (a, b, c) = (
            Terminal::new(&server),
            Terminal::new(&server),
            Terminal::new(&server),
        );
        let ann = a.sign_up("ann").await;
        let bo = b.sign_up("bo").await;
        let cy = c.sign_up("cy").await;

        let created = a
            .json(&["groups", "create", "Trip", "--member", &format!("@{bo}")])
            .await;
        let group = created[0]["conversation_id"]
            .as_str()
            .expect("an id")
            .to_owned();
        assert!(group.starts_with("g."), "{group}");
        assert_eq!(created[0]["member_count"], 2);

        let added = a.json(&["groups", "add", &group, &format!("@{cy}")]).await;
        assert_eq!(added[0]["member_count"], 3);

        let listed = b.json(&["groups", "list"]).await;
        assert!(
            listed
                .iter()
                .any(|g| g["conversation_id"] == group.as_str()),
            "{listed:?}"
        );

        // Ann knows every member's name, so `show` names them with their roles.
        let shown = a.ok(&["groups", "show", &group]).await;
        assert!(shown.contains(&format!("{ann} owner")), "{shown}");
        assert!(shown.contains(&format!("{bo} member")), "{shown}");
        assert!(shown.contains(&format!("{cy} member")), "{shown}");

        let ack = a.json(&["send", &group, "hello trip"]).await;
        let seq = ack[0]["seq"].as_u64().expect("a seq");
        let seen = listen_until(&b, |m| m["text"] == "hello trip").await;
        let last = seen.last().expect("a message");
        assert_eq!(last["conversation_id"], group.as_str());
        assert_eq!(last["seq"], seq);
        // Bo looked up neither ann nor cy: their names come from the server by id.
        let system: Vec<&str> = seen
            .iter()
            .filter(|m| m["kind"] == "system")
            .filter_map(|m| m["text"].as_str())
            .collect();
        assert!(
            system.contains(&format!("{ann} created the group \"Trip\" with {bo}").as_str()),
            "a system message says who created the group: {seen:?}"
        );
        assert!(
            system.contains(&format!("{ann} added {cy}").as_str()),
            "a system message says who was added: {seen:?}"
        );
        assert!(
            seen.iter().all(|m| m["sender_username"] == ann.as_str()),
            "{seen:?}"
        );
        // Cy looked nobody up, and `show` names every member too.
        let shown = c.ok(&["groups", "show", &group]).await;
        assert!(shown.contains(&format!("{ann} owner")), "{shown}");
        assert!(shown.contains(&format!("{bo} member")), "{shown}");
        assert!(shown.contains(&format!("{cy} member")), "{shown}");

        // Bo is no admin: the server refuses, and the CLI says why with exit code 3.
        let out = b
            .run(&["groups", "remove", &group, &format!("@{cy}")])
            .await;
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("forbidden"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    })
    .await;
}

#[tokio::test]
async fn exit_codes_tell_scripts_what_went_wrong() {
    bounded(60, async {
        let server = Server::start().await;
        let t = Terminal::new(&server);

        // Not logged in: 2.
        for args in [&["whoami"][..], &["send", "@nobody", "hi"], &["listen"]] {
            let out = t.run(args).await;
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("not logged in"), "{stderr}");
        }

        // Refused by the server: 3, with its error code.
        let out = t.run(&["login", "nobody_at_all", "--device", "x"]).await;
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));

        // Nothing listens on port 1 of the loopback: 4.
        let out = t
            .run(&["--server", "http://127.0.0.1:1", "register", "someone"])
            .await;
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));

        // Bad usage: 2 (clap), and `chat` without a login.
        assert_eq!(t.run(&["send"]).await.status.code(), Some(2));
        assert_eq!(t.run(&["chat"]).await.status.code(), Some(2));
    })
    .await;
}

/// `natter-cli chat` is interactive: without a terminal (a script, a pipe) it says so and
/// exits 2 before touching the terminal. The screen itself is tested through its
/// rendering layer (ratatui's TestBackend) in the natter-cli crate.
#[tokio::test]
async fn chat_needs_a_terminal() {
    bounded(60, async {
        let server = Server::start().await;
        let t = Terminal::new(&server);
        t.sign_up("tui").await;
        let out = t.run(&["chat"]).await;
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("needs a terminal"), "{stderr}");
        // No escape sequences (alternate screen, raw mode) were written.
        assert!(out.stdout.is_empty(), "{out:?}");
    })
    .await;
}

/// Profiles, privacy, contacts, status updates and blocks, the way a script uses them.
#[tokio::test]
async fn people_from_the_command_line() {
    bounded(120, async {
        let server = Server::start().await;
        let (a, b) = (Terminal::new(&server), Terminal::new(&server));
        let ann = a.sign_up("ann").await;
        let bo = b.sign_up("bo").await;

        // Profiles: ann sets hers; bo sees it; hiding "about" hides it from bo.
        let mine = a
            .json(&["profile", "set", "--name", "Ann A.", "--about", "hi there"])
            .await;
        assert_eq!(mine[0]["display_name"], "Ann A.");
        assert_eq!(mine[0]["username"], ann.as_str());
        let seen = b.json(&["profile", "show", &format!("@{ann}")]).await;
        assert_eq!(seen[0]["display_name"], "Ann A.", "{seen:?}");
        assert_eq!(seen[0]["about"], "hi there", "{seen:?}");
        let privacy = a.json(&["privacy", "set", "--about", "nobody"]).await;
        assert_eq!(privacy[0]["about"], "nobody");
        assert_eq!(privacy[0]["last_seen"], "everyone");
        assert_eq!(a.json(&["privacy"]).await, privacy);
        let seen = b.json(&["profile", "show", &ann]).await;
        assert_eq!(seen[0]["about"], "", "{seen:?}");
        let text = a.ok(&["profile"]).await;
        assert!(text.contains("about: hi there"), "her own, whole: {text}");
        // Nothing to change is bad usage; an unknown value is clap's.
        assert_eq!(a.run(&["profile", "set"]).await.status.code(), Some(2));
        assert_eq!(
            a.run(&["privacy", "set", "--online", "friends"])
                .await
                .status
                .code(),
            Some(2)
        );

        // Contacts, both ways (status updates are for mutual contacts).
        let added = a
            .json(&["contacts", "add", &format!("@{bo}"), "--name", "Bobby"])
            .await;
        assert_eq!(added[0]["username"], bo.as_str());
        assert_eq!(added[0]["name"], "Bobby");
        b.ok(&["contacts", "add", &ann]).await;
        let listed = a.ok(&["contacts"]).await;
        assert!(listed.contains(&format!("{bo} (user ")), "{listed}");
        assert!(listed.contains("\"Bobby\""), "{listed}");

        // Status: ann posts, bo sees and views it, ann sees who viewed it, then deletes it.
        let posted = a.json(&["status", "post", "at the beach"]).await;
        let status_id = posted[0]["status_id"].as_str().expect("an id").to_owned();
        let list = b.json(&["status", "list"]).await;
        assert!(
            list.iter()
                .any(|s| s["status_id"] == status_id.as_str() && s["username"] == ann.as_str()),
            "{list:?}"
        );
        b.ok(&["status", "view", &status_id]).await;
        let mine = a.json(&["status", "mine"]).await;
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0]["view_count"], 1, "{mine:?}");
        let viewers = a.ok(&["status", "viewers", &status_id]).await;
        assert!(viewers.starts_with(&format!("{bo} at ")), "{viewers}");
        a.ok(&["status", "delete", &status_id]).await;
        assert!(a.json(&["status", "mine"]).await.is_empty());

        // Blocks: what bo sends while blocked is never shown to ann.
        assert_eq!(
            a.ok(&["block", &format!("@{bo}")]).await.trim(),
            format!("blocked {bo}")
        );
        let blocked = a.json(&["blocked"]).await;
        assert_eq!(blocked.len(), 1, "{blocked:?}");
        assert_eq!(blocked[0]["username"], bo.as_str());
        b.ok(&["send", &format!("@{ann}"), "while blocked"]).await;
        a.ok(&["unblock", &bo]).await;
        assert!(a.json(&["blocked"]).await.is_empty());
        b.ok(&["send", &format!("@{ann}"), "after unblock"]).await;
        let got = a.json(&["listen", "--count", "1", "--for", "20s"]).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["text"], "after unblock", "{got:?}");
        let hist = a.json(&["history", &format!("@{bo}")]).await;
        let texts: Vec<&str> = hist.iter().filter_map(|m| m["text"].as_str()).collect();
        assert_eq!(texts, ["after unblock"]);

        a.ok(&["contacts", "remove", &bo]).await;
        assert!(a.json(&["contacts"]).await.is_empty());
        // An unknown user: refused with the server's code, exit 3.
        let out = a.run(&["profile", "show", "@nobody_at_all_here"]).await;
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    })
    .await;
}

/// `presence`: one snapshot, and with --watch every change (ann comes online, then goes).
#[tokio::test]
async fn presence_from_the_command_line() {
    bounded(120, async {
        let server = Server::start().await;
        let (a, b) = (Terminal::new(&server), Terminal::new(&server));
        let ann = a.sign_up("ann").await;
        let bo = b.sign_up("bo").await;

        let once = b.json(&["presence", &format!("@{ann}")]).await;
        assert_eq!(once.len(), 1, "{once:?}");
        assert_eq!(once[0]["username"], ann.as_str());
        assert!(
            ["online", "offline"].contains(&once[0]["state"].as_str().unwrap_or("")),
            "{once:?}"
        );

        let mut watch = b
            .command(&["--json", "presence", &ann, "--watch", "--for", "60s"])
            .spawn()
            .expect("presence starts");
        let stdout = watch.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = async || -> Value {
            let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
            match line {
                Ok(Ok(Some(l))) => {
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
                }
                other => panic!("presence --watch ended or timed out: {other:?}"),
            }
        };
        // The snapshot first: bo is subscribed from here on.
        let mut seen = vec![next().await];
        // Ann holds a connection for a few seconds.
        let listen = a
            .command(&["listen", "--for", "4s"])
            .spawn()
            .expect("listen starts");
        let mut online = seen[0]["state"] == "online";
        loop {
            let v = seen.last().cloned().expect("a line");
            if online && v["state"] == "offline" {
                assert!(v["last_seen_ms"].as_u64().unwrap_or(0) > 0, "{seen:?}");
                break;
            }
            if v["state"] == "online" {
                online = true;
            }
            seen.push(next().await);
        }
        let _ = watch.start_kill();
        let _ = watch.wait().await;
        drop(listen);

        // Blocked by ann, bo sees nothing of her presence.
        a.ok(&["block", &format!("@{bo}")]).await;
        let hidden = b.json(&["presence", &ann]).await;
        assert_eq!(hidden[0]["state"], "hidden", "{hidden:?}");
        assert_eq!(hidden[0]["last_seen_ms"], 0, "{hidden:?}");
    })
    .await;
}

/// A 3x2 RGB PNG.
const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x1c, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x60, 0x67, 0x10, 0xd5,
    0x67, 0x10, 0x0d, 0x67, 0x10, 0x65, 0x60, 0xb7, 0x11, 0xd5, 0xb7, 0x31, 0x0e, 0xb7, 0x09, 0x04,
    0x00, 0x12, 0xf8, 0x02, 0xa7, 0x39, 0x50, 0xa7, 0xc5, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

/// `send-file`, media in `listen` and `history`, and `download` by the receiver.
#[tokio::test]
async fn files_from_the_command_line() {
    bounded(120, async {
        let server = Server::start().await;
        let (a, b) = (Terminal::new(&server), Terminal::new(&server));
        let ann = a.sign_up("ann").await;
        let bo = b.sign_up("bo").await;

        let png = a.dir.path().join("cat.png");
        std::fs::write(&png, TINY_PNG).expect("write the PNG");
        let png = png.to_str().expect("a UTF-8 path");
        let sent = a
            .json(&["send-file", &format!("@{bo}"), png, "--caption", "look"])
            .await;
        let media_id = sent[0]["media_id"].as_str().expect("a media id").to_owned();
        let conversation = sent[0]["conversation_id"]
            .as_str()
            .expect("a conversation")
            .to_owned();
        let seq = sent[0]["seq"].as_u64().expect("a seq");
        assert_eq!(sent[0]["media"]["kind"], "image", "{sent:?}");
        assert_eq!(sent[0]["media"]["width"], 3, "{sent:?}");
        assert_eq!(sent[0]["media"]["height"], 2, "{sent:?}");
        assert_eq!(sent[0]["media"]["size"], TINY_PNG.len(), "{sent:?}");

        // Bo gets it live, with everything the server found in the upload.
        let got = b.json(&["listen", "--count", "1", "--for", "20s"]).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["kind"], "media", "{got:?}");
        assert_eq!(got[0]["text"], "look", "{got:?}");
        assert_eq!(got[0]["media"]["id"], media_id.as_str(), "{got:?}");
        assert_eq!(got[0]["media"]["mime"], "image/png", "{got:?}");
        assert_eq!(got[0]["media"]["width"], 3, "{got:?}");
        let lines = b.ok(&["history", &conversation]).await;
        let want = format!(
            "{conversation} #{seq} {ann}: [photo 3x2 {} B] look",
            TINY_PNG.len()
        );
        assert!(lines.contains(&want), "{lines}");

        // Bo downloads it with his own token: the same bytes.
        let out = b.dir.path().join("got.png");
        let out_s = out.to_str().expect("a UTF-8 path");
        let saved = b
            .json(&["download", &conversation, &seq.to_string(), "-o", out_s])
            .await;
        assert_eq!(saved[0]["size"], TINY_PNG.len(), "{saved:?}");
        assert_eq!(std::fs::read(&out).expect("the download"), TINY_PNG);
        // Into a directory: the sender's file name, else <id>.png.
        let dir = b.dir.path().join("downloads");
        std::fs::create_dir(&dir).expect("a directory");
        let line = b
            .ok(&[
                "download",
                &conversation,
                &seq.to_string(),
                "-o",
                dir.to_str().unwrap(),
            ])
            .await;
        let named = [dir.join("cat.png"), dir.join(format!("{media_id}.png"))];
        let file = named.iter().find(|p| p.exists()).unwrap_or_else(|| {
            panic!("no file in {}: {line}", dir.display());
        });
        assert_eq!(std::fs::read(file).expect("the download"), TINY_PNG);
        assert!(line.starts_with("saved "), "{line}");

        // A text message has nothing to download (usage: 2); a missing one is refused (3).
        let ack = a.json(&["send", &conversation, "plain"]).await;
        let text_seq = ack[0]["seq"].as_u64().expect("a seq").to_string();
        let out = b.run(&["download", &conversation, &text_seq]).await;
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let out = b.run(&["download", &conversation, "999"]).await;
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    })
    .await;
}

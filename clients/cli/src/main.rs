//! `natter-cli`: a scriptable chat client for natter. Parses the command line, runs one
//! command and turns its error into one line on stderr and an exit code.

mod account;
mod app;
mod chat;
mod config;
mod error;
mod groups;
mod render;
mod session;
mod tui;
mod ui;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{config::Store, error::CliError};

/// The server used when neither `--server` nor a saved login names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// A command-line chat client for natter.
///
/// Exit codes: 0 ok, 1 local failure, 2 bad usage or not logged in, 3 refused by the
/// server (its error code is printed), 4 the server cannot be reached.
#[derive(Debug, Parser)]
#[command(name = "natter-cli", version)]
struct Cli {
    /// Server URL [default: the saved login's, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "NATTER_SERVER")]
    server: Option<String>,
    /// Where the login is kept [default: $NATTER_CLI_CONFIG_DIR, else
    /// $XDG_CONFIG_HOME/natter, else ~/.config/natter].
    #[arg(long, global = true)]
    config_dir: Option<PathBuf>,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account (the password comes from stdin or $NATTER_PASSWORD).
    Register {
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Log in as a new device and save the session.
    Login {
        username: String,
        /// The device's name, shown in the user's device list.
        #[arg(long, default_value = "natter-cli")]
        device: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Log this device out on the server and forget the session.
    Logout,
    /// Show who is logged in.
    Whoami,
    /// Send a text message to @user, a user id, or a conversation (d.… / g.…).
    Send { target: String, text: String },
    /// Print incoming messages until Ctrl-C, --for or --count.
    Listen {
        /// Stop after this long (e.g. 30s, 5m).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the latest messages of a conversation (d.…, g.… or @user), oldest first.
    History {
        conversation: String,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Who has received and read message SEQ of a conversation.
    ReadBy { conversation: String, seq: u64 },
    /// Chat interactively: conversation list, chat pane with ticks, typing and an input line.
    ///
    /// Keys: Enter sends, Tab / Up / Down switch conversations, PageUp loads older
    /// messages, Ctrl-C quits. Commands: /new @user, /group NAME @a @b, /quit.
    Chat {
        /// Show ticks as text ([sent] [delivered] [read]) instead of ✓ / ✓✓.
        #[arg(long)]
        ascii: bool,
    },
    /// Create, inspect and manage groups.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
}

#[derive(Debug, Args)]
struct PasswordArgs {
    /// Read the password from the first line of stdin (else $NATTER_PASSWORD is used).
    #[arg(long)]
    password_stdin: bool,
}

/// What every command gets: where the login lives, the server override and the format.
pub struct Context {
    pub store: Store,
    pub server: Option<String>,
    pub json: bool,
}

impl Context {
    /// Prints one line of text or one JSON value.
    pub fn print(&self, text: impl FnOnce() -> String, json: impl FnOnce() -> serde_json::Value) {
        if self.json {
            println!("{}", json());
        } else {
            println!("{}", text());
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let dir = match cli.config_dir {
        Some(d) => d,
        None => config::default_dir()?,
    };
    let ctx = Context {
        store: Store::new(dir),
        server: cli.server,
        json: cli.json,
    };
    match cli.command {
        Command::Register { username, password } => {
            account::register(&ctx, &username, password.password_stdin).await
        }
        Command::Login {
            username,
            device,
            password,
        } => account::login(&ctx, &username, &device, password.password_stdin).await,
        Command::Logout => account::logout(&ctx).await,
        Command::Whoami => account::whoami(&ctx),
        Command::Send { target, text } => chat::send(&ctx, &target, &text).await,
        Command::Listen { duration, count } => chat::listen(&ctx, duration, count).await,
        Command::History {
            conversation,
            limit,
        } => chat::history(&ctx, &conversation, limit).await,
        Command::ReadBy { conversation, seq } => chat::read_by(&ctx, &conversation, seq).await,
        Command::Groups(cmd) => groups::run(&ctx, cmd).await,
        Command::Chat { ascii } => tui::run(&ctx, ascii).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter-cli: cannot start: {e}");
            return ExitCode::from(error::EXIT_OTHER);
        }
    };
    let result = runtime.block_on(run(cli));
    // Background tasks of the WebSocket client must not hold the process open.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter-cli: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

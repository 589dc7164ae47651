//! `natter-cli`: a scriptable chat client for natter. Parses the command line, runs one
//! command and turns its error into one line on stderr and an exit code.

mod account;
mod app;
mod chat;
mod config;
mod error;
mod groups;
mod people;
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
    /// Send a file (photo, video, audio, voice note, document) to @user, a user id, or a
    /// conversation. Large files are uploaded in resumable chunks.
    SendFile {
        target: String,
        path: PathBuf,
        /// Text shown with the file (at most 1,024 bytes).
        #[arg(long, default_value = "")]
        caption: String,
        /// A voice note (audio recorded for this chat) rather than an audio file.
        #[arg(long)]
        voice: bool,
    },
    /// Save the photo, video, audio or document of message SEQ of a conversation.
    Download {
        conversation: String,
        seq: u64,
        /// Where to save it (a file, or a directory) [default: the sender's file name, else
        /// <media id>.<ext>, in the current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
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
    /// Chat interactively: conversation list, chat pane with ticks, the peer's presence,
    /// typing / recording indicators and an input line.
    ///
    /// Keys: Enter sends, Tab / Up / Down switch conversations, PageUp loads older
    /// messages, Ctrl-C quits. Commands: /new @user, /group NAME @a @b, /send-file PATH,
    /// /quit.
    Chat {
        /// Show ticks as text ([sent] [delivered] [read]) instead of ✓ / ✓✓.
        #[arg(long)]
        ascii: bool,
    },
    /// Create, inspect and manage groups.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Show a profile (default: yours) or change yours.
    Profile {
        #[command(subcommand)]
        command: Option<people::ProfileCommand>,
    },
    /// Show or change who may see your last seen, online, photo and about.
    Privacy {
        #[command(subcommand)]
        command: Option<people::PrivacyCommand>,
    },
    /// List, add or remove contacts.
    Contacts {
        #[command(subcommand)]
        command: Option<people::ContactsCommand>,
    },
    /// Block a user: they can no longer message you or see your presence, photo,
    /// about or status (they are not told).
    Block { user: String },
    /// Unblock a user.
    Unblock { user: String },
    /// The users you blocked.
    Blocked,
    /// Status updates: post, list your contacts', see yours and who viewed them.
    #[command(subcommand)]
    Status(people::StatusCommand),
    /// Whether users are online (or when they were last seen), as their privacy settings
    /// let you see it; --watch prints every change until Ctrl-C or --for.
    Presence {
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
        /// Keep printing changes.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this long (e.g. 30s, 5m).
        #[arg(long = "for", value_parser = humantime::parse_duration, requires = "watch")]
        duration: Option<Duration>,
    },
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
        Command::SendFile {
            target,
            path,
            caption,
            voice,
        } => chat::send_file(&ctx, &target, &path, &caption, voice).await,
        Command::Download {
            conversation,
            seq,
            output,
        } => chat::download(&ctx, &conversation, seq, output).await,
        Command::Listen { duration, count } => chat::listen(&ctx, duration, count).await,
        Command::History {
            conversation,
            limit,
        } => chat::history(&ctx, &conversation, limit).await,
        Command::ReadBy { conversation, seq } => chat::read_by(&ctx, &conversation, seq).await,
        Command::Groups(cmd) => groups::run(&ctx, cmd).await,
        Command::Chat { ascii } => tui::run(&ctx, ascii).await,
        Command::Profile { command } => people::profile(&ctx, command).await,
        Command::Privacy { command } => people::privacy(&ctx, command).await,
        Command::Contacts { command } => people::contacts(&ctx, command).await,
        Command::Block { user } => people::block(&ctx, &user, true).await,
        Command::Unblock { user } => people::block(&ctx, &user, false).await,
        Command::Blocked => people::blocked(&ctx).await,
        Command::Status(command) => people::status(&ctx, command).await,
        Command::Presence {
            users,
            watch,
            duration,
        } => people::presence(&ctx, &users, watch, duration).await,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("natter-cli").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn media_commands_parse() {
        assert!(matches!(
            parse(&["send-file", "@bo", "cat.png", "--caption", "look"]).unwrap().command,
            Command::SendFile { ref target, ref path, ref caption, voice: false }
                if target == "@bo" && path == &PathBuf::from("cat.png") && caption == "look"
        ));
        assert!(matches!(
            parse(&["send-file", "d.1.2", "note.ogg", "--voice"])
                .unwrap()
                .command,
            Command::SendFile { voice: true, .. }
        ));
        assert!(matches!(
            parse(&["download", "d.1.2", "3", "-o", "x.png"]).unwrap().command,
            Command::Download { seq: 3, output: Some(ref o), .. } if o == &PathBuf::from("x.png")
        ));
        assert!(parse(&["download", "d.1.2"]).is_err(), "needs a seq");
    }

    #[test]
    fn people_commands_parse() {
        assert!(matches!(
            parse(&["profile"]).unwrap().command,
            Command::Profile { command: None }
        ));
        assert!(matches!(
            parse(&[
                "privacy",
                "set",
                "--last-seen",
                "contacts",
                "--photo",
                "nobody"
            ])
            .unwrap()
            .command,
            Command::Privacy {
                command: Some(people::PrivacyCommand::Set {
                    last_seen: Some(people::Audience::Contacts),
                    online: None,
                    photo: Some(people::Audience::Nobody),
                    about: None,
                })
            }
        ));
        assert!(parse(&["privacy", "set", "--online", "friends"]).is_err());
        assert!(matches!(
            parse(&["status", "viewers", "17"]).unwrap().command,
            Command::Status(people::StatusCommand::Viewers { id: 17 })
        ));
        assert!(parse(&["status", "viewers", "x"]).is_err());
        assert!(parse(&["presence"]).is_err(), "needs a user");
        assert!(
            parse(&["presence", "@bo", "--for", "5s"]).is_err(),
            "--for needs --watch"
        );
        assert!(matches!(
            parse(&["presence", "@bo", "cy", "--watch", "--for", "5s"])
                .unwrap()
                .command,
            Command::Presence { ref users, watch: true, duration: Some(d) }
                if users.len() == 2 && d == Duration::from_secs(5)
        ));
    }
}

//! Chat commands over the WebSocket: send, send-file, download, listen, history, read-by.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use natter_client::{Client, ConversationId, Event, Seq, UploadOptions, download_name, v1};
use serde_json::json;
use tokio::time::Instant;

use crate::{Context, error::CliError, render, session::Identity};

/// Refresh the access token of a long `listen` this long before it expires, so that
/// reconnects keep working.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);

pub async fn send(ctx: &Context, target: &str, text: &str) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let target = id.target(target).await?;
    let client = id.connect(false).await?;
    let ack = client.send_text(target, text).await?;
    ctx.print(|| render::ack_line(&ack), || render::ack_json(&ack));
    Ok(())
}

/// `send-file`: uploads the file (resumable when large), then sends it as a media
/// message. Progress goes to stderr when it is a terminal.
pub async fn send_file(
    ctx: &Context,
    target: &str,
    path: &Path,
    caption: &str,
    voice: bool,
) -> Result<(), CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::io(format!("reading {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(CliError::Usage(format!("{}: not a file", path.display())));
    }
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let target = id.target(target).await?;
    let mut opts = UploadOptions::for_path(path);
    opts.voice = voice;
    opts.kind_hint_audio = voice;
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        let name = opts.filename.clone().unwrap_or_default();
        opts.progress = Some(Arc::new(move |done, total| {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!(
                "\ruploading {name}: {pct}% ({} of {})   ",
                render::size_text(done),
                render::size_text(total)
            );
            let _ = std::io::stderr().flush();
        }));
    }
    let info = id.upload(path, &opts).await;
    if terminal {
        eprintln!();
    }
    let info = info?;
    let client = id.connect(false).await?;
    let mut sent = info.media_ref(caption);
    if sent.filename.is_empty() {
        sent.filename = opts.filename.clone().unwrap_or_default();
    }
    let ack = client.send_media(target, sent).await?;
    let mut media = info.to_media_ref();
    media.caption = caption.to_owned();
    ctx.print(
        || {
            format!(
                "{} media {} {}",
                render::ack_line(&ack),
                info.id,
                render::media_text(&media)
            )
        },
        || {
            let mut v = render::ack_json(&ack);
            v["media_id"] = json!(info.id);
            v["media"] = render::media_json(&media);
            v
        },
    );
    Ok(())
}

/// `download`: finds message `seq` of the conversation in its history and streams its
/// media into `output` (a file, or a directory to put it in), by default
/// `./<file name>` or `./<id>.<ext>`.
pub async fn download(
    ctx: &Context,
    conversation: &str,
    seq: u64,
    output: Option<PathBuf>,
) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let conversation = id.conversation(conversation).await?;
    let client = id.connect(false).await?;
    let page = client
        .history(&conversation, Seq(seq.saturating_add(1)), 1)
        .await?;
    drop(client);
    let Some(m) = page
        .messages
        .into_iter()
        .find(|m| m.seq == seq && !m.withheld)
    else {
        return Err(CliError::Refused {
            code: "not_found".into(),
            message: format!("no message #{seq} in {conversation}"),
        });
    };
    let media = match (m.kind(), m.media) {
        (v1::MessageKind::Media, Some(media)) => media,
        _ => {
            return Err(CliError::Usage(format!(
                "{conversation} #{seq} is not a media message"
            )));
        }
    };
    let path = match output {
        Some(p) if p.is_dir() => p.join(download_name(&media)),
        Some(p) => p,
        None => PathBuf::from(download_name(&media)),
    };
    let got = id.download(&media.id, &conversation, seq, &path).await?;
    ctx.print(
        || {
            format!(
                "saved {} ({}, {})",
                got.path.display(),
                render::size_text(got.size),
                got.mime
            )
        },
        || {
            json!({
                "path": got.path.display().to_string(),
                "media_id": media.id,
                "conversation_id": conversation.to_string(),
                "seq": seq,
                "size": got.size,
                "mime": got.mime,
                "sha256": got.sha256,
            })
        },
    );
    Ok(())
}

/// Prints `m`, learning the names of users it mentions first.
async fn print_message(
    ctx: &Context,
    id: &mut Identity,
    m: &natter_client::v1::Message,
) -> Result<(), CliError> {
    id.learn_names(render::message_users(m)).await?;
    let id = &*id;
    ctx.print(
        || render::message_line(id, m),
        || render::message_json(id, m),
    );
    Ok(())
}

/// When `listen` stops on its own.
struct Stop {
    deadline: Option<Instant>,
    count: Option<u64>,
}

pub async fn listen(
    ctx: &Context,
    duration: Option<Duration>,
    count: Option<u64>,
) -> Result<(), CliError> {
    let stop = Stop {
        deadline: duration.map(|d| Instant::now() + d),
        count,
    };
    if stop.count == Some(0) {
        return Ok(());
    }
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    // Reconnect by itself: a listener outlives network blips and server restarts.
    let client = id.connect(true).await?;
    let mut printed = 0u64;
    // The last seq printed per conversation: acknowledged explicitly before exiting, so
    // the next `listen` starts after it.
    let mut last: BTreeMap<ConversationId, Seq> = BTreeMap::new();
    let result = listen_loop(ctx, &mut id, &client, &stop, &mut printed, &mut last).await;
    // Best effort: on the way out, tell the server how far we got. The Ping after the
    // Receiveds makes sure they left before the connection closes.
    if client.is_connected() {
        for (conversation, seq) in &last {
            let _ = client.received(conversation, *seq).await;
        }
        let _ = client.ping().await;
    }
    result
}

async fn listen_loop(
    ctx: &Context,
    id: &mut Identity,
    client: &Client,
    stop: &Stop,
    printed: &mut u64,
    last: &mut BTreeMap<ConversationId, Seq>,
) -> Result<(), CliError> {
    let sync = client.sync();
    tokio::pin!(sync);
    let mut syncing = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let far = Instant::now() + Duration::from_secs(60 * 60 * 24 * 365);
    loop {
        let refresh_at = refresh_instant(id);
        tokio::select! {
            done = &mut sync, if syncing => {
                syncing = false;
                done?;
            }
            ev = client.recv() => match ev {
                Some(Event::Message(m)) => {
                    print_message(ctx, id, &m).await?;
                    if let Ok(c) = m.conversation_id.parse::<ConversationId>() {
                        last.insert(c, Seq(m.seq));
                    }
                    *printed += 1;
                    if stop.count.is_some_and(|n| *printed >= n) {
                        return Ok(());
                    }
                }
                Some(Event::Closed { code, reason }) if matches!(code, 4001 | 4002) => {
                    return Err(CliError::Refused {
                        code: if code == 4001 { "revoked".into() } else { "replaced".into() },
                        message: format!("the server closed this device's connection ({code}): {reason}"),
                    });
                }
                Some(Event::Closed { code, .. }) => {
                    eprintln!("natter-cli: connection lost ({code}); reconnecting");
                }
                Some(Event::Reconnected(_)) => eprintln!("natter-cli: reconnected"),
                Some(Event::Reconnecting { reason, after_ms }) => {
                    eprintln!("natter-cli: {reason}; reconnecting in {after_ms} ms");
                }
                Some(Event::MessageDeleted { conversation_id, seq }) => ctx.print(
                    || render::deleted_line(&conversation_id, seq),
                    || render::deleted_json(&conversation_id, seq),
                ),
                Some(Event::Announcement { id, text, created_at_ms }) => ctx.print(
                    || render::announcement_line(&text),
                    || render::announcement_json(id, &text, created_at_ms),
                ),
                Some(_) => {}
                None => return Err(CliError::Other("the client stopped".into())),
            },
            _ = tokio::time::sleep_until(refresh_at) => {
                id.refresh().await?;
                client.set_access_token(&id.saved.access_token);
            }
            _ = tokio::time::sleep_until(stop.deadline.unwrap_or(far)) => return Ok(()),
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// When the access token should be renewed (never in the past: at least a second away).
pub(crate) fn refresh_instant(id: &Identity) -> Instant {
    let left_ms = id
        .saved
        .access_expires_at_ms
        .saturating_sub(crate::session::now_ms());
    let left = Duration::from_millis(left_ms).saturating_sub(REFRESH_AHEAD);
    Instant::now() + left.max(Duration::from_secs(1))
}

pub async fn history(ctx: &Context, conversation: &str, limit: u32) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let conversation = id.conversation(conversation).await?;
    let client = id.connect(false).await?;
    let page = client.history(&conversation, Seq::ZERO, limit).await?;
    // Withheld placeholders (sent while we blocked their sender) show nothing.
    for m in page.messages.iter().filter(|m| !m.withheld) {
        print_message(ctx, &mut id, m).await?;
    }
    Ok(())
}

pub async fn read_by(ctx: &Context, conversation: &str, seq: u64) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let conversation = id.conversation(conversation).await?;
    let client = id.connect(false).await?;
    let r = client.read_by(&conversation, Seq(seq)).await?;
    id.learn_names(r.read.iter().chain(&r.delivered).copied())
        .await?;
    let names = |users: &[u64]| users.iter().map(|u| id.name(*u)).collect::<Vec<_>>();
    ctx.print(
        || {
            format!(
                "{} #{}: read by {} of {}{}{}",
                r.conversation_id,
                r.seq,
                r.read.len(),
                r.recipients,
                if r.read.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", names(&r.read).join(", "))
                },
                if r.delivered.is_empty() {
                    String::new()
                } else {
                    format!("; delivered to {}", names(&r.delivered).join(", "))
                }
            )
        },
        || {
            json!({
                "conversation_id": r.conversation_id,
                "seq": r.seq,
                "recipients": r.recipients,
                "read": r.read.iter().map(u64::to_string).collect::<Vec<_>>(),
                "delivered": r.delivered.iter().map(u64::to_string).collect::<Vec<_>>(),
            })
        },
    );
    Ok(())
}

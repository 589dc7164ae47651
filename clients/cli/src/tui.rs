//! The I/O loop of `natter-cli chat`: terminal set-up (raw mode and the alternate screen,
//! restored on exit and on panic), then client events, keys, resizes and ticks in as
//! [`AppEvent`]s, and [`Action`]s out as client calls. The decisions live in `app.rs`,
//! the looks in `ui.rs`.

use std::{
    io::IsTerminal as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crossterm::event::{self as term, Event as TermEvent};
use natter_client::{
    Client, ConversationId, Event, Seq, Target, UploadOptions, UserId,
    v1::{self, GroupList, ReceiptKind, group_request::Op},
};
use tokio::sync::{Mutex, mpsc};

use crate::{
    Context,
    app::{Action, App, AppEvent, HISTORY_PAGE},
    error::CliError,
    render,
    session::{Identity, now_ms},
    ui,
};

/// How often the clock ticks (typing indicators expire on it).
const TICK: Duration = Duration::from_millis(250);
/// How often the key reader checks whether the chat has ended.
const KEY_POLL: Duration = Duration::from_millis(100);

/// Restores the terminal however `run` ends (ratatui's panic hook covers panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub async fn run(ctx: &Context, ascii: bool) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "chat needs a terminal; scripts use send, listen and history".into(),
        ));
    }
    let client = Arc::new(id.connect(true).await?);
    let mut app = App::new(
        id.user_id().get(),
        &id.saved.username,
        id.saved.names.clone(),
        now_ms(),
    );
    app.ascii = ascii;
    app.connected = true;
    app.status.clear();
    let id = Arc::new(Mutex::new(id));
    let (tx, mut rx) = mpsc::unbounded_channel::<AppEvent>();

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(forward_events(
        client.clone(),
        id.clone(),
        tx.clone(),
    )));
    tasks.push(tokio::spawn(start_up(
        client.clone(),
        id.clone(),
        tx.clone(),
    )));
    tasks.push(tokio::spawn(keep_token_fresh(
        client.clone(),
        id.clone(),
        tx.clone(),
    )));
    let ticker = tx.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        loop {
            every.tick().await;
            if ticker.send(AppEvent::Tick { now_ms: now_ms() }).is_err() {
                return;
            }
        }
    }));

    let mut terminal =
        ratatui::try_init().map_err(|e| CliError::io("setting up the terminal", e))?;
    let _restore = Restore;
    let stop = Arc::new(AtomicBool::new(false));
    let keys = read_keys(tx.clone(), stop.clone());
    if let Ok(size) = terminal.size() {
        app.on_event(AppEvent::Resize {
            width: size.width,
            height: size.height,
        });
    }

    let result = async {
        loop {
            terminal
                .draw(|f| ui::draw(f, &app))
                .map_err(|e| CliError::io("drawing", e))?;
            let Some(first) = rx.recv().await else {
                return Ok(());
            };
            // Take everything queued before drawing again.
            let mut batch = vec![first];
            while let Ok(ev) = rx.try_recv() {
                batch.push(ev);
            }
            for ev in batch {
                for action in app.on_event(ev) {
                    if action == Action::Quit {
                        return Ok(());
                    }
                    perform(action, &client, &id, &tx);
                }
            }
        }
    }
    .await;

    stop.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    drop(terminal);
    let _ = keys.join();
    result
}

/// Keys and resizes, read on a thread of their own (crossterm's reader blocks).
fn read_keys(
    tx: mpsc::UnboundedSender<AppEvent>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match term::poll(KEY_POLL) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            let ev = match term::read() {
                Ok(TermEvent::Key(k)) => AppEvent::Key(k),
                Ok(TermEvent::Resize(width, height)) => AppEvent::Resize { width, height },
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    })
}

/// Learns the usernames of `users` the identity does not know yet (asking the server by
/// id) and tells the app, before it sees what names them.
async fn learn_names(
    id: &Mutex<Identity>,
    users: impl IntoIterator<Item = u64>,
    tx: &mpsc::UnboundedSender<AppEvent>,
) {
    let mut id = id.lock().await;
    let unknown: Vec<u64> = users
        .into_iter()
        .filter(|u| *u != 0 && id.known_name(*u).is_none())
        .collect();
    if unknown.is_empty() {
        return;
    }
    if let Err(e) = id.learn_names(unknown.iter().copied()).await {
        let _ = tx.send(AppEvent::Error(format!("names: {e}")));
    }
    for user in unknown {
        if let Some(name) = id.known_name(user) {
            let _ = tx.send(AppEvent::Name {
                user,
                name: name.to_owned(),
            });
        }
    }
}

async fn forward_events(
    client: Arc<Client>,
    id: Arc<Mutex<Identity>>,
    tx: mpsc::UnboundedSender<AppEvent>,
) {
    while let Some(ev) = client.recv().await {
        let users = match &ev {
            Event::Message(m) => render::message_users(m),
            Event::Receipt(r) => vec![r.user_id],
            Event::Typing(t) => vec![t.user_id],
            Event::JoinRequested(j) => vec![j.user_id],
            _ => Vec::new(),
        };
        learn_names(&id, users, &tx).await;
        if tx.send(AppEvent::Server(ev)).is_err() {
            return;
        }
    }
    let _ = tx.send(AppEvent::Error("the client stopped; /quit".into()));
}

/// Finds every conversation (sync heads) and the names of the groups.
async fn start_up(
    client: Arc<Client>,
    id: Arc<Mutex<Identity>>,
    tx: mpsc::UnboundedSender<AppEvent>,
) {
    match client.sync().await {
        Ok(done) => {
            let me = client.user_id().get();
            let peers: Vec<u64> = done
                .heads
                .iter()
                .filter_map(|h| h.conversation_id.parse::<ConversationId>().ok())
                .filter_map(|c| c.direct_members())
                .flat_map(|m| m.map(UserId::get))
                .filter(|u| *u != me)
                .collect();
            learn_names(&id, peers, &tx).await;
            for head in done.heads {
                if let Ok(conversation) = head.conversation_id.parse::<ConversationId>() {
                    let _ = tx.send(AppEvent::Opened {
                        conversation,
                        title: None,
                        select: false,
                    });
                }
            }
        }
        Err(e) => {
            let _ = tx.send(AppEvent::Error(format!(
                "sync failed: {}",
                CliError::from(e)
            )));
        }
    }
    if let Ok(r) = client.group(Op::List(GroupList {})).await {
        for g in r.groups {
            if let Ok(conversation) = g.conversation_id.parse::<ConversationId>() {
                let _ = tx.send(AppEvent::Opened {
                    conversation,
                    title: Some(g.name),
                    select: false,
                });
            }
        }
    }
}

/// Renews the access token ahead of its expiry, so reconnects keep working.
async fn keep_token_fresh(
    client: Arc<Client>,
    id: Arc<Mutex<Identity>>,
    tx: mpsc::UnboundedSender<AppEvent>,
) {
    loop {
        let left_ms = id
            .lock()
            .await
            .saved
            .access_expires_at_ms
            .saturating_sub(now_ms());
        let wait = Duration::from_millis(left_ms)
            .saturating_sub(Duration::from_secs(60))
            .max(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        let mut id = id.lock().await;
        match id.refresh().await {
            Ok(()) => client.set_access_token(&id.saved.access_token),
            Err(e) => {
                let _ = tx.send(AppEvent::Error(format!("token refresh: {e}")));
                return;
            }
        }
    }
}

fn perform(
    action: Action,
    client: &Arc<Client>,
    id: &Arc<Mutex<Identity>>,
    tx: &mpsc::UnboundedSender<AppEvent>,
) {
    let client = client.clone();
    let id = id.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let ev = match action {
            Action::Quit => return,
            Action::Send {
                conversation,
                text,
                local_id,
            } => match client
                .send_text(Target::Conversation(conversation), &text)
                .await
            {
                Ok(ack) => AppEvent::Acked { local_id, ack },
                Err(e) => AppEvent::SendFailed {
                    local_id,
                    error: CliError::from(e).to_string(),
                },
            },
            Action::SendFile {
                conversation,
                path,
                local_id,
            } => match send_file(&client, &id, conversation, &path, local_id, &tx).await {
                Ok(ack) => AppEvent::Acked { local_id, ack },
                Err(e) => AppEvent::SendFailed {
                    local_id,
                    error: format!("{path}: {e}"),
                },
            },
            Action::Typing {
                conversation,
                active,
            } => {
                let _ = client.typing(conversation, active).await;
                return;
            }
            Action::MarkRead {
                conversation,
                up_to,
            } => {
                let _ = client.read(&conversation, Seq(up_to)).await;
                return;
            }
            Action::LoadHistory {
                conversation,
                before,
            } => match client
                .history(&conversation, Seq(before), HISTORY_PAGE)
                .await
            {
                Ok(page) => {
                    learn_names(
                        &id,
                        page.messages.iter().flat_map(render::message_users),
                        &tx,
                    )
                    .await;
                    let me = client.user_id().get();
                    let own = page
                        .messages
                        .iter()
                        .rev()
                        .find(|m| m.sender_user == me)
                        .map(|m| m.seq);
                    let _ = tx.send(AppEvent::History {
                        conversation: conversation.clone(),
                        messages: page.messages,
                        more: page.more,
                    });
                    // Where the other user is, for the ticks of what was sent before.
                    if before == 0
                        && conversation.direct_members().is_some()
                        && let Some(seq) = own
                    {
                        peer_cursors(&client, &conversation, seq, me, &tx).await;
                    }
                    return;
                }
                Err(e) => AppEvent::Error(format!("history: {}", CliError::from(e))),
            },
            Action::StartDirect { username } => {
                let mut id = id.lock().await;
                match id.lookup(&username).await {
                    Ok(user) => match ConversationId::direct(id.user_id(), user) {
                        Ok(conversation) => {
                            let _ = tx.send(AppEvent::Name {
                                user: user.get(),
                                name: username.clone(),
                            });
                            AppEvent::Opened {
                                conversation,
                                title: Some(username),
                                select: true,
                            }
                        }
                        Err(e) => AppEvent::Error(format!("@{username}: {e}")),
                    },
                    Err(e) => AppEvent::Error(format!("@{username}: {e}")),
                }
            }
            Action::SubscribePresence { users } => {
                let ids: Vec<UserId> = users.iter().copied().map(UserId).collect();
                match client.subscribe_presence(&ids).await {
                    Ok(snapshot) => {
                        for p in snapshot.users {
                            let _ = tx.send(AppEvent::Server(Event::Presence(p)));
                        }
                        return;
                    }
                    Err(e) => AppEvent::PresenceFailed {
                        users,
                        error: CliError::from(e).to_string(),
                    },
                }
            }
            Action::CreateGroup { name, members } => {
                let mut users: Vec<UserId> = Vec::new();
                let mut id = id.lock().await;
                for m in &members {
                    match id.user(m).await {
                        Ok(u) => {
                            if let Some(name) = id.known_name(u.get()) {
                                let _ = tx.send(AppEvent::Name {
                                    user: u.get(),
                                    name: name.to_owned(),
                                });
                            }
                            users.push(u);
                        }
                        Err(e) => {
                            let _ = tx.send(AppEvent::Error(format!("{m}: {e}")));
                            return;
                        }
                    }
                }
                drop(id);
                match client.create_group(&name, &users).await {
                    Ok(g) => match g.conversation_id.parse::<ConversationId>() {
                        Ok(conversation) => AppEvent::Opened {
                            conversation,
                            title: Some(g.name),
                            select: true,
                        },
                        Err(e) => AppEvent::Error(format!("group: {e}")),
                    },
                    Err(e) => AppEvent::Error(format!("group: {}", CliError::from(e))),
                }
            }
        };
        let _ = tx.send(ev);
    });
}

/// `/send-file`: uploads (the token taken from the identity, not holding it while the
/// bytes travel), tells the app what the file is, then sends the media message.
async fn send_file(
    client: &Client,
    id: &Mutex<Identity>,
    conversation: ConversationId,
    path: &str,
    local_id: u64,
    tx: &mpsc::UnboundedSender<AppEvent>,
) -> Result<v1::Ack, CliError> {
    let path = std::path::Path::new(path);
    if !path.is_file() {
        return Err(CliError::Usage("not a file".into()));
    }
    let (http, token) = {
        let mut id = id.lock().await;
        (id.http.clone(), id.token().await?)
    };
    let opts = UploadOptions::for_path(path);
    let info = http.upload_media(&token, path, &opts).await?;
    let _ = tx.send(AppEvent::Uploaded {
        local_id,
        text: render::media_text(&info.to_media_ref()),
    });
    Ok(client
        .send_media(Target::Conversation(conversation), info.media_ref(""))
        .await?)
}

/// Asks who has our newest message, and turns the answer into the other user's receipts.
async fn peer_cursors(
    client: &Client,
    conversation: &ConversationId,
    seq: u64,
    me: u64,
    tx: &mpsc::UnboundedSender<AppEvent>,
) {
    let Ok(r) = client.read_by(conversation, Seq(seq)).await else {
        return;
    };
    let receipt = |user: u64, kind: ReceiptKind| {
        AppEvent::Server(Event::Receipt(v1::Receipt {
            conversation_id: conversation.to_string(),
            user_id: user,
            kind: kind as i32,
            up_to_seq: seq,
            ..Default::default()
        }))
    };
    for u in r.delivered.iter().filter(|u| **u != me) {
        let _ = tx.send(receipt(*u, ReceiptKind::Delivered));
    }
    for u in r.read.iter().filter(|u| **u != me) {
        let _ = tx.send(receipt(*u, ReceiptKind::Read));
    }
}

//! People commands: profiles, privacy settings, contacts, blocks, status updates and
//! presence. Each is one PeopleRequest frame (presence: PresenceSubscribe), with user
//! arguments resolved as everywhere else (`@name`, a bare name or a user id) before
//! connecting, so a typo fails fast.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use natter_client::{
    Client, ClientOptions, Event, UserId,
    v1::{self, people_request::Op},
};
use serde_json::json;
use tokio::time::Instant;

use crate::{
    Context,
    error::CliError,
    render,
    session::{Identity, client_options, now_ms},
};

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// A profile as you may see it (default: your own, whole).
    Show {
        /// @user or a user id.
        user: Option<String>,
    },
    /// Change your profile; fields not given stay as they are ("" clears one).
    Set {
        /// Display name (≤ 64 bytes).
        #[arg(long)]
        name: Option<String>,
        /// About text (≤ 256 bytes).
        #[arg(long)]
        about: Option<String>,
        /// Avatar media id (≤ 128 bytes).
        #[arg(long)]
        avatar: Option<String>,
    },
}

/// Who may see something of yours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Audience {
    Everyone,
    Contacts,
    Nobody,
}

impl Audience {
    fn visibility(self) -> v1::Visibility {
        match self {
            Audience::Everyone => v1::Visibility::Everyone,
            Audience::Contacts => v1::Visibility::Contacts,
            Audience::Nobody => v1::Visibility::Nobody,
        }
    }
}

/// As an optional field of PrivacySettings: `None` leaves the setting unchanged.
fn raw(a: Option<Audience>) -> i32 {
    a.map_or(v1::Visibility::Unspecified, Audience::visibility) as i32
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Your privacy settings.
    Show,
    /// Change who may see what; settings not given stay as they are.
    Set {
        /// Who sees when you were last online.
        #[arg(long, value_enum)]
        last_seen: Option<Audience>,
        /// Who sees that you are online.
        #[arg(long, value_enum)]
        online: Option<Audience>,
        /// Who sees your profile photo.
        #[arg(long, value_enum)]
        photo: Option<Audience>,
        /// Who sees your about text.
        #[arg(long, value_enum)]
        about: Option<Audience>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Your contacts, ordered by user id.
    List,
    /// Add a user to your contacts (or rename one).
    Add {
        /// @user, a username or a user id.
        user: String,
        /// Your own name for them.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a user from your contacts.
    Remove { user: String },
}

#[derive(Debug, Subcommand)]
pub enum StatusCommand {
    /// Post a text status for your contacts (visible 24 hours).
    Post { text: String },
    /// The live statuses of your contacts (who have you as a contact too).
    List,
    /// Your own live statuses with their view counts.
    Mine,
    /// Who viewed one of your statuses.
    Viewers { id: u64 },
    /// Delete one of your statuses.
    Delete { id: u64 },
    /// Mark a contact's status as viewed.
    View { id: u64 },
}

/// One request and its answer.
async fn request(id: &mut Identity, op: Op) -> Result<v1::PeopleResult, CliError> {
    let client = id.connect(false).await?;
    Ok(client.people(op).await?)
}

/// Prints lines of text, or one JSON value.
fn print_lines(ctx: &Context, lines: Vec<String>, json: serde_json::Value) {
    if ctx.json {
        println!("{json}");
    } else {
        for l in lines {
            println!("{l}");
        }
    }
}

/// Remembers the usernames the server told us, like `@user` lookups do.
fn learn(
    id: &mut Identity,
    users: impl IntoIterator<Item = (u64, String)>,
) -> Result<(), CliError> {
    let mut changed = false;
    for (user, name) in users {
        if user != 0 && !name.is_empty() && id.known_name(user) != Some(name.as_str()) {
            id.saved.names.insert(user, name);
            changed = true;
        }
    }
    if changed {
        id.save()?;
    }
    Ok(())
}

pub async fn profile(ctx: &Context, cmd: Option<ProfileCommand>) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let (op, wanted) = match cmd.unwrap_or(ProfileCommand::Show { user: None }) {
        ProfileCommand::Show { user: None } => (Op::ProfileGet(v1::ProfileGet::default()), None),
        ProfileCommand::Show { user: Some(u) } => {
            let user = id.user(&u).await?;
            (
                Op::ProfileGet(v1::ProfileGet {
                    user_ids: vec![user.get()],
                }),
                Some((user, u)),
            )
        }
        ProfileCommand::Set {
            name,
            about,
            avatar,
        } => {
            if name.is_none() && about.is_none() && avatar.is_none() {
                return Err(CliError::Usage(
                    "nothing to change: pass --name, --about or --avatar".into(),
                ));
            }
            (
                Op::ProfileUpdate(v1::ProfileUpdate {
                    display_name: name,
                    about,
                    avatar_media_id: avatar,
                }),
                None,
            )
        }
    };
    let r = request(&mut id, op).await?;
    let p = match wanted {
        Some((user, arg)) => r
            .profiles
            .into_iter()
            .find(|p| p.user_id == user.get())
            .ok_or_else(|| CliError::Refused {
                code: "not_found".into(),
                message: format!("no user {arg}"),
            })?,
        None => r
            .profiles
            .into_iter()
            .next()
            .ok_or_else(|| CliError::Other("the server answered without a profile".into()))?,
    };
    learn(&mut id, [(p.user_id, p.username.clone())])?;
    print_lines(ctx, render::profile_lines(&p), render::profile_json(&p));
    Ok(())
}

pub async fn privacy(ctx: &Context, cmd: Option<PrivacyCommand>) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let op = match cmd.unwrap_or(PrivacyCommand::Show) {
        PrivacyCommand::Show => Op::PrivacyGet(v1::PrivacyGet {}),
        PrivacyCommand::Set {
            last_seen,
            online,
            photo,
            about,
        } => {
            if [last_seen, online, photo, about]
                .iter()
                .all(Option::is_none)
            {
                return Err(CliError::Usage(
                    "nothing to change: pass --last-seen, --online, --photo or --about".into(),
                ));
            }
            Op::PrivacySet(v1::PrivacySet {
                settings: Some(v1::PrivacySettings {
                    last_seen: raw(last_seen),
                    online: raw(online),
                    profile_photo: raw(photo),
                    about: raw(about),
                }),
            })
        }
    };
    let r = request(&mut id, op).await?;
    let s = r
        .privacy
        .ok_or_else(|| CliError::Other("the server answered without privacy settings".into()))?;
    print_lines(ctx, render::privacy_lines(&s), render::privacy_json(&s));
    Ok(())
}

pub async fn contacts(ctx: &Context, cmd: Option<ContactsCommand>) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    match cmd.unwrap_or(ContactsCommand::List) {
        ContactsCommand::List => {
            let r = request(&mut id, Op::ContactList(v1::ContactList {})).await?;
            learn(
                &mut id,
                r.contacts.iter().map(|c| (c.user_id, c.username.clone())),
            )?;
            for c in &r.contacts {
                ctx.print(|| render::contact_line(c), || render::contact_json(c));
            }
        }
        ContactsCommand::Add { user, name } => {
            let user_id = id.user(&user).await?;
            let r = request(
                &mut id,
                Op::ContactAdd(v1::ContactAdd {
                    user_id: user_id.get(),
                    name: name.unwrap_or_default(),
                    ..Default::default()
                }),
            )
            .await?;
            let c = r
                .contact
                .ok_or_else(|| CliError::Other("the server answered without the contact".into()))?;
            learn(&mut id, [(c.user_id, c.username.clone())])?;
            ctx.print(
                || format!("added {}", render::contact_line(&c)),
                || render::contact_json(&c),
            );
        }
        ContactsCommand::Remove { user } => {
            let user_id = id.user(&user).await?;
            request(
                &mut id,
                Op::ContactRemove(v1::ContactRemove {
                    user_id: user_id.get(),
                }),
            )
            .await?;
            let name = id.name(user_id.get());
            ctx.print(
                || format!("removed {name} from your contacts"),
                || json!({ "removed": user_id.get().to_string(), "username": id.known_name(user_id.get()) }),
            );
        }
    }
    Ok(())
}

/// `block USER` (`block: true`) or `unblock USER`.
pub async fn block(ctx: &Context, user: &str, block: bool) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let user_id = id.user(user).await?.get();
    let op = if block {
        Op::Block(v1::Block { user_id })
    } else {
        Op::Unblock(v1::Unblock { user_id })
    };
    request(&mut id, op).await?;
    let verb = if block { "blocked" } else { "unblocked" };
    let name = id.name(user_id);
    ctx.print(
        || format!("{verb} {name}"),
        || json!({ verb: user_id.to_string(), "username": id.known_name(user_id) }),
    );
    Ok(())
}

/// The users you blocked, one per line.
pub async fn blocked(ctx: &Context) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let r = request(&mut id, Op::BlockList(v1::BlockList {})).await?;
    id.learn_names(r.blocked.iter().copied()).await?;
    for u in &r.blocked {
        ctx.print(
            || match id.known_name(*u) {
                Some(name) => format!("{name} (user {u})"),
                None => format!("user {u}"),
            },
            || json!({ "user_id": u.to_string(), "username": id.known_name(*u) }),
        );
    }
    Ok(())
}

pub async fn status(ctx: &Context, cmd: StatusCommand) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let now = now_ms();
    match cmd {
        StatusCommand::Post { text } => {
            if text.trim().is_empty() {
                return Err(CliError::Usage("a status needs some text".into()));
            }
            let client = id.connect(false).await?;
            let s = client.post_status(&text).await?;
            ctx.print(
                || {
                    format!(
                        "posted status #{} (visible to your contacts until {} UTC)",
                        s.status_id,
                        crate::app::when(s.expires_at_ms, now)
                    )
                },
                || render::status_json(&s, None),
            );
        }
        StatusCommand::List => {
            let r = request(&mut id, Op::StatusList(v1::StatusList {})).await?;
            learn(
                &mut id,
                r.by_user.iter().map(|u| (u.user_id, u.username.clone())),
            )?;
            for u in &r.by_user {
                if !ctx.json {
                    println!("{}:", id.name(u.user_id));
                }
                for s in &u.statuses {
                    ctx.print(
                        || format!("  {}", render::status_line(s, false, now)),
                        || render::status_json(s, Some(&u.username)),
                    );
                }
            }
        }
        StatusCommand::Mine => {
            let r = request(&mut id, Op::StatusMine(v1::StatusMine {})).await?;
            for s in &r.statuses {
                ctx.print(
                    || render::status_line(s, true, now),
                    || render::status_json(s, None),
                );
            }
        }
        StatusCommand::Viewers { id: status_id } => {
            let r = request(&mut id, Op::StatusViewers(v1::StatusViewers { status_id })).await?;
            id.learn_names(r.viewers.iter().map(|v| v.user_id)).await?;
            for v in &r.viewers {
                ctx.print(
                    || {
                        format!(
                            "{} at {}",
                            id.name(v.user_id),
                            crate::app::when(v.viewed_at_ms, now)
                        )
                    },
                    || {
                        json!({
                            "user_id": v.user_id.to_string(),
                            "username": id.known_name(v.user_id),
                            "viewed_at_ms": v.viewed_at_ms,
                        })
                    },
                );
            }
        }
        StatusCommand::Delete { id: status_id } => {
            request(&mut id, Op::StatusDelete(v1::StatusDelete { status_id })).await?;
            ctx.print(
                || format!("deleted status #{status_id}"),
                || json!({ "deleted": status_id.to_string() }),
            );
        }
        StatusCommand::View { id: status_id } => {
            request(&mut id, Op::StatusView(v1::StatusView { status_id })).await?;
            ctx.print(
                || format!("viewed status #{status_id}"),
                || json!({ "viewed": status_id.to_string() }),
            );
        }
    }
    Ok(())
}

fn print_presence(ctx: &Context, id: &Identity, p: &v1::UserPresence) {
    ctx.print(
        || {
            format!(
                "{} {}",
                id.name(p.user_id),
                render::presence_text(p, now_ms())
            )
        },
        || render::presence_json(id, p),
    );
}

/// `presence USER...`: what may be seen of their presence now; with `watch`, then every
/// change until Ctrl-C or `duration`.
pub async fn presence(
    ctx: &Context,
    users: &[String],
    watch: bool,
    duration: Option<Duration>,
) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    let mut ids = Vec::with_capacity(users.len());
    for u in users {
        let user = id.user(u).await?;
        if !ids.contains(&user) {
            ids.push(user);
        }
    }
    // A watcher reconnects by itself (and the client renews its subscriptions). It reads
    // events but shows no messages, so it must not acknowledge them: `listen` would
    // then skip them.
    let client = id
        .connect_with(ClientOptions {
            auto_ack: false,
            ..client_options(watch)
        })
        .await?;
    let snapshot = client.subscribe_presence(&ids).await?;
    for user in &ids {
        let p = snapshot
            .users
            .iter()
            .find(|p| p.user_id == user.get())
            .copied()
            .unwrap_or(v1::UserPresence {
                user_id: user.get(),
                ..Default::default()
            });
        print_presence(ctx, &id, &p);
    }
    let result = if watch {
        watch_presence(ctx, &mut id, &client, &ids, duration).await
    } else {
        Ok(())
    };
    // Best effort: the subscriptions would run out by themselves anyway.
    if client.is_connected() {
        let _ = client.unsubscribe_presence(&ids).await;
    }
    result
}

async fn watch_presence(
    ctx: &Context,
    id: &mut Identity,
    client: &Client,
    users: &[UserId],
    duration: Option<Duration>,
) -> Result<(), CliError> {
    let far = Instant::now() + Duration::from_secs(60 * 60 * 24 * 365);
    let deadline = duration.map_or(far, |d| Instant::now() + d);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let refresh_at = crate::chat::refresh_instant(id);
        tokio::select! {
            ev = client.recv() => match ev {
                Some(Event::Presence(p)) if users.iter().any(|u| u.get() == p.user_id) => {
                    print_presence(ctx, id, &p);
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
                Some(_) => {}
                None => return Err(CliError::Other("the client stopped".into())),
            },
            _ = tokio::time::sleep_until(refresh_at) => {
                id.refresh().await?;
                client.set_access_token(&id.saved.access_token);
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

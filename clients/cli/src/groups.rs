//! `natter-cli groups ...`: every group operation is one GroupRequest frame.

use clap::Subcommand;
use natter_client::{
    UserId,
    v1::{self, GroupRole, group_request::Op},
};
use serde_json::json;

use crate::{
    Context,
    error::CliError,
    render,
    session::{Identity, group_id},
};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// The groups you are a member of.
    List,
    /// Create a group (you are its owner).
    Create {
        name: String,
        /// A member to add (@user or a user id); repeat for more.
        #[arg(long = "member", value_name = "USER")]
        members: Vec<String>,
    },
    /// A group with its members (GROUP: its id or g.<id>).
    Show { group: String },
    /// Add members.
    Add {
        group: String,
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// Remove a member; --ban also refuses their joining by invite link.
    Remove {
        group: String,
        user: String,
        #[arg(long)]
        ban: bool,
    },
    /// Leave a group.
    Leave { group: String },
    /// Make an invite link code (admins).
    Invite {
        group: String,
        /// Lifetime in seconds; 0 = until revoked.
        #[arg(long, default_value_t = 0)]
        ttl_s: u32,
    },
    /// Join a group with an invite code.
    Join { code: String },
    /// Make a member an admin.
    Promote { group: String, user: String },
    /// Make an admin a plain member.
    Demote { group: String, user: String },
}

pub async fn run(ctx: &Context, cmd: GroupsCommand) -> Result<(), CliError> {
    let mut id = Identity::load(ctx.store.clone(), ctx.server.as_deref())?;
    // Resolve every argument before connecting, so a typo fails fast and offline.
    let op = match &cmd {
        GroupsCommand::List => Op::List(v1::GroupList {}),
        GroupsCommand::Create { name, members } => {
            let mut users = Vec::with_capacity(members.len());
            for m in members {
                users.push(id.user(m).await?.get());
            }
            Op::Create(v1::GroupCreate {
                create_id: natter_client::new_client_msg_id(),
                name: name.clone(),
                members: users,
                ..Default::default()
            })
        }
        GroupsCommand::Show { group } => Op::Get(v1::GroupGet {
            group_id: group_id(group)?,
        }),
        GroupsCommand::Add { group, users } => {
            let group_id = group_id(group)?;
            let mut ids = Vec::with_capacity(users.len());
            for u in users {
                ids.push(id.user(u).await?.get());
            }
            Op::AddMembers(v1::GroupAddMembers {
                group_id,
                users: ids,
            })
        }
        GroupsCommand::Remove { group, user, ban } => Op::RemoveMember(v1::GroupRemoveMember {
            group_id: group_id(group)?,
            user_id: id.user(user).await?.get(),
            ban: *ban,
        }),
        GroupsCommand::Leave { group } => Op::Leave(v1::GroupLeave {
            group_id: group_id(group)?,
        }),
        GroupsCommand::Invite { group, ttl_s } => Op::CreateInvite(v1::GroupCreateInvite {
            group_id: group_id(group)?,
            ttl_s: *ttl_s,
        }),
        GroupsCommand::Join { code } => Op::Join(v1::GroupJoin { code: code.clone() }),
        GroupsCommand::Promote { group, user } => {
            set_role(&mut id, group, user, GroupRole::Admin).await?
        }
        GroupsCommand::Demote { group, user } => {
            set_role(&mut id, group, user, GroupRole::Member).await?
        }
    };
    let client = id.connect(false).await?;
    let result = client.group(op).await?;
    if let Some(g) = &result.group {
        id.learn_names(g.members.iter().map(|m| m.user_id)).await?;
    }
    print(ctx, &id, &cmd, &result);
    Ok(())
}

async fn set_role(
    id: &mut Identity,
    group: &str,
    user: &str,
    role: GroupRole,
) -> Result<Op, CliError> {
    Ok(Op::SetRole(v1::GroupSetRole {
        group_id: group_id(group)?,
        user_id: id.user(user).await.map(UserId::get)?,
        role: role as i32,
    }))
}

fn print_group(ctx: &Context, id: &Identity, g: &v1::GroupInfo) {
    if ctx.json {
        println!("{}", render::group_json(id, g));
    } else {
        for line in render::group_lines(id, g) {
            println!("{line}");
        }
    }
}

fn print(ctx: &Context, id: &Identity, cmd: &GroupsCommand, r: &v1::GroupResult) {
    match cmd {
        GroupsCommand::List => {
            for g in &r.groups {
                ctx.print(
                    || {
                        format!(
                            "{} \"{}\" ({} members)",
                            g.conversation_id, g.name, g.member_count
                        )
                    },
                    || render::group_json(id, g),
                );
            }
        }
        GroupsCommand::Invite { .. } => {
            let (code, expires) = r
                .invite
                .as_ref()
                .map(|i| (i.code.clone(), i.expires_at_ms))
                .unwrap_or_default();
            ctx.print(
                || code.clone(),
                || json!({ "code": code, "expires_at_ms": expires }),
            );
        }
        GroupsCommand::Leave { group } => {
            let conversation = format!("g.{}", group.strip_prefix("g.").unwrap_or(group));
            ctx.print(
                || format!("left {conversation}"),
                || json!({ "left": conversation, "seq": r.seq }),
            );
        }
        GroupsCommand::Join { .. } if r.pending_approval => {
            let conversation = r.group.as_ref().map(|g| g.conversation_id.clone());
            ctx.print(
                || {
                    format!(
                        "asked to join {}; waiting for an admin's approval",
                        conversation.as_deref().unwrap_or("the group")
                    )
                },
                || json!({ "pending_approval": true, "conversation_id": conversation }),
            );
        }
        _ => match &r.group {
            Some(g) => print_group(ctx, id, g),
            None => ctx.print(|| "done".into(), || json!({ "seq": r.seq })),
        },
    }
}

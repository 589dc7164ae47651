//! Groups end to end through the real binary: create, fan-out to every member device,
//! system messages in order with the chat, removal cutting a member off at a seq,
//! sync and history limited to what a member may read.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{
    Client, ClientOptions, Connection, ConversationId, ErrorCode, Event, Seq, Session, UserId,
    WireFormat,
    tungstenite::Message as WsMessage,
    v1::{self, server_frame::Body as SBody},
};
use v1::group_request::Op;

const WAIT: Duration = Duration::from_secs(10);

fn group_conv(info: &v1::GroupInfo) -> ConversationId {
    info.conversation_id
        .parse()
        .expect("a valid conversation id")
}

/// The next message of `conv` on `c`.
async fn next_in(c: &Client, conv: &ConversationId) -> v1::Message {
    let conv = conv.as_str().to_owned();
    next_matching(c, WAIT, |ev| match ev {
        Event::Message(m) if m.conversation_id == conv => Some(m.clone()),
        _ => None,
    })
    .await
}

fn event_kind(m: &v1::Message) -> v1::GroupEventKind {
    assert_eq!(
        m.kind,
        v1::MessageKind::System as i32,
        "not a system message: {m:?}"
    );
    let e = m
        .event
        .as_ref()
        .expect("a system message carries its event");
    v1::GroupEventKind::try_from(e.kind).expect("a known event kind")
}

fn code(e: natter_client::ClientError) -> ErrorCode {
    e.server_code()
        .unwrap_or_else(|| panic!("expected an error frame, got {e}"))
}

#[tokio::test]
async fn group_messages_reach_every_member_and_removal_cuts_off_at_a_seq() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let (ca, cb, cc) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
        );
        let info = ca
            .create_group("trip", &[bo.user_id, cy.user_id])
            .await
            .expect("create");
        assert_eq!(info.members.len(), 3);
        let conv = group_conv(&info);
        for c in [&ca, &cb, &cc] {
            let created = next_in(c, &conv).await;
            assert_eq!(created.seq, 1);
            assert_eq!(event_kind(&created), v1::GroupEventKind::Created);
        }

        let ack = ca.send_text(&conv, "hello all").await.expect("send");
        assert_eq!(ack.seq, 2);
        for c in [&cb, &cc] {
            let m = next_in(c, &conv).await;
            assert_eq!((m.seq, text(&m)), (2, "hello all".to_owned()));
        }

        // Ann removes Cy: Cy sees the removal, then nothing more.
        let removed = ca
            .group(Op::RemoveMember(v1::GroupRemoveMember {
                group_id: info.group_id,
                user_id: cy.user_id.get(),
                ban: false,
            }))
            .await
            .expect("remove");
        assert_eq!(removed.seq, 3);
        for c in [&ca, &cb, &cc] {
            let m = next_in(c, &conv).await;
            assert_eq!(m.seq, 3);
            assert_eq!(event_kind(&m), v1::GroupEventKind::MemberRemoved);
        }
        let after = cb.send_text(&conv, "cy is gone").await.expect("send");
        assert_eq!(after.seq, 4);
        assert_eq!(next_in(&ca, &conv).await.seq, 4);
        let refused = cc.send_text(&conv, "let me in").await.unwrap_err();
        assert_eq!(code(refused), ErrorCode::Forbidden);

        // Cy's history stops at the removal; Bo's goes on.
        let cy_history = cc.history(&conv, Seq::ZERO, 50).await.expect("history");
        let seqs: Vec<u64> = cy_history.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let bo_history = cb.history(&conv, Seq::ZERO, 50).await.expect("history");
        assert_eq!(bo_history.messages.len(), 4);

        // Nothing past the removal ever reached Cy live.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Some(ev) = cc.try_recv() {
            if let Event::Message(m) = ev {
                assert!(m.conversation_id != conv.as_str() || m.seq <= 3, "{m:?}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_new_member_syncs_from_their_join_and_never_sees_earlier_history() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let dee = server.user("dee").await;
        let ca = server.device(&ann).await;
        let info = ca.create_group("club", &[]).await.expect("create");
        let conv = group_conv(&info);
        for i in 0..3 {
            ca.send_text(&conv, &format!("before {i}"))
                .await
                .expect("send");
        }
        let added = ca
            .group(Op::AddMembers(v1::GroupAddMembers {
                group_id: info.group_id,
                users: vec![dee.user_id.get()],
            }))
            .await
            .expect("add");
        assert_eq!(added.seq, 5);
        ca.send_text(&conv, "welcome").await.expect("send");

        let cd = server.device(&dee).await;
        let got = sync_collect(&cd, Duration::from_secs(20)).await;
        let seqs: Vec<u64> = got
            .iter()
            .filter(|m| m.conversation_id == conv.as_str())
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![5, 6], "from the join on, nothing before");
        let history = cd.history(&conv, Seq::ZERO, 50).await.expect("history");
        assert_eq!(history.messages.first().map(|m| m.seq), Some(5));
        assert!(!history.more);
        let listed = cd.group(Op::List(v1::GroupList {})).await.expect("list");
        assert_eq!(listed.groups.len(), 1);
        assert_eq!(listed.groups[0].group_id, info.group_id);
        let _ = UserId(1);
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Every operation and its permission failures, one scenario per test (each on its own
// server: the state matters).

/// Members of a group, in user id order.
fn member_ids(info: &v1::GroupInfo) -> Vec<u64> {
    info.members.iter().map(|m| m.user_id).collect()
}

/// `user`'s role in `info`, `None` if not a member.
fn role_in(info: &v1::GroupInfo, user: UserId) -> Option<v1::GroupRole> {
    info.members
        .iter()
        .find(|m| m.user_id == user.get())
        .map(|m| v1::GroupRole::try_from(m.role).expect("a known role"))
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn ids(users: &[&Session]) -> Vec<u64> {
    sorted(users.iter().map(|s| s.user_id.get()).collect())
}

/// A group operation that must succeed.
async fn ok(c: &Client, op: Op) -> v1::GroupResult {
    let what = format!("{op:?}");
    c.group(op)
        .await
        .unwrap_or_else(|e| panic!("{what} by {} failed: {e}", c.user_id()))
}

/// A group operation that must be refused; its error code.
async fn refused(c: &Client, op: Op) -> ErrorCode {
    let what = format!("{op:?}");
    match c.group(op).await {
        Ok(r) => panic!("{what} by {} must be refused, got {r:?}", c.user_id()),
        Err(e) => code(e),
    }
}

async fn get(c: &Client, group: u64) -> v1::GroupInfo {
    ok(c, Op::Get(v1::GroupGet { group_id: group }))
        .await
        .group
        .expect("get answers with the group")
}

fn add(group: u64, users: &[&Session]) -> Op {
    Op::AddMembers(v1::GroupAddMembers {
        group_id: group,
        users: users.iter().map(|s| s.user_id.get()).collect(),
    })
}

fn remove(group: u64, user: &Session, ban: bool) -> Op {
    Op::RemoveMember(v1::GroupRemoveMember {
        group_id: group,
        user_id: user.user_id.get(),
        ban,
    })
}

fn set_role(group: u64, user: &Session, role: v1::GroupRole) -> Op {
    Op::SetRole(v1::GroupSetRole {
        group_id: group,
        user_id: user.user_id.get(),
        role: role as i32,
    })
}

fn leave(group: u64) -> Op {
    Op::Leave(v1::GroupLeave { group_id: group })
}

fn settings_op(group: u64, settings: v1::GroupSettings) -> Op {
    Op::Update(v1::GroupUpdate {
        group_id: group,
        settings: Some(settings),
        ..Default::default()
    })
}

fn approval_op(group: u64, on: bool) -> Op {
    Op::Update(v1::GroupUpdate {
        group_id: group,
        join_approval: Some(on),
        ..Default::default()
    })
}

fn rename(group: u64, name: &str) -> Op {
    Op::Update(v1::GroupUpdate {
        group_id: group,
        name: Some(name.to_owned()),
        ..Default::default()
    })
}

fn invite(group: u64, ttl_s: u32) -> Op {
    Op::CreateInvite(v1::GroupCreateInvite {
        group_id: group,
        ttl_s,
    })
}

fn join(code: &str) -> Op {
    Op::Join(v1::GroupJoin {
        code: code.to_owned(),
    })
}

fn decide(group: u64, user: &Session, approve: bool) -> Op {
    Op::DecideJoin(v1::GroupDecideJoin {
        group_id: group,
        user_id: user.user_id.get(),
        approve,
    })
}

/// A new invite link of `group`, made by `c`.
async fn invite_code(c: &Client, group: u64) -> String {
    ok(c, invite(group, 0))
        .await
        .invite
        .expect("create_invite answers with the invite")
        .code
}

/// Every message `c` may read in `conv`, oldest first.
async fn log(c: &Client, conv: &ConversationId) -> Vec<v1::Message> {
    c.full_history(conv, 200).await.expect("history")
}

/// `(seq, kind)` of every system message of a log.
fn system_events(msgs: &[v1::Message]) -> Vec<(u64, v1::GroupEventKind)> {
    msgs.iter()
        .filter(|m| m.kind == v1::MessageKind::System as i32)
        .map(|m| (m.seq, event_kind(m)))
        .collect()
}

/// The message of `conv` at `seq` in `c`'s history.
async fn message_at(c: &Client, conv: &ConversationId, seq: u64) -> v1::Message {
    let page = c.history(conv, Seq(seq + 1), 1).await.expect("history");
    let m = page.messages.into_iter().next().expect("a message at seq");
    assert_eq!(m.seq, seq);
    m
}

/// Asserts no message of `conv` past `max_seq` is queued on `c` after a quiet period.
async fn nothing_past(c: &Client, conv: &ConversationId, max_seq: u64) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(ev) = c.try_recv() {
        if let Event::Message(m) = ev {
            assert!(
                m.conversation_id != conv.as_str() || m.seq <= max_seq,
                "got seq {} past {max_seq}: {m:?}",
                m.seq
            );
        }
    }
}

/// Sends one text message that must be refused; its error code.
async fn send_refused(c: &Client, conv: &ConversationId) -> ErrorCode {
    match c.send_text(conv, "should not be stored").await {
        Ok(a) => panic!("the send by {} must be refused, got {a:?}", c.user_id()),
        Err(e) => code(e),
    }
}

#[tokio::test]
async fn create_validates_retries_and_get_and_list_show_the_group() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let eve = server.user("eve").await;
        let (ca, cb, cc, cd) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
            server.device(&dan).await,
        );
        let create = |create_id: &str, name: &str, members: Vec<u64>| {
            Op::Create(v1::GroupCreate {
                create_id: create_id.to_owned(),
                name: name.to_owned(),
                description: "a test group".to_owned(),
                members,
                ..Default::default()
            })
        };

        // Validation: names, create ids, members that must exist.
        for bad_name in ["", "   ", &"n".repeat(101)] {
            let c = refused(&ca, create("bad-name", bad_name, vec![])).await;
            assert_eq!(c, ErrorCode::InvalidArgument, "name {bad_name:?}");
        }
        assert_eq!(
            refused(&ca, create("", "no id", vec![])).await,
            ErrorCode::InvalidArgument
        );
        let unknown_policy = Op::Create(v1::GroupCreate {
            create_id: "bad-policy".into(),
            name: "policy".into(),
            settings: Some(v1::GroupSettings {
                send: 7,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            refused(&ca, unknown_policy).await,
            ErrorCode::InvalidArgument
        );
        let ghost = (1u64 << 52) + 12_345;
        assert_eq!(
            refused(
                &ca,
                create("ghost", "ghosts", vec![bo.user_id.get(), ghost])
            )
            .await,
            ErrorCode::NotFound
        );
        assert!(
            ok(&ca, Op::List(v1::GroupList {})).await.groups.is_empty(),
            "refused creates leave no group behind"
        );

        // A create, then its retry: the same group, one CREATED message.
        let members = vec![bo.user_id.get(), cy.user_id.get(), ann.user_id.get()];
        let first = ok(&ca, create("club-1", "club", members.clone())).await;
        assert_eq!(first.seq, 1);
        let info = first.group.expect("the created group");
        assert_eq!(info.name, "club");
        assert_eq!(info.description, "a test group");
        assert_eq!(info.created_by, ann.user_id.get());
        assert!(!info.deleted);
        assert_eq!(info.max_members, 1024);
        assert_eq!(member_ids(&info), ids(&[&ann, &bo, &cy]));
        assert_eq!(role_in(&info, ann.user_id), Some(v1::GroupRole::Owner));
        assert_eq!(role_in(&info, bo.user_id), Some(v1::GroupRole::Member));
        assert!(info.members.iter().all(|m| m.joined_seq == 1));
        let s = info.settings.expect("settings");
        assert_eq!(
            (s.send, s.edit_info, s.add_members, s.join_approval),
            (
                v1::GroupPolicy::Everyone as i32,
                v1::GroupPolicy::Everyone as i32,
                v1::GroupPolicy::Admins as i32,
                false
            ),
            "the defaults are stored explicitly"
        );
        let conv = group_conv(&info);
        assert_eq!(conv.as_str(), format!("g.{}", info.group_id));

        let retry = ok(&ca, create("club-1", "club", members)).await;
        let again = retry.group.expect("the group");
        assert_eq!(again.group_id, info.group_id);
        assert_eq!(again.version, info.version);
        assert_eq!(retry.seq, 0, "a retried create writes no second CREATED");
        let listed = ok(&ca, Op::List(v1::GroupList {})).await.groups;
        assert_eq!(listed.len(), 1, "one group, not two");
        assert_eq!(listed[0].group_id, info.group_id);
        let events = system_events(&log(&ca, &conv).await);
        assert_eq!(events, vec![(1, v1::GroupEventKind::Created)]);
        let created = next_in(&cb, &conv).await;
        let ev = created.event.clone().expect("event");
        assert_eq!((created.seq, ev.name.as_str()), (1, "club"));
        assert_eq!(ev.actor, ann.user_id.get());
        assert_eq!(sorted(ev.users.clone()), ids(&[&bo, &cy]));

        // Get: members see it, others are refused, unknown groups are not found.
        assert_eq!(get(&cb, info.group_id).await.name, "club");
        assert_eq!(
            refused(
                &cd,
                Op::Get(v1::GroupGet {
                    group_id: info.group_id
                })
            )
            .await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&cd, Op::Get(v1::GroupGet { group_id: 424_242 })).await,
            ErrorCode::NotFound
        );
        assert!(ok(&cd, Op::List(v1::GroupList {})).await.groups.is_empty());
        assert_eq!(ok(&cb, Op::List(v1::GroupList {})).await.groups.len(), 1);

        // Admins see invite links, pending joins and bans; members see them empty.
        ok(&ca, set_role(info.group_id, &cy, v1::GroupRole::Admin)).await;
        let link = invite_code(&ca, info.group_id).await;
        ok(&ca, remove(info.group_id, &eve, true)).await; // a ban of a non-member
        ok(&ca, approval_op(info.group_id, true)).await;
        let pending = ok(&cd, join(&link)).await;
        assert!(pending.pending_approval);
        for admin in [&ca, &cc] {
            let seen = get(admin, info.group_id).await;
            assert_eq!(
                seen.invites
                    .iter()
                    .map(|i| i.code.as_str())
                    .collect::<Vec<_>>(),
                [link.as_str()]
            );
            assert_eq!(seen.invites[0].created_by, ann.user_id.get());
            assert_eq!(seen.invites[0].expires_at_ms, 0);
            assert_eq!(seen.pending_joins, [dan.user_id.get()]);
            assert_eq!(seen.banned, [eve.user_id.get()]);
        }
        let member_view = get(&cb, info.group_id).await;
        assert!(member_view.invites.is_empty());
        assert!(member_view.pending_joins.is_empty());
        assert!(member_view.banned.is_empty());
        let listed = ok(&cb, Op::List(v1::GroupList {})).await.groups;
        assert!(listed[0].invites.is_empty() && listed[0].banned.is_empty());
        assert_eq!(member_view.members.len(), 3, "dan waits: not a member");
    })
    .await;
}

#[tokio::test]
async fn info_and_settings_changes_follow_the_policies_in_order() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let (ca, cb) = (server.device(&ann).await, server.device(&bo).await);
        let info = ca
            .create_group("before", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));

        // By default members may change the info, not the settings.
        let renamed = ok(&cb, rename(g, "after")).await;
        assert_eq!(renamed.seq, 2);
        assert_eq!(renamed.group.expect("group").name, "after");
        assert_eq!(
            refused(&cb, rename(g, " ")).await,
            ErrorCode::InvalidArgument,
            "an empty name is refused on update too"
        );
        let admins_edit = v1::GroupSettings {
            edit_info: v1::GroupPolicy::Admins as i32,
            ..Default::default()
        };
        assert_eq!(
            refused(&cb, settings_op(g, admins_edit)).await,
            ErrorCode::Forbidden
        );
        let changed = ok(&ca, settings_op(g, admins_edit)).await;
        assert_eq!(changed.seq, 3);
        assert_eq!(
            ok(&ca, settings_op(g, admins_edit)).await.seq,
            0,
            "the same settings again change nothing"
        );
        assert_eq!(refused(&cb, rename(g, "mine")).await, ErrorCode::Forbidden);
        let described = ok(
            &ca,
            Op::Update(v1::GroupUpdate {
                group_id: g,
                description: Some("now with a description".into()),
                avatar_media_id: Some("media-1".into()),
                ..Default::default()
            }),
        )
        .await;
        assert_eq!(described.seq, 4);
        assert_eq!(ok(&ca, rename(g, "after")).await.seq, 0, "unchanged name");

        // Both members see the changes in order, with what changed.
        for c in [&ca, &cb] {
            let got: Vec<v1::Message> = [
                next_in(c, &conv).await,
                next_in(c, &conv).await,
                next_in(c, &conv).await,
                next_in(c, &conv).await,
            ]
            .into();
            assert_eq!(
                system_events(&got),
                vec![
                    (1, v1::GroupEventKind::Created),
                    (2, v1::GroupEventKind::InfoChanged),
                    (3, v1::GroupEventKind::SettingsChanged),
                    (4, v1::GroupEventKind::InfoChanged),
                ]
            );
            let info_ev = got[1].event.clone().expect("event");
            assert_eq!(
                (info_ev.name.as_str(), info_ev.actor),
                ("after", bo.user_id.get())
            );
            let settings_ev = got[2].event.clone().expect("event");
            let s = settings_ev
                .settings
                .expect("SETTINGS_CHANGED carries the settings");
            assert_eq!(s.edit_info, v1::GroupPolicy::Admins as i32);
            assert_eq!(
                s.send,
                v1::GroupPolicy::Everyone as i32,
                "unset fields stay"
            );
            assert_eq!(s.add_members, v1::GroupPolicy::Admins as i32);
            let versions: Vec<u64> = got
                .iter()
                .map(|m| m.event.as_ref().unwrap().version)
                .collect();
            assert_eq!(versions, [1, 2, 3, 4]);
            let last = got[3].event.clone().expect("event");
            assert_eq!(last.description, "now with a description");
            assert_eq!(last.avatar_media_id, "media-1");
        }
        let now = get(&cb, g).await;
        assert_eq!(
            (
                now.name.as_str(),
                now.description.as_str(),
                now.avatar_media_id.as_str()
            ),
            ("after", "now with a description", "media-1")
        );
        assert_eq!(now.version, 4);
        assert_eq!(
            now.settings.expect("settings").edit_info,
            v1::GroupPolicy::Admins as i32
        );
    })
    .await;
}

#[tokio::test]
async fn send_policy_admins_lets_only_admins_send() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let (ca, cb, cc) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
        );
        let info = ca
            .create_group("announcements", &[bo.user_id, cy.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        ok(&ca, set_role(g, &cy, v1::GroupRole::Admin)).await; // seq 2
        let admins_send = v1::GroupSettings {
            send: v1::GroupPolicy::Admins as i32,
            ..Default::default()
        };
        assert_eq!(
            refused(&cb, settings_op(g, admins_send)).await,
            ErrorCode::Forbidden,
            "a member may not change the settings"
        );
        assert_eq!(
            ok(&cc, settings_op(g, admins_send)).await.seq,
            3,
            "an admin may"
        );

        assert_eq!(send_refused(&cb, &conv).await, ErrorCode::Forbidden);
        let by_admin = cc
            .send_text(&conv, "from the admin")
            .await
            .expect("admin send");
        let by_owner = ca
            .send_text(&conv, "from the owner")
            .await
            .expect("owner send");
        assert_eq!(
            (by_admin.seq, by_owner.seq),
            (4, 5),
            "the refused send took no seq"
        );
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.push(next_in(&cb, &conv).await);
        }
        assert_eq!(
            seen.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(text(&seen[3]), "from the admin");
        assert_eq!(text(&seen[4]), "from the owner");

        // Under ADMINS, a promotion lets a member send at once, a dismissal stops it.
        assert_eq!(ok(&ca, set_role(g, &bo, v1::GroupRole::Admin)).await.seq, 6);
        assert_eq!(cb.send_text(&conv, "promoted").await.expect("send").seq, 7);
        assert_eq!(
            ok(&ca, set_role(g, &bo, v1::GroupRole::Member)).await.seq,
            8
        );
        assert_eq!(send_refused(&cb, &conv).await, ErrorCode::Forbidden);

        // Back to everyone: the member's send goes through again.
        let everyone = v1::GroupSettings {
            send: v1::GroupPolicy::Everyone as i32,
            ..Default::default()
        };
        assert_eq!(ok(&ca, settings_op(g, everyone)).await.seq, 9);
        assert_eq!(cb.send_text(&conv, "me too").await.expect("send").seq, 10);

        // An admin may step down; the owner's role does not change by set_role.
        let stepped = ok(&cc, set_role(g, &cy, v1::GroupRole::Member)).await;
        assert_eq!(stepped.seq, 11);
        assert_eq!(
            role_in(&stepped.group.expect("group"), cy.user_id),
            Some(v1::GroupRole::Member)
        );
        assert_eq!(
            refused(&ca, set_role(g, &ann, v1::GroupRole::Member)).await,
            ErrorCode::Forbidden
        );
    })
    .await;
}

#[tokio::test]
async fn adding_members_follows_the_add_policy_and_the_size_limit() {
    let server = Server::start_with(&[("NATTER_MAX_GROUP_MEMBERS", "5")]).await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let eve = server.user("eve").await;
        let fay = server.user("fay").await;
        let gus = server.user("gus").await;
        let (ca, cb) = (server.device(&ann).await, server.device(&bo).await);

        let too_many: Vec<UserId> = [&bo, &cy, &dan, &eve, &fay]
            .iter()
            .map(|s| s.user_id)
            .collect();
        let full = ca.create_group("too big", &too_many).await.unwrap_err();
        assert_eq!(code(full), ErrorCode::GroupFull, "6 members at creation");

        let info = ca
            .create_group("five max", &[bo.user_id])
            .await
            .expect("create");
        assert_eq!(info.max_members, 5);
        let (g, conv) = (info.group_id, group_conv(&info));

        // add_members defaults to ADMINS.
        assert_eq!(refused(&cb, add(g, &[&cy])).await, ErrorCode::Forbidden);
        let added = ok(&ca, add(g, &[&cy])).await;
        assert_eq!(added.seq, 2);
        let m = message_at(&ca, &conv, 2).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::MembersAdded);
        assert_eq!(m.event.unwrap().users, [cy.user_id.get()]);
        let joined = added.group.expect("group");
        assert_eq!(
            joined
                .members
                .iter()
                .find(|m| m.user_id == cy.user_id.get())
                .unwrap()
                .joined_seq,
            2
        );

        // Adding an existing member changes nothing and writes nothing.
        let again = ok(&ca, add(g, &[&bo, &cy])).await;
        assert_eq!(again.seq, 0);
        assert_eq!(again.group.expect("group").version, joined.version);
        assert_eq!(log(&ca, &conv).await.len(), 2);
        let ghost = Op::AddMembers(v1::GroupAddMembers {
            group_id: g,
            users: vec![(1u64 << 52) + 99],
        });
        assert_eq!(refused(&ca, ghost).await, ErrorCode::NotFound);

        // With add_members = EVERYONE a member may add.
        let everyone_adds = v1::GroupSettings {
            add_members: v1::GroupPolicy::Everyone as i32,
            ..Default::default()
        };
        assert_eq!(ok(&ca, settings_op(g, everyone_adds)).await.seq, 3);
        assert_eq!(ok(&cb, add(g, &[&dan])).await.seq, 4);

        // 4 members: two more would make 6, so neither is added.
        assert_eq!(
            refused(&ca, add(g, &[&eve, &fay])).await,
            ErrorCode::GroupFull
        );
        let now = get(&ca, g).await;
        assert_eq!(
            member_ids(&now),
            ids(&[&ann, &bo, &cy, &dan]),
            "all or none"
        );
        assert_eq!(
            log(&ca, &conv).await.len(),
            4,
            "no system message for a refused add"
        );
        assert_eq!(ok(&ca, add(g, &[&eve])).await.seq, 5);
        assert_eq!(refused(&ca, add(g, &[&fay])).await, ErrorCode::GroupFull);
        // Full also for links.
        let link = invite_code(&ca, g).await;
        let cg = server.device(&gus).await;
        assert_eq!(refused(&cg, join(&link)).await, ErrorCode::GroupFull);
        let now = get(&ca, g).await;
        assert_eq!(member_ids(&now), ids(&[&ann, &bo, &cy, &dan, &eve]));
        assert_eq!(log(&ca, &conv).await.len(), 5);
    })
    .await;
}

#[tokio::test]
async fn racing_joins_by_link_fill_the_group_exactly() {
    const MAX: usize = 5;
    const RACERS: usize = 8;
    let server = Server::start_with(&[("NATTER_MAX_GROUP_MEMBERS", "5")]).await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let ca = server.device(&ann).await;
        let info = ca
            .create_group("room for 3", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        let link = invite_code(&ca, g).await;

        let mut racers = Vec::new();
        for i in 0..RACERS {
            let s = server.user(&format!("racer{i}")).await;
            let c = server.device(&s).await;
            racers.push((s, c));
        }
        let results =
            futures::future::join_all(racers.iter().map(|(_, c)| c.group(join(&link)))).await;
        let mut winners = Vec::new();
        let mut seqs = Vec::new();
        for ((s, _), r) in racers.iter().zip(results) {
            match r {
                Ok(r) => {
                    assert!(!r.pending_approval);
                    assert!(r.seq > 1, "a join writes a system message: {r:?}");
                    winners.push(s.user_id.get());
                    seqs.push(r.seq);
                }
                Err(e) => assert_eq!(code(e), ErrorCode::GroupFull, "{}", s.username),
            }
        }
        assert_eq!(winners.len(), MAX - 2, "exactly the free places are taken");
        seqs.sort_unstable();
        assert_eq!(seqs, [2, 3, 4], "one seq per join, no gaps");

        let now = get(&ca, g).await;
        assert_eq!(now.members.len(), MAX);
        let mut expected = winners.clone();
        expected.extend([ann.user_id.get(), bo.user_id.get()]);
        assert_eq!(member_ids(&now), sorted(expected));
        let history = log(&ca, &conv).await;
        assert_gap_free(&history);
        let joined: Vec<u64> = history
            .iter()
            .filter(|m| m.kind == v1::MessageKind::System as i32)
            .filter(|m| event_kind(m) == v1::GroupEventKind::JoinedByInvite)
            .map(|m| m.event.as_ref().unwrap().users[0])
            .collect();
        assert_eq!(sorted(joined), sorted(winners));
        assert_eq!(
            history.len(),
            4,
            "CREATED + 3 joins, nothing for the refused"
        );
    })
    .await;
}

#[tokio::test]
async fn removal_and_roles_follow_the_hierarchy() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let eve = server.user("eve").await;
        let (ca, cb, cc, cd) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
            server.device(&dan).await,
        );
        let info = ca
            .create_group("ranks", &[bo.user_id, cy.user_id, dan.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));

        // Members may not remove, nor change roles.
        assert_eq!(
            refused(&cb, remove(g, &cy, false)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&cb, set_role(g, &cy, v1::GroupRole::Admin)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&cb, remove(g, &bo, false)).await,
            ErrorCode::InvalidArgument
        );

        // The owner promotes bo; an admin may promote too.
        let promoted = ok(&ca, set_role(g, &bo, v1::GroupRole::Admin)).await;
        assert_eq!(promoted.seq, 2);
        let m = message_at(&cc, &conv, 2).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::RoleChanged);
        let ev = m.event.unwrap();
        assert_eq!(
            (ev.users.clone(), ev.role),
            (vec![bo.user_id.get()], v1::GroupRole::Admin as i32)
        );
        assert_eq!(
            ok(&ca, set_role(g, &bo, v1::GroupRole::Admin)).await.seq,
            0,
            "already"
        );
        assert_eq!(ok(&cb, set_role(g, &cy, v1::GroupRole::Admin)).await.seq, 3);
        // Only the owner dismisses an admin; nobody changes the owner's role.
        assert_eq!(
            refused(&cb, set_role(g, &cy, v1::GroupRole::Member)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&cb, set_role(g, &ann, v1::GroupRole::Member)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&ca, set_role(g, &cy, v1::GroupRole::Owner)).await,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            refused(&ca, set_role(g, &eve, v1::GroupRole::Admin)).await,
            ErrorCode::NotFound,
            "not a member"
        );

        // Admins remove members, not admins nor the owner.
        assert_eq!(
            refused(&cb, remove(g, &cy, false)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&cb, remove(g, &ann, false)).await,
            ErrorCode::Forbidden
        );
        let removed = ok(&cb, remove(g, &dan, false)).await;
        assert_eq!(removed.seq, 4);
        assert_eq!(role_in(&removed.group.unwrap(), dan.user_id), None);
        assert_eq!(
            event_kind(&message_at(&cd, &conv, 4).await),
            v1::GroupEventKind::MemberRemoved
        );
        assert_eq!(
            refused(&cd, remove(g, &bo, false)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(ok(&cb, remove(g, &dan, false)).await.seq, 0, "already gone");

        // The owner dismisses and removes admins.
        assert_eq!(
            ok(&ca, set_role(g, &cy, v1::GroupRole::Member)).await.seq,
            5
        );
        let m = message_at(&cc, &conv, 5).await;
        assert_eq!(m.event.unwrap().role, v1::GroupRole::Member as i32);
        assert_eq!(ok(&ca, remove(g, &bo, false)).await.seq, 6);
        let now = get(&ca, g).await;
        assert_eq!(member_ids(&now), ids(&[&ann, &cy]));
        assert_eq!(role_in(&now, cy.user_id), Some(v1::GroupRole::Member));

        // Ownership: only the owner transfers it, to a member, and becomes an admin.
        let to_cy = Op::TransferOwnership(v1::GroupTransferOwnership {
            group_id: g,
            user_id: cy.user_id.get(),
        });
        let to_ann = Op::TransferOwnership(v1::GroupTransferOwnership {
            group_id: g,
            user_id: ann.user_id.get(),
        });
        let to_eve = Op::TransferOwnership(v1::GroupTransferOwnership {
            group_id: g,
            user_id: eve.user_id.get(),
        });
        assert_eq!(refused(&cc, to_ann.clone()).await, ErrorCode::Forbidden);
        ok(&ca, set_role(g, &cy, v1::GroupRole::Admin)).await; // seq 7
        assert_eq!(
            refused(&cc, to_ann).await,
            ErrorCode::Forbidden,
            "an admin is not the owner"
        );
        assert_eq!(refused(&ca, to_eve).await, ErrorCode::NotFound);
        let moved = ok(&ca, to_cy).await;
        assert_eq!(moved.seq, 8);
        let m = message_at(&cc, &conv, 8).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::OwnerChanged);
        assert_eq!(m.event.unwrap().new_owner, cy.user_id.get());
        let now = get(&cc, g).await;
        assert_eq!(role_in(&now, cy.user_id), Some(v1::GroupRole::Owner));
        assert_eq!(role_in(&now, ann.user_id), Some(v1::GroupRole::Admin));
        // The new owner may now remove the former one, who may not remove them back.
        assert_eq!(
            refused(&ca, remove(g, &cy, false)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(ok(&cc, remove(g, &ann, false)).await.seq, 9);
        assert_eq!(
            refused(&ca, Op::Get(v1::GroupGet { group_id: g })).await,
            ErrorCode::Forbidden
        );
        let kinds: Vec<v1::GroupEventKind> = system_events(&log(&cc, &conv).await)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        use v1::GroupEventKind as K;
        assert_eq!(
            kinds,
            [
                K::Created,
                K::RoleChanged,
                K::RoleChanged,
                K::MemberRemoved,
                K::RoleChanged,
                K::MemberRemoved,
                K::RoleChanged,
                K::OwnerChanged,
                K::MemberRemoved
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn leaving_hands_ownership_on_and_the_last_member_deletes_the_group() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let eve = server.user("eve").await;
        let (ca, cb, cc, cd, ce) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
            server.device(&dan).await,
            server.device(&eve).await,
        );
        let info = ca
            .create_group("relay", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        ok(&ca, add(g, &[&dan])).await; // 2
        ok(&ca, set_role(g, &dan, v1::GroupRole::Admin)).await; // 3
        ok(&ca, add(g, &[&cy])).await; // 4
        ok(&ca, add(g, &[&eve])).await; // 5
        let link = invite_code(&ca, g).await;

        // A member leaves.
        let left = ok(&ce, leave(g)).await;
        assert_eq!(left.seq, 6);
        let m = message_at(&cb, &conv, 6).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::MemberLeft);
        assert_eq!(m.event.unwrap().users, [eve.user_id.get()]);
        assert_eq!(
            refused(&ce, Op::Get(v1::GroupGet { group_id: g })).await,
            ErrorCode::Forbidden
        );
        assert!(ok(&ce, Op::List(v1::GroupList {})).await.groups.is_empty());
        assert_eq!(send_refused(&ce, &conv).await, ErrorCode::Forbidden);
        let again = ok(&ce, leave(g)).await;
        assert_eq!(again.seq, 0, "leaving again (a retry) changes nothing");
        assert_eq!(log(&cb, &conv).await.len(), 6);

        // The owner leaves: the longest-standing admin (dan, not bo) takes over.
        let left = ok(&ca, leave(g)).await;
        assert_eq!(left.seq, 7);
        let m = message_at(&cd, &conv, 7).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::MemberLeft);
        assert_eq!(m.event.unwrap().new_owner, dan.user_id.get());
        let now = get(&cb, g).await;
        assert_eq!(role_in(&now, dan.user_id), Some(v1::GroupRole::Owner));
        assert_eq!(role_in(&now, ann.user_id), None);
        assert_eq!(
            now.members
                .iter()
                .filter(|m| m.role == v1::GroupRole::Owner as i32)
                .count(),
            1
        );

        // No admin left: the longest-standing member (bo, joined at 1) takes over.
        assert_eq!(ok(&cd, leave(g)).await.seq, 8);
        let now = get(&cc, g).await;
        assert_eq!(role_in(&now, bo.user_id), Some(v1::GroupRole::Owner));
        assert_eq!(role_in(&now, cy.user_id), Some(v1::GroupRole::Member));
        assert_eq!(ok(&cb, leave(g)).await.seq, 9);
        assert_eq!(
            role_in(&get(&cc, g).await, cy.user_id),
            Some(v1::GroupRole::Owner)
        );

        // The last member leaves: the group is deleted.
        let last = ok(&cc, leave(g)).await;
        assert_eq!(last.seq, 10);
        assert!(last.group.expect("group").deleted);
        assert_eq!(send_refused(&cc, &conv).await, ErrorCode::NotFound);
        assert_eq!(refused(&ce, join(&link)).await, ErrorCode::NotFound);
        let cy_log = log(&cc, &conv).await;
        assert_eq!(cy_log.first().map(|m| m.seq), Some(4), "from cy's join");
        assert_eq!(cy_log.last().map(|m| m.seq), Some(10), "to cy's leaving");
        assert_eq!(
            event_kind(cy_log.last().unwrap()),
            v1::GroupEventKind::MemberLeft
        );
    })
    .await;
}

#[tokio::test]
async fn only_the_owner_deletes_and_history_stays_readable() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let (ca, cb, cc) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
        );
        let info = ca
            .create_group("doomed", &[bo.user_id, cy.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        ok(&ca, set_role(g, &bo, v1::GroupRole::Admin)).await; // 2
        cb.send_text(&conv, "one").await.expect("send"); // 3
        cc.send_text(&conv, "two").await.expect("send"); // 4
        let link = invite_code(&ca, g).await;

        let delete = Op::Delete(v1::GroupDelete { group_id: g });
        assert_eq!(
            refused(&cb, delete.clone()).await,
            ErrorCode::Forbidden,
            "admin"
        );
        assert_eq!(
            refused(&cc, delete.clone()).await,
            ErrorCode::Forbidden,
            "member"
        );
        let deleted = ok(&ca, delete.clone()).await;
        assert_eq!(deleted.seq, 5);
        assert!(deleted.group.expect("group").deleted);
        for c in [&ca, &cb, &cc] {
            // Every member hears of it, in order after the chat.
            let mut last = next_in(c, &conv).await;
            while last.seq < 5 {
                last = next_in(c, &conv).await;
            }
            assert_eq!(event_kind(&last), v1::GroupEventKind::Deleted);
        }

        for c in [&ca, &cb, &cc] {
            assert_eq!(send_refused(c, &conv).await, ErrorCode::NotFound);
        }
        let dan = server.user("dan").await;
        let cd = server.device(&dan).await;
        assert_eq!(refused(&cd, join(&link)).await, ErrorCode::NotFound);
        assert_eq!(refused(&ca, add(g, &[&dan])).await, ErrorCode::NotFound);
        assert_eq!(refused(&ca, rename(g, "again")).await, ErrorCode::NotFound);
        assert_eq!(ok(&ca, delete).await.seq, 0, "deleting again (a retry)");
        assert_eq!(
            ca.read_by(&conv, Seq(3)).await.map_err(code).unwrap_err(),
            ErrorCode::NotFound
        );
        cb.read(&conv, Seq(4)).await.expect("the frame is written");
        let refusal = next_matching(&cb, WAIT, |ev| match ev {
            Event::Error { error, .. } => Some(error.clone()),
            _ => None,
        })
        .await;
        assert_eq!(refusal.code, ErrorCode::NotFound as i32, "{refusal:?}");

        // Members keep their history, up to the deletion.
        for c in [&ca, &cb, &cc] {
            let h = log(c, &conv).await;
            assert_gap_free(&h);
            assert_eq!(h.len(), 5);
            assert_eq!(text(&h[2]), "one");
            assert_eq!(text(&h[3]), "two");
            assert_eq!(event_kind(&h[4]), v1::GroupEventKind::Deleted);
        }
        let seen = get(&cc, g).await;
        assert!(seen.deleted, "get shows the group as deleted");
        assert!(seen.invites.is_empty());
        assert_eq!(send_refused(&cd, &conv).await, ErrorCode::NotFound);
        let listed = ok(&cc, Op::List(v1::GroupList {})).await.groups;
        assert!(listed.len() == 1 && listed[0].deleted, "{listed:?}");

        // Members may leave a deleted group: it leaves their list, no system message.
        assert_eq!(ok(&cb, leave(g)).await.seq, 0);
        assert!(ok(&cb, Op::List(v1::GroupList {})).await.groups.is_empty());
        assert_eq!(
            refused(&cb, Op::Get(v1::GroupGet { group_id: g })).await,
            ErrorCode::Forbidden
        );
        assert_eq!(ok(&cb, leave(g)).await.seq, 0, "and again");
        assert_eq!(
            log(&cb, &conv).await.len(),
            5,
            "still readable up to the deletion"
        );
        assert_eq!(
            log(&cc, &conv).await.len(),
            5,
            "nothing was written for the leave"
        );
    })
    .await;
}

#[tokio::test]
async fn invite_links_join_revoke_expire_and_malformed_codes() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let (ca, cb, cc, cd) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
            server.device(&dan).await,
        );
        let info = ca
            .create_group("linked", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));

        assert_eq!(refused(&cb, invite(g, 0)).await, ErrorCode::Forbidden);
        assert_eq!(
            refused(&cc, invite(g, 0)).await,
            ErrorCode::Forbidden,
            "non-member"
        );
        let made = ok(&ca, invite(g, 0)).await;
        assert_eq!(made.seq, 0, "an invite is not a system message");
        let inv = made.invite.expect("the invite");
        let link = inv.code.clone();
        assert!(link.starts_with(&format!("{g}-")), "{link}");
        assert!(
            link.len() > format!("{g}-").len() + 10,
            "a real secret: {link}"
        );
        assert_eq!((inv.created_by, inv.expires_at_ms), (ann.user_id.get(), 0));

        // Joining by link.
        let joined = ok(&cc, join(&link)).await;
        assert!(!joined.pending_approval);
        assert_eq!(joined.seq, 2);
        let jinfo = joined.group.expect("the group");
        assert_eq!(role_in(&jinfo, cy.user_id), Some(v1::GroupRole::Member));
        assert!(jinfo.invites.is_empty(), "a member does not see the links");
        let m = next_in(&cc, &conv).await;
        assert_eq!(m.seq, 2, "the joiner starts at their join");
        assert_eq!(event_kind(&m), v1::GroupEventKind::JoinedByInvite);
        let ev = m.event.unwrap();
        assert_eq!(
            (ev.users.clone(), ev.actor),
            (vec![cy.user_id.get()], cy.user_id.get())
        );
        assert_eq!(
            ok(&cc, join(&link)).await.seq,
            0,
            "joining again changes nothing"
        );
        assert_eq!(
            cc.send_text(&conv, "hi, I'm new").await.expect("send").seq,
            3
        );

        // Revoked: the link no longer works.
        let other = invite_code(&ca, g).await;
        assert_ne!(other, link);
        let revoke = |c: &str| {
            Op::RevokeInvite(v1::GroupRevokeInvite {
                group_id: g,
                code: c.to_owned(),
            })
        };
        assert_eq!(refused(&cb, revoke(&link)).await, ErrorCode::Forbidden);
        let after = ok(&ca, revoke(&link)).await;
        assert_eq!(
            after
                .group
                .expect("group")
                .invites
                .iter()
                .map(|i| i.code.as_str())
                .collect::<Vec<_>>(),
            [other.as_str()]
        );
        assert_eq!(refused(&cd, join(&link)).await, ErrorCode::NotFound);
        assert_eq!(
            refused(&ca, revoke(&link)).await,
            ErrorCode::NotFound,
            "revoked twice"
        );

        // Expired.
        let short = ok(&ca, invite(g, 1)).await.invite.expect("invite");
        assert_eq!(short.expires_at_ms, short.created_at_ms + 1000);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // Time itself is the condition here: wait until the link has expired.
        let wait_ms = short.expires_at_ms.saturating_sub(now_ms) + 100;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        assert_eq!(refused(&cd, join(&short.code)).await, ErrorCode::NotFound);
        let live: Vec<String> = get(&ca, g)
            .await
            .invites
            .into_iter()
            .map(|i| i.code)
            .collect();
        assert!(!live.contains(&link));

        // Malformed codes never reach a group; well-formed wrong ones find none.
        for bad in [
            "",
            "nonsense",
            "12345",
            "-abc",
            "12x-abc",
            "0123-abc",
            "99999999999999999-abc",
        ] {
            assert_eq!(
                refused(&cd, join(bad)).await,
                ErrorCode::InvalidArgument,
                "code {bad:?}"
            );
        }
        assert_eq!(
            refused(&cd, join(&format!("{g}-notthesecret"))).await,
            ErrorCode::NotFound
        );
        assert_eq!(refused(&cd, join("4242-secret")).await, ErrorCode::NotFound);
        assert_eq!(
            refused(&cd, join(&format!("{g}-"))).await,
            ErrorCode::InvalidArgument,
            "an empty secret"
        );

        // The other link still works; nobody got in by a dead one.
        assert_eq!(ok(&cd, join(&other)).await.seq, 4);
        let h = log(&ca, &conv).await;
        assert_gap_free(&h);
        assert_eq!(
            system_events(&h),
            vec![
                (1, v1::GroupEventKind::Created),
                (2, v1::GroupEventKind::JoinedByInvite),
                (4, v1::GroupEventKind::JoinedByInvite)
            ]
        );
    })
    .await;
}

/// `GroupInfo.invites` is documented as the *live* invite links: an expired link (which
/// a join already refuses with NOT_FOUND) must not be listed to admins any more.
#[tokio::test]
async fn expired_invite_links_are_no_longer_listed_as_live() {
    let server = Server::start().await;
    bounded(30, async {
        let ann = server.user("ann").await;
        let dan = server.user("dan").await;
        let (ca, cd) = (server.device(&ann).await, server.device(&dan).await);
        let info = ca.create_group("fleeting", &[]).await.expect("create");
        let g = info.group_id;
        let lasting = invite_code(&ca, g).await;
        let short = ok(&ca, invite(g, 1)).await.invite.expect("invite");
        let listed: Vec<String> = get(&ca, g)
            .await
            .invites
            .into_iter()
            .map(|i| i.code)
            .collect();
        assert_eq!(listed, [lasting.clone(), short.code.clone()], "both live");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // Time itself is the condition here: wait until the link has expired.
        tokio::time::sleep(Duration::from_millis(
            short.expires_at_ms.saturating_sub(now_ms) + 100,
        ))
        .await;
        assert_eq!(
            refused(&cd, join(&short.code)).await,
            ErrorCode::NotFound,
            "expired"
        );
        let listed: Vec<String> = get(&ca, g)
            .await
            .invites
            .into_iter()
            .map(|i| i.code)
            .collect();
        assert_eq!(
            listed,
            [lasting],
            "an expired link is not a live invite link"
        );
    })
    .await;
}

#[tokio::test]
async fn a_banned_user_cannot_rejoin_by_link_until_an_admin_adds_them() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let (ca, cb, cc) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
        );
        let info = ca
            .create_group("strict", &[bo.user_id, cy.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        let link = invite_code(&ca, g).await;

        // Removed without a ban: back by link.
        assert_eq!(ok(&ca, remove(g, &bo, false)).await.seq, 2);
        assert_eq!(ok(&cb, join(&link)).await.seq, 3);

        // Removed with a ban: the link refuses them.
        let banned = ok(&ca, remove(g, &cy, true)).await;
        assert_eq!(banned.seq, 4);
        let seen = banned.group.expect("group");
        assert_eq!(seen.banned, [cy.user_id.get()]);
        assert_eq!(role_in(&seen, cy.user_id), None);
        assert_eq!(refused(&cc, join(&link)).await, ErrorCode::Banned);
        assert_eq!(refused(&cc, join(&link)).await, ErrorCode::Banned, "still");
        assert_eq!(send_refused(&cc, &conv).await, ErrorCode::Forbidden);
        assert!(
            get(&cb, g).await.banned.is_empty(),
            "members do not see bans"
        );

        // An admin adding them lifts the ban.
        let added = ok(&ca, add(g, &[&cy])).await;
        assert_eq!(added.seq, 5);
        let seen = added.group.expect("group");
        assert!(seen.banned.is_empty());
        assert_eq!(role_in(&seen, cy.user_id), Some(v1::GroupRole::Member));
        assert_eq!(cc.send_text(&conv, "back").await.expect("send").seq, 6);
        assert_eq!(ok(&cc, leave(g)).await.seq, 7);
        assert_eq!(ok(&cc, join(&link)).await.seq, 8, "no ban any more");
    })
    .await;
}

#[tokio::test]
async fn join_approval_makes_joins_wait_for_an_admin() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let (ca, cb, cc, cd) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
            server.device(&dan).await,
        );
        let info = ca
            .create_group("by approval", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        assert_eq!(
            refused(&cb, approval_op(g, true)).await,
            ErrorCode::Forbidden
        );
        // `settings.join_approval` says nothing in an update (a bool cannot say
        // "unchanged"): only the separate `join_approval` field turns approval on.
        let ignored = settings_op(
            g,
            v1::GroupSettings {
                join_approval: true,
                ..Default::default()
            },
        );
        assert_eq!(ok(&ca, ignored).await.seq, 0);
        assert!(!get(&ca, g).await.settings.expect("settings").join_approval);
        let on = ok(&ca, approval_op(g, true)).await;
        assert_eq!(on.seq, 2);
        assert!(
            on.group
                .expect("group")
                .settings
                .expect("settings")
                .join_approval
        );
        let m = message_at(&ca, &conv, 2).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::SettingsChanged);
        assert!(m.event.unwrap().settings.expect("settings").join_approval);
        // Changing a policy leaves approval on.
        let admins_edit = v1::GroupSettings {
            edit_info: v1::GroupPolicy::Admins as i32,
            ..Default::default()
        };
        assert_eq!(ok(&ca, settings_op(g, admins_edit)).await.seq, 3);
        assert!(get(&ca, g).await.settings.expect("settings").join_approval);
        let link = invite_code(&ca, g).await;

        // A join waits: not a member yet.
        let waiting = ok(&cc, join(&link)).await;
        assert!(waiting.pending_approval);
        assert_eq!(waiting.seq, 0, "a request to join writes no system message");
        let shown = waiting.group.expect("the group, as a non-member sees it");
        assert_eq!(shown.name, "by approval");
        assert!(shown.members.is_empty(), "not who is in it: {shown:?}");
        assert!(shown.pending_joins.is_empty());
        assert!(ok(&cc, join(&link)).await.pending_approval, "asking again");
        assert_eq!(send_refused(&cc, &conv).await, ErrorCode::Forbidden);
        assert_eq!(
            refused(&cc, Op::Get(v1::GroupGet { group_id: g })).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            cc.history(&conv, Seq::ZERO, 10)
                .await
                .map_err(code)
                .unwrap_err(),
            ErrorCode::Forbidden
        );
        assert_eq!(get(&ca, g).await.pending_joins, [cy.user_id.get()]);
        assert!(ok(&cd, join(&link)).await.pending_approval);
        assert_eq!(get(&ca, g).await.pending_joins, ids(&[&cy, &dan]));

        // Only admins decide.
        assert_eq!(
            refused(&cb, decide(g, &cy, true)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&cc, decide(g, &cy, true)).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&ca, decide(g, &bo, true)).await,
            ErrorCode::NotFound,
            "no request"
        );
        let approved = ok(&ca, decide(g, &cy, true)).await;
        assert_eq!(approved.seq, 4);
        let m = next_in(&cc, &conv).await;
        assert_eq!(m.seq, 4, "the approved member starts at their admission");
        assert_eq!(event_kind(&m), v1::GroupEventKind::MembersAdded);
        assert_eq!(m.event.unwrap().users, [cy.user_id.get()]);
        assert_eq!(
            role_in(&get(&cc, g).await, cy.user_id),
            Some(v1::GroupRole::Member)
        );
        assert_eq!(cc.send_text(&conv, "let in").await.expect("send").seq, 5);

        let declined = ok(&ca, decide(g, &dan, false)).await;
        assert_eq!(declined.seq, 0);
        let seen = declined.group.expect("group");
        assert!(seen.pending_joins.is_empty());
        assert_eq!(role_in(&seen, dan.user_id), None);
        assert_eq!(send_refused(&cd, &conv).await, ErrorCode::Forbidden);
        assert_eq!(
            refused(&cd, Op::Get(v1::GroupGet { group_id: g })).await,
            ErrorCode::Forbidden
        );
        assert_eq!(
            refused(&ca, decide(g, &dan, true)).await,
            ErrorCode::NotFound,
            "decided"
        );
        assert_eq!(
            system_events(&log(&ca, &conv).await),
            vec![
                (1, v1::GroupEventKind::Created),
                (2, v1::GroupEventKind::SettingsChanged),
                (3, v1::GroupEventKind::SettingsChanged),
                (4, v1::GroupEventKind::MembersAdded)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn non_members_and_removed_members_read_only_what_was_theirs() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let eve = server.user("eve").await;
        let (ca, cb, ce) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&eve).await,
        );
        let info = ca
            .create_group("private", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        ca.send_text(&conv, "secret 1").await.expect("send"); // 2
        cb.send_text(&conv, "secret 2").await.expect("send"); // 3
        let removed = ok(&ca, remove(g, &bo, false)).await;
        assert_eq!(removed.seq, 4);
        ca.send_text(&conv, "after bo").await.expect("send"); // 5
        ok(&ca, rename(g, "renamed")).await; // 6

        // Eve was never in: history, sync, read_by, send all give her nothing.
        assert_eq!(
            ce.history(&conv, Seq::ZERO, 50)
                .await
                .map_err(code)
                .unwrap_err(),
            ErrorCode::Forbidden
        );
        assert_eq!(
            ce.history(&conv, Seq(3), 50)
                .await
                .map_err(code)
                .unwrap_err(),
            ErrorCode::Forbidden
        );
        assert_eq!(
            ce.read_by(&conv, Seq(2)).await.map_err(code).unwrap_err(),
            ErrorCode::Forbidden
        );
        assert_eq!(send_refused(&ce, &conv).await, ErrorCode::Forbidden);
        let done = ce.sync().await.expect("sync");
        assert!(
            done.heads
                .iter()
                .all(|h| h.conversation_id != conv.as_str()),
            "the group is not among eve's conversations: {done:?}"
        );
        let eve2 = server.login(&eve.username, "device-2").await;
        let ce2 = server.device(&eve2).await;
        let synced = sync_collect(&ce2, Duration::from_secs(20)).await;
        assert!(
            synced.iter().all(|m| m.conversation_id != conv.as_str()),
            "{synced:?}"
        );
        nothing_past(&ce, &conv, 0).await;

        // Bo reads up to his removal, not after: history, a fresh device's sync.
        let h = log(&cb, &conv).await;
        assert_eq!(h.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(event_kind(&h[3]), v1::GroupEventKind::MemberRemoved);
        let page = cb.history(&conv, Seq(3), 50).await.expect("history");
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(!page.more);
        let page = cb.history(&conv, Seq(6), 50).await.expect("history");
        assert_eq!(
            page.messages.last().map(|m| m.seq),
            Some(4),
            "capped at the removal"
        );
        let bo2 = server.login(&bo.username, "device-2").await;
        let cb2 = server.device(&bo2).await;
        let synced: Vec<u64> = sync_collect(&cb2, Duration::from_secs(20))
            .await
            .iter()
            .filter(|m| m.conversation_id == conv.as_str())
            .map(|m| m.seq)
            .collect();
        assert_eq!(synced, [1, 2, 3, 4]);
        assert_eq!(
            cb.read_by(&conv, Seq(3)).await.map_err(code).unwrap_err(),
            ErrorCode::Forbidden,
            "a former member asks nothing of the group"
        );
        assert_eq!(
            refused(&cb, Op::Get(v1::GroupGet { group_id: g })).await,
            ErrorCode::Forbidden
        );
        assert!(ok(&cb, Op::List(v1::GroupList {})).await.groups.is_empty());
        nothing_past(&cb, &conv, 4).await;
        nothing_past(&cb2, &conv, 4).await;
    })
    .await;
}

#[tokio::test]
async fn sends_racing_a_removal_land_before_it_or_are_refused_never_both() {
    const WORKERS: usize = 8;
    const MAX_PER_WORKER: usize = 2000;
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let (ca, cb, cc) = (
            server.device(&ann).await,
            server.device(&bo).await,
            server.device(&cy).await,
        );
        let info = ca
            .create_group("race", &[bo.user_id, cy.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        let sent = std::sync::atomic::AtomicUsize::new(0);

        // Cy sends from several tasks at once until refused, then a few more; Ann
        // removes Cy once some of them went through.
        let worker = |w: usize| {
            let (cc, conv, sent) = (&cc, &conv, &sent);
            async move {
                let mut out: Vec<Result<(u64, String), ErrorCode>> = Vec::new();
                let mut refusals = 0;
                for i in 0..MAX_PER_WORKER {
                    let body = format!("w{w}-{i}");
                    let r = cc.send_text(conv, &body).await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match r {
                        Ok(a) => out.push(Ok((a.seq, body))),
                        Err(e) => {
                            out.push(Err(code(e)));
                            refusals += 1;
                            if refusals == 3 {
                                break;
                            }
                        }
                    }
                }
                out
            }
        };
        let removal = async {
            eventually(WAIT, "some sends before the removal", || async {
                sent.load(std::sync::atomic::Ordering::Relaxed) >= 4 * WORKERS
            })
            .await;
            ok(&ca, remove(g, &cy, false)).await.seq
        };
        let (results, removal_seq) =
            tokio::join!(futures::future::join_all((0..WORKERS).map(worker)), removal);
        assert!(removal_seq > 1);

        let mut accepted = Vec::new();
        for (w, out) in results.iter().enumerate() {
            let first_refusal = out.iter().position(|r| r.is_err()).unwrap_or_else(|| {
                panic!("worker {w} was never refused in {MAX_PER_WORKER} sends")
            });
            for (i, r) in out.iter().enumerate() {
                match r {
                    Ok((seq, body)) => {
                        assert!(i < first_refusal, "worker {w}: accepted after a refusal");
                        assert!(
                            *seq < removal_seq,
                            "worker {w}: seq {seq} accepted after the removal at {removal_seq}"
                        );
                        accepted.push((*seq, body.clone()));
                    }
                    Err(c) => assert_eq!(*c, ErrorCode::Forbidden, "worker {w} send {i}"),
                }
            }
        }
        assert!(!accepted.is_empty());
        // After the removal answered, a send is refused.
        assert_eq!(send_refused(&cc, &conv).await, ErrorCode::Forbidden);
        let last = ca.send_text(&conv, "cy is out").await.expect("send");
        assert_eq!(last.seq, removal_seq + 1, "refused sends took no seq");

        // Bo's log is gap-free and holds exactly the accepted sends before the removal.
        let h = log(&cb, &conv).await;
        assert_gap_free(&h);
        assert_eq!(h.len() as u64, last.seq);
        assert_eq!(
            event_kind(&h[removal_seq as usize - 1]),
            v1::GroupEventKind::MemberRemoved
        );
        let mut from_cy: Vec<(u64, String)> = h
            .iter()
            .filter(|m| m.sender_user == cy.user_id.get() && m.kind == v1::MessageKind::Text as i32)
            .map(|m| (m.seq, text(m)))
            .collect();
        from_cy.sort();
        accepted.sort();
        assert_eq!(
            from_cy, accepted,
            "every accepted send, nothing else, all before"
        );
        assert_eq!(
            accepted.len() as u64,
            removal_seq - 2,
            "cy's sends fill 2..removal"
        );
        // Live: Bo got the same, in order, once each.
        let mut live = Vec::new();
        while live.len() < h.len() {
            live.push(next_in(&cb, &conv).await);
        }
        assert_gap_free(&live);
        assert_eq!(
            live.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            h.iter().map(|m| m.message_id).collect::<Vec<_>>()
        );
        let cy_log = log(&cc, &conv).await;
        assert_eq!(cy_log.last().map(|m| m.seq), Some(removal_seq));
        nothing_past(&cc, &conv, removal_seq).await;
    })
    .await;
}

/// `n` concurrent sends from `c`; their seqs.
async fn burst(c: &Client, conv: &ConversationId, who: &str, n: usize) -> Vec<u64> {
    let bodies: Vec<String> = (0..n).map(|i| format!("{who} {i}")).collect();
    futures::future::join_all(bodies.iter().map(|b| c.send_text(conv, b)))
        .await
        .into_iter()
        .map(|r| r.expect("send").seq)
        .collect()
}

#[tokio::test]
async fn group_messages_fan_out_to_every_device_gap_free() {
    const PER_SENDER: usize = 17;
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let ann2 = server.login(&ann.username, "device-2").await;
        let bo2 = server.login(&bo.username, "device-2").await;
        // Every device hands out its own messages too: each sees the whole conversation.
        let all = ClientOptions {
            yield_own: true,
            ..opts()
        };
        let a1 = server.connect(&ann, all.clone()).await;
        let a2 = server.connect(&ann2, all.clone()).await;
        let b1 = server.connect(&bo, all.clone()).await;
        let b2 = server.connect(&bo2, all.clone()).await;
        let c1 = server.connect(&cy, all.clone()).await;
        let info = a1
            .create_group("burst", &[bo.user_id, cy.user_id])
            .await
            .expect("create");
        let conv = group_conv(&info);

        // 3 senders, each sending concurrently.
        let (sa, sb, sc) = tokio::join!(
            burst(&a1, &conv, "ann", PER_SENDER),
            burst(&b1, &conv, "bo", PER_SENDER),
            burst(&c1, &conv, "cy", PER_SENDER)
        );
        let mut seqs: Vec<u64> = sa.iter().chain(&sb).chain(&sc).copied().collect();
        seqs.sort_unstable();
        let total = 1 + 3 * PER_SENDER;
        assert_eq!(seqs, (2..=total as u64).collect::<Vec<_>>());

        let mut logs = Vec::new();
        for (name, c) in [
            ("a1", &a1),
            ("a2", &a2),
            ("b1", &b1),
            ("b2", &b2),
            ("c1", &c1),
        ] {
            let got = messages(c, total, Duration::from_secs(20)).await;
            assert!(
                got.iter().all(|m| m.conversation_id == conv.as_str()),
                "{name}"
            );
            assert_gap_free(&got);
            logs.push((name, got));
        }
        let reference: Vec<u64> = logs[0].1.iter().map(|m| m.message_id).collect();
        for (name, got) in &logs {
            let mids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
            assert_eq!(mids, reference, "{name} saw a different conversation");
        }
        // Ann's other device got what her first device sent, as sent by that device.
        let from_a1: Vec<&v1::Message> = logs[1]
            .1
            .iter()
            .filter(|m| m.sender_device == ann.device_id.get())
            .collect();
        assert_eq!(from_a1.len(), PER_SENDER);
        assert!(from_a1.iter().all(|m| text(m).starts_with("ann ")));
        // Nothing twice: nothing more arrives.
        for (_, c) in [
            ("a1", &a1),
            ("a2", &a2),
            ("b1", &b1),
            ("b2", &b2),
            ("c1", &c1),
        ] {
            nothing_past(c, &conv, total as u64).await;
        }
        assert_gap_free(&log(&b2, &conv).await);
    })
    .await;
}

#[tokio::test]
async fn read_by_counts_the_members_who_could_read_the_message() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let dan = server.user("dan").await;
        let eve = server.user("eve").await;
        // No automatic Received: the test says who received what.
        let manual = ClientOptions {
            auto_ack: false,
            ..opts()
        };
        let ca = server.connect(&ann, manual.clone()).await;
        let cb = server.connect(&bo, manual.clone()).await;
        let cc = server.connect(&cy, manual.clone()).await;
        let cd = server.connect(&dan, manual.clone()).await;
        let ce = server.connect(&eve, manual.clone()).await;
        let info = ca
            .create_group("ticks", &[bo.user_id, cy.user_id, dan.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        let sent = ca
            .send_text(&conv, "did you read this?")
            .await
            .expect("send");
        assert_eq!(sent.seq, 2);

        let nobody = ca.read_by(&conv, Seq(2)).await.expect("read_by");
        assert_eq!((nobody.recipients, nobody.seq), (3, 2));
        assert_eq!(nobody.conversation_id, conv.as_str());
        assert!(nobody.read.is_empty() && nobody.delivered.is_empty());

        cb.read(&conv, Seq(2)).await.expect("read");
        cc.received(&conv, Seq(2)).await.expect("received");
        cc.read(&conv, Seq(2)).await.expect("read");
        cd.received(&conv, Seq(2)).await.expect("received");
        let expect_read = ids(&[&bo, &cy]);
        let expect_delivered = ids(&[&dan]);
        eventually(WAIT, "read by 2 of 3, delivered to 1", || async {
            let r = ca.read_by(&conv, Seq(2)).await.expect("read_by");
            sorted(r.read) == expect_read && sorted(r.delivered) == expect_delivered
        })
        .await;
        let r = ca.read_by(&conv, Seq(2)).await.expect("read_by");
        assert_eq!(r.recipients, 3, "read by 2 of 3");
        // Any member may ask; a non-member may not; a seq past the head is not found.
        let asked_by_bo = cb.read_by(&conv, Seq(2)).await.expect("read_by");
        assert_eq!(sorted(asked_by_bo.read), expect_read);
        // Membership is checked first: a non-member learns nothing, not the log's length.
        for seq in [2, 0, 99] {
            assert_eq!(
                ce.read_by(&conv, Seq(seq)).await.map_err(code).unwrap_err(),
                ErrorCode::Forbidden,
                "seq {seq}"
            );
        }
        for seq in [0, 99] {
            assert_eq!(
                ca.read_by(&conv, Seq(seq)).await.map_err(code).unwrap_err(),
                ErrorCode::NotFound,
                "seq {seq}"
            );
        }
        // Receipts of a group are not pushed to the sender.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Some(ev) = ca.try_recv() {
            assert!(
                !matches!(ev, Event::Receipt(ref r) if r.conversation_id == conv.as_str()),
                "{ev:?}"
            );
        }

        // Eve joins at 3: message 2 was never hers to read; message 4 is.
        assert_eq!(ok(&ca, add(g, &[&eve])).await.seq, 3);
        assert_eq!(
            ca.read_by(&conv, Seq(2)).await.expect("read_by").recipients,
            3
        );
        let later = cb.send_text(&conv, "and this one?").await.expect("send");
        assert_eq!(later.seq, 4);
        let r = cb.read_by(&conv, Seq(4)).await.expect("read_by");
        assert_eq!(
            r.recipients, 4,
            "ann, cy, dan, eve: everyone but the sender bo"
        );
        assert!(r.read.is_empty() && r.delivered.is_empty(), "{r:?}");
        ce.read(&conv, Seq(4)).await.expect("read");
        ca.received(&conv, Seq(4)).await.expect("received");
        let (er, ad) = (ids(&[&eve]), ids(&[&ann]));
        eventually(WAIT, "read by eve, delivered to ann", || async {
            let r = cb.read_by(&conv, Seq(4)).await.expect("read_by");
            sorted(r.read) == er && sorted(r.delivered) == ad
        })
        .await;
        // Eve's read of 4 covers what she could read, not 2 (before her join).
        let r = ca.read_by(&conv, Seq(2)).await.expect("read_by");
        assert_eq!((sorted(r.read), r.recipients), (expect_read, 3));
    })
    .await;
}

#[tokio::test]
async fn groups_work_over_the_json_subprotocol() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bo = server.user("bo").await;
        let cy = server.user("cy").await;
        let json = ClientOptions {
            format: WireFormat::Json,
            ..opts()
        };
        let ca = server.connect(&ann, json.clone()).await;
        let cb = server.connect(&bo, json.clone()).await;
        let cc = server.connect(&cy, json.clone()).await;

        let info = ca
            .create_group("json crew ✓", &[bo.user_id])
            .await
            .expect("create");
        let (g, conv) = (info.group_id, group_conv(&info));
        assert_eq!(role_in(&info, ann.user_id), Some(v1::GroupRole::Owner));
        let created = next_in(&cb, &conv).await;
        assert_eq!(created.kind, v1::MessageKind::System as i32);
        let ev = created.event.clone().expect("the event survives JSON");
        assert_eq!(
            (
                v1::GroupEventKind::try_from(ev.kind),
                ev.name.as_str(),
                ev.actor
            ),
            (
                Ok(v1::GroupEventKind::Created),
                "json crew ✓",
                ann.user_id.get()
            )
        );
        assert_eq!(
            ev.settings.expect("settings").add_members,
            v1::GroupPolicy::Admins as i32
        );

        let sent = cb.send_text(&conv, "hej").await.expect("send");
        let own_created = next_in(&ca, &conv).await;
        assert_eq!(event_kind(&own_created), v1::GroupEventKind::Created);
        let got = next_in(&ca, &conv).await;
        assert_eq!((got.seq, text(&got)), (sent.seq, "hej".to_owned()));

        let link = invite_code(&ca, g).await;
        let joined = ok(&cc, join(&link)).await;
        assert_eq!(joined.seq, 3);
        let m = next_in(&ca, &conv).await;
        assert_eq!(event_kind(&m), v1::GroupEventKind::JoinedByInvite);
        assert_eq!(
            refused(&cc, remove(g, &bo, false)).await,
            ErrorCode::Forbidden
        );
        let welcome = ca.send_text(&conv, "welcome cy").await.expect("send");
        assert_eq!(welcome.seq, 4);
        let joined_msg = next_in(&cc, &conv).await;
        assert_eq!(joined_msg.seq, 3, "cy starts at the join");
        let m = next_in(&cc, &conv).await;
        assert_eq!((m.seq, text(&m)), (4, "welcome cy".to_owned()));
        cc.read(&conv, Seq(4)).await.expect("read");
        eventually(WAIT, "read by cy over JSON", || async {
            let r = ca.read_by(&conv, Seq(4)).await.expect("read_by");
            r.recipients == 2 && r.read.contains(&cy.user_id.get())
        })
        .await;

        // A raw JSON frame: 64-bit ids as strings, proto field names.
        let (mut raw, _) =
            Connection::connect(&server.ws_url(), &bo.access_token, WireFormat::Json)
                .await
                .expect("connects");
        raw.send_raw(WsMessage::Text(
            format!(r#"{{"id":"31","group":{{"get":{{"group_id":"{g}"}}}}}}"#).into(),
        ))
        .await
        .expect("write");
        let f = raw.recv_reply(WAIT).await.expect("a reply");
        assert_eq!(f.id, 31);
        match f.body {
            Some(SBody::GroupResult(r)) => {
                let got = r.group.expect("the group");
                assert_eq!((got.group_id, got.name.as_str()), (g, "json crew ✓"));
                assert_eq!(got.members.len(), 3);
            }
            other => panic!("expected a GroupResult, got {other:?}"),
        }
        raw.send_raw(WsMessage::Text(
            format!(r#"{{"id":"32","group":{{"join":{{"code":"{g}x-nope"}}}}}}"#).into(),
        ))
        .await
        .expect("write");
        let f = raw.recv_reply(WAIT).await.expect("a reply");
        match f.body {
            Some(SBody::Error(e)) => assert_eq!(e.code, ErrorCode::InvalidArgument as i32),
            other => panic!("expected an Error, got {other:?}"),
        }
    })
    .await;
}

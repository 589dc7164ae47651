//! Groups end to end through the real binary: create, fan-out to every member device,
//! system messages in order with the chat, removal cutting a member off at a seq,
//! sync and history limited to what a member may read.
//!
//! The tests read as scenarios over a small vocabulary, defined first: [`people`] (users
//! with a connected device each), a [`Group`] (its operations, to run through [`ok`] or
//! [`refused`], and what its members see arrive) and shared assertions.

mod common;

use std::{
    ops::Deref,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ErrorCode::{Banned, Forbidden, GroupFull, InvalidArgument, NotFound};
use common::*;
use natter_client::{
    Client, ClientOptions, Connection, ConversationId, ErrorCode, Event, Seq, Session, UserId,
    WireFormat,
    tungstenite::Message as WsMessage,
    v1::{self, server_frame::Body as SBody},
};
use v1::{GroupEventKind as Kind, GroupPolicy as Policy, GroupRole as Role, group_request::Op};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// A scenario and its cast.

/// Runs `body` on a fresh server, failing it if it takes longer than 60 s.
async fn scenario(body: impl AsyncFnOnce(&Server)) {
    scenario_with(&[], 60, body).await;
}

/// Like [`scenario`], on a server started with `env`, bounded to `secs`.
async fn scenario_with(env: &[(&str, &str)], secs: u64, body: impl AsyncFnOnce(&Server)) {
    let server = Server::start_with(env).await;
    bounded(secs, body(&server)).await;
}

/// A registered user with one connected device; derefs to that device's client.
struct Person {
    session: Session,
    client: Client,
}

impl Deref for Person {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Person {
    /// Logs in and connects another device of this user.
    async fn second_device(&self, server: &Server, opts: ClientOptions) -> Client {
        let session = server.login(&self.session.username, "device-2").await;
        server.connect(&session, opts).await
    }
}

/// Anyone with a user id: a [`Person`], or a [`Session`] with no device connected.
trait Who {
    fn id(&self) -> UserId;

    fn uid(&self) -> u64 {
        self.id().get()
    }
}

impl Who for Session {
    fn id(&self) -> UserId {
        self.user_id
    }
}

impl Who for Person {
    fn id(&self) -> UserId {
        self.session.user_id
    }
}

/// Registers a user and connects one device with [`opts`].
async fn person(server: &Server, name: &str) -> Person {
    person_with(server, name, opts()).await
}

/// Like [`person`], the device connected with `opts`.
async fn person_with(server: &Server, name: &str, opts: ClientOptions) -> Person {
    let session = server.user(name).await;
    let client = server.connect(&session, opts).await;
    Person { session, client }
}

/// Users registered in the order named, one device each connected with [`opts`].
async fn people<const N: usize>(server: &Server, names: [&str; N]) -> [Person; N] {
    people_with(server, names, opts()).await
}

/// Like [`people`], the devices connected with `opts`.
async fn people_with<const N: usize>(
    server: &Server,
    names: [&str; N],
    opts: ClientOptions,
) -> [Person; N] {
    let mut cast = Vec::with_capacity(N);
    for name in names {
        cast.push(person_with(server, name, opts.clone()).await);
    }
    cast.try_into()
        .unwrap_or_else(|_| unreachable!("a person a name"))
}

/// Users registered in the order named, no device connected.
async fn users<const N: usize>(server: &Server, names: [&str; N]) -> [Session; N] {
    let mut out = Vec::with_capacity(N);
    for name in names {
        out.push(server.user(name).await);
    }
    out.try_into()
        .unwrap_or_else(|_| unreachable!("a session a name"))
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// The user ids of `users`, sorted.
fn ids(users: &[&dyn Who]) -> Vec<u64> {
    sorted(users.iter().map(|u| u.uid()).collect())
}

// ---------------------------------------------------------------------------------
// A group: its operations and what its members see.

/// A group as its creator got it back, with its id and conversation.
struct Group {
    info: v1::GroupInfo,
    id: u64,
    conv: ConversationId,
}

impl Group {
    fn of(info: v1::GroupInfo) -> Group {
        let conv = info
            .conversation_id
            .parse()
            .expect("a valid conversation id");
        Group {
            id: info.group_id,
            conv,
            info,
        }
    }

    /// `owner` creates a group named `name` with `members`.
    async fn create(owner: &Client, name: &str, members: &[&dyn Who]) -> Group {
        let members: Vec<UserId> = members.iter().map(|m| m.id()).collect();
        Group::of(owner.create_group(name, &members).await.expect("create"))
    }

    // The operations, to run with `ok` (must succeed) or `refused` (must fail).

    fn get(&self) -> Op {
        Op::Get(v1::GroupGet { group_id: self.id })
    }

    fn add(&self, users: &[&dyn Who]) -> Op {
        Op::AddMembers(v1::GroupAddMembers {
            group_id: self.id,
            users: users.iter().map(|u| u.uid()).collect(),
        })
    }

    fn remove(&self, who: &dyn Who) -> Op {
        self.removal(who, false)
    }

    fn ban(&self, who: &dyn Who) -> Op {
        self.removal(who, true)
    }

    fn removal(&self, who: &dyn Who, ban: bool) -> Op {
        Op::RemoveMember(v1::GroupRemoveMember {
            group_id: self.id,
            user_id: who.uid(),
            ban,
        })
    }

    fn set_role(&self, who: &dyn Who, role: Role) -> Op {
        Op::SetRole(v1::GroupSetRole {
            group_id: self.id,
            user_id: who.uid(),
            role: role as i32,
        })
    }

    fn transfer_to(&self, who: &dyn Who) -> Op {
        Op::TransferOwnership(v1::GroupTransferOwnership {
            group_id: self.id,
            user_id: who.uid(),
        })
    }

    fn leave(&self) -> Op {
        Op::Leave(v1::GroupLeave { group_id: self.id })
    }

    fn delete(&self) -> Op {
        Op::Delete(v1::GroupDelete { group_id: self.id })
    }

    fn update(&self, update: v1::GroupUpdate) -> Op {
        Op::Update(v1::GroupUpdate {
            group_id: self.id,
            ..update
        })
    }

    fn settings(&self, settings: v1::GroupSettings) -> Op {
        self.update(v1::GroupUpdate {
            settings: Some(settings),
            ..Default::default()
        })
    }

    fn approval(&self, on: bool) -> Op {
        self.update(v1::GroupUpdate {
            join_approval: Some(on),
            ..Default::default()
        })
    }

    fn rename(&self, name: &str) -> Op {
        self.update(v1::GroupUpdate {
            name: Some(name.to_owned()),
            ..Default::default()
        })
    }

    fn invite(&self, ttl_s: u32) -> Op {
        Op::CreateInvite(v1::GroupCreateInvite {
            group_id: self.id,
            ttl_s,
        })
    }

    fn revoke(&self, code: &str) -> Op {
        Op::RevokeInvite(v1::GroupRevokeInvite {
            group_id: self.id,
            code: code.to_owned(),
        })
    }

    fn decide(&self, who: &dyn Who, approve: bool) -> Op {
        Op::DecideJoin(v1::GroupDecideJoin {
            group_id: self.id,
            user_id: who.uid(),
            approve,
        })
    }

    // Asking and sending.

    /// The group as `c` gets it.
    async fn seen_by(&self, c: &Client) -> v1::GroupInfo {
        ok(c, self.get())
            .await
            .group
            .expect("get answers with the group")
    }

    /// A new invite link, made by `c`.
    async fn invite_code(&self, c: &Client) -> String {
        ok(c, self.invite(0))
            .await
            .invite
            .expect("create_invite answers with the invite")
            .code
    }

    /// Sends a text that must be accepted; its seq.
    async fn send(&self, c: &Client, body: &str) -> u64 {
        c.send_text(&self.conv, body).await.expect("send").seq
    }

    /// Sends a text that must be refused; the error code.
    async fn send_refused(&self, c: &Client) -> ErrorCode {
        refusal(c.send_text(&self.conv, "should not be stored").await)
    }

    /// Who has received and read message `seq`, as `c` asks.
    async fn read_by(&self, c: &Client, seq: u64) -> v1::ReadByResult {
        c.read_by(&self.conv, Seq(seq)).await.expect("read_by")
    }

    /// Every message `c` may read, oldest first.
    async fn log(&self, c: &Client) -> Vec<v1::Message> {
        c.full_history(&self.conv, 200).await.expect("history")
    }

    /// The message at `seq` in `c`'s history.
    async fn message_at(&self, c: &Client, seq: u64) -> v1::Message {
        let page = c
            .history(&self.conv, Seq(seq + 1), 1)
            .await
            .expect("history");
        let m = page.messages.into_iter().next().expect("a message at seq");
        assert_eq!(m.seq, seq);
        m
    }

    /// The system message at `seq` in `c`'s history, which must be a `kind`; its event.
    async fn event_at(&self, c: &Client, seq: u64, kind: Kind) -> v1::GroupEvent {
        event_of(self.message_at(c, seq).await, seq, kind)
    }

    /// The seqs of this group a sync on `c` yields.
    async fn synced(&self, c: &Client) -> Vec<u64> {
        let got = sync_collect(c, Duration::from_secs(20)).await;
        let ours = got
            .iter()
            .filter(|m| m.conversation_id == self.conv.as_str());
        ours.map(|m| m.seq).collect()
    }

    // What arrives live.

    /// The next message of the group on `c`.
    async fn next(&self, c: &Client) -> v1::Message {
        let conv = self.conv.as_str();
        next_matching(c, WAIT, |ev| match ev {
            Event::Message(m) if m.conversation_id == conv => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// The next `n` messages of the group on `c`.
    async fn next_n(&self, c: &Client, n: usize) -> Vec<v1::Message> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            got.push(self.next(c).await);
        }
        got
    }

    /// The next message on `c` is the text `body` at `seq`.
    async fn next_text(&self, c: &Client, seq: u64, body: &str) {
        let m = self.next(c).await;
        assert_eq!((m.seq, text(&m)), (seq, body.to_owned()));
    }

    /// The next message on `c` is a `kind` system message at `seq`; its event.
    async fn next_event(&self, c: &Client, seq: u64, kind: Kind) -> v1::GroupEvent {
        event_of(self.next(c).await, seq, kind)
    }

    /// After a quiet period, no message of the group past `max_seq` is queued on `c`.
    async fn nothing_past(&self, c: &Client, max_seq: u64) {
        let conv = self.conv.as_str();
        after_quiet(c, |ev| {
            if let Event::Message(m) = ev {
                assert!(
                    m.conversation_id != conv || m.seq <= max_seq,
                    "got seq {} past {max_seq}: {m:?}",
                    m.seq
                );
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------
// Requests, answers and shared assertions.

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

fn join(code: &str) -> Op {
    Op::Join(v1::GroupJoin {
        code: code.to_owned(),
    })
}

/// The groups `c` is in.
async fn list(c: &Client) -> Vec<v1::GroupInfo> {
    ok(c, Op::List(v1::GroupList {})).await.groups
}

fn send_policy(p: Policy) -> v1::GroupSettings {
    v1::GroupSettings {
        send: p as i32,
        ..Default::default()
    }
}

fn edit_policy(p: Policy) -> v1::GroupSettings {
    v1::GroupSettings {
        edit_info: p as i32,
        ..Default::default()
    }
}

fn add_policy(p: Policy) -> v1::GroupSettings {
    v1::GroupSettings {
        add_members: p as i32,
        ..Default::default()
    }
}

/// Members of a group, in user id order.
fn member_ids(info: &v1::GroupInfo) -> Vec<u64> {
    info.members.iter().map(|m| m.user_id).collect()
}

/// `who`'s role in `info`, `None` if not a member.
fn role_in(info: &v1::GroupInfo, who: &dyn Who) -> Option<Role> {
    info.members
        .iter()
        .find(|m| m.user_id == who.uid())
        .map(|m| Role::try_from(m.role).expect("a known role"))
}

fn join_approval(info: &v1::GroupInfo) -> bool {
    info.settings.expect("settings").join_approval
}

/// The codes of the live invite links in `info`.
fn codes(info: &v1::GroupInfo) -> Vec<String> {
    info.invites.iter().map(|i| i.code.clone()).collect()
}

fn seqs(msgs: &[v1::Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

fn event_kind(m: &v1::Message) -> Kind {
    assert_eq!(
        m.kind,
        v1::MessageKind::System as i32,
        "not a system message: {m:?}"
    );
    let e = m
        .event
        .as_ref()
        .expect("a system message carries its event");
    Kind::try_from(e.kind).expect("a known event kind")
}

/// The event of `m`, which must be a `kind` system message at `seq`.
fn event_of(m: v1::Message, seq: u64, kind: Kind) -> v1::GroupEvent {
    assert_eq!((m.seq, event_kind(&m)), (seq, kind), "{m:?}");
    *m.event.expect("a system message carries its event")
}

/// `(seq, kind)` of every system message of a log.
fn system_events(msgs: &[v1::Message]) -> Vec<(u64, Kind)> {
    msgs.iter()
        .filter(|m| m.kind == v1::MessageKind::System as i32)
        .map(|m| (m.seq, event_kind(m)))
        .collect()
}

/// Waits a quiet period, then hands every event queued on `c` to `check`.
async fn after_quiet(c: &Client, mut check: impl FnMut(Event)) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(ev) = c.try_recv() {
        check(ev);
    }
}

/// Waits until `invite` has expired: time itself is the condition here.
async fn until_expired(invite: &v1::GroupInvite) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let wait_ms = invite.expires_at_ms.saturating_sub(now_ms) + 100;
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
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

/// Writes one raw JSON frame on `raw`; the reply.
async fn raw_json(raw: &mut Connection, frame: String) -> v1::ServerFrame {
    raw.send_raw(WsMessage::Text(frame.into()))
        .await
        .expect("write");
    raw.recv_reply(WAIT).await.expect("a reply")
}

// ---------------------------------------------------------------------------------
// Fan-out, removal and joining.

#[tokio::test]
async fn group_messages_reach_every_member_and_removal_cuts_off_at_a_seq() {
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        let g = Group::create(&ann, "trip", &[&bo, &cy]).await;
        assert_eq!(g.info.members.len(), 3);
        for c in [&ann, &bo, &cy] {
            g.next_event(c, 1, Kind::Created).await;
        }

        assert_eq!(g.send(&ann, "hello all").await, 2);
        for c in [&bo, &cy] {
            g.next_text(c, 2, "hello all").await;
        }

        // Ann removes Cy: Cy sees the removal, then nothing more.
        assert_eq!(ok(&ann, g.remove(&cy)).await.seq, 3);
        for c in [&ann, &bo, &cy] {
            g.next_event(c, 3, Kind::MemberRemoved).await;
        }
        assert_eq!(g.send(&bo, "cy is gone").await, 4);
        assert_eq!(g.next(&ann).await.seq, 4);
        assert_eq!(g.send_refused(&cy).await, Forbidden);

        // Cy's history stops at the removal; Bo's goes on.
        let cy_history = cy.history(&g.conv, Seq::ZERO, 50).await.expect("history");
        assert_eq!(seqs(&cy_history.messages), [1, 2, 3]);
        let bo_history = bo.history(&g.conv, Seq::ZERO, 50).await.expect("history");
        assert_eq!(bo_history.messages.len(), 4);

        // Nothing past the removal ever reached Cy live.
        g.nothing_past(&cy, 3).await;
    })
    .await;
}

#[tokio::test]
async fn a_new_member_syncs_from_their_join_and_never_sees_earlier_history() {
    scenario(async |server| {
        let ann = person(server, "ann").await;
        let dee = server.user("dee").await;
        let g = Group::create(&ann, "club", &[]).await;
        for i in 0..3 {
            assert_eq!(g.send(&ann, &format!("before {i}")).await, i + 2);
        }
        assert_eq!(ok(&ann, g.add(&[&dee])).await.seq, 5);
        assert_eq!(g.send(&ann, "welcome").await, 6);

        let cd = server.device(&dee).await;
        assert_eq!(
            g.synced(&cd).await,
            [5, 6],
            "from the join on, nothing before"
        );
        let history = cd.history(&g.conv, Seq::ZERO, 50).await.expect("history");
        assert_eq!(history.messages.first().map(|m| m.seq), Some(5));
        assert!(!history.more);
        let listed = list(&cd).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].group_id, g.id);
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Every operation and its permission failures, one scenario per test (each on its own
// server: the state matters).

#[tokio::test]
async fn create_validates_retries_and_get_and_list_show_the_group() {
    scenario(async |server| {
        let [ann, bo, cy, dan] = people(server, ["ann", "bo", "cy", "dan"]).await;
        let eve = server.user("eve").await;
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
            let c = refused(&ann, create("bad-name", bad_name, vec![])).await;
            assert_eq!(c, InvalidArgument, "name {bad_name:?}");
        }
        let no_id = create("", "no id", vec![]);
        assert_eq!(refused(&ann, no_id).await, InvalidArgument);
        let unknown_policy = Op::Create(v1::GroupCreate {
            create_id: "bad-policy".into(),
            name: "policy".into(),
            settings: Some(v1::GroupSettings {
                send: 7,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(refused(&ann, unknown_policy).await, InvalidArgument);
        let ghost = (1u64 << 52) + 12_345;
        let with_ghost = create("ghost", "ghosts", vec![bo.uid(), ghost]);
        assert_eq!(refused(&ann, with_ghost).await, NotFound);
        assert!(
            list(&ann).await.is_empty(),
            "refused creates leave no group behind"
        );

        // A create, then its retry: the same group, one CREATED message.
        let members = vec![bo.uid(), cy.uid(), ann.uid()];
        let first = ok(&ann, create("club-1", "club", members.clone())).await;
        assert_eq!(first.seq, 1);
        let g = Group::of(first.group.expect("the created group"));
        let info = &g.info;
        assert_eq!(info.name, "club");
        assert_eq!(info.description, "a test group");
        assert_eq!(info.created_by, ann.uid());
        assert!(!info.deleted);
        assert_eq!(info.max_members, 1024);
        assert_eq!(member_ids(info), ids(&[&ann, &bo, &cy]));
        assert_eq!(role_in(info, &ann), Some(Role::Owner));
        assert_eq!(role_in(info, &bo), Some(Role::Member));
        assert!(info.members.iter().all(|m| m.joined_seq == 1));
        let s = info.settings.expect("settings");
        assert_eq!(
            (s.send, s.edit_info, s.add_members, s.join_approval),
            (
                Policy::Everyone as i32,
                Policy::Everyone as i32,
                Policy::Admins as i32,
                false
            ),
            "the defaults are stored explicitly"
        );
        assert_eq!(g.conv.as_str(), format!("g.{}", g.id));

        let retry = ok(&ann, create("club-1", "club", members)).await;
        let again = retry.group.expect("the group");
        assert_eq!(again.group_id, g.id);
        assert_eq!(again.version, info.version);
        assert_eq!(retry.seq, 0, "a retried create writes no second CREATED");
        let listed = list(&ann).await;
        assert_eq!(listed.len(), 1, "one group, not two");
        assert_eq!(listed[0].group_id, g.id);
        // A list names groups and counts members; `get` gives the member list.
        assert_eq!(listed[0].member_count, 3);
        assert!(listed[0].members.is_empty());
        assert_eq!(g.seen_by(&ann).await.member_count, 3);
        let events = system_events(&g.log(&ann).await);
        assert_eq!(events, vec![(1, Kind::Created)]);
        let ev = g.next_event(&bo, 1, Kind::Created).await;
        assert_eq!(ev.name, "club");
        assert_eq!(ev.actor, ann.uid());
        assert_eq!(sorted(ev.users), ids(&[&bo, &cy]));

        // Get: members see it, others are refused, unknown groups are not found.
        assert_eq!(g.seen_by(&bo).await.name, "club");
        assert_eq!(refused(&dan, g.get()).await, Forbidden);
        let unknown = Op::Get(v1::GroupGet { group_id: 424_242 });
        assert_eq!(refused(&dan, unknown).await, NotFound);
        assert!(list(&dan).await.is_empty());
        assert_eq!(list(&bo).await.len(), 1);

        // Admins see invite links, pending joins and bans; members see them empty.
        ok(&ann, g.set_role(&cy, Role::Admin)).await;
        let link = g.invite_code(&ann).await;
        ok(&ann, g.ban(&eve)).await; // a ban of a non-member
        ok(&ann, g.approval(true)).await;
        assert!(ok(&dan, join(&link)).await.pending_approval);
        for admin in [&ann, &cy] {
            let seen = g.seen_by(admin).await;
            assert_eq!(codes(&seen), [link.as_str()]);
            assert_eq!(seen.invites[0].created_by, ann.uid());
            assert_eq!(seen.invites[0].expires_at_ms, 0);
            assert_eq!(seen.pending_joins, [dan.uid()]);
            assert_eq!(seen.banned, [eve.uid()]);
        }
        let member_view = g.seen_by(&bo).await;
        assert!(member_view.invites.is_empty());
        assert!(member_view.pending_joins.is_empty());
        assert!(member_view.banned.is_empty());
        let listed = list(&bo).await;
        assert!(listed[0].invites.is_empty() && listed[0].banned.is_empty());
        assert_eq!(member_view.members.len(), 3, "dan waits: not a member");
    })
    .await;
}

#[tokio::test]
async fn info_and_settings_changes_follow_the_policies_in_order() {
    scenario(async |server| {
        let [ann, bo] = people(server, ["ann", "bo"]).await;
        let g = Group::create(&ann, "before", &[&bo]).await;

        // By default members may change the info, not the settings.
        let renamed = ok(&bo, g.rename("after")).await;
        assert_eq!(renamed.seq, 2);
        assert_eq!(renamed.group.expect("group").name, "after");
        assert_eq!(
            refused(&bo, g.rename(" ")).await,
            InvalidArgument,
            "an empty name is refused on update too"
        );
        let admins_edit = edit_policy(Policy::Admins);
        assert_eq!(refused(&bo, g.settings(admins_edit)).await, Forbidden);
        assert_eq!(ok(&ann, g.settings(admins_edit)).await.seq, 3);
        assert_eq!(
            ok(&ann, g.settings(admins_edit)).await.seq,
            0,
            "the same settings again change nothing"
        );
        assert_eq!(refused(&bo, g.rename("mine")).await, Forbidden);
        let describe = g.update(v1::GroupUpdate {
            description: Some("now with a description".into()),
            avatar_media_id: Some("media-1".into()),
            ..Default::default()
        });
        assert_eq!(ok(&ann, describe).await.seq, 4);
        assert_eq!(ok(&ann, g.rename("after")).await.seq, 0, "unchanged name");

        // Both members see the changes in order, with what changed.
        for c in [&ann, &bo] {
            let got = g.next_n(c, 4).await;
            assert_eq!(
                system_events(&got),
                vec![
                    (1, Kind::Created),
                    (2, Kind::InfoChanged),
                    (3, Kind::SettingsChanged),
                    (4, Kind::InfoChanged),
                ]
            );
            let info_ev = got[1].event.clone().expect("event");
            assert_eq!((info_ev.name.as_str(), info_ev.actor), ("after", bo.uid()));
            let settings_ev = got[2].event.clone().expect("event");
            let s = settings_ev
                .settings
                .expect("SETTINGS_CHANGED carries the settings");
            assert_eq!(s.edit_info, Policy::Admins as i32);
            assert_eq!(s.send, Policy::Everyone as i32, "unset fields stay");
            assert_eq!(s.add_members, Policy::Admins as i32);
            let versions: Vec<u64> = got
                .iter()
                .map(|m| m.event.as_ref().unwrap().version)
                .collect();
            assert_eq!(versions, [1, 2, 3, 4]);
            let last = got[3].event.clone().expect("event");
            assert_eq!(last.description, "now with a description");
            assert_eq!(last.avatar_media_id, "media-1");
        }
        let now = g.seen_by(&bo).await;
        assert_eq!(
            (
                now.name.as_str(),
                now.description.as_str(),
                now.avatar_media_id.as_str()
            ),
            ("after", "now with a description", "media-1")
        );
        assert_eq!(now.version, 4);
        let edit_info = now.settings.expect("settings").edit_info;
        assert_eq!(edit_info, Policy::Admins as i32);
    })
    .await;
}

#[tokio::test]
async fn send_policy_admins_lets_only_admins_send() {
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        let g = Group::create(&ann, "announcements", &[&bo, &cy]).await;
        assert_eq!(ok(&ann, g.set_role(&cy, Role::Admin)).await.seq, 2);
        let admins_send = send_policy(Policy::Admins);
        assert_eq!(
            refused(&bo, g.settings(admins_send)).await,
            Forbidden,
            "a member may not change the settings"
        );
        assert_eq!(
            ok(&cy, g.settings(admins_send)).await.seq,
            3,
            "an admin may"
        );

        assert_eq!(g.send_refused(&bo).await, Forbidden);
        let by_admin = g.send(&cy, "from the admin").await;
        let by_owner = g.send(&ann, "from the owner").await;
        assert_eq!((by_admin, by_owner), (4, 5), "the refused send took no seq");
        let seen = g.next_n(&bo, 5).await;
        assert_eq!(seqs(&seen), [1, 2, 3, 4, 5]);
        assert_eq!(text(&seen[3]), "from the admin");
        assert_eq!(text(&seen[4]), "from the owner");

        // Under ADMINS, a promotion lets a member send at once, a dismissal stops it.
        assert_eq!(ok(&ann, g.set_role(&bo, Role::Admin)).await.seq, 6);
        assert_eq!(g.send(&bo, "promoted").await, 7);
        assert_eq!(ok(&ann, g.set_role(&bo, Role::Member)).await.seq, 8);
        assert_eq!(g.send_refused(&bo).await, Forbidden);

        // Back to everyone: the member's send goes through again.
        let everyone = send_policy(Policy::Everyone);
        assert_eq!(ok(&ann, g.settings(everyone)).await.seq, 9);
        assert_eq!(g.send(&bo, "me too").await, 10);

        // An admin may step down; the owner's role does not change by set_role.
        let stepped = ok(&cy, g.set_role(&cy, Role::Member)).await;
        assert_eq!(stepped.seq, 11);
        let now = stepped.group.expect("group");
        assert_eq!(role_in(&now, &cy), Some(Role::Member));
        let owner_down = g.set_role(&ann, Role::Member);
        assert_eq!(refused(&ann, owner_down).await, Forbidden);
    })
    .await;
}

#[tokio::test]
async fn adding_members_follows_the_add_policy_and_the_size_limit() {
    scenario_with(&[("NATTER_MAX_GROUP_MEMBERS", "5")], 60, async |server| {
        let [ann, bo] = people(server, ["ann", "bo"]).await;
        let [cy, dan, eve, fay, gus] = users(server, ["cy", "dan", "eve", "fay", "gus"]).await;

        let too_many = [bo.id(), cy.id(), dan.id(), eve.id(), fay.id()];
        let full = refusal(ann.create_group("too big", &too_many).await);
        assert_eq!(full, GroupFull, "6 members at creation");

        let g = Group::create(&ann, "five max", &[&bo]).await;
        assert_eq!(g.info.max_members, 5);

        // add_members defaults to ADMINS.
        assert_eq!(refused(&bo, g.add(&[&cy])).await, Forbidden);
        let added = ok(&ann, g.add(&[&cy])).await;
        assert_eq!(added.seq, 2);
        let ev = g.event_at(&ann, 2, Kind::MembersAdded).await;
        assert_eq!(ev.users, [cy.uid()]);
        let joined = added.group.expect("group");
        let new_member = joined.members.iter().find(|m| m.user_id == cy.uid());
        assert_eq!(new_member.unwrap().joined_seq, 2);

        // Adding an existing member changes nothing and writes nothing.
        let again = ok(&ann, g.add(&[&bo, &cy])).await;
        assert_eq!(again.seq, 0);
        assert_eq!(again.group.expect("group").version, joined.version);
        assert_eq!(g.log(&ann).await.len(), 2);
        let ghost = Op::AddMembers(v1::GroupAddMembers {
            group_id: g.id,
            users: vec![(1u64 << 52) + 99],
        });
        assert_eq!(refused(&ann, ghost).await, NotFound);

        // With add_members = EVERYONE a member may add.
        let everyone_adds = add_policy(Policy::Everyone);
        assert_eq!(ok(&ann, g.settings(everyone_adds)).await.seq, 3);
        assert_eq!(ok(&bo, g.add(&[&dan])).await.seq, 4);

        // 4 members: two more would make 6, so neither is added.
        assert_eq!(refused(&ann, g.add(&[&eve, &fay])).await, GroupFull);
        let now = g.seen_by(&ann).await;
        assert_eq!(
            member_ids(&now),
            ids(&[&ann, &bo, &cy, &dan]),
            "all or none"
        );
        assert_eq!(
            g.log(&ann).await.len(),
            4,
            "no system message for a refused add"
        );
        assert_eq!(ok(&ann, g.add(&[&eve])).await.seq, 5);
        assert_eq!(refused(&ann, g.add(&[&fay])).await, GroupFull);
        // Full also for links.
        let link = g.invite_code(&ann).await;
        let cg = server.device(&gus).await;
        assert_eq!(refused(&cg, join(&link)).await, GroupFull);
        let now = g.seen_by(&ann).await;
        assert_eq!(member_ids(&now), ids(&[&ann, &bo, &cy, &dan, &eve]));
        assert_eq!(g.log(&ann).await.len(), 5);
    })
    .await;
}

#[tokio::test]
async fn racing_joins_by_link_fill_the_group_exactly() {
    const MAX: usize = 5;
    const RACERS: usize = 8;
    scenario_with(&[("NATTER_MAX_GROUP_MEMBERS", "5")], 60, async |server| {
        let ann = person(server, "ann").await;
        let bo = server.user("bo").await;
        let g = Group::create(&ann, "room for 3", &[&bo]).await;
        let link = g.invite_code(&ann).await;

        let mut racers = Vec::new();
        for i in 0..RACERS {
            racers.push(person(server, &format!("racer{i}")).await);
        }
        let results = futures::future::join_all(racers.iter().map(|r| r.group(join(&link)))).await;
        let mut winners = Vec::new();
        let mut seqs = Vec::new();
        for (racer, r) in racers.iter().zip(results) {
            match r {
                Ok(r) => {
                    assert!(!r.pending_approval);
                    assert!(r.seq > 1, "a join writes a system message: {r:?}");
                    winners.push(racer.uid());
                    seqs.push(r.seq);
                }
                Err(e) => assert_eq!(code(e), GroupFull, "{}", racer.session.username),
            }
        }
        assert_eq!(winners.len(), MAX - 2, "exactly the free places are taken");
        seqs.sort_unstable();
        assert_eq!(seqs, [2, 3, 4], "one seq per join, no gaps");

        let now = g.seen_by(&ann).await;
        assert_eq!(now.members.len(), MAX);
        let mut expected = winners.clone();
        expected.extend([ann.uid(), bo.uid()]);
        assert_eq!(member_ids(&now), sorted(expected));
        let history = g.log(&ann).await;
        assert_gap_free(&history);
        let joined: Vec<u64> = history
            .iter()
            .filter(|m| m.kind == v1::MessageKind::System as i32)
            .filter(|m| event_kind(m) == Kind::JoinedByInvite)
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
    scenario(async |server| {
        let [ann, bo, cy, dan] = people(server, ["ann", "bo", "cy", "dan"]).await;
        let eve = server.user("eve").await;
        let g = Group::create(&ann, "ranks", &[&bo, &cy, &dan]).await;

        // Members may not remove, nor change roles.
        assert_eq!(refused(&bo, g.remove(&cy)).await, Forbidden);
        assert_eq!(refused(&bo, g.set_role(&cy, Role::Admin)).await, Forbidden);
        assert_eq!(refused(&bo, g.remove(&bo)).await, InvalidArgument);

        // The owner promotes bo; an admin may promote too.
        assert_eq!(ok(&ann, g.set_role(&bo, Role::Admin)).await.seq, 2);
        let ev = g.event_at(&cy, 2, Kind::RoleChanged).await;
        assert_eq!((ev.users, ev.role), (vec![bo.uid()], Role::Admin as i32));
        let again = ok(&ann, g.set_role(&bo, Role::Admin)).await;
        assert_eq!(again.seq, 0, "already");
        assert_eq!(ok(&bo, g.set_role(&cy, Role::Admin)).await.seq, 3);
        // Only the owner dismisses an admin; nobody changes the owner's role.
        assert_eq!(refused(&bo, g.set_role(&cy, Role::Member)).await, Forbidden);
        assert_eq!(
            refused(&bo, g.set_role(&ann, Role::Member)).await,
            Forbidden
        );
        let second_owner = g.set_role(&cy, Role::Owner);
        assert_eq!(refused(&ann, second_owner).await, InvalidArgument);
        let outsider = g.set_role(&eve, Role::Admin);
        assert_eq!(refused(&ann, outsider).await, NotFound, "not a member");

        // Admins remove members, not admins nor the owner.
        assert_eq!(refused(&bo, g.remove(&cy)).await, Forbidden);
        assert_eq!(refused(&bo, g.remove(&ann)).await, Forbidden);
        let removed = ok(&bo, g.remove(&dan)).await;
        assert_eq!(removed.seq, 4);
        assert_eq!(role_in(&removed.group.unwrap(), &dan), None);
        g.event_at(&dan, 4, Kind::MemberRemoved).await;
        assert_eq!(refused(&dan, g.remove(&bo)).await, Forbidden);
        assert_eq!(ok(&bo, g.remove(&dan)).await.seq, 0, "already gone");

        // The owner dismisses and removes admins.
        assert_eq!(ok(&ann, g.set_role(&cy, Role::Member)).await.seq, 5);
        let ev = g.event_at(&cy, 5, Kind::RoleChanged).await;
        assert_eq!(ev.role, Role::Member as i32);
        assert_eq!(ok(&ann, g.remove(&bo)).await.seq, 6);
        let now = g.seen_by(&ann).await;
        assert_eq!(member_ids(&now), ids(&[&ann, &cy]));
        assert_eq!(role_in(&now, &cy), Some(Role::Member));

        // Ownership: only the owner transfers it, to a member, and becomes an admin.
        assert_eq!(refused(&cy, g.transfer_to(&ann)).await, Forbidden);
        assert_eq!(ok(&ann, g.set_role(&cy, Role::Admin)).await.seq, 7);
        assert_eq!(
            refused(&cy, g.transfer_to(&ann)).await,
            Forbidden,
            "an admin is not the owner"
        );
        assert_eq!(refused(&ann, g.transfer_to(&eve)).await, NotFound);
        assert_eq!(ok(&ann, g.transfer_to(&cy)).await.seq, 8);
        let ev = g.event_at(&cy, 8, Kind::OwnerChanged).await;
        assert_eq!(ev.new_owner, cy.uid());
        let now = g.seen_by(&cy).await;
        assert_eq!(role_in(&now, &cy), Some(Role::Owner));
        assert_eq!(role_in(&now, &ann), Some(Role::Admin));
        // The new owner may now remove the former one, who may not remove them back.
        assert_eq!(refused(&ann, g.remove(&cy)).await, Forbidden);
        assert_eq!(ok(&cy, g.remove(&ann)).await.seq, 9);
        assert_eq!(refused(&ann, g.get()).await, Forbidden);
        let kinds: Vec<Kind> = system_events(&g.log(&cy).await)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::Created,
                Kind::RoleChanged,
                Kind::RoleChanged,
                Kind::MemberRemoved,
                Kind::RoleChanged,
                Kind::MemberRemoved,
                Kind::RoleChanged,
                Kind::OwnerChanged,
                Kind::MemberRemoved
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn leaving_hands_ownership_on_and_the_last_member_deletes_the_group() {
    scenario(async |server| {
        let [ann, bo, cy, dan, eve] = people(server, ["ann", "bo", "cy", "dan", "eve"]).await;
        let g = Group::create(&ann, "relay", &[&bo]).await;
        assert_eq!(ok(&ann, g.add(&[&dan])).await.seq, 2);
        assert_eq!(ok(&ann, g.set_role(&dan, Role::Admin)).await.seq, 3);
        assert_eq!(ok(&ann, g.add(&[&cy])).await.seq, 4);
        assert_eq!(ok(&ann, g.add(&[&eve])).await.seq, 5);
        let link = g.invite_code(&ann).await;

        // A member leaves.
        assert_eq!(ok(&eve, g.leave()).await.seq, 6);
        let ev = g.event_at(&bo, 6, Kind::MemberLeft).await;
        assert_eq!(ev.users, [eve.uid()]);
        assert_eq!(refused(&eve, g.get()).await, Forbidden);
        assert!(list(&eve).await.is_empty());
        assert_eq!(g.send_refused(&eve).await, Forbidden);
        let again = ok(&eve, g.leave()).await;
        assert_eq!(again.seq, 0, "leaving again (a retry) changes nothing");
        assert_eq!(g.log(&bo).await.len(), 6);

        // The owner leaves: the longest-standing admin (dan, not bo) takes over.
        assert_eq!(ok(&ann, g.leave()).await.seq, 7);
        let ev = g.event_at(&dan, 7, Kind::MemberLeft).await;
        assert_eq!(ev.new_owner, dan.uid());
        let now = g.seen_by(&bo).await;
        assert_eq!(role_in(&now, &dan), Some(Role::Owner));
        assert_eq!(role_in(&now, &ann), None);
        let owners = now.members.iter().filter(|m| m.role == Role::Owner as i32);
        assert_eq!(owners.count(), 1);

        // No admin left: the longest-standing member (bo, joined at 1) takes over.
        assert_eq!(ok(&dan, g.leave()).await.seq, 8);
        let now = g.seen_by(&cy).await;
        assert_eq!(role_in(&now, &bo), Some(Role::Owner));
        assert_eq!(role_in(&now, &cy), Some(Role::Member));
        assert_eq!(ok(&bo, g.leave()).await.seq, 9);
        assert_eq!(role_in(&g.seen_by(&cy).await, &cy), Some(Role::Owner));

        // The last member leaves: the group is deleted.
        let last = ok(&cy, g.leave()).await;
        assert_eq!(last.seq, 10);
        assert!(last.group.expect("group").deleted);
        assert_eq!(g.send_refused(&cy).await, NotFound);
        assert_eq!(refused(&eve, join(&link)).await, NotFound);
        let cy_log = g.log(&cy).await;
        assert_eq!(cy_log.first().map(|m| m.seq), Some(4), "from cy's join");
        assert_eq!(cy_log.last().map(|m| m.seq), Some(10), "to cy's leaving");
        assert_eq!(event_kind(cy_log.last().unwrap()), Kind::MemberLeft);
    })
    .await;
}

#[tokio::test]
async fn only_the_owner_deletes_and_history_stays_readable() {
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        let g = Group::create(&ann, "doomed", &[&bo, &cy]).await;
        assert_eq!(ok(&ann, g.set_role(&bo, Role::Admin)).await.seq, 2);
        assert_eq!(g.send(&bo, "one").await, 3);
        assert_eq!(g.send(&cy, "two").await, 4);
        let link = g.invite_code(&ann).await;

        assert_eq!(refused(&bo, g.delete()).await, Forbidden, "admin");
        assert_eq!(refused(&cy, g.delete()).await, Forbidden, "member");
        let deleted = ok(&ann, g.delete()).await;
        assert_eq!(deleted.seq, 5);
        assert!(deleted.group.expect("group").deleted);
        for c in [&ann, &bo, &cy] {
            // Every member hears of it, in order after the chat.
            let mut last = g.next(c).await;
            while last.seq < 5 {
                last = g.next(c).await;
            }
            assert_eq!(event_kind(&last), Kind::Deleted);
        }

        for c in [&ann, &bo, &cy] {
            assert_eq!(g.send_refused(c).await, NotFound);
        }
        let dan = person(server, "dan").await;
        assert_eq!(refused(&dan, join(&link)).await, NotFound);
        assert_eq!(refused(&ann, g.add(&[&dan])).await, NotFound);
        assert_eq!(refused(&ann, g.rename("again")).await, NotFound);
        assert_eq!(
            ok(&ann, g.delete()).await.seq,
            0,
            "deleting again (a retry)"
        );
        assert_eq!(refusal(ann.read_by(&g.conv, Seq(3)).await), NotFound);
        bo.read(&g.conv, Seq(4))
            .await
            .expect("the frame is written");
        let error = next_matching(&bo, WAIT, |ev| match ev {
            Event::Error { error, .. } => Some(error.clone()),
            _ => None,
        })
        .await;
        assert_eq!(error.code, NotFound as i32, "{error:?}");

        // Members keep their history, up to the deletion.
        for c in [&ann, &bo, &cy] {
            let h = g.log(c).await;
            assert_gap_free(&h);
            assert_eq!(h.len(), 5);
            assert_eq!(text(&h[2]), "one");
            assert_eq!(text(&h[3]), "two");
            assert_eq!(event_kind(&h[4]), Kind::Deleted);
        }
        let seen = g.seen_by(&cy).await;
        assert!(seen.deleted, "get shows the group as deleted");
        assert!(seen.invites.is_empty());
        assert_eq!(g.send_refused(&dan).await, NotFound);
        let listed = list(&cy).await;
        assert!(listed.len() == 1 && listed[0].deleted, "{listed:?}");

        // Members may leave a deleted group: it leaves their list, no system message.
        assert_eq!(ok(&bo, g.leave()).await.seq, 0);
        assert!(list(&bo).await.is_empty());
        assert_eq!(refused(&bo, g.get()).await, Forbidden);
        assert_eq!(ok(&bo, g.leave()).await.seq, 0, "and again");
        assert_eq!(
            g.log(&bo).await.len(),
            5,
            "still readable up to the deletion"
        );
        assert_eq!(
            g.log(&cy).await.len(),
            5,
            "nothing was written for the leave"
        );
    })
    .await;
}

#[tokio::test]
async fn invite_links_join_revoke_expire_and_malformed_codes() {
    scenario(async |server| {
        let [ann, bo, cy, dan] = people(server, ["ann", "bo", "cy", "dan"]).await;
        let g = Group::create(&ann, "linked", &[&bo]).await;

        assert_eq!(refused(&bo, g.invite(0)).await, Forbidden);
        assert_eq!(refused(&cy, g.invite(0)).await, Forbidden, "non-member");
        let made = ok(&ann, g.invite(0)).await;
        assert_eq!(made.seq, 0, "an invite is not a system message");
        let inv = made.invite.expect("the invite");
        let link = inv.code.clone();
        let prefix = format!("{}-", g.id);
        assert!(link.starts_with(&prefix), "{link}");
        assert!(link.len() > prefix.len() + 10, "a real secret: {link}");
        assert_eq!((inv.created_by, inv.expires_at_ms), (ann.uid(), 0));

        // Joining by link.
        let joined = ok(&cy, join(&link)).await;
        assert!(!joined.pending_approval);
        assert_eq!(joined.seq, 2);
        let jinfo = joined.group.expect("the group");
        assert_eq!(role_in(&jinfo, &cy), Some(Role::Member));
        assert!(jinfo.invites.is_empty(), "a member does not see the links");
        // The joiner starts at their join.
        let ev = g.next_event(&cy, 2, Kind::JoinedByInvite).await;
        assert_eq!((ev.users, ev.actor), (vec![cy.uid()], cy.uid()));
        let again = ok(&cy, join(&link)).await;
        assert_eq!(again.seq, 0, "joining again changes nothing");
        assert_eq!(g.send(&cy, "hi, I'm new").await, 3);

        // Revoked: the link no longer works.
        let other = g.invite_code(&ann).await;
        assert_ne!(other, link);
        assert_eq!(refused(&bo, g.revoke(&link)).await, Forbidden);
        let after = ok(&ann, g.revoke(&link)).await;
        assert_eq!(codes(&after.group.expect("group")), [other.as_str()]);
        assert_eq!(refused(&dan, join(&link)).await, NotFound);
        let twice = refused(&ann, g.revoke(&link)).await;
        assert_eq!(twice, NotFound, "revoked twice");

        // Expired.
        let short = ok(&ann, g.invite(1)).await.invite.expect("invite");
        assert_eq!(short.expires_at_ms, short.created_at_ms + 1000);
        until_expired(&short).await;
        assert_eq!(refused(&dan, join(&short.code)).await, NotFound);
        let live = codes(&g.seen_by(&ann).await);
        assert!(!live.contains(&link));
        assert_eq!(
            live,
            [other.as_str()],
            "neither the revoked nor the expired"
        );

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
            let c = refused(&dan, join(bad)).await;
            assert_eq!(c, InvalidArgument, "code {bad:?}");
        }
        let wrong_secret = join(&format!("{prefix}notthesecret"));
        assert_eq!(refused(&dan, wrong_secret).await, NotFound);
        assert_eq!(refused(&dan, join("4242-secret")).await, NotFound);
        let no_secret = refused(&dan, join(&prefix)).await;
        assert_eq!(no_secret, InvalidArgument, "an empty secret");

        // The other link still works; nobody got in by a dead one.
        assert_eq!(ok(&dan, join(&other)).await.seq, 4);
        let h = g.log(&ann).await;
        assert_gap_free(&h);
        assert_eq!(
            system_events(&h),
            vec![
                (1, Kind::Created),
                (2, Kind::JoinedByInvite),
                (4, Kind::JoinedByInvite)
            ]
        );
    })
    .await;
}

/// `GroupInfo.invites` is documented as the *live* invite links: an expired link (which
/// a join already refuses with NOT_FOUND) must not be listed to admins any more.
#[tokio::test]
async fn expired_invite_links_are_no_longer_listed_as_live() {
    scenario_with(&[], 30, async |server| {
        let [ann, dan] = people(server, ["ann", "dan"]).await;
        let g = Group::create(&ann, "fleeting", &[]).await;
        let lasting = g.invite_code(&ann).await;
        let short = ok(&ann, g.invite(1)).await.invite.expect("invite");
        let listed = codes(&g.seen_by(&ann).await);
        assert_eq!(listed, [lasting.as_str(), short.code.as_str()], "both live");
        until_expired(&short).await;
        let expired = refused(&dan, join(&short.code)).await;
        assert_eq!(expired, NotFound, "expired");
        assert_eq!(
            codes(&g.seen_by(&ann).await),
            [lasting],
            "an expired link is not a live invite link"
        );
    })
    .await;
}

#[tokio::test]
async fn a_banned_user_cannot_rejoin_by_link_until_an_admin_adds_them() {
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        let g = Group::create(&ann, "strict", &[&bo, &cy]).await;
        let link = g.invite_code(&ann).await;

        // Removed without a ban: back by link.
        assert_eq!(ok(&ann, g.remove(&bo)).await.seq, 2);
        assert_eq!(ok(&bo, join(&link)).await.seq, 3);

        // Removed with a ban: the link refuses them.
        let banned = ok(&ann, g.ban(&cy)).await;
        assert_eq!(banned.seq, 4);
        let seen = banned.group.expect("group");
        assert_eq!(seen.banned, [cy.uid()]);
        assert_eq!(role_in(&seen, &cy), None);
        assert_eq!(refused(&cy, join(&link)).await, Banned);
        assert_eq!(refused(&cy, join(&link)).await, Banned, "still");
        assert_eq!(g.send_refused(&cy).await, Forbidden);
        let member_view = g.seen_by(&bo).await;
        assert!(member_view.banned.is_empty(), "members do not see bans");

        // An admin adding them lifts the ban.
        let added = ok(&ann, g.add(&[&cy])).await;
        assert_eq!(added.seq, 5);
        let seen = added.group.expect("group");
        assert!(seen.banned.is_empty());
        assert_eq!(role_in(&seen, &cy), Some(Role::Member));
        assert_eq!(g.send(&cy, "back").await, 6);
        assert_eq!(ok(&cy, g.leave()).await.seq, 7);
        assert_eq!(ok(&cy, join(&link)).await.seq, 8, "no ban any more");
    })
    .await;
}

#[tokio::test]
async fn join_approval_makes_joins_wait_for_an_admin() {
    scenario(async |server| {
        let [ann, bo, cy, dan] = people(server, ["ann", "bo", "cy", "dan"]).await;
        let g = Group::create(&ann, "by approval", &[&bo]).await;
        assert_eq!(refused(&bo, g.approval(true)).await, Forbidden);
        // `settings.join_approval` says nothing in an update (a bool cannot say
        // "unchanged"): only the separate `join_approval` field turns approval on.
        let ignored = g.settings(v1::GroupSettings {
            join_approval: true,
            ..Default::default()
        });
        assert_eq!(ok(&ann, ignored).await.seq, 0);
        assert!(!join_approval(&g.seen_by(&ann).await));
        let on = ok(&ann, g.approval(true)).await;
        assert_eq!(on.seq, 2);
        assert!(join_approval(&on.group.expect("group")));
        let ev = g.event_at(&ann, 2, Kind::SettingsChanged).await;
        assert!(ev.settings.expect("settings").join_approval);
        // Changing a policy leaves approval on.
        let admins_edit = edit_policy(Policy::Admins);
        assert_eq!(ok(&ann, g.settings(admins_edit)).await.seq, 3);
        assert!(join_approval(&g.seen_by(&ann).await));
        let link = g.invite_code(&ann).await;

        // A join waits: not a member yet.
        let waiting = ok(&cy, join(&link)).await;
        assert!(waiting.pending_approval);
        assert_eq!(waiting.seq, 0, "a request to join writes no system message");
        let shown = waiting.group.expect("the group, as a non-member sees it");
        assert_eq!(shown.name, "by approval");
        assert!(shown.members.is_empty(), "not who is in it: {shown:?}");
        assert!(shown.pending_joins.is_empty());
        // The admin hears of the request (the plain member does not).
        let notice = next_matching(&ann, WAIT, |ev| match ev {
            Event::JoinRequested(j) => Some(j.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            (
                notice.group_id,
                notice.user_id,
                notice.conversation_id.as_str()
            ),
            (g.id, cy.uid(), g.conv.as_str())
        );
        assert!(ok(&cy, join(&link)).await.pending_approval, "asking again");
        assert_eq!(g.send_refused(&cy).await, Forbidden);
        assert_eq!(refused(&cy, g.get()).await, Forbidden);
        let history = cy.history(&g.conv, Seq::ZERO, 10).await;
        assert_eq!(refusal(history), Forbidden);
        assert_eq!(g.seen_by(&ann).await.pending_joins, [cy.uid()]);
        assert!(ok(&dan, join(&link)).await.pending_approval);
        assert_eq!(g.seen_by(&ann).await.pending_joins, ids(&[&cy, &dan]));
        let notice = next_matching(&ann, WAIT, |ev| match ev {
            Event::JoinRequested(j) => Some(j.user_id),
            _ => None,
        })
        .await;
        assert_eq!(
            notice,
            dan.uid(),
            "a repeated request is not announced again"
        );
        after_quiet(&bo, |ev| {
            assert!(
                !matches!(ev, Event::JoinRequested(_)),
                "only admins: {ev:?}"
            )
        })
        .await;

        // Only admins decide.
        assert_eq!(refused(&bo, g.decide(&cy, true)).await, Forbidden);
        assert_eq!(refused(&cy, g.decide(&cy, true)).await, Forbidden);
        let no_request = refused(&ann, g.decide(&bo, true)).await;
        assert_eq!(no_request, NotFound, "no request");
        assert_eq!(ok(&ann, g.decide(&cy, true)).await.seq, 4);
        // The approved member starts at their admission.
        let ev = g.next_event(&cy, 4, Kind::MembersAdded).await;
        assert_eq!(ev.users, [cy.uid()]);
        assert_eq!(role_in(&g.seen_by(&cy).await, &cy), Some(Role::Member));
        assert_eq!(g.send(&cy, "let in").await, 5);

        let declined = ok(&ann, g.decide(&dan, false)).await;
        assert_eq!(declined.seq, 0);
        let seen = declined.group.expect("group");
        assert!(seen.pending_joins.is_empty());
        assert_eq!(role_in(&seen, &dan), None);
        assert_eq!(g.send_refused(&dan).await, Forbidden);
        assert_eq!(refused(&dan, g.get()).await, Forbidden);
        let decided = refused(&ann, g.decide(&dan, true)).await;
        assert_eq!(decided, NotFound, "decided");
        assert_eq!(
            system_events(&g.log(&ann).await),
            vec![
                (1, Kind::Created),
                (2, Kind::SettingsChanged),
                (3, Kind::SettingsChanged),
                (4, Kind::MembersAdded)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn non_members_and_removed_members_read_only_what_was_theirs() {
    scenario(async |server| {
        let [ann, bo, eve] = people(server, ["ann", "bo", "eve"]).await;
        let g = Group::create(&ann, "private", &[&bo]).await;
        assert_eq!(g.send(&ann, "secret 1").await, 2);
        assert_eq!(g.send(&bo, "secret 2").await, 3);
        assert_eq!(ok(&ann, g.remove(&bo)).await.seq, 4);
        assert_eq!(g.send(&ann, "after bo").await, 5);
        assert_eq!(ok(&ann, g.rename("renamed")).await.seq, 6);

        // Eve was never in: history, sync, read_by, send all give her nothing.
        let conv = &g.conv;
        assert_eq!(refusal(eve.history(conv, Seq::ZERO, 50).await), Forbidden);
        assert_eq!(refusal(eve.history(conv, Seq(3), 50).await), Forbidden);
        assert_eq!(refusal(eve.read_by(conv, Seq(2)).await), Forbidden);
        assert_eq!(g.send_refused(&eve).await, Forbidden);
        let done = eve.sync().await.expect("sync");
        assert!(
            done.heads
                .iter()
                .all(|h| h.conversation_id != conv.as_str()),
            "the group is not among eve's conversations: {done:?}"
        );
        let eve2 = eve.second_device(server, opts()).await;
        let synced = g.synced(&eve2).await;
        assert!(synced.is_empty(), "{synced:?}");
        g.nothing_past(&eve, 0).await;

        // Bo reads up to his removal, not after: history, a fresh device's sync.
        let h = g.log(&bo).await;
        assert_eq!(seqs(&h), [1, 2, 3, 4]);
        assert_eq!(event_kind(&h[3]), Kind::MemberRemoved);
        let page = bo.history(conv, Seq(3), 50).await.expect("history");
        assert_eq!(seqs(&page.messages), [1, 2]);
        assert!(!page.more);
        let page = bo.history(conv, Seq(6), 50).await.expect("history");
        let last = page.messages.last().map(|m| m.seq);
        assert_eq!(last, Some(4), "capped at the removal");
        let bo2 = bo.second_device(server, opts()).await;
        assert_eq!(g.synced(&bo2).await, [1, 2, 3, 4]);
        assert_eq!(
            refusal(bo.read_by(conv, Seq(3)).await),
            Forbidden,
            "a former member asks nothing of the group"
        );
        assert_eq!(refused(&bo, g.get()).await, Forbidden);
        assert!(list(&bo).await.is_empty());
        g.nothing_past(&bo, 4).await;
        g.nothing_past(&bo2, 4).await;
    })
    .await;
}

#[tokio::test]
async fn sends_racing_a_removal_land_before_it_or_are_refused_never_both() {
    const WORKERS: usize = 8;
    const MAX_PER_WORKER: usize = 2000;
    scenario(async |server| {
        let [ann, bo, cy] = people(server, ["ann", "bo", "cy"]).await;
        let g = Group::create(&ann, "race", &[&bo, &cy]).await;
        let sent = AtomicUsize::new(0);

        // Cy sends from several tasks at once until refused, then a few more; Ann
        // removes Cy once some of them went through.
        let worker = |w: usize| {
            let (cy, conv, sent) = (&cy, &g.conv, &sent);
            async move {
                let mut out: Vec<Result<(u64, String), ErrorCode>> = Vec::new();
                let mut refusals = 0;
                for i in 0..MAX_PER_WORKER {
                    let body = format!("w{w}-{i}");
                    let r = cy.send_text(conv, &body).await;
                    sent.fetch_add(1, Relaxed);
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
                sent.load(Relaxed) >= 4 * WORKERS
            })
            .await;
            ok(&ann, g.remove(&cy)).await.seq
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
                    Err(c) => assert_eq!(*c, Forbidden, "worker {w} send {i}"),
                }
            }
        }
        assert!(!accepted.is_empty());
        // After the removal answered, a send is refused.
        assert_eq!(g.send_refused(&cy).await, Forbidden);
        let last = g.send(&ann, "cy is out").await;
        assert_eq!(last, removal_seq + 1, "refused sends took no seq");

        // Bo's log is gap-free and holds exactly the accepted sends before the removal.
        let h = g.log(&bo).await;
        assert_gap_free(&h);
        assert_eq!(h.len() as u64, last);
        assert_eq!(
            event_kind(&h[removal_seq as usize - 1]),
            Kind::MemberRemoved
        );
        let mut from_cy: Vec<(u64, String)> = h
            .iter()
            .filter(|m| m.sender_user == cy.uid() && m.kind == v1::MessageKind::Text as i32)
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
        let live = g.next_n(&bo, h.len()).await;
        assert_gap_free(&live);
        assert_eq!(
            live.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            h.iter().map(|m| m.message_id).collect::<Vec<_>>()
        );
        let cy_log = g.log(&cy).await;
        assert_eq!(cy_log.last().map(|m| m.seq), Some(removal_seq));
        g.nothing_past(&cy, removal_seq).await;
    })
    .await;
}

#[tokio::test]
async fn group_messages_fan_out_to_every_device_gap_free() {
    const PER_SENDER: usize = 17;
    scenario(async |server| {
        // Every device hands out its own messages too: each sees the whole conversation.
        let all = ClientOptions {
            yield_own: true,
            ..opts()
        };
        let [ann, bo, cy] = people_with(server, ["ann", "bo", "cy"], all.clone()).await;
        let a2 = ann.second_device(server, all.clone()).await;
        let b2 = bo.second_device(server, all).await;
        let g = Group::create(&ann, "burst", &[&bo, &cy]).await;
        let devices = [
            ("a1", &ann.client),
            ("a2", &a2),
            ("b1", &bo.client),
            ("b2", &b2),
            ("c1", &cy.client),
        ];

        // 3 senders, each sending concurrently.
        let (sa, sb, sc) = tokio::join!(
            burst(&ann, &g.conv, "ann", PER_SENDER),
            burst(&bo, &g.conv, "bo", PER_SENDER),
            burst(&cy, &g.conv, "cy", PER_SENDER)
        );
        let mut seqs: Vec<u64> = sa.iter().chain(&sb).chain(&sc).copied().collect();
        seqs.sort_unstable();
        let total = 1 + 3 * PER_SENDER;
        assert_eq!(seqs, (2..=total as u64).collect::<Vec<_>>());

        let mut logs = Vec::new();
        for (name, c) in devices {
            let got = messages(c, total, Duration::from_secs(20)).await;
            assert!(
                got.iter().all(|m| m.conversation_id == g.conv.as_str()),
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
            .filter(|m| m.sender_device == ann.session.device_id.get())
            .collect();
        assert_eq!(from_a1.len(), PER_SENDER);
        assert!(from_a1.iter().all(|m| text(m).starts_with("ann ")));
        // Nothing twice: nothing more arrives.
        for (_, c) in devices {
            g.nothing_past(c, total as u64).await;
        }
        assert_gap_free(&g.log(&b2).await);
    })
    .await;
}

#[tokio::test]
async fn read_by_counts_the_members_who_could_read_the_message() {
    scenario(async |server| {
        // No automatic Received: the test says who received what.
        let manual = ClientOptions {
            auto_ack: false,
            ..opts()
        };
        let names = ["ann", "bo", "cy", "dan", "eve"];
        let [ann, bo, cy, dan, eve] = people_with(server, names, manual).await;
        let g = Group::create(&ann, "ticks", &[&bo, &cy, &dan]).await;
        let conv = &g.conv;
        assert_eq!(g.send(&ann, "did you read this?").await, 2);

        let nobody = g.read_by(&ann, 2).await;
        assert_eq!((nobody.recipients, nobody.seq), (3, 2));
        assert_eq!(nobody.conversation_id, conv.as_str());
        assert!(nobody.read.is_empty() && nobody.delivered.is_empty());

        bo.read(conv, Seq(2)).await.expect("read");
        cy.received(conv, Seq(2)).await.expect("received");
        cy.read(conv, Seq(2)).await.expect("read");
        dan.received(conv, Seq(2)).await.expect("received");
        let expect_read = ids(&[&bo, &cy]);
        let expect_delivered = ids(&[&dan]);
        eventually(WAIT, "read by 2 of 3, delivered to 1", || async {
            let r = g.read_by(&ann, 2).await;
            sorted(r.read) == expect_read && sorted(r.delivered) == expect_delivered
        })
        .await;
        assert_eq!(g.read_by(&ann, 2).await.recipients, 3, "read by 2 of 3");
        // Any member may ask; a non-member may not; a seq past the head is not found.
        assert_eq!(sorted(g.read_by(&bo, 2).await.read), expect_read);
        // Membership is checked first: a non-member learns nothing, not the log's length.
        for seq in [2, 0, 99] {
            let r = eve.read_by(conv, Seq(seq)).await;
            assert_eq!(refusal(r), Forbidden, "seq {seq}");
        }
        for seq in [0, 99] {
            let r = ann.read_by(conv, Seq(seq)).await;
            assert_eq!(refusal(r), NotFound, "seq {seq}");
        }
        // Receipts of a group are not pushed to the sender.
        after_quiet(&ann, |ev| {
            assert!(
                !matches!(ev, Event::Receipt(ref r) if r.conversation_id == conv.as_str()),
                "{ev:?}"
            );
        })
        .await;

        // Eve joins at 3: message 2 was never hers to read; message 4 is.
        assert_eq!(ok(&ann, g.add(&[&eve])).await.seq, 3);
        assert_eq!(g.read_by(&ann, 2).await.recipients, 3);
        assert_eq!(g.send(&bo, "and this one?").await, 4);
        let r = g.read_by(&bo, 4).await;
        assert_eq!(
            r.recipients, 4,
            "ann, cy, dan, eve: everyone but the sender bo"
        );
        assert!(r.read.is_empty() && r.delivered.is_empty(), "{r:?}");
        eve.read(conv, Seq(4)).await.expect("read");
        ann.received(conv, Seq(4)).await.expect("received");
        let (er, ad) = (ids(&[&eve]), ids(&[&ann]));
        eventually(WAIT, "read by eve, delivered to ann", || async {
            let r = g.read_by(&bo, 4).await;
            sorted(r.read) == er && sorted(r.delivered) == ad
        })
        .await;
        // Eve's read of 4 covers what she could read, not 2 (before her join).
        let r = g.read_by(&ann, 2).await;
        assert_eq!((sorted(r.read), r.recipients), (expect_read, 3));
    })
    .await;
}

#[tokio::test]
async fn groups_work_over_the_json_subprotocol() {
    scenario(async |server| {
        let json = ClientOptions {
            format: WireFormat::Json,
            ..opts()
        };
        let [ann, bo, cy] = people_with(server, ["ann", "bo", "cy"], json).await;

        let g = Group::create(&ann, "json crew ✓", &[&bo]).await;
        assert_eq!(role_in(&g.info, &ann), Some(Role::Owner));
        // The event survives JSON.
        let ev = g.next_event(&bo, 1, Kind::Created).await;
        assert_eq!((ev.name.as_str(), ev.actor), ("json crew ✓", ann.uid()));
        let settings = ev.settings.expect("settings");
        assert_eq!(settings.add_members, Policy::Admins as i32);

        let sent = g.send(&bo, "hej").await;
        g.next_event(&ann, 1, Kind::Created).await;
        g.next_text(&ann, sent, "hej").await;

        let link = g.invite_code(&ann).await;
        assert_eq!(ok(&cy, join(&link)).await.seq, 3);
        g.next_event(&ann, 3, Kind::JoinedByInvite).await;
        assert_eq!(refused(&cy, g.remove(&bo)).await, Forbidden);
        assert_eq!(g.send(&ann, "welcome cy").await, 4);
        // Cy starts at the join.
        g.next_event(&cy, 3, Kind::JoinedByInvite).await;
        g.next_text(&cy, 4, "welcome cy").await;
        cy.read(&g.conv, Seq(4)).await.expect("read");
        eventually(WAIT, "read by cy over JSON", || async {
            let r = g.read_by(&ann, 4).await;
            r.recipients == 2 && r.read.contains(&cy.uid())
        })
        .await;

        // A raw JSON frame: 64-bit ids as strings, proto field names.
        let token = &bo.session.access_token;
        let (mut raw, _) = Connection::connect(&server.ws_url(), token, WireFormat::Json)
            .await
            .expect("connects");
        let id = g.id;
        let get = format!(r#"{{"id":"31","group":{{"get":{{"group_id":"{id}"}}}}}}"#);
        let f = raw_json(&mut raw, get).await;
        assert_eq!(f.id, 31);
        match f.body {
            Some(SBody::GroupResult(r)) => {
                let got = r.group.expect("the group");
                assert_eq!((got.group_id, got.name.as_str()), (id, "json crew ✓"));
                assert_eq!(got.members.len(), 3);
            }
            other => panic!("expected a GroupResult, got {other:?}"),
        }
        let bad = format!(r#"{{"id":"32","group":{{"join":{{"code":"{id}x-nope"}}}}}}"#);
        match raw_json(&mut raw, bad).await.body {
            Some(SBody::Error(e)) => assert_eq!(e.code, InvalidArgument as i32),
            other => panic!("expected an Error, got {other:?}"),
        }
    })
    .await;
}

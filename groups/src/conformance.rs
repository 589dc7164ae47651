//! The conformance suite of [`GroupStore`]: every implementation's tests run it. Each
//! check works on fresh random groups and users, so the stores handed in may share one
//! backing database (e.g. one ScyllaDB keyspace) and may hold data already. The functions
//! panic (assert) on a violation.
//!
//! ```ignore
//! conformance::run_all(|| my_store()).await;
//! conformance::durability_across_reopen(|| open_my_store_at(same_place)).await;
//! ```

use std::sync::Arc;

use natter_proto::{
    GroupId, UserId,
    bus::{GroupAccess, GroupRecord},
    v1::{
        GroupEvent, GroupEventKind, GroupInfo, GroupInvite, GroupMember, GroupPolicy, GroupRole,
        GroupSettings,
    },
};
use rand::Rng as _;

use crate::{GroupPage, GroupStore, MAX_LIST_GROUPS, StoreError};

/// Runs every check that needs no reopen, each on a store from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn GroupStore>) {
    unknown_group_loads_as_none(make()).await;
    create_then_load_round_trips(make()).await;
    create_twice_conflicts(make()).await;
    stale_previous_conflicts_and_changes_nothing(make()).await;
    version_must_follow_and_records_must_be_valid(make()).await;
    user_groups_follow_membership(make()).await;
    user_groups_are_ordered_by_group(make()).await;
    concurrent_saves_admit_one(make()).await;
    large_groups_save_and_load(make()).await;
    list_groups_pages_in_id_order(make()).await;
    list_groups_of_a_member(make()).await;
    list_groups_refuses_bad_limits(make()).await;
}

/// Below 2^53, like real group ids, so every store (and JSON) holds them exactly.
fn random_id() -> u64 {
    rand::rng().random_range(1..(1u64 << 53))
}

fn user() -> UserId {
    UserId(random_id())
}

fn group() -> GroupId {
    GroupId(random_id())
}

fn member(user: UserId, role: GroupRole, joined_seq: u64) -> GroupMember {
    GroupMember {
        user_id: user.get(),
        role: role as i32,
        joined_seq,
    }
}

fn former(user: UserId, joined_seq: u64, left_seq: u64) -> GroupAccess {
    GroupAccess {
        group_id: 0,
        joined_seq,
        left_seq,
        user_id: user.get(),
    }
}

/// Version 1 of `group`, created by `owner` (joined at seq 1) with `others` (joined at
/// seq 1 too), every other field set to something recognisable.
fn created(group: GroupId, owner: UserId, others: &[UserId]) -> GroupRecord {
    let mut members = vec![member(owner, GroupRole::Owner, 1)];
    members.extend(others.iter().map(|&u| member(u, GroupRole::Member, 1)));
    members.sort_by_key(|m| m.user_id);
    GroupRecord {
        info: Some(GroupInfo {
            group_id: group.get(),
            conversation_id: format!("g.{group}"),
            name: "Ünïcödé group ✓".into(),
            description: "a\nmulti-line\u{0}description".into(),
            avatar_media_id: "media-1".into(),
            settings: Some(GroupSettings {
                send: GroupPolicy::Admins as i32,
                edit_info: GroupPolicy::Everyone as i32,
                add_members: GroupPolicy::Admins as i32,
                join_approval: true,
            }),
            members,
            version: 1,
            created_by: owner.get(),
            created_at_ms: 1_700_000_000_000,
            deleted: false,
            max_members: 1024,
            member_count: 0,
            invites: vec![GroupInvite {
                code: format!("{group}-secret"),
                created_by: owner.get(),
                created_at_ms: 1_700_000_000_001,
                expires_at_ms: 1_800_000_000_000,
            }],
            pending_joins: vec![user().get()],
            banned: vec![user().get(), user().get()],
        }),
        former: Vec::new(),
        event_seq: 1,
        event: Some(GroupEvent {
            kind: GroupEventKind::Created as i32,
            actor: owner.get(),
            users: others.iter().map(|u| u.get()).collect(),
            name: "Ünïcödé group ✓".into(),
            version: 1,
            ..Default::default()
        }),
        create_id: "create-1".into(),
    }
}

fn info(record: &GroupRecord) -> &GroupInfo {
    record.info.as_ref().expect("test records have info")
}

fn info_mut(record: &mut GroupRecord) -> &mut GroupInfo {
    record.info.as_mut().expect("test records have info")
}

/// `record` one version later, the change's system message at `seq`, changed by `change`.
fn next(record: &GroupRecord, seq: u64, change: impl FnOnce(&mut GroupRecord)) -> GroupRecord {
    let mut r = record.clone();
    info_mut(&mut r).version += 1;
    r.event_seq = seq;
    let version = info(&r).version;
    if let Some(e) = r.event.as_mut() {
        e.version = version;
    }
    change(&mut r);
    r
}

fn add(r: &mut GroupRecord, user: UserId, seq: u64) {
    r.former.retain(|f| f.user_id != user.get());
    let members = &mut info_mut(r).members;
    members.push(member(user, GroupRole::Member, seq));
    members.sort_by_key(|m| m.user_id);
}

/// Moves `user` from the members to the former members.
fn remove(r: &mut GroupRecord, user: UserId, seq: u64) {
    let members = &mut info_mut(r).members;
    let at = members
        .iter()
        .position(|m| m.user_id == user.get())
        .expect("removing a member");
    let gone = members.remove(at);
    r.former.push(former(user, gone.joined_seq, seq));
}

/// Drops `user` from the record entirely (members and former members).
fn forget(r: &mut GroupRecord, user: UserId) {
    info_mut(r).members.retain(|m| m.user_id != user.get());
    r.former.retain(|f| f.user_id != user.get());
}

fn access(group: GroupId, user: UserId, joined_seq: u64, left_seq: u64) -> GroupAccess {
    GroupAccess {
        group_id: group.get(),
        joined_seq,
        left_seq,
        user_id: user.get(),
    }
}

async fn load(store: &Arc<dyn GroupStore>, g: GroupId) -> Option<GroupRecord> {
    store.load(g).await.expect("load")
}

async fn groups_of(store: &Arc<dyn GroupStore>, u: UserId) -> Vec<GroupAccess> {
    store.user_groups(u).await.expect("user_groups")
}

/// The group ids of a page, and whether more follow.
async fn listed(
    store: &Arc<dyn GroupStore>,
    after: u64,
    limit: usize,
    member: Option<UserId>,
) -> (Vec<u64>, bool) {
    let page = store
        .list_groups(after, limit, member)
        .await
        .expect("list_groups");
    let ids = page.groups.iter().map(|r| info(r).group_id).collect();
    (ids, page.more)
}

/// Five groups with consecutive ids above a random base (nobody else's random ids fall
/// among them), created by `owner`: `[base + 1, ..., base + 5]`. `m` is a member of the
/// first, third (deleted) and fifth, and a former member of the second.
async fn five_groups(
    store: &Arc<dyn GroupStore>,
    owner: UserId,
    m: UserId,
) -> (u64, Vec<GroupRecord>) {
    let base = random_id();
    let mut stored = Vec::new();
    for i in 1..=5u64 {
        let g = GroupId(base + i);
        let others: &[UserId] = if matches!(i, 1 | 2 | 3 | 5) {
            &[m]
        } else {
            &[]
        };
        let v1 = created(g, owner, others);
        store.save(&v1, None).await.expect("create");
        let last = match i {
            2 => {
                let v2 = next(&v1, 2, |r| remove(r, m, 2));
                store.save(&v2, Some(&v1)).await.expect("remove m");
                v2
            }
            3 => {
                let v2 = next(&v1, 2, |r| info_mut(r).deleted = true);
                store.save(&v2, Some(&v1)).await.expect("delete");
                v2
            }
            _ => v1,
        };
        stored.push(last);
    }
    (base, stored)
}

/// Every group is listed in id order, page after page, deleted ones too, each with its
/// stored record; `more` says whether another page follows.
pub async fn list_groups_pages_in_id_order(store: Arc<dyn GroupStore>) {
    let (owner, m) = (user(), user());
    let (base, stored) = five_groups(&store, owner, m).await;
    let ids: Vec<u64> = (1..=5).map(|i| base + i).collect();

    let whole = store.list_groups(base, 5, None).await.expect("list");
    assert_eq!(whole.groups, stored, "the stored records, in id order");
    assert!(info(&whole.groups[2]).deleted, "a deleted group is listed");

    assert_eq!(
        listed(&store, base, 2, None).await,
        (ids[..2].to_vec(), true)
    );
    assert_eq!(
        listed(&store, ids[1], 2, None).await,
        (ids[2..4].to_vec(), true)
    );
    // Other groups may follow (the store may be shared): the page starts right after.
    let (last, _) = listed(&store, ids[3], 3, None).await;
    assert_eq!(last.first(), Some(&ids[4]));
    assert!(
        last.windows(2).all(|w| w[0] < w[1]),
        "in id order: {last:?}"
    );
    // Nothing is above the largest id.
    assert_eq!(
        listed(&store, u64::MAX, 10, None).await,
        (Vec::new(), false)
    );
}

/// With a member, only the groups the user is a current member of are listed (a
/// deleted group they are still in too, the one they left not), in id order.
pub async fn list_groups_of_a_member(store: Arc<dyn GroupStore>) {
    let (owner, m) = (user(), user());
    let (base, stored) = five_groups(&store, owner, m).await;
    let id = |i: u64| base + i;

    let mine = store.list_groups(0, 500, Some(m)).await.expect("list");
    assert_eq!(
        mine,
        GroupPage {
            groups: vec![stored[0].clone(), stored[2].clone(), stored[4].clone()],
            more: false,
        }
    );
    assert_eq!(listed(&store, 0, 1, Some(m)).await, (vec![id(1)], true));
    assert_eq!(listed(&store, id(1), 1, Some(m)).await, (vec![id(3)], true));
    assert_eq!(
        listed(&store, id(3), 1, Some(m)).await,
        (vec![id(5)], false)
    );
    assert_eq!(listed(&store, id(5), 1, Some(m)).await, (Vec::new(), false));
    assert_eq!(
        listed(&store, 0, 500, Some(owner)).await,
        ((1..=5).map(id).collect(), false)
    );
    assert_eq!(
        listed(&store, 0, 500, Some(user())).await,
        (Vec::new(), false)
    );

    // A removal takes the group off the member's list at once.
    let v = next(&stored[4], 3, |r| remove(r, m, 3));
    store.save(&v, Some(&stored[4])).await.expect("remove m");
    assert_eq!(
        listed(&store, 0, 500, Some(m)).await,
        (vec![id(1), id(3)], false)
    );
}

/// A limit of 0, or above [`MAX_LIST_GROUPS`], is refused.
pub async fn list_groups_refuses_bad_limits(store: Arc<dyn GroupStore>) {
    for limit in [0, MAX_LIST_GROUPS + 1] {
        for member in [None, Some(user())] {
            assert!(
                matches!(
                    store.list_groups(0, limit, member).await,
                    Err(StoreError::Invalid(_))
                ),
                "limit {limit}"
            );
        }
    }
    assert!(store.list_groups(0, MAX_LIST_GROUPS, None).await.is_ok());
}

fn is_conflict(r: &Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

fn is_invalid(r: &Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::Invalid(_)))
}

/// A group never created loads as `None`; a user in no group has no groups.
pub async fn unknown_group_loads_as_none(store: Arc<dyn GroupStore>) {
    assert_eq!(load(&store, group()).await, None);
    assert_eq!(groups_of(&store, user()).await, Vec::new());
}

/// What was saved loads back exactly, every field included, at each version.
pub async fn create_then_load_round_trips(store: Arc<dyn GroupStore>) {
    let (g, owner, other) = (group(), user(), user());
    let v1 = created(g, owner, &[other]);
    store.save(&v1, None).await.expect("create");
    assert_eq!(load(&store, g).await, Some(v1.clone()));

    let v2 = next(&v1, 2, |r| {
        remove(r, other, 2);
        info_mut(r).name = "renamed".into();
        info_mut(r).deleted = true;
        r.event = Some(GroupEvent {
            kind: GroupEventKind::MemberRemoved as i32,
            actor: owner.get(),
            users: vec![other.get()],
            version: 2,
            ..Default::default()
        });
    });
    store.save(&v2, Some(&v1)).await.expect("update");
    assert_eq!(load(&store, g).await, Some(v2));
}

/// A second create of the same group is a conflict and changes nothing.
pub async fn create_twice_conflicts(store: Arc<dyn GroupStore>) {
    let (g, owner) = (group(), user());
    let first = created(g, owner, &[]);
    store.save(&first, None).await.expect("create");
    let intruder = user();
    let mut second = created(g, intruder, &[]);
    second.create_id = "create-2".into();
    assert!(is_conflict(&store.save(&second, None).await));
    assert_eq!(load(&store, g).await, Some(first));
    assert_eq!(groups_of(&store, intruder).await, Vec::new());
    assert_eq!(groups_of(&store, owner).await, vec![access(g, owner, 1, 0)]);
}

/// A save whose `previous` is not what is stored is a conflict and changes nothing:
/// neither the record nor the index.
pub async fn stale_previous_conflicts_and_changes_nothing(store: Arc<dyn GroupStore>) {
    let (g, owner, a, b) = (group(), user(), user(), user());
    let v1 = created(g, owner, &[a]);
    store.save(&v1, None).await.expect("create");
    let v2 = next(&v1, 2, |r| add(r, b, 2));
    store.save(&v2, Some(&v1)).await.expect("v2");

    // Someone who still holds v1 tries to make their own v2.
    let late = next(&v1, 2, |r| {
        remove(r, a, 2);
        info_mut(r).name = "late".into();
    });
    assert!(is_conflict(&store.save(&late, Some(&v1)).await));
    assert_eq!(load(&store, g).await, Some(v2.clone()));
    assert_eq!(groups_of(&store, a).await, vec![access(g, a, 1, 0)]);
    assert_eq!(groups_of(&store, b).await, vec![access(g, b, 2, 0)]);

    // An update of a group that does not exist is a conflict too, and stores nothing.
    let ghost = group();
    let ghost_v1 = created(ghost, owner, &[]);
    let ghost_v2 = next(&ghost_v1, 2, |r| add(r, b, 2));
    assert!(is_conflict(&store.save(&ghost_v2, Some(&ghost_v1)).await));
    assert_eq!(load(&store, ghost).await, None);
    assert_eq!(groups_of(&store, b).await, vec![access(g, b, 2, 0)]);
}

/// The version must be the previous one + 1 (1 for a create), and a record must be
/// well-formed; otherwise `Invalid` and nothing is stored.
pub async fn version_must_follow_and_records_must_be_valid(store: Arc<dyn GroupStore>) {
    let (g, owner, a) = (group(), user(), user());
    let v1 = created(g, owner, &[]);

    let mut at_two = v1.clone();
    info_mut(&mut at_two).version = 2;
    assert!(is_invalid(&store.save(&at_two, None).await));
    let mut at_zero = v1.clone();
    info_mut(&mut at_zero).version = 0;
    assert!(is_invalid(&store.save(&at_zero, None).await));
    let mut no_info = v1.clone();
    no_info.info = None;
    assert!(is_invalid(&store.save(&no_info, None).await));
    let mut group_zero = v1.clone();
    info_mut(&mut group_zero).group_id = 0;
    assert!(is_invalid(&store.save(&group_zero, None).await));
    assert_eq!(load(&store, g).await, None);

    store.save(&v1, None).await.expect("create");
    let skip = next(&next(&v1, 2, |_| {}), 3, |r| add(r, a, 3));
    assert!(is_invalid(&store.save(&skip, Some(&v1)).await));
    let mut same = next(&v1, 2, |r| add(r, a, 2));
    info_mut(&mut same).version = 1;
    assert!(is_invalid(&store.save(&same, Some(&v1)).await));

    // A previous record of another group, a user listed twice, a user id 0, a former
    // member who never left.
    let other = created(group(), owner, &[]);
    let v2 = next(&v1, 2, |r| add(r, a, 2));
    assert!(is_invalid(&store.save(&v2, Some(&other)).await));
    let twice = next(&v1, 2, |r| {
        add(r, a, 2);
        r.former.push(former(a, 1, 2));
    });
    assert!(is_invalid(&store.save(&twice, Some(&v1)).await));
    let zero = next(&v1, 2, |r| {
        info_mut(r)
            .members
            .insert(0, member(UserId(0), GroupRole::Member, 2));
    });
    assert!(is_invalid(&store.save(&zero, Some(&v1)).await));
    let never_left = next(&v1, 2, |r| r.former.push(former(a, 1, 0)));
    assert!(is_invalid(&store.save(&never_left, Some(&v1)).await));

    assert_eq!(load(&store, g).await, Some(v1.clone()));
    assert_eq!(groups_of(&store, a).await, Vec::new());
    store.save(&v2, Some(&v1)).await.expect("a valid v2");
    assert_eq!(load(&store, g).await, Some(v2));
}

/// `user_groups` follows every kind of membership change: adds, removals (with what the
/// user may still read), re-joins, users dropped entirely, and several groups per user.
pub async fn user_groups_follow_membership(store: Arc<dyn GroupStore>) {
    let (owner, a, b, c) = (user(), user(), user(), user());
    let (mut g1, mut g2) = (group(), group());
    if g2 < g1 {
        std::mem::swap(&mut g1, &mut g2);
    }
    let v1 = created(g1, owner, &[a]);
    store.save(&v1, None).await.expect("create g1");
    assert_eq!(
        groups_of(&store, owner).await,
        vec![access(g1, owner, 1, 0)]
    );
    assert_eq!(groups_of(&store, a).await, vec![access(g1, a, 1, 0)]);
    assert_eq!(groups_of(&store, b).await, Vec::new());

    // b and c join at seq 5.
    let v2 = next(&v1, 5, |r| {
        add(r, b, 5);
        add(r, c, 5);
    });
    store.save(&v2, Some(&v1)).await.expect("add b and c");
    assert_eq!(groups_of(&store, b).await, vec![access(g1, b, 5, 0)]);
    assert_eq!(groups_of(&store, c).await, vec![access(g1, c, 5, 0)]);

    // a is removed at seq 9: a may read 1..=9.
    let v3 = next(&v2, 9, |r| remove(r, a, 9));
    store.save(&v3, Some(&v2)).await.expect("remove a");
    assert_eq!(groups_of(&store, a).await, vec![access(g1, a, 1, 9)]);
    assert_eq!(groups_of(&store, b).await, vec![access(g1, b, 5, 0)]);

    // a is in a second group too; its entries come in group order.
    let w1 = created(g2, b, &[a]);
    store.save(&w1, None).await.expect("create g2");
    assert_eq!(
        groups_of(&store, a).await,
        vec![access(g1, a, 1, 9), access(g2, a, 1, 0)]
    );
    assert_eq!(
        groups_of(&store, b).await,
        vec![access(g1, b, 5, 0), access(g2, b, 1, 0)]
    );

    // a re-joins g1 at seq 12: a new joined_seq, a member again.
    let v4 = next(&v3, 12, |r| add(r, a, 12));
    store.save(&v4, Some(&v3)).await.expect("a re-joins");
    assert_eq!(
        groups_of(&store, a).await,
        vec![access(g1, a, 12, 0), access(g2, a, 1, 0)]
    );

    // c leaves, then is dropped from the record entirely; b is dropped as a member.
    let v5 = next(&v4, 15, |r| remove(r, c, 15));
    store.save(&v5, Some(&v4)).await.expect("c leaves");
    assert_eq!(groups_of(&store, c).await, vec![access(g1, c, 5, 15)]);
    let v6 = next(&v5, 16, |r| {
        forget(r, c);
        forget(r, b);
    });
    store.save(&v6, Some(&v5)).await.expect("c and b dropped");
    assert_eq!(groups_of(&store, c).await, Vec::new());
    assert_eq!(groups_of(&store, b).await, vec![access(g2, b, 1, 0)]);

    // A save that changes nothing about members leaves the index as it is.
    let v7 = next(&v6, 17, |r| info_mut(r).description = "quiet".into());
    store.save(&v7, Some(&v6)).await.expect("rename");
    assert_eq!(
        groups_of(&store, a).await,
        vec![access(g1, a, 12, 0), access(g2, a, 1, 0)]
    );
    assert_eq!(
        groups_of(&store, owner).await,
        vec![access(g1, owner, 1, 0)]
    );

    // c comes back to g1 after having been dropped.
    let v8 = next(&v7, 20, |r| add(r, c, 20));
    store.save(&v8, Some(&v7)).await.expect("c is back");
    assert_eq!(groups_of(&store, c).await, vec![access(g1, c, 20, 0)]);
    assert_eq!(load(&store, g1).await, Some(v8));
}

/// A user's groups come back ordered by group id, whatever the order they were created.
pub async fn user_groups_are_ordered_by_group(store: Arc<dyn GroupStore>) {
    let u = user();
    let groups: Vec<GroupId> = (0..12).map(|_| group()).collect();
    for (i, &g) in groups.iter().enumerate() {
        let seq = i as u64 + 1;
        let mut r = created(g, user(), &[]);
        add(&mut r, u, seq);
        if i % 3 == 0 {
            remove(&mut r, u, seq + 100);
        }
        store.save(&r, None).await.expect("create");
    }
    let mut expected: Vec<GroupAccess> = groups
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let seq = i as u64 + 1;
            access(g, u, seq, if i % 3 == 0 { seq + 100 } else { 0 })
        })
        .collect();
    expected.sort_by_key(|a| a.group_id);
    assert_eq!(groups_of(&store, u).await, expected);
}

/// Of several saves racing from the same `previous`, exactly one is stored; the others
/// get `Conflict`, and the index is the winner's.
pub async fn concurrent_saves_admit_one(store: Arc<dyn GroupStore>) {
    const RACERS: usize = 8;
    let (g, owner) = (group(), user());
    let v1 = created(g, owner, &[]);
    store.save(&v1, None).await.expect("create");
    let candidates: Vec<(UserId, GroupRecord)> = (0..RACERS)
        .map(|_| {
            let joiner = user();
            (joiner, next(&v1, 2, |r| add(r, joiner, 2)))
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (_, record)) in candidates.iter().enumerate() {
        let (store, record, previous) = (store.clone(), record.clone(), v1.clone());
        tasks.spawn(async move { (i, store.save(&record, Some(&previous)).await) });
    }
    let mut winners = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, result) = done.expect("save task");
        match result {
            Ok(()) => winners.push(i),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("racer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer wins: {winners:?}");
    let won = winners[0];
    assert_eq!(load(&store, g).await.as_ref(), Some(&candidates[won].1));
    for (i, (joiner, _)) in candidates.iter().enumerate() {
        let expected = if i == won {
            vec![access(g, *joiner, 2, 0)]
        } else {
            Vec::new()
        };
        assert_eq!(groups_of(&store, *joiner).await, expected, "racer {i}");
    }

    // Creates race the same way.
    let g = group();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let store = store.clone();
        let mut record = created(g, user(), &[]);
        record.create_id = format!("racer-{i}");
        tasks.spawn(async move { (store.save(&record, None).await, record) });
    }
    let mut created_ok = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.expect("create task") {
            (Ok(()), record) => created_ok.push(record),
            (Err(StoreError::Conflict(_)), _) => {}
            (Err(e), _) => panic!("create: {e}"),
        }
    }
    assert_eq!(created_ok.len(), 1, "exactly one create wins");
    assert_eq!(load(&store, g).await.as_ref(), created_ok.first());
}

/// A group of 1,024 members (and as many former members) saves and loads, and its index
/// follows a change to it.
pub async fn large_groups_save_and_load(store: Arc<dyn GroupStore>) {
    const MEMBERS: usize = 1024;
    let (g, owner) = (group(), user());
    let others: Vec<UserId> = (1..MEMBERS).map(|_| user()).collect();
    let mut v1 = created(g, owner, &others);
    v1.former = (0..MEMBERS)
        .map(|i| former(user(), 1, 2 + i as u64))
        .collect();
    store.save(&v1, None).await.expect("create a large group");
    assert_eq!(load(&store, g).await, Some(v1.clone()));
    assert_eq!(info(&v1).members.len(), MEMBERS);

    let (leaving, staying) = (others[0], others[MEMBERS / 2]);
    let v2 = next(&v1, 3000, |r| remove(r, leaving, 3000));
    store
        .save(&v2, Some(&v1))
        .await
        .expect("update a large group");
    assert_eq!(load(&store, g).await, Some(v2));
    assert_eq!(
        groups_of(&store, leaving).await,
        vec![access(g, leaving, 1, 3000)]
    );
    assert_eq!(
        groups_of(&store, staying).await,
        vec![access(g, staying, 1, 0)]
    );
    let last_former = UserId(v1.former[MEMBERS - 1].user_id);
    assert_eq!(
        groups_of(&store, last_former).await,
        vec![access(g, last_former, 1, 1 + MEMBERS as u64)]
    );
}

/// What was acknowledged survives closing and reopening. Every call of `open` must open
/// the same storage; the suite drops each store before opening the next.
pub async fn durability_across_reopen(open: impl Fn() -> Arc<dyn GroupStore>) {
    let (g, owner, a) = (group(), user(), user());
    let v1 = created(g, owner, &[a]);
    let v2 = next(&v1, 4, |r| remove(r, a, 4));
    {
        let store = open();
        store.save(&v1, None).await.expect("create");
        store.save(&v2, Some(&v1)).await.expect("remove a");
    }
    let store = open();
    assert_eq!(load(&store, g).await, Some(v2.clone()));
    assert_eq!(groups_of(&store, a).await, vec![access(g, a, 1, 4)]);
    assert_eq!(groups_of(&store, owner).await, vec![access(g, owner, 1, 0)]);
    // The stored version is still the one saves are checked against.
    assert!(is_conflict(&store.save(&v2, Some(&v1)).await));
    let v3 = next(&v2, 5, |r| add(r, a, 5));
    store.save(&v3, Some(&v2)).await.expect("save after reopen");
    assert_eq!(groups_of(&store, a).await, vec![access(g, a, 5, 0)]);
}

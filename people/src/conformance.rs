//! The conformance suite of [`PeopleStore`]: every implementation's tests run it. Each
//! check works on fresh random users and status ids (in [1, 2^53)), so the stores handed
//! in may share one backing database (e.g. one ScyllaDB keyspace) and may hold data
//! already. The functions panic (assert) on a violation.
//!
//! ```ignore
//! conformance::run_all(|| my_store()).await;
//! conformance::concurrent_adds_never_exceed_the_limit(my_store()).await; // exact stores
//! conformance::durability_across_reopen(|| open_my_store_at(same_place)).await;
//! ```

use std::sync::Arc;

use natter_proto::UserId;
use rand::Rng as _;

use crate::{
    Added, Audience, ContactRecord, PeopleStore, Privacy, ProfileRecord, StatusRecord, View,
};

/// A time the checks start from (2023-11-14), so that times "before" it are valid too.
const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

/// Runs every check that needs no reopen, each on a store from `make`. Checks that
/// concurrent adds overshoot a limit by at most the number of racing calls; stores that
/// keep limits exactly (redb) should also pass [`concurrent_adds_never_exceed_the_limit`].
pub async fn run_all(make: impl Fn() -> Arc<dyn PeopleStore>) {
    profiles_round_trip(make()).await;
    privacy_defaults_and_round_trips(make()).await;
    contacts_add_update_remove_in_order(make()).await;
    contacts_respect_the_limit(make()).await;
    blocks_add_remove_in_order(make()).await;
    blocks_respect_the_limit(make()).await;
    posting_is_idempotent_by_post_id(make()).await;
    concurrent_posts_of_one_post_id_store_one(make()).await;
    statuses_are_live_only_and_oldest_first(make()).await;
    statuses_are_counted_since(make()).await;
    statuses_are_deleted_only_by_their_owner_with_their_views(make()).await;
    the_first_view_wins_and_views_are_in_view_order(make()).await;
    prune_removes_expired_statuses_and_their_views(make()).await;
    concurrent_adds_overshoot_by_at_most_the_racers(make()).await;
    delete_user_removes_what_the_user_owns(make()).await;
}

/// Below 2^53, like real ids, so every store (and JSON) holds them exactly.
fn random_id() -> u64 {
    rand::rng().random_range(1..(1u64 << 53))
}

fn user() -> UserId {
    UserId(random_id())
}

/// `n` distinct fresh users, ascending.
fn users(n: usize) -> Vec<UserId> {
    let mut out: Vec<UserId> = Vec::with_capacity(n);
    while out.len() < n {
        let u = user();
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out.sort();
    out
}

fn contact(user: UserId, name: &str, added_at_ms: u64) -> ContactRecord {
    ContactRecord {
        user,
        name: name.into(),
        added_at_ms,
    }
}

/// A status of `user` posted at `created` that lives for `lives` ms.
fn status(user: UserId, post_id: &str, created: u64, lives: u64) -> StatusRecord {
    StatusRecord {
        id: random_id(),
        user,
        post_id: post_id.into(),
        text: format!("Ünïcödé status {post_id} ✓\n"),
        media_id: format!("media-{post_id}"),
        created_at_ms: created,
        expires_at_ms: created + lives,
    }
}

fn view(viewer: UserId, at: u64) -> View {
    View {
        viewer,
        viewed_at_ms: at,
    }
}

async fn contact_ids(store: &Arc<dyn PeopleStore>, owner: UserId) -> Vec<UserId> {
    store
        .contacts(owner)
        .await
        .expect("contacts")
        .into_iter()
        .map(|c| c.user)
        .collect()
}

/// Profiles round-trip exactly (any text), `None` before the first put, and a put
/// replaces the whole profile.
pub async fn profiles_round_trip(store: Arc<dyn PeopleStore>) {
    let (a, b) = (user(), user());
    assert_eq!(store.profile(a).await.expect("profile"), None);
    let first = ProfileRecord {
        display_name: "Ünïcödé ✓ \"name\"".into(),
        about: "multi\nline\u{0}about".into(),
        avatar_media_id: "media-1".into(),
        updated_at_ms: T0,
    };
    store.put_profile(a, &first).await.expect("put");
    assert_eq!(store.profile(a).await.expect("profile"), Some(first));
    let second = ProfileRecord {
        display_name: "Renamed".into(),
        updated_at_ms: T0 + 1,
        ..Default::default()
    };
    store.put_profile(a, &second).await.expect("replace");
    assert_eq!(store.profile(a).await.expect("profile"), Some(second));
    assert_eq!(store.profile(b).await.expect("other profile"), None);
    // An empty profile is a profile, not `None`.
    store
        .put_profile(b, &ProfileRecord::default())
        .await
        .expect("put empty");
    assert_eq!(
        store.profile(b).await.expect("profile"),
        Some(ProfileRecord::default())
    );
}

/// Privacy settings default to [`Privacy::default`] and round-trip every audience in
/// every item.
pub async fn privacy_defaults_and_round_trips(store: Arc<dyn PeopleStore>) {
    let (a, b) = (user(), user());
    assert_eq!(store.privacy(a).await.expect("privacy"), Privacy::default());
    let settings = [
        Privacy {
            last_seen: Audience::Nobody,
            online: Audience::Contacts,
            profile_photo: Audience::Everyone,
            about: Audience::Nobody,
        },
        Privacy {
            last_seen: Audience::Contacts,
            online: Audience::Nobody,
            profile_photo: Audience::Contacts,
            about: Audience::Everyone,
        },
        Privacy::default(),
    ];
    for p in settings {
        store.put_privacy(a, p).await.expect("put privacy");
        assert_eq!(store.privacy(a).await.expect("privacy"), p);
    }
    assert_eq!(store.privacy(b).await.expect("privacy"), Privacy::default());
}

/// Contacts: added, renamed (still once, the first time kept), listed ascending by user
/// id, checked, removed (true once).
pub async fn contacts_add_update_remove_in_order(store: Arc<dyn PeopleStore>) {
    let owner = user();
    let others = users(3);
    assert_eq!(store.contacts(owner).await.expect("contacts"), Vec::new());
    // Added in descending order, listed ascending.
    for (i, &u) in others.iter().rev().enumerate() {
        let added = store
            .add_contact(owner, &contact(u, &format!("name {i}"), T0 + i as u64), 10)
            .await
            .expect("add");
        assert_eq!(added, Added::Added);
    }
    assert_eq!(contact_ids(&store, owner).await, others);
    let renamed = store
        .add_contact(owner, &contact(others[0], "Ünïcödé ✓", T0 + DAY), 10)
        .await
        .expect("rename");
    assert_eq!(renamed, Added::Updated);
    let list = store.contacts(owner).await.expect("contacts");
    assert_eq!(list.len(), 3);
    // others[0] was added last (i = 2), at T0 + 2.
    assert_eq!(list[0], contact(others[0], "Ünïcödé ✓", T0 + 2));
    assert_eq!(list[2], contact(others[2], "name 0", T0));
    // An empty name is a name.
    store
        .add_contact(owner, &contact(others[1], "", T0 + DAY), 10)
        .await
        .expect("rename to empty");
    assert_eq!(
        store.contacts(owner).await.expect("contacts")[1],
        contact(others[1], "", T0 + 1)
    );

    assert!(
        store
            .is_contact(owner, others[1])
            .await
            .expect("is_contact")
    );
    // Contacts are one-way.
    assert!(
        !store
            .is_contact(others[1], owner)
            .await
            .expect("is_contact")
    );
    assert!(
        !store
            .is_contact(owner, user())
            .await
            .expect("is_contact of a stranger")
    );

    assert!(
        store
            .remove_contact(owner, others[1])
            .await
            .expect("remove")
    );
    assert!(
        !store
            .remove_contact(owner, others[1])
            .await
            .expect("remove again")
    );
    assert!(
        !store
            .is_contact(owner, others[1])
            .await
            .expect("is_contact")
    );
    assert_eq!(contact_ids(&store, owner).await, vec![others[0], others[2]]);
    // Re-added: new, with its new time.
    let again = store
        .add_contact(owner, &contact(others[1], "back", T0 + 2 * DAY), 10)
        .await
        .expect("re-add");
    assert_eq!(again, Added::Added);
    assert_eq!(
        store.contacts(owner).await.expect("contacts")[1],
        contact(others[1], "back", T0 + 2 * DAY)
    );
    // Another owner's list is untouched.
    assert_eq!(
        store.contacts(others[0]).await.expect("contacts"),
        Vec::new()
    );
}

/// At the limit a new contact is refused and nothing changes, while renaming one that is
/// there still works; a removal makes room; a limit of 0 refuses everything.
pub async fn contacts_respect_the_limit(store: Arc<dyn PeopleStore>) {
    let owner = user();
    let u = users(3);
    for &c in &u[..2] {
        assert_eq!(
            store
                .add_contact(owner, &contact(c, "x", T0), 2)
                .await
                .expect("add"),
            Added::Added
        );
    }
    assert_eq!(
        store
            .add_contact(owner, &contact(u[2], "x", T0), 2)
            .await
            .expect("add over the limit"),
        Added::LimitReached
    );
    assert!(!store.is_contact(owner, u[2]).await.expect("is_contact"));
    assert_eq!(contact_ids(&store, owner).await, u[..2].to_vec());
    assert_eq!(
        store
            .add_contact(owner, &contact(u[0], "renamed", T0 + 1), 2)
            .await
            .expect("rename at the limit"),
        Added::Updated
    );
    assert_eq!(
        store.contacts(owner).await.expect("contacts")[0].name,
        "renamed"
    );
    // A lower limit than what is stored refuses new ones but keeps the stored ones.
    assert_eq!(
        store
            .add_contact(owner, &contact(u[2], "x", T0), 1)
            .await
            .expect("add under a lower limit"),
        Added::LimitReached
    );
    assert!(store.remove_contact(owner, u[1]).await.expect("remove"));
    assert_eq!(
        store
            .add_contact(owner, &contact(u[2], "x", T0), 2)
            .await
            .expect("add after a removal"),
        Added::Added
    );
    assert_eq!(contact_ids(&store, owner).await, vec![u[0], u[2]]);

    let empty = user();
    assert_eq!(
        store
            .add_contact(empty, &contact(u[0], "x", T0), 0)
            .await
            .expect("add with limit 0"),
        Added::LimitReached
    );
    assert_eq!(store.contacts(empty).await.expect("contacts"), Vec::new());
}

/// Blocks: added (again: `Updated`), listed ascending, removed (true once), one-way.
pub async fn blocks_add_remove_in_order(store: Arc<dyn PeopleStore>) {
    let owner = user();
    let others = users(3);
    assert_eq!(store.blocks(owner).await.expect("blocks"), Vec::new());
    for &u in others.iter().rev() {
        assert_eq!(
            store.add_block(owner, u, T0, 10).await.expect("block"),
            Added::Added
        );
    }
    assert_eq!(store.blocks(owner).await.expect("blocks"), others);
    assert_eq!(
        store
            .add_block(owner, others[0], T0 + DAY, 10)
            .await
            .expect("block again"),
        Added::Updated
    );
    assert_eq!(store.blocks(owner).await.expect("blocks"), others);
    assert_eq!(store.blocks(others[0]).await.expect("blocks"), Vec::new());
    assert!(store.remove_block(owner, others[1]).await.expect("unblock"));
    assert!(
        !store
            .remove_block(owner, others[1])
            .await
            .expect("unblock again")
    );
    assert_eq!(
        store.blocks(owner).await.expect("blocks"),
        vec![others[0], others[2]]
    );
    // Blocks and contacts are separate lists.
    assert!(
        !store
            .is_contact(owner, others[0])
            .await
            .expect("is_contact")
    );
}

/// Blocks keep the same limit rule as contacts.
pub async fn blocks_respect_the_limit(store: Arc<dyn PeopleStore>) {
    let owner = user();
    let u = users(3);
    for &b in &u[..2] {
        assert_eq!(
            store.add_block(owner, b, T0, 2).await.expect("block"),
            Added::Added
        );
    }
    assert_eq!(
        store
            .add_block(owner, u[2], T0, 2)
            .await
            .expect("block over the limit"),
        Added::LimitReached
    );
    assert_eq!(store.blocks(owner).await.expect("blocks"), u[..2].to_vec());
    assert_eq!(
        store
            .add_block(owner, u[0], T0, 2)
            .await
            .expect("block again at the limit"),
        Added::Updated
    );
    assert!(store.remove_block(owner, u[0]).await.expect("unblock"));
    assert_eq!(
        store.add_block(owner, u[2], T0, 2).await.expect("block"),
        Added::Added
    );
    assert_eq!(store.blocks(owner).await.expect("blocks"), vec![u[1], u[2]]);
    let empty = user();
    assert_eq!(
        store
            .add_block(empty, u[0], T0, 0)
            .await
            .expect("block with limit 0"),
        Added::LimitReached
    );
    assert_eq!(store.blocks(empty).await.expect("blocks"), Vec::new());
}

/// Posting again with a live status's post id returns that status and stores nothing;
/// post ids are per user; once the status expired, or was deleted, the post id is free.
pub async fn posting_is_idempotent_by_post_id(store: Arc<dyn PeopleStore>) {
    let (a, b) = (user(), user());
    let first = status(a, "p1", T0, DAY);
    assert_eq!(
        store.post_status(&first, T0).await.expect("post"),
        first.clone()
    );
    // A retry (new id, other text) gets the stored one.
    let mut retry = status(a, "p1", T0 + 5, DAY);
    retry.text = "another text".into();
    assert_eq!(
        store.post_status(&retry, T0 + 5).await.expect("retry"),
        first
    );
    assert_eq!(store.status(retry.id, T0 + 5).await.expect("status"), None);
    assert_eq!(
        store.statuses(a, T0 + 5).await.expect("statuses"),
        vec![first.clone()]
    );
    // Another user's post id is another post.
    let theirs = status(b, "p1", T0, DAY);
    assert_eq!(
        store.post_status(&theirs, T0).await.expect("post b"),
        theirs.clone()
    );
    assert_eq!(
        store.statuses(b, T0).await.expect("statuses"),
        vec![theirs.clone()]
    );
    // After expiry (by the caller's clock), the same post id posts anew.
    let later = status(a, "p1", T0 + DAY, DAY);
    assert_eq!(
        store.post_status(&later, T0 + DAY).await.expect("repost"),
        later.clone()
    );
    assert_eq!(
        store.statuses(a, T0 + DAY).await.expect("statuses"),
        vec![later.clone()]
    );
    // After a delete too.
    assert!(store.delete_status(b, theirs.id).await.expect("delete"));
    let again = status(b, "p1", T0 + 1, DAY);
    assert_eq!(
        store
            .post_status(&again, T0 + 1)
            .await
            .expect("post after delete"),
        again.clone()
    );
    assert_eq!(
        store.statuses(b, T0 + 1).await.expect("statuses"),
        vec![again]
    );
}

/// Racing posts with one post id (each with its own status id) store one status, and
/// every call returns it.
pub async fn concurrent_posts_of_one_post_id_store_one(store: Arc<dyn PeopleStore>) {
    let a = user();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        let s = status(a, "race", T0, DAY);
        tasks.spawn(async move { store.post_status(&s, T0).await });
    }
    let mut returned = Vec::new();
    while let Some(result) = tasks.join_next().await {
        returned.push(result.expect("task").expect("post"));
    }
    let stored = store.statuses(a, T0).await.expect("statuses");
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert!(returned.iter().all(|s| *s == stored[0]), "{returned:#?}");
}

/// `statuses` lists only live statuses (`expires_at_ms > now_ms`), oldest first (by
/// creation, whatever the posting order); `status` finds only a live one.
pub async fn statuses_are_live_only_and_oldest_first(store: Arc<dyn PeopleStore>) {
    let a = user();
    let old = status(a, "old", T0, 2 * HOUR);
    let mid = status(a, "mid", T0 + HOUR, DAY);
    let new = status(a, "new", T0 + 2 * HOUR, HOUR);
    // Posted out of order.
    for s in [&new, &old, &mid] {
        store.post_status(s, T0 + 2 * HOUR).await.expect("post");
    }
    assert_eq!(
        store
            .statuses(a, T0 + 2 * HOUR - 1)
            .await
            .expect("statuses"),
        vec![old.clone(), mid.clone(), new.clone()]
    );
    // `old` expires at T0 + 2h exactly: gone at that instant.
    assert_eq!(
        store.statuses(a, T0 + 2 * HOUR).await.expect("statuses"),
        vec![mid.clone(), new.clone()]
    );
    assert_eq!(
        store.statuses(a, T0 + 3 * HOUR).await.expect("statuses"),
        vec![mid.clone()]
    );
    assert_eq!(
        store.statuses(a, T0 + 2 * DAY).await.expect("statuses"),
        Vec::new()
    );

    assert_eq!(
        store.status(old.id, T0).await.expect("status"),
        Some(old.clone())
    );
    assert_eq!(
        store.status(old.id, T0 + 2 * HOUR).await.expect("status"),
        None
    );
    assert_eq!(
        store.status(mid.id, T0 + 2 * HOUR).await.expect("status"),
        Some(mid.clone())
    );
    assert_eq!(store.status(random_id(), T0).await.expect("unknown"), None);
    assert_eq!(
        store.statuses(user(), T0).await.expect("no statuses"),
        Vec::new()
    );
}

/// `count_statuses_since` counts the live statuses created at or after `since_ms`.
pub async fn statuses_are_counted_since(store: Arc<dyn PeopleStore>) {
    let a = user();
    assert_eq!(
        store.count_statuses_since(a, 0, T0).await.expect("count"),
        0
    );
    let s1 = status(a, "c1", T0, DAY);
    let s2 = status(a, "c2", T0 + HOUR, HOUR);
    let s3 = status(a, "c3", T0 + 2 * HOUR, DAY);
    for s in [&s1, &s2, &s3] {
        store.post_status(s, T0 + 2 * HOUR - 1).await.expect("post");
    }
    let count = |since, now| {
        let store = store.clone();
        async move {
            store
                .count_statuses_since(a, since, now)
                .await
                .expect("count")
        }
    };
    // s2 expired at T0 + 2h.
    assert_eq!(count(0, T0 + 2 * HOUR).await, 2);
    assert_eq!(count(0, T0 + 2 * HOUR - 1).await, 3);
    assert_eq!(count(T0 + HOUR, T0 + 2 * HOUR - 1).await, 2);
    assert_eq!(count(T0 + 1, T0 + 2 * HOUR).await, 1);
    assert_eq!(count(T0 + 2 * HOUR + 1, T0 + 2 * HOUR).await, 0);
    assert_eq!(count(0, T0 + 3 * DAY).await, 0);
}

/// Only the owner deletes a status (true once); its views go with it.
pub async fn statuses_are_deleted_only_by_their_owner_with_their_views(
    store: Arc<dyn PeopleStore>,
) {
    let (a, stranger, viewer) = (user(), user(), user());
    let s = status(a, "del", T0, DAY);
    let kept = status(a, "kept", T0 + 1, DAY);
    store.post_status(&s, T0).await.expect("post");
    store.post_status(&kept, T0).await.expect("post");
    assert!(
        store
            .add_view(s.id, s.expires_at_ms, view(viewer, T0 + 10))
            .await
            .expect("view")
    );
    assert!(
        store
            .add_view(kept.id, kept.expires_at_ms, view(viewer, T0 + 10))
            .await
            .expect("view")
    );

    assert!(
        !store
            .delete_status(stranger, s.id)
            .await
            .expect("delete by a stranger")
    );
    assert_eq!(
        store.status(s.id, T0).await.expect("status"),
        Some(s.clone())
    );
    assert!(
        !store
            .delete_status(a, random_id())
            .await
            .expect("delete unknown")
    );

    assert!(store.delete_status(a, s.id).await.expect("delete"));
    assert!(!store.delete_status(a, s.id).await.expect("delete again"));
    assert_eq!(store.status(s.id, T0).await.expect("status"), None);
    assert_eq!(
        store.statuses(a, T0).await.expect("statuses"),
        vec![kept.clone()]
    );
    assert_eq!(store.views(s.id).await.expect("views"), Vec::new());
    assert!(!store.has_viewed(s.id, viewer).await.expect("has_viewed"));
    assert_eq!(
        store.count_statuses_since(a, 0, T0).await.expect("count"),
        1
    );
    // The other status keeps its views.
    assert_eq!(
        store.views(kept.id).await.expect("views"),
        vec![view(viewer, T0 + 10)]
    );
}

/// Deleting a user removes their profile, privacy settings, contacts, blocks, statuses
/// (with the views of them and their post ids), and nothing of anyone else's; other
/// users' lists naming them stay (see [`PeopleStore::delete_user`]). Idempotent.
pub async fn delete_user_removes_what_the_user_owns(store: Arc<dyn PeopleStore>) {
    let (u, friend, foe) = (user(), user(), user());
    let profile = ProfileRecord {
        display_name: "Gone".into(),
        about: "soon".into(),
        avatar_media_id: "media-avatar".into(),
        updated_at_ms: T0,
    };
    let private = Privacy {
        last_seen: Audience::Nobody,
        online: Audience::Contacts,
        profile_photo: Audience::Nobody,
        about: Audience::Contacts,
    };
    for p in [u, friend] {
        store.put_profile(p, &profile).await.expect("put profile");
        store.put_privacy(p, private).await.expect("put privacy");
    }
    for (owner, other) in [(u, friend), (u, foe), (friend, u)] {
        let added = store
            .add_contact(owner, &contact(other, "c", T0), 10)
            .await
            .expect("add contact");
        assert_eq!(added, Added::Added);
        let blocked = store.add_block(owner, other, T0, 10).await.expect("block");
        assert_eq!(blocked, Added::Added);
    }
    let mine = [status(u, "a", T0, DAY), status(u, "b", T0 + 1, DAY)];
    let theirs = status(friend, "f", T0, DAY);
    for s in mine.iter().chain([&theirs]) {
        store.post_status(s, T0).await.expect("post");
    }
    for s in [&mine[0], &theirs] {
        let viewer = if s.user == u { friend } else { u };
        let first = store
            .add_view(s.id, s.expires_at_ms, view(viewer, T0 + 5))
            .await
            .expect("view");
        assert!(first);
    }

    store.delete_user(u).await.expect("delete user");
    assert_eq!(store.profile(u).await.expect("profile"), None);
    assert_eq!(store.privacy(u).await.expect("privacy"), Privacy::default());
    assert_eq!(contact_ids(&store, u).await, Vec::new());
    assert_eq!(store.blocks(u).await.expect("blocks"), Vec::new());
    assert_eq!(store.statuses(u, T0).await.expect("statuses"), Vec::new());
    assert_eq!(
        store.count_statuses_since(u, 0, T0).await.expect("count"),
        0
    );
    for s in &mine {
        assert_eq!(store.status(s.id, T0).await.expect("status"), None);
        assert_eq!(store.views(s.id).await.expect("views"), Vec::new());
    }
    // The post ids are free again: the same post id stores a new status.
    let again = status(u, "a", T0 + 10, DAY);
    assert_eq!(
        store.post_status(&again, T0 + 10).await.expect("post"),
        again
    );

    // Nothing of the others' went, their entries naming `u` included.
    assert_eq!(store.profile(friend).await.expect("profile"), Some(profile));
    assert_eq!(store.privacy(friend).await.expect("privacy"), private);
    assert_eq!(contact_ids(&store, friend).await, vec![u]);
    assert_eq!(store.blocks(friend).await.expect("blocks"), vec![u]);
    assert_eq!(
        store.statuses(friend, T0).await.expect("statuses"),
        vec![theirs.clone()]
    );
    assert_eq!(
        store.views(theirs.id).await.expect("views"),
        vec![view(u, T0 + 5)]
    );

    // Again (a retry), and for a user with nothing stored: fine.
    store.delete_user(u).await.expect("delete again");
    assert_eq!(store.statuses(u, T0).await.expect("statuses"), Vec::new());
    store.delete_user(user()).await.expect("delete a stranger");
}

/// A view counts once, with its first time; views list in view order, then by viewer.
pub async fn the_first_view_wins_and_views_are_in_view_order(store: Arc<dyn PeopleStore>) {
    let a = user();
    let v = users(4);
    let s = status(a, "seen", T0, DAY);
    store.post_status(&s, T0).await.expect("post");
    assert_eq!(store.views(s.id).await.expect("views"), Vec::new());
    assert!(!store.has_viewed(s.id, v[0]).await.expect("has_viewed"));

    // v[3] first, then v[1] and v[2] at the same time, then v[0].
    let order = [
        (v[3], T0 + 1),
        (v[2], T0 + 5),
        (v[1], T0 + 5),
        (v[0], T0 + 9),
    ];
    for &(viewer, at) in &order {
        assert!(
            store
                .add_view(s.id, s.expires_at_ms, view(viewer, at))
                .await
                .expect("view")
        );
    }
    // Viewed again later: not a first view, and the first time stays.
    assert!(
        !store
            .add_view(s.id, s.expires_at_ms, view(v[3], T0 + 100))
            .await
            .expect("view again")
    );
    assert_eq!(
        store.views(s.id).await.expect("views"),
        vec![
            view(v[3], T0 + 1),
            view(v[1], T0 + 5),
            view(v[2], T0 + 5),
            view(v[0], T0 + 9),
        ]
    );
    for &(viewer, _) in &order {
        assert!(store.has_viewed(s.id, viewer).await.expect("has_viewed"));
    }
    assert!(!store.has_viewed(s.id, a).await.expect("has_viewed"));
    // Views are per status.
    let other = status(a, "other", T0, DAY);
    store.post_status(&other, T0).await.expect("post");
    assert!(!store.has_viewed(other.id, v[0]).await.expect("has_viewed"));
    assert_eq!(store.views(other.id).await.expect("views"), Vec::new());
}

/// `prune(now)` deletes the statuses expired at or before `now` with their views, and
/// returns how many (at least ours: the store may be shared); live ones stay. A store
/// that returns 0 expires data by itself: then only check that nothing expired is read.
pub async fn prune_removes_expired_statuses_and_their_views(store: Arc<dyn PeopleStore>) {
    let (a, viewer) = (user(), user());
    // Just in the past of every other check's times, so pruning at NOW only takes what
    // expired before (other checks' statuses may go too: the store may be shared).
    let now = T0 - DAY;
    let gone = status(a, "gone", now - 2 * HOUR, HOUR);
    let edge = status(a, "edge", now - HOUR, HOUR);
    let live = status(a, "live", now - HOUR, 2 * HOUR);
    for s in [&gone, &edge, &live] {
        store.post_status(s, now - 2 * HOUR).await.expect("post");
        assert!(
            store
                .add_view(s.id, s.expires_at_ms, view(viewer, now - 90 * 60_000))
                .await
                .expect("view")
        );
    }
    let pruned = store.prune(now).await.expect("prune");
    if pruned > 0 {
        assert!(pruned >= 2, "pruned {pruned}, expected at least 2");
        // Physically gone: not there even for a clock before their expiry.
        for s in [&gone, &edge] {
            assert_eq!(store.status(s.id, 0).await.expect("status"), None);
            assert_eq!(store.views(s.id).await.expect("views"), Vec::new());
            assert!(!store.has_viewed(s.id, viewer).await.expect("has_viewed"));
        }
        assert_eq!(
            store.statuses(a, 0).await.expect("statuses"),
            vec![live.clone()]
        );
        assert_eq!(store.count_statuses_since(a, 0, 0).await.expect("count"), 1);
        // Pruning again at the same time finds none of ours.
        store.prune(now).await.expect("prune again");
        assert_eq!(
            store.status(live.id, 0).await.expect("status"),
            Some(live.clone())
        );
    }
    for s in [&gone, &edge] {
        assert_eq!(store.status(s.id, now).await.expect("status"), None);
    }
    assert_eq!(
        store.statuses(a, now).await.expect("statuses"),
        vec![live.clone()]
    );
    assert_eq!(
        store.views(live.id).await.expect("views"),
        vec![view(viewer, now - 90 * 60_000)]
    );
    assert_eq!(
        store.count_statuses_since(a, 0, now).await.expect("count"),
        1
    );
}

/// Racing adds of new entries when `room` places are left; returns how many calls said
/// `Added`, after checking the lists hold exactly what was said added.
async fn race_adds(store: &Arc<dyn PeopleStore>, blocks: bool) -> (usize, usize, u32) {
    const LIMIT: u32 = 5;
    const PRESET: usize = 3;
    const RACERS: usize = 12;
    let owner = user();
    let others = users(PRESET + RACERS);
    for &u in &others[..PRESET] {
        let added = if blocks {
            store.add_block(owner, u, T0, LIMIT).await
        } else {
            store
                .add_contact(owner, &contact(u, "pre", T0), LIMIT)
                .await
        };
        assert_eq!(added.expect("preset"), Added::Added);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for &u in &others[PRESET..] {
        let store = store.clone();
        tasks.spawn(async move {
            if blocks {
                store.add_block(owner, u, T0, LIMIT).await
            } else {
                store
                    .add_contact(owner, &contact(u, "racer", T0), LIMIT)
                    .await
            }
        });
    }
    let mut added = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("task").expect("add") {
            Added::Added => added += 1,
            Added::LimitReached => {}
            Added::Updated => panic!("a new entry was reported as updated"),
        }
    }
    let stored = if blocks {
        store.blocks(owner).await.expect("blocks").len()
    } else {
        store.contacts(owner).await.expect("contacts").len()
    };
    assert_eq!(
        stored,
        PRESET + added,
        "every Added is stored, nothing else"
    );
    (added, stored, LIMIT)
}

/// Concurrent adds of new contacts and blocks near the limit: the list may exceed the
/// limit by at most the number of racing calls, and holds exactly the entries reported
/// `Added`.
pub async fn concurrent_adds_overshoot_by_at_most_the_racers(store: Arc<dyn PeopleStore>) {
    for blocks in [false, true] {
        let (added, stored, limit) = race_adds(&store, blocks).await;
        assert!(added >= 1, "someone must get the room left");
        assert!(stored <= limit as usize + 12, "{stored} stored");
    }
}

/// For stores that keep limits exactly (redb): concurrent adds of new contacts and
/// blocks never take a list past its limit, and fill it.
pub async fn concurrent_adds_never_exceed_the_limit(store: Arc<dyn PeopleStore>) {
    for blocks in [false, true] {
        let (added, stored, limit) = race_adds(&store, blocks).await;
        assert_eq!(stored, limit as usize, "blocks: {blocks}");
        assert_eq!(added, 2, "blocks: {blocks}");
    }
}

/// What was acknowledged survives closing and reopening. Every call of `open` must open
/// the same underlying storage; the previous store is dropped before the next `open`.
pub async fn durability_across_reopen(open: impl Fn() -> Arc<dyn PeopleStore>) {
    let (a, b, viewer) = (user(), user(), user());
    let profile = ProfileRecord {
        display_name: "Durable ✓".into(),
        about: "still here".into(),
        avatar_media_id: "media-d".into(),
        updated_at_ms: T0,
    };
    let privacy = Privacy {
        last_seen: Audience::Nobody,
        online: Audience::Contacts,
        profile_photo: Audience::Contacts,
        about: Audience::Nobody,
    };
    let s = status(a, "durable", T0, DAY);
    {
        let store = open();
        store.put_profile(a, &profile).await.expect("put profile");
        store.put_privacy(a, privacy).await.expect("put privacy");
        store
            .add_contact(a, &contact(b, "bee", T0), 10)
            .await
            .expect("add contact");
        store.add_block(b, a, T0, 10).await.expect("block");
        store.post_status(&s, T0).await.expect("post");
        store
            .add_view(s.id, s.expires_at_ms, view(viewer, T0 + 1))
            .await
            .expect("view");
    }
    let store = open();
    assert_eq!(store.profile(a).await.expect("profile"), Some(profile));
    assert_eq!(store.privacy(a).await.expect("privacy"), privacy);
    assert_eq!(
        store.contacts(a).await.expect("contacts"),
        vec![contact(b, "bee", T0)]
    );
    assert_eq!(store.blocks(b).await.expect("blocks"), vec![a]);
    assert_eq!(
        store.statuses(a, T0).await.expect("statuses"),
        vec![s.clone()]
    );
    assert_eq!(
        store.views(s.id).await.expect("views"),
        vec![view(viewer, T0 + 1)]
    );
    // The post id still holds after the reopen.
    let retry = status(a, "durable", T0 + 1, DAY);
    assert_eq!(store.post_status(&retry, T0 + 1).await.expect("retry"), s);
}

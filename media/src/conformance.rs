//! The conformance suite of [`MediaStore`]: every implementation's tests run it. Each
//! check works on fresh random users, hashes and ids, so the stores handed in may share
//! one backing database (e.g. one ScyllaDB keyspace) and may hold data already. The
//! functions panic (assert) on a violation.
//!
//! ```ignore
//! conformance::run_all(|| my_store()).await;
//! conformance::concurrent_creates_never_exceed_max_open(my_store()).await; // exact stores
//! conformance::durability_across_reopen(|| open_my_store_at(same_place)).await;
//! ```

use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use natter_proto::{UserId, v1};
use rand::Rng as _;

use crate::store::{
    BlobRecord, Commit, MediaRecord, MediaStore, OwnerDeleted, StoreError, UploadPart, UploadRecord,
};

/// A time the checks start from (2023-11-14), so that times "before" it are valid too.
const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;
/// A quota no check reaches unless it means to.
const BIG_QUOTA: u64 = 1 << 40;
/// More than any check's records, so `unreferenced` and `stale_uploads` list all of them
/// even in a store shared with other checks.
const ALL: usize = 100_000;

/// Runs every check that needs no reopen, each on a store from `make`. Checks that
/// concurrent creates overshoot `max_open` by at most the racing calls; stores that keep
/// it exactly (redb) should also pass [`concurrent_creates_never_exceed_max_open`].
pub async fn run_all(make: impl Fn() -> Arc<dyn MediaStore>) {
    unknown_things_are_absent_and_usage_is_zero(make()).await;
    a_commit_stores_the_record_and_the_blob(make()).await;
    the_same_owner_and_content_returns_the_existing_record(make()).await;
    the_quota_is_checked_before_storing(make()).await;
    another_owner_shares_the_stored_blob(make()).await;
    concurrent_owners_of_one_content_share_one_blob(make()).await;
    concurrent_commits_of_one_owner_and_content_store_one(make()).await;
    mark_referenced_is_idempotent(make()).await;
    unreferenced_lists_only_old_unreferenced_records(make()).await;
    delete_unreferenced_spares_referenced_and_unknown_records(make()).await;
    delete_unreferenced_frees_usage_and_refs(make()).await;
    the_last_delete_returns_the_blob_and_a_new_upload_gets_a_new_key(make()).await;
    uploads_round_trip_and_respect_max_open(make()).await;
    add_part_is_compare_and_set_on_the_offset(make()).await;
    concurrent_add_parts_at_one_offset_admit_one(make()).await;
    stale_uploads_are_found_by_update_time(make()).await;
    concurrent_creates_overshoot_by_at_most_the_racers(make()).await;
    media_count_counts_the_owners_records(make()).await;
    delete_owner_media_frees_usage_and_spares_shared_blobs(make()).await;
}

/// Below 2^53, like real ids, so every store (and JSON) holds them exactly.
fn user() -> UserId {
    UserId(rand::rng().random_range(1..(1u64 << 53)))
}

/// A fresh id of 22 URL-safe characters, like the service's.
fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A fresh content hash (64 lowercase hex digits).
fn sha() -> String {
    let mut rng = rand::rng();
    (0..4)
        .map(|_| format!("{:016x}", rng.random::<u64>()))
        .collect()
}

/// The record of `owner` uploading content `sha256` of `size` bytes at `created`.
fn record(owner: UserId, sha256: &str, size: u64, created: u64) -> MediaRecord {
    MediaRecord {
        id: random_id(),
        owner,
        sha256: sha256.to_owned(),
        size,
        filename: format!("Ünïcödé \"photo\" ✓ {}.jpg", &sha256[..8]),
        created_at_ms: created,
        referenced: false,
    }
}

/// The blob the service would commit with `r`, in a fresh object.
fn blob_for(r: &MediaRecord) -> BlobRecord {
    BlobRecord {
        sha256: r.sha256.clone(),
        key: format!("blobs/{}", random_id()),
        size: r.size,
        kind: v1::MediaKind::Image as i32,
        mime: "image/jpeg".into(),
        width: 4032,
        height: 3024,
        duration_ms: 0,
        // Every byte value: a preview is binary.
        preview: Bytes::from((0..=255u8).rev().collect::<Vec<u8>>()),
        thumbnail_key: format!("thumbs/{}", random_id()),
        // The store sets refs; a caller's value must not matter.
        refs: 0,
        created_at_ms: r.created_at_ms,
    }
}

fn upload(owner: UserId, created: u64) -> UploadRecord {
    UploadRecord {
        id: random_id(),
        owner,
        size: 3 * 1024,
        expected_sha256: sha(),
        filename: "voice ✓.webm".into(),
        kind_hint: "audio".into(),
        voice: true,
        created_at_ms: created,
        updated_at_ms: created,
        parts: Vec::new(),
    }
}

fn part(offset: u64, len: u64) -> UploadPart {
    UploadPart {
        offset,
        len,
        key: format!("parts/{}", random_id()),
    }
}

async fn commit(store: &Arc<dyn MediaStore>, r: &MediaRecord, b: &BlobRecord) -> Commit {
    store
        .commit_media(r.clone(), b.clone(), BIG_QUOTA)
        .await
        .expect("commit")
}

/// Commits `r` with a fresh blob and checks it was stored as new content.
async fn commit_new(store: &Arc<dyn MediaStore>, r: &MediaRecord) -> BlobRecord {
    let b = blob_for(r);
    assert_eq!(
        commit(store, r, &b).await,
        Commit::Stored {
            record: r.clone(),
            blob_existed: false
        }
    );
    b
}

async fn refs(store: &Arc<dyn MediaStore>, sha256: &str) -> Option<u64> {
    store.blob(sha256).await.expect("blob").map(|b| b.refs)
}

async fn usage(store: &Arc<dyn MediaStore>, owner: UserId) -> u64 {
    store.usage(owner).await.expect("usage")
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// Unknown blobs, records and uploads are `None`; a user without records uses 0 bytes.
pub async fn unknown_things_are_absent_and_usage_is_zero(store: Arc<dyn MediaStore>) {
    assert_eq!(store.blob(&sha()).await.expect("blob"), None);
    assert_eq!(store.media(&random_id()).await.expect("media"), None);
    assert_eq!(store.upload(&random_id()).await.expect("upload"), None);
    assert_eq!(usage(&store, user()).await, 0);
}

/// A first commit stores the record as given and the blob as given with refs 1, and
/// counts the size against the owner.
pub async fn a_commit_stores_the_record_and_the_blob(store: Arc<dyn MediaStore>) {
    let owner = user();
    let r = record(owner, &sha(), 123_456, T0);
    let b = commit_new(&store, &r).await;
    assert_eq!(store.media(&r.id).await.expect("media"), Some(r.clone()));
    assert_eq!(
        store.blob(&r.sha256).await.expect("blob"),
        Some(BlobRecord { refs: 1, ..b })
    );
    assert_eq!(usage(&store, owner).await, 123_456);
    // A second content adds up.
    let other = record(owner, &sha(), 1, T0 + 1);
    commit_new(&store, &other).await;
    assert_eq!(usage(&store, owner).await, 123_457);
}

/// The same owner committing the same content again gets their existing record back,
/// unchanged, and nothing else changes, even when the quota would now refuse it.
pub async fn the_same_owner_and_content_returns_the_existing_record(store: Arc<dyn MediaStore>) {
    let owner = user();
    let first = record(owner, &sha(), 1000, T0);
    let first_blob = commit_new(&store, &first).await;
    let mut again = record(owner, &first.sha256, 1000, T0 + HOUR);
    again.filename = "another name.jpg".into();
    let again_blob = blob_for(&again);
    for quota in [BIG_QUOTA, 1000, 0] {
        let answer = store
            .commit_media(again.clone(), again_blob.clone(), quota)
            .await
            .expect("commit again");
        assert_eq!(answer, Commit::Existing(first.clone()), "quota {quota}");
    }
    assert_eq!(store.media(&again.id).await.expect("media"), None);
    assert_eq!(usage(&store, owner).await, 1000);
    assert_eq!(
        store.blob(&first.sha256).await.expect("blob"),
        Some(BlobRecord {
            refs: 1,
            ..first_blob
        })
    );
    // A referenced record is returned as it is now.
    assert!(store.mark_referenced(&first.id).await.expect("mark"));
    let answer = commit(&store, &again, &again_blob).await;
    assert_eq!(
        answer,
        Commit::Existing(MediaRecord {
            referenced: true,
            ..first
        })
    );
}

/// `usage + size > quota` refuses with the usage and quota, storing nothing; exactly
/// reaching the quota is allowed.
pub async fn the_quota_is_checked_before_storing(store: Arc<dyn MediaStore>) {
    let owner = user();
    let first = record(owner, &sha(), 600, T0);
    let b = blob_for(&first);
    assert_eq!(
        store
            .commit_media(first.clone(), b.clone(), 599)
            .await
            .expect("commit over quota"),
        Commit::QuotaExceeded {
            used: 0,
            quota: 599
        }
    );
    assert_eq!(store.media(&first.id).await.expect("media"), None);
    assert_eq!(store.blob(&first.sha256).await.expect("blob"), None);
    assert_eq!(usage(&store, owner).await, 0);
    assert!(matches!(
        store.commit_media(first.clone(), b, 1000).await,
        Ok(Commit::Stored { .. })
    ));
    let second = record(owner, &sha(), 401, T0 + 1);
    let b2 = blob_for(&second);
    assert_eq!(
        store
            .commit_media(second.clone(), b2.clone(), 1000)
            .await
            .expect("commit over quota"),
        Commit::QuotaExceeded {
            used: 600,
            quota: 1000
        }
    );
    assert_eq!(store.media(&second.id).await.expect("media"), None);
    assert_eq!(store.blob(&second.sha256).await.expect("blob"), None);
    assert_eq!(usage(&store, owner).await, 600);
    // Exactly at the quota.
    let third = record(owner, &sha(), 400, T0 + 2);
    assert_eq!(
        store
            .commit_media(third.clone(), blob_for(&third), 1000)
            .await
            .expect("commit to the quota"),
        Commit::Stored {
            record: third,
            blob_existed: false
        }
    );
    assert_eq!(usage(&store, owner).await, 1000);
}

/// Another owner's commit of stored content gets their own record on the stored blob:
/// `blob_existed`, the blob keeps its first key and objects, refs 2, and each owner's
/// usage counts the size.
pub async fn another_owner_shares_the_stored_blob(store: Arc<dyn MediaStore>) {
    let (a, b) = (user(), user());
    let ra = record(a, &sha(), 5000, T0);
    let first_blob = commit_new(&store, &ra).await;
    let rb = record(b, &ra.sha256, 5000, T0 + 1);
    let answer = commit(&store, &rb, &blob_for(&rb)).await;
    assert_eq!(
        answer,
        Commit::Stored {
            record: rb.clone(),
            blob_existed: true
        }
    );
    assert_eq!(
        store.blob(&ra.sha256).await.expect("blob"),
        Some(BlobRecord {
            refs: 2,
            ..first_blob
        })
    );
    assert_eq!(store.media(&rb.id).await.expect("media"), Some(rb));
    assert_eq!(usage(&store, a).await, 5000);
    assert_eq!(usage(&store, b).await, 5000);
}

/// Different owners committing one new content at once: one blob row, with the key of
/// the one commit that said `blob_existed: false`, and one ref per owner.
pub async fn concurrent_owners_of_one_content_share_one_blob(store: Arc<dyn MediaStore>) {
    const OWNERS: usize = 8;
    let content = sha();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..OWNERS {
        let store = store.clone();
        let r = record(user(), &content, 700, T0 + i as u64);
        let b = blob_for(&r);
        tasks.spawn(async move {
            let answer = store
                .commit_media(r.clone(), b.clone(), BIG_QUOTA)
                .await
                .expect("commit");
            (r, b, answer)
        });
    }
    let mut new_keys = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (r, b, answer) = result.expect("task");
        match answer {
            Commit::Stored {
                record,
                blob_existed,
            } => {
                assert_eq!(record, r);
                if !blob_existed {
                    new_keys.push(b.key);
                }
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(usage(&store, r.owner).await, 700);
    }
    assert_eq!(new_keys.len(), 1, "exactly one commit stores the blob");
    let stored = store.blob(&content).await.expect("blob").expect("stored");
    assert_eq!(stored.refs, OWNERS as u64);
    assert_eq!(stored.key, new_keys[0]);
}

/// One owner committing one content at once (with different record ids): one record is
/// stored, every other call returns it as `Existing`, and usage and refs count it once.
pub async fn concurrent_commits_of_one_owner_and_content_store_one(store: Arc<dyn MediaStore>) {
    const RACERS: usize = 8;
    let owner = user();
    let content = sha();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let store = store.clone();
        let r = record(owner, &content, 900, T0 + i as u64);
        tasks.spawn(async move {
            store
                .commit_media(r.clone(), blob_for(&r), BIG_QUOTA)
                .await
                .expect("commit")
        });
    }
    let mut stored = Vec::new();
    let mut existing = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Commit::Stored {
                record,
                blob_existed,
            } => {
                assert!(!blob_existed);
                stored.push(record);
            }
            Commit::Existing(record) => existing.push(record),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stored.len(), 1, "stored: {stored:#?}");
    assert_eq!(existing.len(), RACERS - 1);
    assert!(existing.iter().all(|r| *r == stored[0]), "{existing:#?}");
    assert_eq!(
        store.media(&stored[0].id).await.expect("media"),
        Some(stored[0].clone())
    );
    assert_eq!(usage(&store, owner).await, 900);
    assert_eq!(refs(&store, &content).await, Some(1));
}

/// `mark_referenced`: false for an unknown record; true, and idempotent, for a stored one.
pub async fn mark_referenced_is_idempotent(store: Arc<dyn MediaStore>) {
    assert!(!store.mark_referenced(&random_id()).await.expect("mark"));
    let r = record(user(), &sha(), 10, T0);
    commit_new(&store, &r).await;
    for _ in 0..2 {
        assert!(store.mark_referenced(&r.id).await.expect("mark"));
        assert_eq!(
            store.media(&r.id).await.expect("media"),
            Some(MediaRecord {
                referenced: true,
                ..r.clone()
            })
        );
    }
}

/// `unreferenced(before, limit)` lists unreferenced records created before `before`
/// only, at most `limit`.
pub async fn unreferenced_lists_only_old_unreferenced_records(store: Arc<dyn MediaStore>) {
    let owner = user();
    let base = T0 + rand::rng().random_range(0..1000) * HOUR;
    let old: Vec<MediaRecord> = (0..3)
        .map(|i| record(owner, &sha(), 10, base + i))
        .collect();
    let referenced = record(owner, &sha(), 10, base + 1);
    let at_cutoff = record(owner, &sha(), 10, base + HOUR);
    let newer = record(owner, &sha(), 10, base + 2 * HOUR);
    for r in old.iter().chain([&referenced, &at_cutoff, &newer]) {
        commit_new(&store, r).await;
    }
    assert!(store.mark_referenced(&referenced.id).await.expect("mark"));
    let listed = store
        .unreferenced(base + HOUR, ALL)
        .await
        .expect("unreferenced");
    for r in &listed {
        assert!(!r.referenced, "{r:?}");
        assert!(r.created_at_ms < base + HOUR, "{r:?}");
    }
    let ours: Vec<&MediaRecord> = listed.iter().filter(|r| r.owner == owner).collect();
    let mut ids: Vec<&str> = ours.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = old.iter().map(|r| r.id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    for r in ours {
        assert!(old.contains(r), "{r:?}");
    }
    let few = store.unreferenced(base + HOUR, 2).await.expect("limited");
    assert_eq!(few.len(), 2, "{few:#?}");
    assert_eq!(
        store.unreferenced(base + HOUR, 0).await.expect("none"),
        Vec::new()
    );
    // After the cutoff moves on, the later ones are listed too, the referenced one never.
    let later = store
        .unreferenced(base + 3 * HOUR, ALL)
        .await
        .expect("unreferenced");
    let later_ids: HashSet<&str> = later.iter().map(|r| r.id.as_str()).collect();
    assert!(later_ids.contains(at_cutoff.id.as_str()));
    assert!(later_ids.contains(newer.id.as_str()));
    assert!(!later_ids.contains(referenced.id.as_str()));
}

/// `delete_unreferenced` does nothing (`None`) for an unknown or a referenced record.
pub async fn delete_unreferenced_spares_referenced_and_unknown_records(store: Arc<dyn MediaStore>) {
    assert_eq!(
        store
            .delete_unreferenced(&random_id())
            .await
            .expect("delete unknown"),
        None
    );
    let owner = user();
    let r = record(owner, &sha(), 77, T0);
    commit_new(&store, &r).await;
    assert!(store.mark_referenced(&r.id).await.expect("mark"));
    assert_eq!(
        store.delete_unreferenced(&r.id).await.expect("delete"),
        None
    );
    assert!(store.media(&r.id).await.expect("media").is_some());
    assert_eq!(usage(&store, owner).await, 77);
    assert_eq!(refs(&store, &r.sha256).await, Some(1));
}

/// Deleting one of two records of a blob: the record and its owner's claim on the
/// content go (the owner may upload it again), its size leaves the owner's usage, the
/// blob loses a ref and lives on (`None`). Deleting it again does nothing.
pub async fn delete_unreferenced_frees_usage_and_refs(store: Arc<dyn MediaStore>) {
    let (a, b) = (user(), user());
    let ra = record(a, &sha(), 300, T0);
    let first_blob = commit_new(&store, &ra).await;
    let kept = record(a, &sha(), 5, T0);
    commit_new(&store, &kept).await;
    let rb = record(b, &ra.sha256, 300, T0 + 1);
    commit(&store, &rb, &blob_for(&rb)).await;
    assert_eq!(refs(&store, &ra.sha256).await, Some(2));

    assert_eq!(
        store.delete_unreferenced(&ra.id).await.expect("delete"),
        None
    );
    assert_eq!(store.media(&ra.id).await.expect("media"), None);
    assert_eq!(usage(&store, a).await, 5);
    assert_eq!(usage(&store, b).await, 300);
    assert_eq!(
        store.blob(&ra.sha256).await.expect("blob"),
        Some(BlobRecord {
            refs: 1,
            ..first_blob.clone()
        })
    );
    let listed = store.unreferenced(T0 + HOUR, ALL).await.expect("list");
    assert!(listed.iter().all(|r| r.id != ra.id), "deleted, not listed");
    assert_eq!(
        store.delete_unreferenced(&ra.id).await.expect("again"),
        None
    );
    assert_eq!(usage(&store, a).await, 5);
    assert_eq!(refs(&store, &ra.sha256).await, Some(1));

    // The owner's claim on the content went with the record: a new upload is new.
    let again = record(a, &ra.sha256, 300, T0 + 2);
    assert_eq!(
        commit(&store, &again, &blob_for(&again)).await,
        Commit::Stored {
            record: again.clone(),
            blob_existed: true
        }
    );
    assert_eq!(usage(&store, a).await, 305);
    assert_eq!(refs(&store, &ra.sha256).await, Some(2));
}

/// Deleting a blob's last record removes the blob and returns it (with its key, for the
/// caller to delete the objects); uploading the content again stores a new blob with the
/// new upload's key.
pub async fn the_last_delete_returns_the_blob_and_a_new_upload_gets_a_new_key(
    store: Arc<dyn MediaStore>,
) {
    let owner = user();
    let r = record(owner, &sha(), 4096, T0);
    let first_blob = commit_new(&store, &r).await;
    let gone = store
        .delete_unreferenced(&r.id)
        .await
        .expect("delete")
        .expect("the last ref returns the blob");
    assert_eq!(gone.sha256, first_blob.sha256);
    assert_eq!(gone.key, first_blob.key);
    assert_eq!(gone.thumbnail_key, first_blob.thumbnail_key);
    assert_eq!(gone.preview, first_blob.preview);
    assert_eq!(store.blob(&r.sha256).await.expect("blob"), None);
    assert_eq!(store.media(&r.id).await.expect("media"), None);
    assert_eq!(usage(&store, owner).await, 0);

    let again = record(owner, &r.sha256, 4096, T0 + HOUR);
    let new_blob = commit_new(&store, &again).await;
    assert_ne!(new_blob.key, first_blob.key);
    let stored = store.blob(&r.sha256).await.expect("blob").expect("stored");
    assert_eq!(
        stored.key, new_blob.key,
        "the new upload's key, not the old one"
    );
    assert_eq!(stored.refs, 1);
    assert_eq!(usage(&store, owner).await, 4096);
}

/// `media_count` counts the owner's records (one per content, referenced or not), not
/// anyone else's; it follows deletes.
pub async fn media_count_counts_the_owners_records(store: Arc<dyn MediaStore>) {
    let (owner, other) = (user(), user());
    assert_eq!(store.media_count(owner).await.expect("count"), 0);
    let records: Vec<MediaRecord> = (0..3).map(|i| record(owner, &sha(), 10, T0 + i)).collect();
    for r in &records {
        commit_new(&store, r).await;
    }
    assert!(store.mark_referenced(&records[1].id).await.expect("mark"));
    // The same content again is the same record; another owner's is theirs.
    commit(
        &store,
        &record(owner, &records[0].sha256, 10, T0 + 9),
        &blob_for(&records[0]),
    )
    .await;
    let theirs = record(other, &records[0].sha256, 10, T0);
    commit(&store, &theirs, &blob_for(&theirs)).await;
    assert_eq!(store.media_count(owner).await.expect("count"), 3);
    assert_eq!(store.media_count(other).await.expect("count"), 1);
    store
        .delete_unreferenced(&records[2].id)
        .await
        .expect("delete");
    assert_eq!(store.media_count(owner).await.expect("count"), 2);
}

/// `delete_owner_media` deletes the owner's records, referenced ones too, in rounds of
/// `limit`: their usage goes to 0, each blob loses a ref, and only the blobs no other
/// record holds are returned (and gone). Others' records and blobs stay.
pub async fn delete_owner_media_frees_usage_and_spares_shared_blobs(store: Arc<dyn MediaStore>) {
    let (owner, other) = (user(), user());
    let only_mine: Vec<MediaRecord> = (0..3).map(|i| record(owner, &sha(), 100, T0 + i)).collect();
    let mut mine_blobs = Vec::new();
    for r in &only_mine {
        mine_blobs.push(commit_new(&store, r).await);
    }
    assert!(store.mark_referenced(&only_mine[0].id).await.expect("mark"));
    let shared = record(owner, &sha(), 7, T0);
    let shared_blob = commit_new(&store, &shared).await;
    let theirs = record(other, &shared.sha256, 7, T0 + 1);
    commit(&store, &theirs, &blob_for(&theirs)).await;
    assert_eq!(usage(&store, owner).await, 307);

    let mut orphaned = Vec::new();
    let mut rounds = 0;
    loop {
        let OwnerDeleted {
            records,
            orphaned: o,
        } = store.delete_owner_media(owner, 3).await.expect("delete");
        assert!(records <= 3);
        orphaned.extend(o);
        rounds += 1;
        if records < 3 {
            break;
        }
        assert!(rounds < 10, "deletes make progress");
    }
    assert_eq!(rounds, 2, "4 records in rounds of 3");
    assert_eq!(usage(&store, owner).await, 0);
    assert_eq!(store.media_count(owner).await.expect("count"), 0);
    for r in only_mine.iter().chain([&shared]) {
        assert_eq!(store.media(&r.id).await.expect("media"), None);
    }
    let mut keys: Vec<String> = orphaned.iter().map(|b| b.key.clone()).collect();
    keys.sort();
    let mut expected: Vec<String> = mine_blobs.iter().map(|b| b.key.clone()).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "the blobs only the owner held, with their keys"
    );
    for b in &mine_blobs {
        assert_eq!(store.blob(&b.sha256).await.expect("blob"), None);
    }
    // The shared blob lives on with the other owner's record.
    assert_eq!(
        store.blob(&shared.sha256).await.expect("blob"),
        Some(BlobRecord {
            refs: 1,
            ..shared_blob
        })
    );
    assert_eq!(store.media(&theirs.id).await.expect("media"), Some(theirs));
    assert_eq!(usage(&store, other).await, 7);
    // Nothing left: nothing to do. The owner may upload the content again as new.
    assert_eq!(
        store.delete_owner_media(owner, 3).await.expect("again"),
        OwnerDeleted::default()
    );
    let again = record(owner, &only_mine[1].sha256, 100, T0 + HOUR);
    commit_new(&store, &again).await;
    assert_eq!(usage(&store, owner).await, 100);
}

/// Uploads round-trip; an owner's `max_open`-th open upload is refused (nothing
/// stored) while another owner is not affected; deleting one frees a place. Deleting an
/// unknown upload is fine.
pub async fn uploads_round_trip_and_respect_max_open(store: Arc<dyn MediaStore>) {
    const MAX_OPEN: usize = 3;
    let (owner, other) = (user(), user());
    let mut open = Vec::new();
    for i in 0..MAX_OPEN {
        let u = upload(owner, T0 + i as u64);
        assert!(
            store
                .create_upload(u.clone(), MAX_OPEN)
                .await
                .expect("create")
        );
        assert_eq!(store.upload(&u.id).await.expect("upload"), Some(u.clone()));
        open.push(u);
    }
    let refused = upload(owner, T0 + 10);
    assert!(
        !store
            .create_upload(refused.clone(), MAX_OPEN)
            .await
            .expect("create over the limit")
    );
    assert_eq!(store.upload(&refused.id).await.expect("upload"), None);
    let theirs = upload(other, T0);
    assert!(
        store
            .create_upload(theirs.clone(), MAX_OPEN)
            .await
            .expect("other owner")
    );

    store.delete_upload(&open[0].id).await.expect("delete");
    assert_eq!(store.upload(&open[0].id).await.expect("upload"), None);
    store
        .delete_upload(&open[0].id)
        .await
        .expect("delete again");
    store
        .delete_upload(&random_id())
        .await
        .expect("delete unknown");
    assert!(
        store
            .create_upload(refused.clone(), MAX_OPEN)
            .await
            .expect("a freed place")
    );
    assert!(
        !store
            .create_upload(upload(owner, T0 + 11), MAX_OPEN)
            .await
            .expect("full")
    );
    assert!(
        !store
            .create_upload(upload(user(), T0), 0)
            .await
            .expect("max_open 0")
    );
    assert_eq!(
        store.upload(&theirs.id).await.expect("upload"),
        Some(theirs)
    );
}

/// `add_part` appends at the upload's offset only (`Conflict` elsewhere, nothing
/// changed), sets `updated_at_ms`, returns the record; `None` for an unknown upload.
pub async fn add_part_is_compare_and_set_on_the_offset(store: Arc<dyn MediaStore>) {
    assert_eq!(
        store
            .add_part(&random_id(), part(0, 10), T0)
            .await
            .expect("unknown upload"),
        None
    );
    let u = upload(user(), T0);
    assert!(store.create_upload(u.clone(), 5).await.expect("create"));
    assert!(is_conflict(
        &store.add_part(&u.id, part(1, 10), T0 + 1).await
    ));

    let p1 = part(0, 1024);
    let after = store
        .add_part(&u.id, p1.clone(), T0 + 1)
        .await
        .expect("first part")
        .expect("known");
    let mut expected = UploadRecord {
        updated_at_ms: T0 + 1,
        parts: vec![p1.clone()],
        ..u.clone()
    };
    assert_eq!(after, expected);
    assert_eq!(after.offset(), 1024);

    // The same part again (a retried PATCH), a gap, an overlap: all conflicts.
    for offset in [0, 1023, 1025, 4096] {
        let answer = store.add_part(&u.id, part(offset, 1), T0 + 2).await;
        assert!(is_conflict(&answer), "offset {offset}: {answer:?}");
    }
    assert_eq!(
        store.upload(&u.id).await.expect("upload"),
        Some(expected.clone())
    );

    let p2 = part(1024, 2048);
    let after = store
        .add_part(&u.id, p2.clone(), T0 + 3)
        .await
        .expect("second part")
        .expect("known");
    expected.parts.push(p2);
    expected.updated_at_ms = T0 + 3;
    assert_eq!(after, expected);
    assert_eq!(after.offset(), 3072);
    assert_eq!(store.upload(&u.id).await.expect("upload"), Some(expected));

    store.delete_upload(&u.id).await.expect("delete");
    assert_eq!(
        store
            .add_part(&u.id, part(3072, 1), T0 + 4)
            .await
            .expect("deleted"),
        None
    );
}

/// Racing parts at one offset: exactly one lands, the others are `Conflict`s.
pub async fn concurrent_add_parts_at_one_offset_admit_one(store: Arc<dyn MediaStore>) {
    const RACERS: usize = 8;
    let u = upload(user(), T0);
    assert!(store.create_upload(u.clone(), 5).await.expect("create"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let store = store.clone();
        let id = u.id.clone();
        tasks.spawn(async move { store.add_part(&id, part(0, 100 + i as u64), T0 + 1).await });
    }
    let mut landed = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(Some(record)) => landed.push(record),
            Err(StoreError::Conflict(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(landed.len(), 1, "{landed:#?}");
    assert_eq!(landed[0].parts.len(), 1);
    assert_eq!(
        store.upload(&u.id).await.expect("upload"),
        Some(landed[0].clone())
    );
}

/// `stale_uploads(before, limit)` lists uploads last updated before `before` only (a
/// part moves an upload's time), at most `limit`.
pub async fn stale_uploads_are_found_by_update_time(store: Arc<dyn MediaStore>) {
    let owner = user();
    let base = T0 + rand::rng().random_range(0..1000) * HOUR;
    let old: Vec<UploadRecord> = (0..3).map(|i| upload(owner, base + i)).collect();
    let touched = upload(owner, base);
    let newer = upload(owner, base + 2 * HOUR);
    for u in old.iter().chain([&touched, &newer]) {
        assert!(store.create_upload(u.clone(), 10).await.expect("create"));
    }
    let touched = store
        .add_part(&touched.id, part(0, 5), base + 2 * HOUR)
        .await
        .expect("part")
        .expect("known");
    let listed = store.stale_uploads(base + HOUR, ALL).await.expect("stale");
    for u in &listed {
        assert!(u.updated_at_ms < base + HOUR, "{u:?}");
    }
    let mut ours: Vec<&UploadRecord> = listed.iter().filter(|u| u.owner == owner).collect();
    ours.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected: Vec<&UploadRecord> = old.iter().collect();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(ours, expected);
    assert_eq!(
        store
            .stale_uploads(base + HOUR, 2)
            .await
            .expect("limited")
            .len(),
        2
    );
    let later = store
        .stale_uploads(base + 3 * HOUR, ALL)
        .await
        .expect("stale");
    assert!(later.contains(&touched));
    assert!(later.contains(&newer));
    // Deleted uploads are not stale, they are gone.
    store.delete_upload(&old[0].id).await.expect("delete");
    let listed = store.stale_uploads(base + HOUR, ALL).await.expect("stale");
    assert!(listed.iter().all(|u| u.id != old[0].id));
}

/// Racing creates of an owner's uploads when `room` places are left; returns how many
/// were created, after checking that every created upload is stored and no refused one.
async fn race_creates(store: &Arc<dyn MediaStore>) -> (usize, usize) {
    const MAX_OPEN: usize = 5;
    const PRESET: usize = 3;
    const RACERS: usize = 12;
    let owner = user();
    for i in 0..PRESET {
        assert!(
            store
                .create_upload(upload(owner, T0 + i as u64), MAX_OPEN)
                .await
                .expect("preset")
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let store = store.clone();
        let u = upload(owner, T0 + 100 + i as u64);
        tasks.spawn(async move {
            let created = store
                .create_upload(u.clone(), MAX_OPEN)
                .await
                .expect("create");
            (u, created)
        });
    }
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        let (u, was_created) = result.expect("task");
        let stored = store.upload(&u.id).await.expect("upload");
        assert_eq!(stored.is_some(), was_created, "{u:?}");
        if was_created {
            created += 1;
        }
    }
    assert!(
        created >= MAX_OPEN - PRESET,
        "someone must get the room left"
    );
    (created, MAX_OPEN - PRESET)
}

/// Concurrent creates of one owner's uploads near `max_open`: the room left is taken,
/// and overshot by at most the number of racing calls.
pub async fn concurrent_creates_overshoot_by_at_most_the_racers(store: Arc<dyn MediaStore>) {
    let (created, room) = race_creates(&store).await;
    assert!(created <= room + 12, "{created} created");
}

/// For stores that keep `max_open` exactly (redb): concurrent creates fill the room left
/// and never pass it.
pub async fn concurrent_creates_never_exceed_max_open(store: Arc<dyn MediaStore>) {
    let (created, room) = race_creates(&store).await;
    assert_eq!(created, room);
}

/// What was acknowledged survives closing and reopening. Every call of `open` must open
/// the same underlying storage; the previous store is dropped before the next `open`.
pub async fn durability_across_reopen(open: impl Fn() -> Arc<dyn MediaStore>) {
    let owner = user();
    let (kept, collected) = (
        record(owner, &sha(), 100, T0),
        record(owner, &sha(), 20, T0),
    );
    let u = upload(owner, T0);
    let (kept_blob, collected_blob, p) = {
        let store = open();
        let kept_blob = commit_new(&store, &kept).await;
        let collected_blob = commit_new(&store, &collected).await;
        assert!(store.mark_referenced(&kept.id).await.expect("mark"));
        assert!(store.create_upload(u.clone(), 5).await.expect("create"));
        let p = part(0, 64);
        store
            .add_part(&u.id, p.clone(), T0 + 1)
            .await
            .expect("part")
            .expect("known");
        (kept_blob, collected_blob, p)
    };
    let store = open();
    assert_eq!(
        store.media(&kept.id).await.expect("media"),
        Some(MediaRecord {
            referenced: true,
            ..kept.clone()
        })
    );
    assert_eq!(
        store.blob(&kept.sha256).await.expect("blob"),
        Some(BlobRecord {
            refs: 1,
            ..kept_blob
        })
    );
    assert_eq!(usage(&store, owner).await, 120);
    assert_eq!(
        store.upload(&u.id).await.expect("upload"),
        Some(UploadRecord {
            updated_at_ms: T0 + 1,
            parts: vec![p],
            ..u
        })
    );
    // The owner's claim on the content survived: the same upload is the same record.
    let again = record(owner, &kept.sha256, 100, T0 + 2);
    assert!(matches!(
        commit(&store, &again, &blob_for(&again)).await,
        Commit::Existing(r) if r.id == kept.id
    ));
    let gone = store
        .delete_unreferenced(&collected.id)
        .await
        .expect("delete")
        .expect("last ref");
    assert_eq!(gone.key, collected_blob.key);
    assert_eq!(usage(&store, owner).await, 100);
}

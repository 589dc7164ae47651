//! The people store conformance suite on [`RedbPeopleStore`], in temporary files.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use natter_people::{PeopleStore, RedbPeopleStore, conformance};

fn open(path: &std::path::Path) -> Arc<dyn PeopleStore> {
    Arc::new(RedbPeopleStore::open(path).expect("open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_people_store_passes_the_suite_on_one_shared_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("people.redb"));
    conformance::run_all(|| store.clone()).await;
    conformance::concurrent_adds_never_exceed_the_limit(store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_people_store_passes_the_suite_on_fresh_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    let fresh = || {
        let i = n.fetch_add(1, Ordering::Relaxed);
        open(&dir.path().join(format!("p{i}.redb")))
    };
    conformance::run_all(fresh).await;
    conformance::concurrent_adds_never_exceed_the_limit(fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_people_store_is_durable_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("people.redb");
    conformance::durability_across_reopen(|| open(&path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_a_live_file_is_refused_until_the_store_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("people.redb");
    let first = open(&path);
    // Used once, so a call has been on the blocking pool.
    first
        .put_privacy(natter_proto::UserId(7), Default::default())
        .await
        .expect("write");
    assert!(RedbPeopleStore::open(&path).is_err());
    // Dropping the store closes the file.
    drop(first);
    RedbPeopleStore::open(&path).expect("open after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_waits_for_calls_whose_caller_gave_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("people.redb");
    for _ in 0..20 {
        let store = Arc::new(RedbPeopleStore::open(&path).expect("open"));
        let writer = store.clone();
        let call = tokio::spawn(async move {
            writer
                .put_privacy(natter_proto::UserId(7), Default::default())
                .await
        });
        // Give up on the call, maybe while it is running on the blocking pool.
        call.abort();
        let _ = call.await;
        drop(store);
        // The file is closed when `drop` returns.
        drop(RedbPeopleStore::open(&path).expect("reopen at once"));
    }
}

#[tokio::test]
async fn a_status_id_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbPeopleStore::open(&dir.path().join("people.redb")).expect("open");
    let status = natter_people::StatusRecord {
        id: 42,
        user: natter_proto::UserId(1),
        post_id: "a".into(),
        text: "first".into(),
        media_id: String::new(),
        created_at_ms: 1,
        expires_at_ms: 1_000,
    };
    store.post_status(&status, 1).await.expect("post");
    let other = natter_people::StatusRecord {
        user: natter_proto::UserId(2),
        post_id: "b".into(),
        ..status.clone()
    };
    assert!(store.post_status(&other, 1).await.is_err());
    assert_eq!(store.status(42, 1).await.expect("status"), Some(status));
}

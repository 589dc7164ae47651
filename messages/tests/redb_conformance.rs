//! The store conformance suite on [`RedbStore`], in temporary files.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use natter_messages::{MessageStore, RedbStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_store_passes_the_suite_on_one_shared_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn MessageStore> =
        RedbStore::open(&dir.path().join("messages.redb")).expect("open");
    conformance::run_all(|| store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_store_passes_the_suite_on_fresh_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let store: Arc<dyn MessageStore> =
            RedbStore::open(&dir.path().join(format!("m{i}.redb"))).expect("open");
        store
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_is_durable_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.redb");
    conformance::durability_across_reopen(|| {
        let store: Arc<dyn MessageStore> = RedbStore::open(&path).expect("reopen");
        store
    })
    .await;
}

#[tokio::test]
async fn a_second_open_of_a_live_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.redb");
    let _first = RedbStore::open(&path).expect("open");
    assert!(RedbStore::open(&path).is_err());
}

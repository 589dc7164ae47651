//! The group store conformance suite on [`RedbGroupStore`], in temporary files.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use natter_groups::{GroupStore, RedbGroupStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_group_store_passes_the_suite_on_one_shared_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn GroupStore> =
        RedbGroupStore::open(&dir.path().join("groups.redb")).expect("open");
    conformance::run_all(|| store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_group_store_passes_the_suite_on_fresh_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let store: Arc<dyn GroupStore> =
            RedbGroupStore::open(&dir.path().join(format!("g{i}.redb"))).expect("open");
        store
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_group_store_is_durable_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("groups.redb");
    conformance::durability_across_reopen(|| {
        let store: Arc<dyn GroupStore> = RedbGroupStore::open(&path).expect("reopen");
        store
    })
    .await;
}

#[tokio::test]
async fn a_second_open_of_a_live_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("groups.redb");
    let first = RedbGroupStore::open(&path).expect("open");
    assert!(RedbGroupStore::open(&path).is_err());
    // Dropping the store closes the file.
    drop(first);
    RedbGroupStore::open(&path).expect("open after drop");
}

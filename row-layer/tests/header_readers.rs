//! Readers of a format-2 header (header_format.rs) list its entries between
//! two reads of its payload and start over when a commit landed in between.
//! A burst of commits by the owner (a reclaim pass commits once per hidden
//! epoch it trims, splices or deletes) must not make a read-only open fail:
//! `snap-ops` saw "header changed under 16 reads in a row" when a view was
//! opened while the reclaimer worked through 100 removed snapshots.

mod common;

use common::*;
use row_layer::backend::fault::{FaultBackend, FaultEffect, FaultPoint, FaultRule};
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::Store;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_open_outlasts_a_burst_of_header_commits() {
    let mem = Arc::new(MemBackend::new());
    let fault = Arc::new(FaultBackend::new(mem.clone() as Arc<dyn Backend>));
    let store = Store::new(fault.clone() as Arc<dyn Backend>);
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, GRAIN as usize)).await.unwrap();
    img.snap_create("s").await.unwrap();
    // Every payload read of the header takes 2 ms, so the owner's commits
    // land between a reader's two reads.
    fault.add_rule(FaultRule {
        times: u64::MAX,
        ..FaultRule::once(
            FaultPoint::Read,
            "rbd_row_header.",
            FaultEffect::Delay(Duration::from_millis(2)),
        )
    });
    let burst = tokio::spawn({
        let img = img.clone();
        async move {
            let start = std::time::Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_millis(400) {
                let (from, to) = if n.is_multiple_of(2) {
                    ("s", "t")
                } else {
                    ("t", "s")
                };
                img.snap_rename(from, to).await.unwrap();
                n += 1;
            }
            n
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let view = store
        .open_head_read_only("img")
        .await
        .expect("a read-only open while the owner commits");
    let commits = burst.await.unwrap();
    assert!(commits > 50, "the burst made only {commits} commits");
    fault.clear_rules();
    assert_eq!(
        view.read(0, GRAIN).await.unwrap().as_ref(),
        pattern(1, GRAIN as usize).as_ref()
    );
    view.self_check().unwrap();
}

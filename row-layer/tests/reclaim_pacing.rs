//! The reclaimer stays off the I/O path (issue 9): its backend ops are
//! spaced at `ImageOptions::reclaim_ops_per_sec` instead of sent in a burst
//! and slept for afterwards, and an explicit `Image::reclaim` leaves no
//! background pass behind to land among the next client I/O.

mod common;

use common::*;
use row_layer::backend::fault::FaultBackend;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{Image, ImageOptions, Store};
use std::sync::Arc;
use std::time::Duration;

async fn image(ops_per_sec: u32) -> (Arc<FaultBackend>, Image) {
    let mem = Arc::new(MemBackend::new());
    let fault = Arc::new(FaultBackend::new(mem as Arc<dyn Backend>));
    let store = Store::new(fault.clone() as Arc<dyn Backend>).with_image_options(ImageOptions {
        reclaim_ops_per_sec: ops_per_sec,
        ..ImageOptions::default()
    });
    store.create("img", small_opts(64 * OBJ)).await.unwrap();
    (fault, store.open("img").await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn deletions_are_spaced_not_burst() {
    // Ten ops a second: the 40 objects of a discarded head take 4 s.
    let (fault, img) = image(10).await;
    img.snap_create("s").await.unwrap();
    for o in 0..40 {
        img.write(o * OBJ, pattern(o, GRAIN as usize))
            .await
            .unwrap();
    }
    img.snap_rollback("s").await.unwrap();
    let before = fault.counts().mutations;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let in_first_second = fault.counts().mutations - before;
    // The pass starts after `reclaim_delay` (20 ms): at most 10 slots, plus
    // the header commit that lists the garbage, fit in the first second.
    assert!(
        in_first_second <= 11,
        "{in_first_second} mutations in the first second at 10 ops/s"
    );
    assert!(in_first_second >= 5, "the pass did not start");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(img.header().garbage.is_empty(), "garbage never deleted");
    img.self_check().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_explicit_pass_leaves_none_pending() {
    let (fault, img) = image(0).await;
    // Each snapshot rewrites one of four objects, so the removed ones
    // leave a hidden base that live snapshots still read through.
    for n in 0..8u64 {
        img.write((n % 4) * OBJ, pattern(n, OBJ as usize))
            .await
            .unwrap();
        img.snap_create(&format!("s{n}")).await.unwrap();
    }
    for n in 0..4u64 {
        img.snap_remove(&format!("s{n}")).await.unwrap();
    }
    // Before the background pass is due (reclaim_delay, 20 ms).
    img.reclaim().await.unwrap();
    assert!(
        img.header().epochs.len() > img.snap_list().len() + 1,
        "no hidden epoch is left for a second pass to look at"
    );
    let settled = fault.counts();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (fault.counts() - settled).total(),
        0,
        "a background pass ran after the explicit one had done the work"
    );
    img.self_check().unwrap();
}

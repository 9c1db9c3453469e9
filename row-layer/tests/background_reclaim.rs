//! The reclaimer runs on the image's control task in the background: a
//! rollback or snapshot removal returns after its header commit, client I/O
//! goes on while garbage is deleted, and the space comes back on its own.

mod common;

use common::*;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{ImageOptions, Store};
use std::sync::Arc;
use std::time::Duration;

fn store(mem: &Arc<MemBackend>, ops_per_sec: u32) -> Store {
    Store::new(mem.clone() as Arc<dyn Backend>).with_image_options(ImageOptions {
        reclaim_ops_per_sec: ops_per_sec,
        ..ImageOptions::default()
    })
}

#[tokio::test(start_paused = true)]
async fn garbage_goes_in_the_background_without_blocking_io() {
    let mem = Arc::new(MemBackend::new());
    // Two ops a second: deleting 40 objects takes 20 s of (paused) time.
    let store = store(&mem, 2);
    store.create("img", small_opts(64 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.snap_create("s").await.unwrap();
    for o in 0..40 {
        img.write(o * OBJ, pattern(o, GRAIN as usize))
            .await
            .unwrap();
    }
    img.snap_rollback("s").await.unwrap();
    assert_eq!(img.header().garbage.len(), 1, "the old head awaits reclaim");
    // Let the background pass start, then do I/O while it is throttled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    img.write(0, pattern(99, GRAIN as usize)).await.unwrap();
    assert!(img.read(0, GRAIN).await.unwrap() == pattern(99, GRAIN as usize));
    assert_eq!(
        img.header().garbage.len(),
        1,
        "I/O waited for the reclaimer"
    );
    // And the space comes back without anyone asking.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(img.header().garbage.is_empty(), "garbage never deleted");
    img.self_check().unwrap();
}

#[tokio::test(start_paused = true)]
async fn removed_snapshots_are_trimmed_in_the_background() {
    let mem = Arc::new(MemBackend::new());
    let store = store(&mem, 0);
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    for n in 0..10u64 {
        img.write(0, pattern(n, 4 * OBJ as usize)).await.unwrap();
        img.snap_create(&format!("s{n}")).await.unwrap();
    }
    let full = mem.stored_bytes();
    for n in 0..9u64 {
        img.snap_remove(&format!("s{n}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One copy of the data (the last snapshot, which the head reads
    // through) plus a few KiB of metadata remain.
    assert!(
        mem.stored_bytes() <= 4 * OBJ + 4096,
        "stored {} of {full} bytes after trimming",
        mem.stored_bytes()
    );
    assert_eq!(img.header().epochs.len(), 2, "hidden epochs were spliced");
    img.self_check().unwrap();
}

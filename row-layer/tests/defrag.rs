//! Defragmentation (defrag.rs): it changes where grains are stored, never
//! what any view reads nor what any diff lists; client writes beside it
//! win; holes stay holes; a clone keeps reading its parent's grains from
//! the parent; what it duplicates goes with the snapshots; its pace and its
//! background ticker do what the options say.

mod common;

use bytes::Bytes;
use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use row_layer::backend::fault::FaultBackend;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{DefragOptions, ErrorKind, Image, ImageOptions, Store};

use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 8 * OBJ;

fn everything() -> DefragOptions {
    DefragOptions {
        min_reads: 2,
        bytes_per_sec: 0,
    }
}

async fn setup(opts: ImageOptions) -> (Arc<FaultBackend>, Store, Image) {
    let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
    let store = Store::new(fault.clone() as Arc<dyn Backend>).with_image_options(opts);
    store.create("img", small_opts(SIZE)).await.expect("create");
    let img = store.open("img").await.expect("open");
    (fault, store, img)
}

/// Fills the image, then takes `snaps` snapshots, each followed by random
/// one-grain overwrites and a discard; returns the head's contents.
async fn fragment(img: &Image, snaps: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    img.write(0, pattern(seed, SIZE as usize))
        .await
        .expect("fill");
    for s in 0..snaps {
        img.snap_create(&format!("s{s}")).await.expect("snap");
        for _ in 0..12 {
            let g = rng.gen_range(0..SIZE / GRAIN);
            img.write(g * GRAIN, pattern(rng.gen(), GRAIN as usize))
                .await
                .expect("overwrite");
        }
        let g = rng.gen_range(0..SIZE / GRAIN - 2);
        img.discard(g * GRAIN, 2 * GRAIN).await.expect("discard");
    }
    read_all(img).await
}

async fn snapshot_contents(store: &Store, img: &Image) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in img.snap_list() {
        let v = store.open_snapshot("img", &s.name).await.expect("open");
        out.push((s.name, read_all(&v).await));
    }
    out
}

#[tokio::test]
async fn every_view_reads_the_same_and_holes_stay_holes() {
    for seed in 1..=4u64 {
        let (_, store, img) = setup(ImageOptions::default()).await;
        let head = fragment(&img, 6, seed).await;
        let snaps = snapshot_contents(&store, &img).await;
        let allocated = img.diff(None).expect("diff");
        let r = img.defragment(&everything()).await.expect("defragment");
        assert!(r.objects_rewritten > 0, "seed {seed}: {r:?}");
        assert!(r.reads_after < r.reads_before, "seed {seed}: {r:?}");
        // Every rewritten object is now read in one backend read per run.
        assert_eq!(r.reads_after, r.objects_rewritten, "seed {seed}: {r:?}");
        assert_eq!(read_all(&img).await, head, "seed {seed}: head changed");
        assert_eq!(snapshot_contents(&store, &img).await, snaps, "seed {seed}");
        assert_eq!(img.diff(None).expect("diff"), allocated, "seed {seed}");
        img.self_check().expect("self_check");
        let again = img.defragment(&everything()).await.expect("again");
        assert_eq!(again.objects_rewritten, 0, "seed {seed}: {again:?}");
        img.flush().await.expect("flush");
        img.clone().close().await.expect("close");
        let img = store.open("img").await.expect("reopen");
        assert_eq!(read_all(&img).await, head, "seed {seed}: head after reopen");
    }
}

#[tokio::test]
async fn objects_below_the_threshold_are_left_alone() {
    let (fault, _store, img) = setup(ImageOptions::default()).await;
    fragment(&img, 3, 9).await;
    let before = fault.counts();
    let r = img
        .defragment(&DefragOptions {
            min_reads: 1000,
            bytes_per_sec: 0,
        })
        .await
        .expect("defragment");
    assert_eq!(r.objects_rewritten, 0, "{r:?}");
    assert!(r.objects_examined > 0, "{r:?}");
    assert_eq!((fault.counts() - before).total(), 0, "no backend op");
}

#[tokio::test]
async fn client_writes_beside_a_pass_are_never_overwritten() {
    for seed in 10..14u64 {
        let (_, _store, img) = setup(ImageOptions::default()).await;
        let mut expect = fragment(&img, 5, seed).await;
        let mut rng = SmallRng::seed_from_u64(seed * 7);
        let writes: Vec<(u64, Bytes)> = (0..200)
            .map(|_| {
                let off = rng.gen_range(0..SIZE - 6000);
                (off, pattern(rng.gen(), rng.gen_range(1..6000)))
            })
            .collect();
        for (off, data) in &writes {
            expect[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        let writer = {
            let img = img.clone();
            tokio::spawn(async move {
                for (off, data) in writes {
                    img.write(off, data).await.expect("write");
                    tokio::task::yield_now().await;
                }
            })
        };
        let pass = {
            let img = img.clone();
            tokio::spawn(async move { img.defragment(&everything()).await })
        };
        writer.await.expect("writer");
        pass.await.expect("pass").expect("defragment");
        assert!(read_all(&img).await == expect, "seed {seed}: lost a write");
        img.self_check().expect("self_check");
    }
}

#[tokio::test]
async fn duplicated_grains_go_with_the_snapshots() {
    let (_, _store, img) = setup(ImageOptions::default()).await;
    let head = fragment(&img, 6, 21).await;
    let before = img.space_usage().expect("du");
    let r = img.defragment(&everything()).await.expect("defragment");
    let after = img.space_usage().expect("du");
    assert_eq!(after.head_used, before.head_used, "same head data");
    assert!(
        after.stored > before.stored,
        "snapshots hold the old copies"
    );
    assert!(
        after.stored - before.stored <= r.bytes_rewritten,
        "{before:?} {after:?} {r:?}"
    );
    for s in img.snap_list() {
        img.snap_remove(&s.name).await.expect("snap rm");
    }
    img.reclaim().await.expect("reclaim");
    let end = img.space_usage().expect("du");
    assert_eq!(end.stored, end.head_used, "{end:?}");
    let (_, visible) = img.changed_grains(None).expect("grains");
    let stored = stored_data_grains(&**_store.backend(), &img).await;
    assert_eq!(stored, visible.len(), "old copies left behind");
    assert_eq!(read_all(&img).await, head);
}

#[tokio::test(start_paused = true)]
async fn a_pass_keeps_to_its_byte_rate() {
    let (_, _store, img) = setup(ImageOptions::default()).await;
    fragment(&img, 6, 33).await;
    let rate = 64 * 1024;
    let t0 = tokio::time::Instant::now();
    let r = img
        .defragment(&DefragOptions {
            min_reads: 2,
            bytes_per_sec: rate,
        })
        .await
        .expect("defragment");
    let took = t0.elapsed();
    let due = Duration::from_secs_f64(r.bytes_rewritten as f64 / rate as f64);
    assert!(r.bytes_rewritten >= 4 * OBJ, "{r:?}");
    // The paused clock only moves when every task sleeps: the pass ends
    // exactly when its last object's slot is due.
    assert!(
        took >= due && took < due + Duration::from_millis(5),
        "{took:?} {due:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_background_ticker_defragments_an_owned_head() {
    let opts = ImageOptions {
        defrag_interval: Duration::from_secs(10),
        defrag: everything(),
        ..ImageOptions::default()
    };
    let (fault, _store, img) = setup(opts).await;
    let head = fragment(&img, 6, 44).await;
    let reads_of_all = |fault: Arc<FaultBackend>, img: Image| async move {
        let before = fault.counts();
        read_all(&img).await;
        (fault.counts() - before).reads
    };
    let fragmented = reads_of_all(fault.clone(), img.clone()).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let defragmented = reads_of_all(fault.clone(), img.clone()).await;
    assert!(fragmented > SIZE / OBJ, "{fragmented}");
    assert_eq!(defragmented, SIZE / OBJ, "one read per object");
    assert_eq!(read_all(&img).await, head);
    img.close().await.expect("close");
}

#[tokio::test]
async fn read_only_views_and_closed_handles_refuse() {
    let (_, store, img) = setup(ImageOptions::default()).await;
    fragment(&img, 2, 55).await;
    let snap = store.open_snapshot("img", "s0").await.expect("snap");
    let e = snap.defragment(&everything()).await.expect_err("read-only");
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    let handle = img.clone();
    img.close().await.expect("close");
    let e = handle.defragment(&everything()).await.expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
}

/// Every diff from a snapshot to the head and between snapshots.
fn all_diffs(img: &Image) -> Vec<(String, Vec<row_layer::DiffExtent>)> {
    img.snap_list()
        .into_iter()
        .map(|s| (s.name.clone(), img.diff(Some(&s.name)).expect("diff")))
        .collect()
}

#[tokio::test]
async fn diffs_list_exactly_what_they_listed_before() {
    for seed in 60..64u64 {
        let (_, store, img) = setup(ImageOptions::default()).await;
        fragment(&img, 6, seed).await;
        let before = all_diffs(&img);
        let r = img.defragment(&everything()).await.expect("defragment");
        assert!(r.objects_rewritten > 0, "{r:?}");
        assert_eq!(all_diffs(&img), before, "seed {seed}: from the head");
        // The same after reopening, from the grain keys (no checkpoint)
        // and from a checkpoint.
        img.flush().await.expect("flush");
        img.clone().close().await.expect("close");
        let img = store.open("img").await.expect("reopen");
        assert_eq!(all_diffs(&img), before, "seed {seed}: from grain keys");
        img.checkpoint().await.expect("checkpoint");
        img.clone().close().await.expect("close");
        let img = store.open("img").await.expect("reopen");
        assert_eq!(all_diffs(&img), before, "seed {seed}: from a checkpoint");
        // Sealed into a snapshot: diffs from it and across it stay exact.
        img.snap_create("after").await.expect("snap");
        let from_after = img.diff(Some("after")).expect("diff");
        assert!(from_after.is_empty(), "seed {seed}: {from_after:?}");
        let s5 = store.open_snapshot("img", "after").await.expect("open");
        assert_eq!(
            s5.diff(Some("s5")).expect("diff"),
            before[5].1,
            "seed {seed}"
        );
        // A client write after the pass is a change again.
        img.write(3 * GRAIN, pattern(seed, GRAIN as usize))
            .await
            .expect("write");
        let d = img.diff(Some("after")).expect("diff");
        assert_eq!(d.len(), 1, "seed {seed}: {d:?}");
        assert_eq!((d[0].offset, d[0].length), (3 * GRAIN, GRAIN));
        // Sealed records are read back with their moved grains.
        img.clone().close().await.expect("close");
        let img = store.open("img").await.expect("reopen");
        let s5 = store.open_snapshot("img", "after").await.expect("open");
        assert_eq!(
            s5.diff(Some("s5")).expect("diff"),
            before[5].1,
            "seed {seed}"
        );
        assert_eq!(img.diff(Some("after")).expect("diff").len(), 1);
    }
}

/// The reclaimer may let a moved grain free the copy it hides only where
/// no diff crosses that copy's epoch: with the oldest snapshot kept, the
/// removed ones' epochs stay listed and the diff from it stays exact.
#[tokio::test]
async fn removing_snapshots_after_a_pass_keeps_diffs_exact() {
    for seed in 70..74u64 {
        let (_, store, img) = setup(ImageOptions::default()).await;
        let head = fragment(&img, 6, seed).await;
        let s0 = store.open_snapshot("img", "s0").await.expect("s0");
        let base = read_all(&s0).await;
        let from_s0 = img.diff(Some("s0")).expect("diff");
        img.defragment(&everything()).await.expect("defragment");
        for s in 1..6 {
            img.snap_remove(&format!("s{s}")).await.expect("rm");
        }
        img.reclaim().await.expect("reclaim");
        img.self_check().expect("self_check");
        let d = img.diff(Some("s0")).expect("diff");
        assert_eq!(d, from_s0, "seed {seed}");
        assert!(apply_diff(&base, SIZE, &d, &head) == head, "seed {seed}");
        assert_eq!(read_all(&img).await, head);
        assert_eq!(read_all(&s0).await, base);
        img.snap_remove("s0").await.expect("rm s0");
        img.reclaim().await.expect("reclaim");
        let du = img.space_usage().expect("du");
        assert_eq!(du.stored, du.head_used, "seed {seed}: {du:?}");
        let (_, visible) = img.changed_grains(None).expect("grains");
        let stored = stored_data_grains(&**store.backend(), &img).await;
        assert_eq!(stored, visible.len(), "seed {seed}: old copies left behind");
    }
}

#[tokio::test]
async fn a_clone_rewrites_only_its_own_grains() {
    let (_, store, img) = setup(ImageOptions::default()).await;
    fragment(&img, 3, 80).await;
    img.snap_set_protected("s2", true).await.expect("protect");
    store.clone_image("img", "s2", "kid").await.expect("clone");
    let kid = store.open("kid").await.expect("open kid");
    let mut rng = SmallRng::seed_from_u64(81);
    for s in 0..4 {
        kid.snap_create(&format!("k{s}")).await.expect("snap");
        for _ in 0..12 {
            let g = rng.gen_range(0..SIZE / GRAIN);
            kid.write(g * GRAIN, pattern(rng.gen(), GRAIN as usize))
                .await
                .expect("write");
        }
    }
    let content = read_all(&kid).await;
    let own = kid.diff_own().expect("diff_own");
    let diffs = all_diffs(&kid);
    let r = kid.defragment(&everything()).await.expect("defragment");
    assert!(r.objects_rewritten > 0, "{r:?}");
    assert_eq!(
        kid.diff_own().expect("diff_own"),
        own,
        "no parent data copied"
    );
    assert_eq!(all_diffs(&kid), diffs);
    assert_eq!(read_all(&kid).await, content);
    let again = kid.defragment(&everything()).await.expect("again");
    assert_eq!(again.objects_rewritten, 0, "{again:?}");
}

#[tokio::test]
async fn a_size_off_the_grain_is_kept() {
    let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
    let store = Store::new(fault as Arc<dyn Backend>);
    let size = SIZE - 1000;
    store.create("img", small_opts(size)).await.expect("create");
    let img = store.open("img").await.expect("open");
    img.write(0, pattern(5, size as usize)).await.expect("fill");
    for s in 0..4u64 {
        img.snap_create(&format!("s{s}")).await.expect("snap");
        for g in [s, SIZE / GRAIN - 1 - s, SIZE / GRAIN - 3] {
            let off = g * GRAIN;
            let len = GRAIN.min(size - off);
            img.write(off, pattern(s * 10 + g, len as usize))
                .await
                .expect("write");
        }
    }
    let head = read_all(&img).await;
    let r = img.defragment(&everything()).await.expect("defragment");
    assert!(r.objects_rewritten > 0, "{r:?}");
    assert_eq!(
        r.bytes_rewritten,
        OBJ + (OBJ - 1000),
        "first and last object: {r:?}"
    );
    assert_eq!(img.size(), size);
    assert_eq!(read_all(&img).await, head);
    img.self_check().expect("self_check");
}

#[tokio::test(start_paused = true)]
async fn a_background_pass_stops_writing_when_the_handle_closes() {
    let opts = ImageOptions {
        defrag_interval: Duration::from_secs(1),
        defrag: DefragOptions {
            min_reads: 2,
            bytes_per_sec: OBJ,
        },
        ..ImageOptions::default()
    };
    let (fault, store, img) = setup(opts).await;
    let head = fragment(&img, 6, 90).await;
    // The pass rewrites one 64 KiB object a second: close after two.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    img.clone().close().await.expect("close");
    let after_close = fault.counts();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        (fault.counts() - after_close).mutations,
        0,
        "wrote after close"
    );
    let img = store.open("img").await.expect("reopen");
    assert_eq!(read_all(&img).await, head);
    let r = img.defragment(&everything()).await.expect("rest");
    assert!(r.objects_rewritten > 0, "the pass was cut short: {r:?}");
}

/// The ticker holds the handle only while it rewrites an object: a client
/// that drops every handle without closing it does not leave a pass
/// writing for the rest of its pacing.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_a_background_pass() {
    let opts = ImageOptions {
        defrag_interval: Duration::from_secs(1),
        defrag: DefragOptions {
            min_reads: 2,
            bytes_per_sec: OBJ,
        },
        ..ImageOptions::default()
    };
    let (fault, _store, img) = setup(opts).await;
    fragment(&img, 6, 91).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mid_pass = fault.counts();
    img.flush().await.expect("flush");
    drop(img);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = fault.counts() - mid_pass;
    // The flush, and at most the object being rewritten when the last
    // handle went.
    assert!(
        after.mutations <= 1,
        "the pass outlived its handle: {after:?}"
    );
}

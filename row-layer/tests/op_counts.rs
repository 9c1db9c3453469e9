//! Cost claims of the design, proved by counting backend operations
//! (properties 2-5 of the ROW layer).

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::fault::{FaultBackend, OpCounts};
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{CreateOptions, Image, OwnerRequest, Store};
use std::sync::Arc;

async fn setup(size: u64) -> (Arc<FaultBackend>, Store, Image) {
    let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
    let store = Store::new(fault.clone() as Arc<dyn Backend>);
    store
        .create(
            "img",
            CreateOptions {
                size,
                object_size: 4 << 20,
                grain_size: 4096,
            },
        )
        .await
        .expect("create");
    let img = store.open("img").await.expect("open");
    (fault, store, img)
}

async fn counted<F: std::future::Future<Output = ()>>(fault: &FaultBackend, f: F) -> OpCounts {
    let before = fault.counts();
    f.await;
    fault.counts() - before
}

#[tokio::test]
async fn steady_state_write_is_one_op_after_1000_snapshots() {
    let (fault, _store, img) = setup(64 << 20).await;
    img.write(0, pattern(1, 8192)).await.expect("write");
    for i in 0..1000 {
        img.snap_create(&format!("s{i}")).await.expect("snap");
    }
    // First write to the object in the new epoch registers it once.
    let first = counted(&fault, async {
        img.write(0, pattern(2, 4096)).await.expect("write");
    })
    .await;
    assert_eq!(
        first.mutations, 2,
        "data op + one-time registration: {first:?}"
    );
    // Steady state: an aligned 4 KiB overwrite is exactly one backend op.
    let steady = counted(&fault, async {
        img.write(4096, pattern(3, 4096)).await.expect("write");
    })
    .await;
    assert_eq!(steady.total(), 1, "{steady:?}");
    assert_eq!(steady.mutations, 1);
    let again = counted(&fault, async {
        img.write(0, pattern(4, 4096)).await.expect("write");
    })
    .await;
    assert_eq!(again.total(), 1, "{again:?}");
}

#[tokio::test]
async fn read_cost_is_independent_of_snapshot_count() {
    let (fault, _store, img) = setup(64 << 20).await;
    img.write(0, pattern(1, 1 << 20)).await.expect("write");
    let before_snaps = counted(&fault, async {
        img.read(0, 1 << 20).await.expect("read");
    })
    .await;
    assert_eq!(
        before_snaps.total(),
        1,
        "one contiguous run, one read: {before_snaps:?}"
    );
    for i in 0..500 {
        img.write((i % 64) * 4096 + (2 << 20), pattern(i, 4096))
            .await
            .expect("write");
        img.snap_create(&format!("s{i}")).await.expect("snap");
    }
    let after = counted(&fault, async {
        img.read(0, 1 << 20).await.expect("read");
    })
    .await;
    assert_eq!(after, before_snaps, "read cost changed with 500 snapshots");
    // A range whose grains come from two epochs costs one read per source
    // when its runs lie at most 128 KiB apart (read_plan.rs).
    img.write(8192, pattern(9, 4096)).await.expect("write");
    let split = counted(&fault, async {
        img.read(0, 16384).await.expect("read");
    })
    .await;
    assert_eq!(
        split.reads, 2,
        "runs [0,8K) and [12K,16K) old share one read, [8K,12K) new"
    );
    // Farther apart, each old run costs its own read.
    img.write(16384, pattern(10, 256 << 10))
        .await
        .expect("write");
    let far = counted(&fault, async {
        img.read(0, 512 << 10).await.expect("read");
    })
    .await;
    assert_eq!(
        far.reads, 3,
        "old [0,8K)+[12K,16K), new [8K,12K)+[16K,272K), old [272K,512K): the old runs are 256 KiB apart"
    );
}

async fn metadata_cost(data_objects: u64, size: u64) -> (OpCounts, OpCounts, OpCounts) {
    let (fault, store, img) = setup(size).await;
    for o in 0..data_objects {
        img.write(o * (4 << 20), pattern(o, 64 * 1024))
            .await
            .expect("write");
    }
    img.snap_create("base").await.expect("snap");
    img.write(0, pattern(99, 4096)).await.expect("write");
    // The reclaimer runs in the background: let it finish outside each
    // measured window.
    img.reclaim().await.expect("reclaim");
    let snap = counted(&fault, async {
        img.snap_create("s").await.expect("snap");
    })
    .await;
    img.reclaim().await.expect("reclaim");
    let rollback = counted(&fault, async {
        img.snap_rollback("s").await.expect("rollback");
    })
    .await;
    img.reclaim().await.expect("reclaim");
    img.snap_set_protected("s", true).await.expect("protect");
    let clone = counted(&fault, async {
        store.clone_image("img", "s", "child").await.expect("clone");
    })
    .await;
    (snap, rollback, clone)
}

#[tokio::test]
async fn snapshot_rollback_and_clone_cost_does_not_grow_with_image_or_data() {
    let small = metadata_cost(1, 8 << 20).await;
    let large = metadata_cost(200, 1 << 30).await;
    assert_eq!(small.0, large.0, "snapshot create");
    assert_eq!(small.1, large.1, "rollback");
    assert_eq!(small.2, large.2, "clone");
    // Flush, epoch record, flush, header commit, flush.
    assert_eq!(
        small.0,
        OpCounts {
            reads: 0,
            metadata_reads: 0,
            mutations: 2,
            flushes: 3
        },
        "snapshot create"
    );
    // The header commit and its flush; the discarded head is deleted by
    // the background reclaimer.
    assert_eq!(
        small.1,
        OpCounts {
            reads: 0,
            metadata_reads: 0,
            mutations: 1,
            flushes: 1
        },
        "rollback"
    );
}

#[tokio::test]
async fn diff_costs_no_backend_ops_and_scales_with_changes() {
    let (fault, _store, img) = setup(1 << 30).await;
    for o in 0..100u64 {
        img.write(o * (4 << 20), pattern(o, 4096))
            .await
            .expect("write");
    }
    img.snap_create("a").await.expect("snap");
    for s in 0..200 {
        img.snap_create(&format!("x{s}")).await.expect("snap");
    }
    img.write(5 * 4096, Bytes::from(vec![1u8; 3 * 4096]))
        .await
        .expect("write");
    img.discard(40 << 20, 4096).await.expect("discard");
    let before = fault.counts();
    let d = img.diff(Some("a")).expect("diff");
    assert_eq!(
        fault.counts() - before,
        OpCounts::default(),
        "diff touched the backend"
    );
    assert_eq!(
        d,
        vec![
            row_layer::DiffExtent {
                offset: 5 * 4096,
                length: 3 * 4096,
                exists: true
            },
            row_layer::DiffExtent {
                offset: 40 << 20,
                length: 4096,
                exists: false
            },
        ]
    );
    // Changed grains only, regardless of the 100 other written objects.
    let (changed, _) = img.changed_grains(Some("a")).expect("changed");
    assert_eq!(changed.len(), 4);
}

#[tokio::test]
async fn removing_snapshots_reclaims_superseded_data() {
    let mem = Arc::new(MemBackend::new());
    let store = Store::new(mem.clone() as Arc<dyn Backend>);
    store
        .create("img", small_opts(4 * OBJ))
        .await
        .expect("create");
    let img = store.open("img").await.expect("open");
    // Rolling "snapshot n, overwrite, delete n-5" backups.
    for n in 0..30u64 {
        img.write(0, pattern(n, 4 * OBJ as usize))
            .await
            .expect("write");
        img.snap_create(&format!("s{n}")).await.expect("snap");
        if n >= 5 {
            img.snap_remove(&format!("s{}", n - 5))
                .await
                .expect("remove");
        }
    }
    img.reclaim().await.expect("reclaim");
    let usage = img.space_usage().expect("usage");
    assert_eq!(usage.head_used, 4 * OBJ);
    // Head and five snapshots each pin one full copy at most.
    assert!(
        mem.stored_bytes() <= 6 * 4 * OBJ,
        "stored {} bytes for 6 live versions of {} bytes",
        mem.stored_bytes(),
        4 * OBJ
    );
    assert_eq!(usage.snapshots.len(), 5);
}

#[tokio::test]
async fn first_writes_to_many_objects_share_one_registration() {
    let (fault, _store, img) = setup(256 << 20).await;
    img.snap_create("s").await.expect("snap");
    // One request spanning 16 objects: 16 data ops, one batched header op.
    let c = counted(&fault, async {
        img.write(0, pattern(5, 16 * (4 << 20)))
            .await
            .expect("write");
    })
    .await;
    assert_eq!(c.mutations, 17, "{c:?}");
    // Concurrent single-object writes batch too.
    img.snap_create("t").await.expect("snap");
    let c = counted(&fault, async {
        let writes = (0..16u64).map(|o| img.write(o * (4 << 20), pattern(o, 4096)));
        futures::future::try_join_all(writes).await.expect("writes");
    })
    .await;
    assert!(
        c.mutations < 16 + 16,
        "registrations were not batched: {c:?}"
    );
}

#[tokio::test]
async fn merging_a_hidden_epoch_costs_its_live_runs_plus_fixed_commits() {
    let (fault, _store, img) = setup(4 * (4 << 20)).await;
    img.write(0, pattern(1, 4 * (4 << 20))).await.expect("fill");
    img.snap_create("a").await.expect("snap");
    // Epoch 2: one run of two grains in object 0, one grain in object 2.
    img.write(8192, pattern(2, 8192)).await.expect("write");
    img.write(2 * (4 << 20), pattern(3, 4096))
        .await
        .expect("write");
    img.snap_create("b").await.expect("snap");
    img.write(3 * (4 << 20), pattern(4, 4096))
        .await
        .expect("write");
    img.snap_create("c").await.expect("snap");
    img.snap_remove("a").await.expect("remove a");
    img.reclaim().await.expect("reclaim");
    img.snap_remove("b").await.expect("remove b");
    let c = counted(&fault, async {
        img.reclaim().await.expect("reclaim");
    })
    .await;
    // Trim first: one flush, then epoch 1 loses the grain `c` rewrote (one
    // punch op on object 3, its record rewritten).
    // Merge of epoch 2 into epoch 1: epoch 1's record, flush; one read per
    // run (objects 0 and 2) and one op per object; flush; the splice's
    // header commit and flush.
    // Garbage deletion of epoch 2: the committed header re-read (payload,
    // entries listing, payload again), the record read, touch-key listing,
    // flush, one removal per object (2), flush, record removal, checkpoint
    // removal (none was written: idempotent), header commit.
    assert_eq!(c.reads, 2 + 2 + 1, "{c:?}");
    assert_eq!(c.metadata_reads, 1 + 1, "{c:?}");
    assert_eq!(c.mutations, 2 + (1 + 2 + 1) + (2 + 1 + 1 + 1), "{c:?}");
    assert_eq!(c.flushes, 1 + (1 + 1 + 1) + 2, "{c:?}");
    assert_eq!(img.header().epochs.len(), 3, "epoch 2 merged into epoch 1");
}

#[tokio::test]
async fn sequential_reads_after_random_overwrites_cost_one_read_per_source_span() {
    let (fault, _store, img) = setup(16 << 20).await;
    img.write(0, pattern(1, 16 << 20)).await.expect("fill");
    // 32 snapshots, each followed by 64 seeded random 4 KiB overwrites.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for s in 0..32u64 {
        img.snap_create(&format!("s{s}")).await.expect("snap");
        for i in 0..64u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let g = x % 4096;
            img.write(g * 4096, pattern(s * 100 + i, 4096))
                .await
                .expect("write");
        }
    }
    let c = counted(&fault, async {
        for chunk in 0..16u64 {
            img.read(chunk << 20, 1 << 20).await.expect("read");
        }
    })
    .await;
    // One read per run of same-source grains would be 2577 (measured with
    // read_plan's gap set to 0); a never-snapshotted image reads each MiB
    // in one. Runs of a source at most 128 KiB apart share a read: 1099.
    assert_eq!(c.reads, 1099, "{c:?}");
    assert_eq!(c.total(), c.reads, "{c:?}");

    // Defragmentation reads each object through the head (the same plan
    // as a whole-object read) and writes it back in one op; the head
    // epoch already holds an object of each, so nothing registers.
    let mut report = None;
    let d = counted(&fault, async {
        report = Some(img.defragment(&row_layer::DefragOptions::default()).await);
    })
    .await;
    let r = report.expect("ran").expect("defragment");
    assert_eq!(r.objects_rewritten, 4, "{r:?}");
    assert_eq!(r.bytes_rewritten, 16 << 20, "{r:?}");
    assert_eq!(d.reads, r.reads_before, "{d:?} {r:?}");
    assert_eq!(d.mutations, 4, "{d:?}");
    assert_eq!(d.total(), d.reads + d.mutations, "{d:?}");
    // Afterwards each MiB is one read, as on a never-snapshotted image.
    let c = counted(&fault, async {
        for chunk in 0..16u64 {
            img.read(chunk << 20, 1 << 20).await.expect("read");
        }
    })
    .await;
    assert_eq!(c.reads, 16, "{c:?}");
    assert_eq!(c.total(), 16, "{c:?}");
}

/// Writes one grain into each of objects `objs` (4 MiB objects).
/// The ops of opening image "img" of `store` and closing it again.
async fn open_close_counts(fault: &FaultBackend, store: &Store) -> OpCounts {
    counted(fault, async {
        let img = store.open("img").await.expect("open");
        img.close().await.expect("close");
    })
    .await
}

async fn touch_objects(img: &Image, objs: std::ops::Range<u64>) {
    for o in objs {
        img.write(o * (4 << 20), pattern(o, 4096))
            .await
            .expect("write");
    }
}

/// A head checkpoint costs a fixed number of ops, and afterwards open
/// lists the grain omaps only of the objects registered since: open of
/// an image with 200 objects written since its last snapshot and 3 after
/// its checkpoint costs what it costs with 3 written and no checkpoint,
/// plus the checkpoint read and the stale-key probe (DESIGN §4).
#[tokio::test]
async fn open_after_a_checkpoint_lists_only_objects_registered_since() {
    let (fault, store, img) = setup(1 << 30).await;
    touch_objects(&img, 0..200).await;
    let ckpt = counted(&fault, async {
        img.checkpoint().await.expect("checkpoint")
    })
    .await;
    // Flush, the record, flush, the removal of the covered touch keys.
    assert_eq!(
        ckpt,
        OpCounts {
            reads: 0,
            metadata_reads: 0,
            mutations: 2,
            flushes: 2
        },
        "checkpoint"
    );
    // An object written before the checkpoint registers again, once.
    let again = counted(&fault, async {
        img.write(0, pattern(9, 4096)).await.expect("write");
        img.write(4096, pattern(10, 4096)).await.expect("write");
    })
    .await;
    assert_eq!(
        again,
        OpCounts {
            reads: 0,
            metadata_reads: 0,
            mutations: 3,
            flushes: 1
        },
        "re-registration: header op + flush, then two data ops"
    );
    touch_objects(&img, 200..202).await;
    img.close().await.expect("close");
    let reopened = open_close_counts(&fault, &store).await;

    // The same history without a checkpoint, on a second store.
    let (fault2, store2, img2) = setup(1 << 30).await;
    touch_objects(&img2, 0..3).await;
    img2.close().await.expect("close");
    let few = open_close_counts(&fault2, &store2).await;
    let (fault3, store3, img3) = setup(1 << 30).await;
    touch_objects(&img3, 0..202).await;
    img3.close().await.expect("close");
    let many = open_close_counts(&fault3, &store3).await;
    // Without a checkpoint, open lists every touched object.
    assert_eq!(
        many.metadata_reads - few.metadata_reads,
        199,
        "{many:?} {few:?}"
    );
    // With one, open also reads the record and probes once for keys a
    // clean-up missed: two ops more than with only 3 objects written and
    // no checkpoint. Reads: id object, header payload (twice, around the
    // listing of its entries), record. Metadata reads: the header's
    // entries, the record's version before and after paging the keys, the
    // probe, one page of keys, 3 listings. The owner xattr and its flush.
    assert_eq!(
        reopened,
        OpCounts {
            reads: few.reads + 1,
            metadata_reads: few.metadata_reads + 1,
            ..few
        }
    );
    assert_eq!(
        reopened,
        OpCounts {
            reads: 1 + 2 + 1,
            metadata_reads: 1 + 2 + 1 + 1 + 3,
            mutations: 1,
            flushes: 1
        }
    );
}

/// The record pack (pack.rs): a pass that packs N records costs a flush,
/// N record reads and one header op per 256 entries; afterwards open reads
/// no record object, and otherwise costs what it cost before (the pack is
/// listed either way).
#[tokio::test]
async fn packing_costs_one_read_per_record_and_open_then_reads_none() {
    const SNAPS: u64 = 40;
    let opened = |pack_min_epochs: usize| async move {
        let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
        let store = Store::new(fault.clone() as Arc<dyn Backend>).with_image_options(
            row_layer::ImageOptions {
                pack_min_epochs,
                ..row_layer::ImageOptions::default()
            },
        );
        store
            .create("img", CreateOptions::with_size(64 << 20))
            .await
            .expect("create");
        let img = store.open("img").await.expect("open");
        for s in 0..SNAPS - 1 {
            img.write(s * 4096, pattern(s, 4096)).await.expect("write");
            img.snap_create(&format!("s{s}")).await.expect("snap");
        }
        img.reclaim().await.expect("reclaim");
        img.write(0, pattern(99, 4096)).await.expect("write");
        img.snap_create("last").await.expect("snap");
        let pass = counted(&fault, async { img.reclaim().await.expect("reclaim") }).await;
        img.close().await.expect("close");
        (pass, open_close_counts(&fault, &store).await)
    };
    let (pass, packed) = opened(SNAPS as usize).await;
    let (idle, plain) = opened(0).await;
    assert_eq!(idle, OpCounts::default(), "nothing to reclaim or pack");
    assert_eq!(
        pass,
        OpCounts {
            reads: SNAPS,
            metadata_reads: 0,
            mutations: 1,
            flushes: 1
        },
        "pack of {SNAPS} records"
    );
    assert_eq!(
        packed,
        OpCounts {
            reads: plain.reads - SNAPS,
            ..plain
        }
    );
    // Reads: id object, header payload twice. Metadata reads: the header's
    // entries (80 < one page), the pack, the checkpoint stat twice, one
    // (empty) page of touch keys: the head is empty after "last".
    assert_eq!(
        packed,
        OpCounts {
            reads: 3,
            metadata_reads: 1 + 1 + 2 + 1,
            mutations: 1,
            flushes: 1
        }
    );
}

/// The ops of `store.execute(req)` on image "img" when nobody owns it.
async fn executed_counts(fault: &FaultBackend, store: &Store, req: OwnerRequest) -> OpCounts {
    counted(fault, async {
        store.execute("img", req).await.expect("execute");
    })
    .await
}

/// A rollback or a snapshot removal carried out by a short-lived process
/// (the CLI on an image nobody serves) costs the same whatever the
/// discarded data: the garbage is left to the next owner's reclaimer
/// instead of being deleted before the process exits. Both heads are
/// checkpointed so that open lists the same (no) objects.
#[tokio::test]
async fn unowned_rollback_and_snapshot_removal_leave_the_garbage_to_the_next_owner() {
    let mut costs = Vec::new();
    for objects in [1, 60] {
        let (fault, store, img) = setup(1 << 30).await;
        touch_objects(&img, 0..objects).await;
        img.snap_create("s").await.expect("snap");
        touch_objects(&img, 0..objects).await;
        img.snap_create("t").await.expect("snap");
        touch_objects(&img, 0..objects).await;
        img.checkpoint().await.expect("checkpoint");
        img.close().await.expect("close");
        let req = OwnerRequest::SnapRollback {
            name: "t".into(),
            force: false,
        };
        let rollback = executed_counts(&fault, &store, req).await;
        let remove = executed_counts(&fault, &store, OwnerRequest::SnapRemove("t".into())).await;
        // The next owner gets the space back.
        let img = store.open("img").await.expect("open");
        img.reclaim().await.expect("reclaim");
        assert!(img.header().garbage.is_empty(), "garbage never deleted");
        img.close().await.expect("close");
        costs.push((rollback, remove));
    }
    assert_eq!(costs[0], costs[1], "rollback and removal, 1 vs 60 objects");
}

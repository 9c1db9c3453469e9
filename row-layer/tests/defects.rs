//! One test per data-loss defect found in review (issue 10). Each failed on
//! the code before its fix; they stay as regression tests.
//!
//! Faults come from `FaultBackend`'s named failpoints: a call can fail before
//! it reaches the store, land and still report an error (a lost reply), or
//! land late in a task of its own (a submitted RADOS op whose caller went
//! away).

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::fault::{FaultBackend, FaultEffect, FaultPoint, FaultRule};
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{ErrorKind, Store};
use std::sync::Arc;
use std::time::Duration;

/// A store over a fault wrapper over memory, and the wrapper.
fn faulty() -> (Store, Arc<FaultBackend>) {
    let fault = Arc::new(FaultBackend::new(Arc::new(MemBackend::new())));
    let store = Store::new(fault.clone() as Arc<dyn Backend>);
    (store, fault)
}

/// The name fragment of image `img`'s data objects for logical object `o`.
async fn data_oid_part(store: &Store, img: &str, o: u64) -> String {
    let id = store.image_id(img).await.expect("id");
    format!("rbd_row_data.{id}.{o:016x}.")
}

/// Defect 1a: a piece of a multi-object write that lands but reports an
/// error skipped the in-memory update; a later discard then wrote no zero
/// key for it, and the "discarded" data came back after a reopen.
#[tokio::test]
async fn write_error_after_apply_does_not_resurrect_after_discard() {
    let (store, fault) = faulty();
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    let obj1 = data_oid_part(&store, "img", 1).await;
    fault.add_rule(FaultRule::once(
        FaultPoint::Mutation,
        &obj1,
        FaultEffect::FailAfterApply(ErrorKind::Transient),
    ));
    // Spans objects 0 and 1; object 1's op lands but reports an error.
    let r = img.write(OBJ / 2, pattern(1, OBJ as usize)).await;
    assert!(r.is_err(), "the injected error must reach the caller");
    img.discard(0, 2 * OBJ).await.expect("discard");
    img.flush().await.unwrap();
    assert_eq!(
        img.read(0, 2 * OBJ).await.unwrap(),
        vec![0u8; 2 * OBJ as usize]
    );
    img.close().await.unwrap();
    let img = store.open("img").await.unwrap();
    img.self_check().unwrap();
    assert!(
        img.read(0, 2 * OBJ).await.unwrap().iter().all(|&b| b == 0),
        "discarded data came back after reopen"
    );
}

/// Defect 1b: when one piece of a multi-object write failed, its siblings'
/// futures were dropped while their ops were still in flight; the gate was
/// released, a snapshot sealed the epoch, and the late op then changed the
/// snapshot's data.
#[tokio::test]
async fn failed_sibling_does_not_let_a_late_op_change_a_snapshot() {
    let (store, fault) = faulty();
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, 2 * OBJ as usize)).await.unwrap();
    let obj0 = data_oid_part(&store, "img", 0).await;
    let obj1 = data_oid_part(&store, "img", 1).await;
    // Object 0's op is submitted first and lands late; object 1's fails.
    fault.add_rule(FaultRule::once(
        FaultPoint::Mutation,
        &obj0,
        FaultEffect::Delay(Duration::from_millis(300)),
    ));
    fault.add_rule(FaultRule::once(
        FaultPoint::Mutation,
        &obj1,
        FaultEffect::Fail(ErrorKind::Io),
    ));
    let r = img.write(0, pattern(2, 2 * OBJ as usize)).await;
    assert!(r.is_err());
    img.snap_create("s").await.unwrap();
    let snap = store.open_snapshot("img", "s").await.unwrap();
    let first = read_all(&snap).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let snap = store.open_snapshot("img", "s").await.unwrap();
    assert!(
        read_all(&snap).await == first,
        "a snapshot changed after it was taken"
    );
    img.self_check().unwrap();
}

/// Defect 1c: a caller that drops its write future (a client disconnect, a
/// timeout) left the op in flight without the gate; a snapshot taken next
/// was changed when the op landed.
#[tokio::test]
async fn dropped_write_future_cannot_change_a_later_snapshot() {
    let (store, fault) = faulty();
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, OBJ as usize)).await.unwrap();
    let obj0 = data_oid_part(&store, "img", 0).await;
    fault.add_rule(FaultRule::once(
        FaultPoint::Mutation,
        &obj0,
        FaultEffect::Delay(Duration::from_millis(300)),
    ));
    let w = img.write(0, pattern(2, OBJ as usize));
    assert!(tokio::time::timeout(Duration::from_millis(50), w)
        .await
        .is_err());
    img.snap_create("s").await.unwrap();
    let snap = store.open_snapshot("img", "s").await.unwrap();
    let first = read_all(&snap).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let snap = store.open_snapshot("img", "s").await.unwrap();
    assert!(
        read_all(&snap).await == first,
        "a snapshot changed after it was taken"
    );
    // The dropped write either fully happened before the snapshot or not.
    let head = read_all(&img).await;
    assert_eq!(head, first);
    img.self_check().unwrap();
}

/// Defect 2: a flush that failed after a successful header commit left the
/// handle's memory at the old header, so later writes went into the epoch
/// the disk already calls sealed, changing the snapshot.
#[tokio::test]
async fn flush_failure_after_snapshot_commit_never_changes_the_snapshot() {
    let (store, fault) = faulty();
    store.create("img", small_opts(2 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    let before = pattern(1, OBJ as usize);
    img.write(0, before.clone()).await.unwrap();
    // snap_create flushes before the record, before the commit and after it:
    // fail the third.
    fault.add_rule(
        FaultRule::once(FaultPoint::Flush, "", FaultEffect::Fail(ErrorKind::Io)).after(2),
    );
    let r = img.snap_create("s").await;
    assert!(r.is_err(), "the failed flush must be reported");
    // Whatever the handle does now, the snapshot must not change.
    let _ = img.write(0, pattern(2, OBJ as usize)).await;
    let _ = img.flush().await;
    let snap = store.open_snapshot("img", "s").await.unwrap();
    assert!(
        snap.read(0, OBJ).await.unwrap() == before,
        "the snapshot changed after its commit"
    );
    drop(img);
    // Reopening (a takeover of the dropped handle) sees a consistent image.
    let img = store.open("img").await.unwrap();
    img.self_check().unwrap();
    let snap = store.open_snapshot("img", "s").await.unwrap();
    assert!(snap.read(0, OBJ).await.unwrap() == before);
}

/// Defect 2, the other transitions: rollback, resize and remove also leave
/// memory behind the disk after a failed flush.
#[tokio::test]
async fn flush_failure_after_rollback_commit_keeps_the_handle_consistent() {
    let (store, fault) = faulty();
    store.create("img", small_opts(2 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    let a = pattern(1, OBJ as usize);
    img.write(0, a.clone()).await.unwrap();
    img.snap_create("s").await.unwrap();
    img.write(0, pattern(2, OBJ as usize)).await.unwrap();
    // Rollback commits, then flushes: fail that flush.
    fault.add_rule(FaultRule::once(
        FaultPoint::Flush,
        "",
        FaultEffect::Fail(ErrorKind::Io),
    ));
    let _ = img.snap_rollback("s").await;
    // A write now must not go into the discarded (garbage) head.
    let c = pattern(3, OBJ as usize);
    let wrote = img.write(0, c.clone()).await.is_ok() && img.flush().await.is_ok();
    drop(img);
    let img = store.open("img").await.unwrap();
    img.self_check().unwrap();
    let got = img.read(0, OBJ).await.unwrap();
    if wrote {
        assert!(got == c, "an acknowledged, flushed write was lost");
    } else {
        assert!(got == a, "head after the rollback is neither old nor new");
    }
    let snap = store.open_snapshot("img", "s").await.unwrap();
    assert!(snap.read(0, OBJ).await.unwrap() == a);
}

/// Defect 3: the range check ran before the gate, so a write queued behind
/// a shrink landed past the new end.
#[tokio::test]
async fn write_queued_behind_a_shrink_is_checked_against_the_new_size() {
    let (store, fault) = faulty();
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, 4 * OBJ as usize)).await.unwrap();
    // Slow down the shrink's first flush so the write queues behind it.
    fault.add_rule(FaultRule::once(
        FaultPoint::Flush,
        "",
        FaultEffect::Delay(Duration::from_millis(200)),
    ));
    let shrink = {
        let img = img.clone();
        tokio::spawn(async move { img.resize(OBJ).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = img
        .write(3 * OBJ, Bytes::from(vec![7u8; GRAIN as usize]))
        .await;
    shrink.await.unwrap().unwrap();
    let e = w.expect_err("a write past the new end must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    img.resize(4 * OBJ).await.unwrap();
    assert!(
        img.read(OBJ, 3 * OBJ)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "data past a shrink's end came back on regrow"
    );
    img.self_check().unwrap();
}

/// The reproduction from issue 10: a clone with a snapshot is flattened,
/// the parent snapshot is removed, and the clone's snapshot lost its view of
/// the parent data.
#[tokio::test]
async fn flatten_keeps_the_clones_snapshots_intact() {
    let store = Store::new(Arc::new(MemBackend::new()));
    store.create("base", small_opts(4 * OBJ)).await.unwrap();
    let base = store.open("base").await.unwrap();
    let gold = pattern(1, 4 * OBJ as usize);
    base.write(0, gold.clone()).await.unwrap();
    base.snap_create("gold").await.unwrap();
    base.snap_set_protected("gold", true).await.unwrap();
    store.clone_image("base", "gold", "vm1").await.unwrap();
    let vm1 = store.open("vm1").await.unwrap();
    vm1.write(OBJ, pattern(2, GRAIN as usize)).await.unwrap();
    vm1.snap_create("s").await.unwrap();
    let before = read_all(&store.open_snapshot("vm1", "s").await.unwrap()).await;
    vm1.write(2 * OBJ, pattern(3, GRAIN as usize))
        .await
        .unwrap();
    let head_before = read_all(&vm1).await;
    vm1.flatten().await.unwrap();
    assert!(read_all(&vm1).await == head_before);
    base.snap_set_protected("gold", false).await.unwrap();
    base.snap_remove("gold").await.unwrap();
    base.write(0, pattern(9, 4 * OBJ as usize)).await.unwrap();
    base.snap_create("later").await.unwrap();
    vm1.self_check().unwrap();
    let after = read_all(&store.open_snapshot("vm1", "s").await.unwrap()).await;
    assert!(after == before, "the clone's snapshot lost parent data");
    assert!(read_all(&vm1).await == head_before);
    vm1.flush().await.unwrap();
    vm1.clone().close().await.unwrap();
    let vm1 = store.open("vm1").await.unwrap();
    vm1.self_check().unwrap();
    assert!(read_all(&vm1).await == head_before);
    vm1.snap_rollback("s").await.unwrap();
    assert!(read_all(&vm1).await == before);
}

/// A full pool refuses a header commit (ENOSPC/EDQUOT: nothing applied).
/// That outcome is known, so the handle must stay usable instead of being
/// poisoned, and the refused snapshot must not exist.
#[tokio::test]
async fn a_header_commit_refused_for_space_does_not_poison() {
    let (store, fault) = faulty();
    store.create("img", small_opts(2 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, OBJ as usize)).await.unwrap();
    fault.add_rule(FaultRule::once(
        FaultPoint::Mutation,
        "rbd_row_header",
        FaultEffect::Fail(ErrorKind::NoSpace),
    ));
    let e = img.snap_create("s").await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(img.snap_list().is_empty());
    // Space is back: the same handle goes on.
    img.write(0, pattern(2, OBJ as usize)).await.unwrap();
    img.snap_create("s").await.unwrap();
    img.self_check().unwrap();
}

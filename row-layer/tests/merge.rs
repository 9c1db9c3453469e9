//! Hidden epochs merge into their hidden parent (merge.rs), so a rolling
//! snapshot schedule (ceph#49837: create n, write, remove n-5) keeps the
//! lineage, the object count and the space bounded by the live views, and
//! handles that loaded the map before a merge still read the same bytes.

mod common;

use common::*;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::Backend;
use row_layer::{Image, ImageOptions, Store};
use std::collections::BTreeMap;
use std::sync::Arc;

const OBJECTS: u64 = 16;
const KEEP: u64 = 5;

fn store(mem: &Arc<MemBackend>) -> Store {
    Store::new(mem.clone() as Arc<dyn Backend>).with_image_options(ImageOptions {
        reclaim_ops_per_sec: 0,
        ..ImageOptions::default()
    })
}

/// Writes `n` grains at pseudo-random places (seeded by `round`).
async fn scatter(img: &Image, round: u64, n: u64) {
    let grains = OBJECTS * OBJ / GRAIN;
    let mut x = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let g = x % grains;
        img.write(g * GRAIN, pattern(round * 1000 + i, GRAIN as usize))
            .await
            .unwrap();
    }
}

/// Data objects (`rbd_row_data.*`) the store holds.
async fn data_objects(mem: &MemBackend) -> usize {
    mem.list("rbd_row_data.").await.unwrap().len()
}

#[tokio::test]
async fn rolling_snapshots_keep_lineage_and_objects_bounded() {
    let mem = Arc::new(MemBackend::new());
    let store = store(&mem);
    store
        .create("img", small_opts(OBJECTS * OBJ))
        .await
        .unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(7, (OBJECTS * OBJ) as usize))
        .await
        .unwrap();
    let mut expected: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut objects_at = BTreeMap::new();
    for r in 0..60u64 {
        img.snap_create(&format!("s{r}")).await.unwrap();
        expected.insert(r, read_all(&img).await);
        scatter(&img, r, 24).await;
        if r >= KEEP {
            img.snap_remove(&format!("s{}", r - KEEP)).await.unwrap();
            expected.remove(&(r - KEEP));
        }
        img.reclaim().await.unwrap();
        img.self_check().unwrap();
        if r > KEEP {
            // Live snapshots, the head, and one hidden base below them.
            assert_eq!(
                img.header().epochs.len() as u64,
                KEEP + 2,
                "round {r}: hidden epochs were left unmerged"
            );
        }
        objects_at.insert(r, data_objects(&mem).await);
    }
    // Every epoch holds at most one object per logical object.
    assert!(
        objects_at[&59] as u64 <= (KEEP + 2) * OBJECTS,
        "objects per round: {objects_at:?}"
    );
    for (r, bytes) in &expected {
        let snap = store.open_snapshot("img", &format!("s{r}")).await.unwrap();
        assert!(read_all(&snap).await == *bytes, "snapshot s{r} changed");
    }
    img.close().await.unwrap();
    let reopened = store.open("img").await.unwrap();
    reopened.self_check().unwrap();
}

/// Writes a distinct pattern into object `r` and snapshots, for `rounds`.
async fn layered(img: &Image, rounds: u64) {
    img.write(0, pattern(99, (OBJECTS * OBJ) as usize))
        .await
        .unwrap();
    for r in 0..rounds {
        img.snap_create(&format!("s{r}")).await.unwrap();
        img.write(r * OBJ, pattern(r, OBJ as usize)).await.unwrap();
    }
    img.snap_create("last").await.unwrap();
}

#[tokio::test]
async fn snapshot_handle_opened_before_a_merge_reads_the_same_after_it() {
    let mem = Arc::new(MemBackend::new());
    let store = store(&mem);
    store
        .create("img", small_opts(OBJECTS * OBJ))
        .await
        .unwrap();
    let img = store.open("img").await.unwrap();
    layered(&img, 6).await;
    let old_view = store.open_snapshot("img", "last").await.unwrap();
    let want = read_all(&old_view).await;
    let epochs_before = img.header().epochs.len();
    for r in 0..6 {
        img.snap_remove(&format!("s{r}")).await.unwrap();
    }
    img.reclaim().await.unwrap();
    assert_eq!(
        img.header().epochs.len(),
        3,
        "from {epochs_before} epochs: a merged base, `last` and the head"
    );
    // The old view's epochs 2..7 are gone from the store; it must notice.
    assert!(
        read_all(&old_view).await == want,
        "stale view read wrong data"
    );
    let fresh = store.open_snapshot("img", "last").await.unwrap();
    assert!(read_all(&fresh).await == want);
}

#[tokio::test]
async fn clone_opened_before_its_parent_merges_reads_the_same_after_it() {
    let mem = Arc::new(MemBackend::new());
    let store = store(&mem);
    store
        .create("base", small_opts(OBJECTS * OBJ))
        .await
        .unwrap();
    let base = store.open("base").await.unwrap();
    layered(&base, 6).await;
    base.snap_set_protected("last", true).await.unwrap();
    store.clone_image("base", "last", "child").await.unwrap();
    let child = store.open("child").await.unwrap();
    child.write(0, pattern(500, GRAIN as usize)).await.unwrap();
    let want = read_all(&child).await;
    for r in 0..6 {
        base.snap_remove(&format!("s{r}")).await.unwrap();
    }
    base.reclaim().await.unwrap();
    assert_eq!(base.header().epochs.len(), 3, "the parent merged");
    assert!(read_all(&child).await == want, "clone read wrong data");
    // A sub-grain write copies the old grain contents up from the parent.
    child.write(5 * OBJ + 100, pattern(501, 10)).await.unwrap();
    let mut want = want;
    want[(5 * OBJ + 100) as usize..(5 * OBJ + 110) as usize].copy_from_slice(&pattern(501, 10));
    assert!(read_all(&child).await == want, "copy-up used a stale map");
    child.self_check().unwrap();
}

#[tokio::test]
async fn a_merge_keeps_discards_of_the_merged_epoch() {
    let mem = Arc::new(MemBackend::new());
    let store = store(&mem);
    store
        .create("img", small_opts(OBJECTS * OBJ))
        .await
        .unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, (OBJECTS * OBJ) as usize))
        .await
        .unwrap();
    img.snap_create("a").await.unwrap();
    img.discard(2 * OBJ, 3 * OBJ).await.unwrap();
    img.write_zeroes(8 * OBJ + GRAIN, GRAIN).await.unwrap();
    img.snap_create("b").await.unwrap();
    img.write(OBJ, pattern(2, GRAIN as usize)).await.unwrap();
    img.snap_create("c").await.unwrap();
    let want = read_all(&store.open_snapshot("img", "c").await.unwrap()).await;
    let stored = mem.stored_bytes();
    img.snap_remove("a").await.unwrap();
    img.snap_remove("b").await.unwrap();
    img.reclaim().await.unwrap();
    assert_eq!(img.header().epochs.len(), 3);
    let c = store.open_snapshot("img", "c").await.unwrap();
    assert!(read_all(&c).await == want, "discarded ranges came back");
    assert!(
        mem.stored_bytes() + 3 * OBJ <= stored,
        "discarded bytes still stored"
    );
    img.self_check().unwrap();
}

/// A read-only view opened while the owner's reclaimer deletes an epoch the
/// view's header read still named (10,000-snapshot bench: "epoch record ...
/// of a sealed epoch is missing") must load the newer map, not fail.
#[tokio::test]
async fn read_only_open_racing_reclaim_reloads_the_header() {
    use row_layer::backend::fault::{FaultBackend, FaultEffect, FaultPoint, FaultRule};
    use std::time::Duration;
    let mem = Arc::new(MemBackend::new());
    let fault = Arc::new(FaultBackend::new(mem.clone() as Arc<dyn Backend>));
    let store = Store::new(fault.clone() as Arc<dyn Backend>).with_image_options(ImageOptions {
        reclaim_ops_per_sec: 0,
        ..ImageOptions::default()
    });
    store.create("img", small_opts(4 * OBJ)).await.unwrap();
    let img = store.open("img").await.unwrap();
    img.write(0, pattern(1, GRAIN as usize)).await.unwrap();
    img.snap_create("s1").await.unwrap();
    img.write(0, pattern(2, GRAIN as usize)).await.unwrap();
    img.snap_create("s2").await.unwrap();
    img.write(GRAIN, pattern(3, GRAIN as usize)).await.unwrap();
    img.reclaim().await.unwrap();
    // The view's two record reads (s1's and s2's epochs) land after the
    // reclaimer removed s1's epoch; the reclaimer's own reads are not held.
    fault.add_rule(FaultRule {
        times: 2,
        ..FaultRule::once(
            FaultPoint::Read,
            "rbd_row_epoch.",
            FaultEffect::Delay(Duration::from_millis(300)),
        )
    });
    let opening = tokio::spawn({
        let store = store.clone();
        async move { store.open_head_read_only("img").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    img.snap_remove("s1").await.unwrap();
    img.reclaim().await.unwrap();
    let gone = mem.list("rbd_row_epoch.").await.unwrap().len();
    assert_eq!(gone, 1, "s1's epoch record was removed (only s2's is left)");
    let view = opening.await.unwrap().expect("open while reclaiming");
    fault.clear_rules();
    let got = view.read(0, 2 * GRAIN).await.unwrap();
    let mut want = pattern(2, GRAIN as usize).to_vec();
    want.extend_from_slice(&pattern(3, GRAIN as usize));
    assert_eq!(got.as_ref(), &want[..]);
    view.self_check().unwrap();
}

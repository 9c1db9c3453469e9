//! The record pack (pack.rs): copies of the sealed epoch records in the
//! header's omap, so that open lists them instead of reading one object per
//! epoch. A copy must never be stale: views opened after merges rewrote
//! packed records read what they read before, every entry equals its
//! record object, and fsck finds (and repairs) entries that are not copies.

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::ext::BackendExt;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::{Action, Backend, WriteOp};
use row_layer::fsck::{check_store, FindingKind};
use row_layer::pack::{pack_key, parse_pack_key, PACK_PREFIX};
use row_layer::records::{EpochDelta, EpochState};
use row_layer::{layout, Epoch, Image, ImageOptions, Store};
use std::collections::BTreeMap;
use std::sync::Arc;

fn store(mem: &Arc<MemBackend>, pack_min_epochs: usize) -> Store {
    Store::new(mem.clone() as Arc<dyn Backend>).with_image_options(ImageOptions {
        reclaim_ops_per_sec: 0,
        pack_min_epochs,
        ..ImageOptions::default()
    })
}

/// The pack entries of `img`, by epoch.
async fn entries(mem: &MemBackend, img: &Image) -> BTreeMap<Epoch, Bytes> {
    let hdr = layout::header_object(img.id());
    let all = mem.omap_all(&hdr, PACK_PREFIX).await.expect("list pack");
    all.into_iter()
        .map(|(k, v)| (parse_pack_key(&k).expect("pack key"), v))
        .collect()
}

fn sealed(img: &Image) -> Vec<Epoch> {
    let h = img.header();
    h.epochs
        .iter()
        .filter(|(_, m)| m.state == EpochState::Sealed)
        .map(|(e, _)| *e)
        .collect()
}

/// Every entry is byte for byte its epoch's record object.
async fn assert_copies(mem: &MemBackend, img: &Image) {
    for (e, bytes) in entries(mem, img).await {
        let rec = mem
            .read_all(&layout::epoch_object(img.id(), e))
            .await
            .expect("record object");
        assert_eq!(rec, bytes, "pack entry of epoch {e} is not a copy");
    }
}

/// Snapshots s{from}.., each after writes to two grains (one shared).
async fn history(img: &Image, from: u64, n: u64) -> BTreeMap<String, Vec<u8>> {
    let mut snaps = BTreeMap::new();
    for i in from..from + n {
        img.write(0, pattern(i, GRAIN as usize))
            .await
            .expect("write");
        img.write((1 + i) * GRAIN, pattern(100 + i, GRAIN as usize))
            .await
            .expect("write");
        let name = format!("s{i}");
        img.snap_create(&name).await.expect("snap");
        snaps.insert(name, read_all(img).await);
    }
    snaps
}

#[tokio::test]
async fn the_background_pass_packs_every_sealed_record_once_enough_wait() {
    let mem = Arc::new(MemBackend::new());
    let st = store(&mem, 4);
    st.create("img", small_opts(64 * OBJ))
        .await
        .expect("create");
    let img = st.open("img").await.expect("open");
    history(&img, 0, 3).await;
    img.reclaim().await.expect("reclaim");
    assert!(entries(&mem, &img).await.is_empty(), "3 waiting, 4 needed");
    history(&img, 3, 1).await;
    img.reclaim().await.expect("reclaim");
    let packed: Vec<Epoch> = entries(&mem, &img).await.into_keys().collect();
    assert_eq!(packed, sealed(&img));
    assert_copies(&mem, &img).await;
    img.close().await.expect("close");
}

/// Merges rewrite packed records (the parent of each merged epoch); each
/// removes the copy first and the next pass packs the new record. Failed
/// first without the removal: the stale copies of the merged parents
/// stayed, and opens used them.
#[tokio::test]
async fn rewrites_of_packed_records_never_leave_a_stale_copy() {
    let mem = Arc::new(MemBackend::new());
    let st = store(&mem, 1);
    st.create("img", small_opts(64 * OBJ))
        .await
        .expect("create");
    let img = st.open("img").await.expect("open");
    let mut snaps = history(&img, 0, 8).await;
    img.reclaim().await.expect("reclaim");
    assert_eq!(entries(&mem, &img).await.len(), 8);
    for name in ["s1", "s2", "s3", "s5", "s6"] {
        img.snap_remove(name).await.expect("remove");
        snaps.remove(name);
    }
    img.reclaim().await.expect("reclaim");
    assert!(sealed(&img).len() < 8, "hidden epochs were merged");
    let packed: Vec<Epoch> = entries(&mem, &img).await.into_keys().collect();
    assert_eq!(packed, sealed(&img), "garbage entries go with their epochs");
    assert_copies(&mem, &img).await;
    let head = read_all(&img).await;
    img.close().await.expect("close");

    // A fresh store: every view is built from the pack.
    let again = Store::new(mem.clone() as Arc<dyn Backend>);
    for (name, content) in &snaps {
        let s = again.open_snapshot("img", name).await.expect("snapshot");
        assert!(read_all(&s).await == *content, "snapshot {name} changed");
    }
    let img = again.open("img").await.expect("reopen");
    assert!(read_all(&img).await == head, "head changed");
    img.close().await.expect("close");
    let report = check_store(&again, Some("img"), false).await.expect("fsck");
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// An entry that is not a copy: fsck reports it and repair removes it; a
/// damaged entry is skipped by open, which reads the record object.
#[tokio::test]
async fn fsck_finds_and_repairs_entries_that_are_not_copies() {
    let mem = Arc::new(MemBackend::new());
    let st = store(&mem, 1);
    st.create("img", small_opts(64 * OBJ))
        .await
        .expect("create");
    let img = st.open("img").await.expect("open");
    let snaps = history(&img, 0, 3).await;
    img.reclaim().await.expect("reclaim");
    let id = img.id().clone();
    let epochs = sealed(&img);
    img.close().await.expect("close");
    let (e0, e1) = (epochs[0], epochs[1]);
    let hdr = layout::header_object(&id);
    let rec = mem
        .read_all(&layout::epoch_object(&id, e0))
        .await
        .expect("record");
    let mut other = EpochDelta::decode(&rec, &id, e0).expect("decode");
    other.data.insert(63);
    let stale = other.encode(&id, e0, None).expect("encode");
    let tampered = vec![
        (pack_key(e0), Bytes::from(stale)),
        (pack_key(e1), Bytes::from_static(b"not a record")),
        (pack_key(Epoch(0xdead)), Bytes::from(rec.to_vec())),
        (format!("{PACK_PREFIX}zz"), Bytes::new()),
    ];
    mem.operate(&hdr, WriteOp::new().action(Action::OmapSet(tampered)))
        .await
        .expect("tamper");

    // The undecodable copy of e1 is skipped: the snapshot on it still reads.
    let plain = Store::new(mem.clone() as Arc<dyn Backend>);
    let s1 = plain.open_snapshot("img", "s1").await.expect("snapshot");
    assert!(read_all(&s1).await == snaps["s1"]);

    let report = check_store(&plain, Some("img"), false).await.expect("fsck");
    let mut kinds: Vec<(FindingKind, String)> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.key.clone().unwrap_or_default()))
        .collect();
    kinds.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        kinds,
        vec![
            (FindingKind::PackMismatch, pack_key(e0)),
            (FindingKind::StrayPackEntry, pack_key(e1)),
            (FindingKind::StrayPackEntry, pack_key(Epoch(0xdead))),
            (FindingKind::StrayPackEntry, format!("{PACK_PREFIX}zz")),
        ]
    );
    let repaired = check_store(&plain, Some("img"), true)
        .await
        .expect("repair");
    assert_eq!(repaired.repaired(), 4, "{:?}", repaired.findings);
    let after = check_store(&plain, Some("img"), false).await.expect("fsck");
    assert!(after.findings.is_empty(), "{:?}", after.findings);
    for (name, content) in &snaps {
        let s = plain.open_snapshot("img", name).await.expect("snapshot");
        assert!(read_all(&s).await == *content, "snapshot {name}");
    }
}

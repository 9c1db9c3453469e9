//! Images written before head checkpoints existed (generation-0 touch keys
//! `touch.<epoch>.<object>`, no `rbd_row_ckpt.*` object) open, read and
//! write as before; their first checkpoint covers the old keys and removes
//! them. The pre-checkpoint layout is laid down here with raw backend ops,
//! exactly as the previous release stored it.

mod common;

use bytes::Bytes;
use common::*;
use row_layer::backend::ext::BackendExt;
use row_layer::backend::mem::MemBackend;
use row_layer::backend::{Action, Backend, WriteOp};
use row_layer::{layout, Epoch, ObjectNo, Store};
use std::sync::Arc;

async fn touch_keys(b: &dyn Backend, store: &Store) -> Vec<String> {
    let id = store.image_id("img").await.expect("id");
    b.omap_all(&layout::header_object(&id), "touch.")
        .await
        .expect("keys")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[tokio::test]
async fn a_pre_checkpoint_image_opens_and_its_first_checkpoint_covers_it() {
    let mem = Arc::new(MemBackend::new());
    let store = Store::new(mem.clone() as Arc<dyn Backend>);
    store
        .create("img", small_opts(4 * OBJ))
        .await
        .expect("create");
    let id = store.image_id("img").await.expect("id");
    let head = Epoch(1);
    // Object 1 holds grains 2 (data) and 3 (zero), object 3 grain 0.
    let data1 = pattern(1, GRAIN as usize);
    let data3 = pattern(3, GRAIN as usize);
    for (o, off, bytes, keys) in [
        (
            1u64,
            2 * GRAIN,
            data1.clone(),
            vec![("000002", "D"), ("000003", "Z")],
        ),
        (3u64, 0, data3.clone(), vec![("000000", "D")]),
    ] {
        let kv = keys
            .into_iter()
            .map(|(k, v)| (k.to_string(), Bytes::from(v)))
            .collect();
        mem.operate(
            &layout::data_object(&id, ObjectNo(o), head),
            WriteOp::new().write(off, bytes).action(Action::OmapSet(kv)),
        )
        .await
        .expect("data object");
        mem.operate(
            &layout::header_object(&id),
            WriteOp::new().omap_set1(format!("touch.{:016x}.{o:016x}", head.0), Bytes::new()),
        )
        .await
        .expect("touch key");
    }
    let img = store
        .open("img")
        .await
        .expect("open a pre-checkpoint image");
    img.self_check().expect("self_check");
    let mut want = vec![0u8; (4 * OBJ) as usize];
    want[(OBJ + 2 * GRAIN) as usize..(OBJ + 3 * GRAIN) as usize].copy_from_slice(&data1);
    want[(3 * OBJ) as usize..(3 * OBJ + GRAIN) as usize].copy_from_slice(&data3);
    assert!(
        read_all(&img).await == want,
        "pre-checkpoint image reads wrong"
    );
    // Without a checkpoint it keeps the old key format.
    img.write(2 * OBJ, pattern(5, 4096)).await.expect("write");
    want[(2 * OBJ) as usize..(2 * OBJ + GRAIN) as usize].copy_from_slice(&pattern(5, 4096));
    let old_keys = touch_keys(&*mem, &store).await;
    assert_eq!(
        old_keys,
        (1..=3)
            .map(|o| layout::touch_key(head, ObjectNo(o)))
            .collect::<Vec<_>>()
    );
    // The first checkpoint covers and removes them; writes after it
    // register under generation 1.
    img.checkpoint().await.expect("checkpoint");
    assert!(touch_keys(&*mem, &store).await.is_empty());
    img.write(OBJ, pattern(6, 4096)).await.expect("write");
    want[OBJ as usize..(OBJ + GRAIN) as usize].copy_from_slice(&pattern(6, 4096));
    assert_eq!(
        touch_keys(&*mem, &store).await,
        vec![layout::touch_key_gen(head, 1, ObjectNo(1))]
    );
    img.close().await.expect("close");
    let img = store.open("img").await.expect("reopen");
    img.self_check().expect("self_check after reopen");
    assert!(
        read_all(&img).await == want,
        "reopened after checkpoint reads wrong"
    );
    // A snapshot seals the head: its keys and its checkpoint go.
    img.snap_create("s").await.expect("snap");
    assert!(touch_keys(&*mem, &store).await.is_empty());
    assert!(mem
        .list(&layout::ckpt_prefix(&id))
        .await
        .expect("list")
        .is_empty());
    let s = store
        .open_snapshot("img", "s")
        .await
        .expect("open snapshot");
    assert!(
        read_all(&s).await == want,
        "snapshot of a checkpointed head"
    );
}

/// fsck knows the checkpoint object: a stale one (a crash between a seal's
/// commit and its removal) is a repairable warning, a damaged head
/// checkpoint an error.
#[tokio::test]
async fn fsck_reports_stale_and_damaged_checkpoints() {
    use row_layer::fsck::{check_store, FindingKind};
    let mem = Arc::new(MemBackend::new());
    let store = Store::new(mem.clone() as Arc<dyn Backend>);
    store
        .create("img", small_opts(4 * OBJ))
        .await
        .expect("create");
    let id = store.image_id("img").await.expect("id");
    let img = store.open("img").await.expect("open");
    img.write(0, pattern(1, 4096)).await.expect("write");
    img.checkpoint().await.expect("checkpoint");
    let stale = mem
        .read_all(&layout::ckpt_object(&id, Epoch(1)))
        .await
        .expect("checkpoint of epoch 1");
    img.snap_create("s").await.expect("snap");
    img.close().await.expect("close");
    let report = check_store(&store, Some("img"), false).await.expect("fsck");
    assert!(report.is_clean(), "{report:?}");
    // Put back what a crash after the seal's commit would have left.
    mem.operate(
        &layout::ckpt_object(&id, Epoch(1)),
        WriteOp::new().write_full(stale),
    )
    .await
    .expect("stale checkpoint");
    let report = check_store(&store, Some("img"), false).await.expect("fsck");
    assert_eq!(
        report.of_kind(FindingKind::OrphanCheckpoint).len(),
        1,
        "{report:?}"
    );
    let report = check_store(&store, Some("img"), true)
        .await
        .expect("repair");
    assert_eq!(report.repaired(), 1, "{report:?}");
    assert!(mem
        .list(&layout::ckpt_prefix(&id))
        .await
        .expect("list")
        .is_empty());
    // A damaged head checkpoint: open refuses, fsck says why.
    let img = store.open("img").await.expect("open");
    img.write(0, pattern(2, 4096)).await.expect("write");
    img.checkpoint().await.expect("checkpoint");
    img.close().await.expect("close");
    let head = Epoch(2);
    let oid = layout::ckpt_object(&id, head);
    let mut bytes = mem.read_all(&oid).await.expect("checkpoint").to_vec();
    bytes[12] ^= 0x40;
    mem.operate(&oid, WriteOp::new().write_full(bytes.into()))
        .await
        .expect("damage");
    let err = store.open("img").await.err().expect("open refuses");
    assert_eq!(err.kind(), row_layer::ErrorKind::Corrupt, "{err}");
    let report = check_store(&store, Some("img"), false).await.expect("fsck");
    assert_eq!(
        report.of_kind(FindingKind::CorruptCheckpoint).len(),
        1,
        "{report:?}"
    );
}
